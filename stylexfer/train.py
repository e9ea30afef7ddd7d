"""Training stage: which styles need an adapter, which train together, and where each adapter is stored.

The recipe (DreamBooth-LoRA: the instance prompt ``data.instance_prompt``, prior preservation, the
augmentation, the optimizer) is computed by the backend (:meth:`stylexfer.backends.Backend.train`);
this module decides the rest. An adapter lives in the stage store at ``<cache>/adapters/<key>/``, the
key hashing everything that determines it (:func:`adapter_spec`: the backend, the model, the style's
images, prompts, LoRA, prior, augmentation and training settings), so a run whose overrides only
touch sampling or scoring finds it and trains nothing.

Styles whose adapters are missing train in batched passes of ``train.styles_per_batch`` styles (0 =
all; halved when the device runs out of memory); a pass that fails leaves its styles to the one-style
path, so one bad style costs only itself. Every style's random streams are its own, so its adapter is
the same whichever styles shared its pass.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from .config import PriorMode, value
from .data import Style
from .errors import DeviceOutOfMemory, TrainingDiverged, first_line
from .prior import ClassPool, ensure_pool, pool_key, pool_objects, pool_spec
from .store import atomic_write_json, build_once, file_lock, publish, reusable, stable_hash

log = logging.getLogger(__name__)

# training settings that change how the work is scheduled, not what it computes
SCHEDULING_KEYS = ("checkpoint_every", "styles_per_batch", "compile", "compile_mode", "compile_vae", "cuda_graphs")


@dataclass
class TrainResult:
    key: str
    dir: Path
    reused: bool
    seconds: float = 0.0
    losses: list = field(default_factory=list)


def adapter_spec(style: Style, cfg, model_identity: str, pool_key: Optional[str]) -> dict:
    """Everything that determines a style's adapter (and nothing that only affects sampling/scoring)."""
    if value(cfg.prior.mode) == PriorMode.none.value:
        prior = {"mode": "none"}
    else:
        prior = {"mode": value(cfg.prior.mode), "weight": cfg.prior.weight, "pool": pool_key}
    return {
        "version": 2,
        "backend": cfg.backend.name,
        "model": model_identity,
        "style": style.fingerprint(),
        "instance_prompt": cfg.data.instance_prompt,
        "resolution": cfg.model.resolution,
        "lora": OmegaConf.to_container(cfg.lora, resolve=True, enum_to_str=True),
        "prior": prior,
        "augmentation": {
            k: v for k, v in OmegaConf.to_container(cfg.augmentation, resolve=True).items() if k != "name"
        },
        "train": {
            k: v
            for k, v in OmegaConf.to_container(cfg.train, resolve=True, enum_to_str=True).items()
            if k not in SCHEDULING_KEYS
        },
        "dtype": str(cfg.model.dtype),
    }


def style_specs(model_identity: str, styles: list[Style], style: Style, cfg) -> tuple[Optional[dict], dict]:
    """(class-pool spec or None without prior preservation, adapter spec) of ``style`` among ``styles``."""
    prior_on = value(cfg.prior.mode) != PriorMode.none.value
    spec_pool = (
        pool_spec(
            pool_objects(styles, style, cfg.prior.mode),
            cfg.prior,
            model_identity,
            cfg.model.resolution,
            cfg.backend.name,
        )
        if prior_on
        else None
    )
    return spec_pool, adapter_spec(style, cfg, model_identity, pool_key(spec_pool) if spec_pool else None)


def adapter_stored(spec: dict, cache_dir: Path) -> bool:
    """Whether the adapter is in the store, intact (a damaged entry is set aside: it trains again)."""
    return reusable(Path(cache_dir) / "adapters" / stable_hash(spec))


def _train_record(style: Style, spec: dict, seconds: float, losses: list, batched_with: Optional[list] = None) -> dict:
    rec = {"style": style.id, "spec": spec, "seconds": round(seconds, 2), "losses": [round(x, 6) for x in losses]}
    if batched_with:
        rec["batched_with"] = batched_with
    return rec


def train_style(backend, style: Style, pool: Optional[ClassPool], cfg, spec: dict, cache_dir: Path) -> TrainResult:
    """Train (or reuse) one style's adapter; it lives at ``<cache>/adapters/<key>/``."""
    key = stable_hash(spec)
    target = Path(cache_dir) / "adapters" / key
    if reusable(target):
        return TrainResult(key=key, dir=target, reused=True)
    result = TrainResult(key=key, dir=target, reused=False)
    partial = Path(cache_dir) / "adapters" / ".partial" / key

    def build(tmp: Path) -> None:
        out = backend.train([style], [pool], cfg, partial, [tmp])
        if style.id in out.failed:
            raise TrainingDiverged(out.failed[style.id])
        result.seconds, result.losses = out.seconds, out.losses[style.id]
        atomic_write_json(tmp / "train.json", _train_record(style, spec, result.seconds, result.losses))

    _, built = build_once(target, build)
    shutil.rmtree(partial, ignore_errors=True)
    result.reused = not built
    return result


