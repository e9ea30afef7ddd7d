"""Structure control (ControlNet) as the sampling stage sees it: the control images (edge maps), how well a
picture keeps a control's edges, where a job's structure comes from, and what of it goes into the samples'
store key. No model code: the ControlNet itself is the backend's (:mod:`stylexfer.backends.torch.sample`).

The task has prompts, not content images, so by default (``control.source=base``) a first pass draws every
requested object with the base model (no adapter, the prompt without the style token, a seed of the object's
own), and its edges condition the second pass: the style's adapter, the average-image img2img start and the
ControlNet. The first pass is a stage of its own in the store (``<store>/structure/<key>/``), shared by every
style and every run that asks for the same object and seed. ``control.source=DIR`` takes the content images from
a folder instead, one per object, named by its file stem.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .config import ControlMode, value
from .errors import ConfigError, ModelNotFoundError

SHIPPED_POCKET = Path(__file__).parent / "assets" / "pocket_controlnet"


def on(ctl) -> bool:
    return ControlMode(value(ctl.mode)) != ControlMode.none


def canny(img: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """OpenCV's Canny edges of ``img`` as a white-on-black RGB picture (the control image ControlNets take)."""
    import cv2

    edges = cv2.Canny(np.asarray(img.convert("L")), low, high)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def control_image(img: Image.Image, ctl, resolution: int) -> Image.Image:
    """The control image of a content picture at the sampling resolution (blurred first with ``control.blur``)."""
    from PIL import ImageFilter

    from .data import fit_square

    img = fit_square(img, resolution)
    if ctl.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(float(ctl.blur)))
    return canny(img, ctl.low_threshold, ctl.high_threshold)


def edge_agreement(img: Image.Image, control: Image.Image, low: int = 100, high: int = 200, tol: int = 1) -> float:
    """How well ``img`` keeps the edges of ``control`` (a white-on-black edge map of the same size): the F1 of
    its own Canny edges against the control's, an edge pixel counting as matched within ``tol`` pixels. 1 = the
    same edges, 0 = none in common (also when either has no edges)."""
    import cv2

    own = cv2.Canny(np.asarray(img.convert("L")), low, high) > 0
    ref = np.asarray(control.convert("L")) > 127
    if not own.any() or not ref.any():
        return 0.0
    kernel = np.ones((2 * tol + 1, 2 * tol + 1), np.uint8)
    near_ref = cv2.dilate(ref.astype(np.uint8), kernel) > 0
    near_own = cv2.dilate(own.astype(np.uint8), kernel) > 0
    precision, recall = float((own & near_ref).sum() / own.sum()), float((ref & near_own).sum() / ref.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def model_folder(ctl, base_model: str) -> Path:
    """The ControlNet's local diffusers folder: ``control.model`` (a folder, or a hub id found in the Hugging Face
    cache or, when the hub may be asked, downloaded: configs and safetensors only), or the shipped pocket
    ControlNet for the pocket model. Missing → one line naming the key, before any training."""
    if ctl.model:
        from .models import hub_offline, hub_snapshot, looks_like_hub_id

        name = str(ctl.model)
        if looks_like_hub_id(name):  # the Hugging Face cache, or the hub where it may be asked
            folder = hub_snapshot(name, None, hub_offline(), "control.model", ["config.json", "*.safetensors"])
        else:
            folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"control.model={ctl.model}: no such folder (a diffusers ControlNet folder)")
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"control.model={ctl.model}: no config.json (not a diffusers ControlNet)")
        return folder
    if base_model != "pocket":
        raise ConfigError(
            f"control.model: required for model={base_model} (a local diffusers ControlNet folder for that base "
            "model); the shipped pocket ControlNet serves model=pocket only"
        )
    from .embedded import check_shipped

    return check_shipped(SHIPPED_POCKET, "the pocket ControlNet")


@functools.lru_cache(maxsize=8)
def _identity(folder: str, stamp: tuple) -> str:
    from .store import file_digest

    weights = sorted(Path(folder).glob("*.safetensors"))
    if not weights:
        raise ModelNotFoundError(f"{folder}: no .safetensors weights (only safetensors are loaded)")
    return ",".join(file_digest(w, 64)[:16] for w in weights)


def identity(folder: Path) -> str:
    """What names a ControlNet in a store key: the sha256 of its weights (hashed once per process and file)."""
    folder = Path(folder).resolve()
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.safetensors")))
    return _identity(str(folder), stamp)


def check(ctl, base_model: str, styles) -> Optional[Path]:
    """Everything about ``control`` that needs the model and the data, before any stage runs: the ControlNet's
    folder (returned), and with ``control.source=DIR`` a content image for every requested object."""
    if not on(ctl):
        return None
    folder = model_folder(ctl, base_model)
    identity(folder)
    if ctl.source != "base":
        for s in styles:
            content_files(Path(ctl.source), s.objects, s.object_files)
    return folder


def content_files(folder: Path, objects: Sequence[str], object_files: Sequence[str]) -> dict[str, Path]:
    """``control.source=DIR``: {object: its content image}, found by the object's file stem (``a cat.png`` or
    ``a_cat.png``); one line naming the key and the objects without one."""
    from .data import IMAGE_SUFFIXES

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"control.source={folder}: no such folder (or use control.source=base)")
    by_stem = {p.stem.lower(): p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    out, missing = {}, []
    for obj, stem in zip(objects, object_files):
        p = by_stem.get(stem.lower()) or by_stem.get(obj.lower())
        if p is None:
            missing.append(obj)
        else:
            out[obj] = p
    if missing:
        raise ConfigError(f"control.source={folder}: no content image for {', '.join(missing)} (named by the object)")
    return out


def spec(ctl, controlnet: str, structure: Optional[str]) -> dict:
    """What of ``control`` determines the images (their store key): the ControlNet, where the structure comes
    from (the first pass's key, or the content images' digests), the edge thresholds, the weight and span."""
    return {
        "mode": value(ctl.mode),
        "controlnet": controlnet,
        "structure": structure,
        "low_threshold": ctl.low_threshold,
        "high_threshold": ctl.high_threshold,
        "blur": float(ctl.blur),
        "scale": float(ctl.scale),
        "start": float(ctl.start),
        "end": float(ctl.end),
    }
