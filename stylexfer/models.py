"""Finding the model: one code path for the embedded models, a local diffusers folder and a hub id.

A hub id is first resolved to a local snapshot (``huggingface_hub.snapshot_download``, honouring
``HF_HUB_OFFLINE`` and ``model.local_files_only``); the result is a local diffusers folder whose
weights every backend reads as safetensors (no pickle, no remote code). Missing weights fail in
:func:`resolve_model`, before any training, with one line naming the path and the key to set.
Loading the weights into a framework is the backend's job (``stylexfer.backends``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .embedded import ensure_tiny_model, pocket_model_dir
from .errors import ModelNotFoundError, first_line
from .store import stable_hash

log = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
HUB_PATTERNS = ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*"]
PICKLE_SUFFIXES = ("*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data")


@dataclass
class ResolvedModel:
    folder: Path  # local diffusers folder
    source: str  # what the user named (hub id, folder, or "embedded tiny model")
    identity: str  # hash of what determines the weights (configs, weight file sizes, snapshot commit)
    random_weights: bool
    prediction_type: str
    notice: str | None = None  # what the model's own stylexfer_model.json says about it (random weights, pocket world)


def hub_offline(local_files_only: bool = False) -> bool:
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def offline_for(demo: bool) -> bool:
    """Whether the hub may not be asked: offline mode, or the embedded demo (which never downloads)."""
    return hub_offline() or demo


def looks_like_hub_id(path: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", path)) and not Path(path).expanduser().exists()


def _check_folder(folder: Path, key: str = "model.path") -> None:
    if not folder.exists():
        raise ModelNotFoundError(f"{key}={folder}: no such folder")
    if not folder.is_dir():
        raise ModelNotFoundError(f"{key}={folder}: not a folder (expected a diffusers model folder)")
    for comp in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / comp).is_dir():
            raise ModelNotFoundError(f"{key}={folder}: not a diffusers folder ({comp}/ missing)")
    for comp in ("unet", "vae", "text_encoder"):
        if not any((folder / comp).glob("*.safetensors")):
            has_pickle = any((folder / comp).glob(p) for p in PICKLE_SUFFIXES)
            why = (
                "only pickle weights (.bin/.ckpt); stylexfer loads safetensors only"
                if has_pickle
                else "no .safetensors weights"
            )
            raise ModelNotFoundError(f"{key}={folder}: {comp}/ has {why}")


def _identity(folder: Path, extra: Any = None) -> str:
    parts = {"extra": extra}
    for comp in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        for f in sorted((folder / comp).iterdir()):
            if f.suffix == ".json":
                try:
                    parts[f"{comp}/{f.name}"] = stable_hash(json.loads(f.read_text()))
                except (ValueError, UnicodeDecodeError) as e:
                    raise ModelNotFoundError(
                        f"{f}: not valid JSON ({first_line(e)}): a damaged model folder"
                    ) from None
            elif f.suffix == ".safetensors":
                parts[f"{comp}/{f.name}"] = f.stat().st_size
    return stable_hash(parts)


def hub_snapshot(
    repo_id: str, revision: Optional[str], offline: bool, key: str, patterns: Sequence[str] = HUB_PATTERNS
) -> Path:
    """The local snapshot of a hub repository (its configs and safetensors only), downloaded unless ``offline``;
    any failure is one ModelNotFoundError line naming ``key``."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(patterns),
                ignore_patterns=list(PICKLE_SUFFIXES),
                local_files_only=offline,
            )
        )
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one actionable line
        why = (
            "not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1 or "
            "model.local_files_only=true)"
            if offline
            else f"could not be downloaded ({type(e).__name__})"
        )
        raise ModelNotFoundError(
            f"{key}={repo_id}: weights {why}; download them or set {key}=/path/to/a/diffusers/folder"
        ) from None


def resolve_model(model_cfg, cache_dir: str | Path) -> ResolvedModel:
    """Find the model's local folder, downloading a hub snapshot if allowed; fail fast if it is missing."""
    path = model_cfg.path
    extra = None
    if path is None:  # one of the embedded models, by name
        if model_cfg.name == "pocket":
            folder, source = pocket_model_dir(), "embedded pocket model"
        elif model_cfg.name == "tiny":
            folder, source = ensure_tiny_model(cache_dir), "embedded tiny model"
        else:
            raise ModelNotFoundError(
                f"model.path=null: only the embedded models (model.name=pocket|tiny) need no path; "
                f"set model.path for model.name={model_cfg.name}"
            )
    elif looks_like_hub_id(path):
        folder = hub_snapshot(path, model_cfg.revision, hub_offline(model_cfg.local_files_only), "model.path")
        source, extra = path, folder.name  # snapshot folder name = commit hash
    else:
        folder = Path(path).expanduser().resolve()
        source = str(folder)
    _check_folder(folder)
    meta_file = folder / "stylexfer_model.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    random_weights = bool(meta.get("random_weights"))
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return ResolvedModel(
        folder=folder,
        source=source,
        identity=_identity(folder, extra),
        random_weights=random_weights,
        prediction_type=sched.get("prediction_type", "epsilon"),
        notice=meta.get("notice"),
    )