def ensure_adapter(backend, style: Style, spec_pool: Optional[dict], spec: dict, cfg, cache_dir: Path) -> TrainResult:
    """The style's adapter from the store, or trained now (its class pool made or found first, only then)."""
    pool = (
        ensure_pool(backend, spec_pool, cfg.prior, cache_dir)
        if spec_pool and not adapter_stored(spec, cache_dir)
        else None
    )
    return train_style(backend, style, pool, cfg, spec, cache_dir)


def train_group(
    backend, styles: list[Style], pools: list[Optional[ClassPool]], cfg, specs: list[dict], cache_dir: Path
) -> tuple[dict, dict]:
    """Train ``styles`` together and publish each adapter in the stage store under its own key (the same
    key and files as the one-style path). Returns ({id: (seconds, losses)}, {id: error})."""
    root = Path(cache_dir) / "adapters"
    keys = [stable_hash(sp) for sp in specs]
    ckpt = root / ".partial" / f"group-{stable_hash(keys)}"
    tmps = [root / f".{k}.tmp-{uuid.uuid4().hex[:8]}" for k in keys]
    for t in tmps:
        t.mkdir(parents=True)
    trained = {}
    try:
        out = backend.train(styles, pools, cfg, ckpt, tmps)
        share = out.seconds / len(styles)
        for style, spec, key, tmp in zip(styles, specs, keys, tmps):
            if style.id in out.failed:
                continue
            atomic_write_json(
                tmp / "train.json", _train_record(style, spec, share, out.losses[style.id], [s.id for s in styles])
            )
            publish(tmp, root / key)
            trained[style.id] = (share, out.losses[style.id])
    finally:
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    return trained, out.failed


def train_in_batches(backend, todo: list[tuple], cfg, cache: Path, pool_for) -> tuple[dict, dict]:
    """Train the styles of ``todo`` — (style, class-pool spec or None, adapter spec) of each style whose
    adapter is not stored — in batched passes of ``train.styles_per_batch`` styles (0 = as many as fit:
    all, halving when the device runs out of memory). ``pool_for(spec)`` makes or finds a class pool.
    Returns ({id: (seconds, losses)} of the styles trained, {id: error} of those that diverged). One
    style, or ``styles_per_batch=1``, leaves everything to the one-style path (:func:`train_style`)."""
    per_batch = cfg.train.styles_per_batch
    if per_batch == 1 or len(todo) < 2:
        return {}, {}
    if not backend.trains_together:  # e.g. the Jittor backend: one style per pass
        return {}, {}
    if cfg.lora.dropout > 0:  # per-style dropout masks cannot be drawn from per-style streams in one pass
        log.info("lora.dropout=%s: training the styles one at a time (no batched pass)", cfg.lora.dropout)
        return {}, {}
    if value(cfg.lora.kind) != "lora":  # the batched pass's multi-style layer is plain LoRA
        log.info(
            "lora.kind=%s: training the styles one at a time with peft's layers (the batched pass carries "
            "plain LoRA only)",
            value(cfg.lora.kind),
        )
        return {}, {}
    specs = {stable_hash(sp): sp for _, sp, _ in todo if sp is not None}  # a shared pool: loaded once, not per style
    pools = {k: pool_for(sp) for k, sp in specs.items()}
    size = len(todo) if per_batch == 0 else per_batch
    trained, failed = {}, {}
    while todo:
        group, rest = todo[:size], todo[size:]
        keys = sorted(stable_hash(g[2]) for g in group)
        try:
            with contextlib.ExitStack() as locks:  # another job training the same styles: wait, then reuse
                for k in keys:
                    locks.enter_context(file_lock(cache / "adapters" / f".{k}.lock"))
                group = [g for g in group if not adapter_stored(g[2], cache)]
                if len(group) >= 2:
                    t0 = time.time()
                    t, f = train_group(
                        backend,
                        [g[0] for g in group],
                        [pools[stable_hash(g[1])] if g[1] is not None else None for g in group],
                        cfg,
                        [g[2] for g in group],
                        cache,
                    )
                    log.info("trained %d styles in one pass in %.1fs", len(group), time.time() - t0)
                    trained.update(t)
                    failed.update(f)
        except DeviceOutOfMemory:
            if size == 1 or per_batch != 0:
                log.warning("out of device memory in a batched pass: training those styles one at a time")
                todo = rest
                continue
            size = max(1, size // 2)
            log.warning("out of device memory with %d styles per batch: trying %d", len(group), size)
            continue
        except Exception as e:  # noqa: BLE001 - the one-style path isolates whatever failed
            log.warning(
                "batched training of %s failed (%s): training them one at a time",
                ", ".join(g[0].id for g in group),
                first_line(e, with_type=True),
            )
        todo = rest
    return trained, failed
