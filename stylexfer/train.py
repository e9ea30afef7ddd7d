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
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import TOTAL_FREE_SCHEDULES, value
from .data import Style
from .errors import DeviceOutOfMemory, TrainingDiverged, first_line
from .prior import ClassPool, ensure_pool, pool_key, pool_objects, pool_spec
from .specs import POOLED_PRIORS, PoolSpec, TrainSpec
from .store import atomic_write_json, build_once, file_lock, latest_checkpoint, publish, reusable, seal, stable_hash

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    key: str
    dir: Path
    reused: bool
    seconds: float = 0.0
    losses: list = field(default_factory=list)


def adapter_spec(style: Style, cfg, model_identity: str, pool_key: Optional[str]) -> dict:
    """Everything that determines a style's adapter (and nothing that only affects sampling/scoring): the store spec
    of :class:`stylexfer.specs.TrainSpec`, the object the backend trains from."""
    return TrainSpec.from_config(cfg).adapter_key(style.fingerprint(), model_identity, pool_key)


def style_specs(model_identity: str, styles: list[Style], style: Style, cfg) -> tuple[Optional[PoolSpec], dict]:
    """(class-pool spec or None without prior preservation, adapter spec) of ``style`` among ``styles``."""
    pooled = value(cfg.prior.mode) in POOLED_PRIORS  # prior=self draws from the style's own images: no pool
    spec_pool = (
        pool_spec(
            pool_objects(styles, style, cfg.prior.mode),
            cfg.prior,
            model_identity,
            cfg.model.resolution,
            cfg.backend.name,
        )
        if pooled
        else None
    )
    return spec_pool, adapter_spec(style, cfg, model_identity, pool_key(spec_pool) if spec_pool else None)


def total_free(cfg) -> bool:
    """Whether step k of this run is the k-step run (a learning rate that does not depend on ``train.steps``)."""
    return value(cfg.train.lr_scheduler) in TOTAL_FREE_SCHEDULES


def validation_steps(cfg) -> list[int]:
    """The steps before the last at which ``train.validate_every`` scores the adapter (none when 0)."""
    n, steps = cfg.train.validate_every, cfg.train.steps
    return list(range(n, steps, n)) if n and n > 0 else []


def kept_steps(cfg) -> list[int]:
    """The steps ``k`` < ``train.steps`` after which this run also stores its adapters, longest first: those of
    ``train.keep_steps`` (resolved by the run) where the schedule does not depend on the total, and the validation
    steps; none where the frozen layers compute in fp8 (their swap does not survive the mid-training export)."""
    tr = cfg.train
    if tr.fp8:
        return []
    keep = {k for k in (tr.keep_steps or []) if 0 < k < tr.steps} if total_free(cfg) else set()
    return sorted(keep | set(validation_steps(cfg)), reverse=True)


def snapshot_spec(spec: dict, k: int, free: bool) -> dict:
    """The spec of a run's adapter after step ``k``: the k-step run's (``free``: the schedule does not depend on the
    total), else this run's own at step k (a key no other run computes)."""
    return {**spec, "train": {**spec["train"], "steps": k}} if free else {**spec, "snapshot_at": k}


def snapshot_specs(spec: dict, steps: list[int], cache_dir: Path, free: bool) -> dict[int, dict]:
    """{k: :func:`snapshot_spec`} for the ``steps`` not in the store yet."""
    out = {}
    for k in steps:
        sk = snapshot_spec(spec, k, free)
        if not adapter_stored(sk, cache_dir):
            out[k] = sk
    return out


def continues(cfg) -> bool:
    """Whether a longer run will continue from where this one ends (``train.keep_steps`` holds a step beyond
    ``train.steps``): then the pass's last state is kept in the store for it."""
    tr = cfg.train
    return total_free(cfg) and not tr.fp8 and tr.steps > 0 and any(k > tr.steps for k in (tr.keep_steps or []))


def resume_dir(root: Path, kind: str, specs: list[dict]) -> Path:
    """Where the end states of the runs of ``specs`` (in pass order) are kept, whatever their ``train.steps``."""
    free = [{**sp, "train": {k: v for k, v in sp["train"].items() if k != "steps"}} for sp in specs]
    return root / ".resume" / f"{kind}-{stable_hash(free)}"


def seed_from_shorter(partial: Path, resume: Path, steps: int) -> int:
    """Put the latest intact end state of a shorter run (``resume/step-k``, k < ``steps``) into ``partial`` as its
    checkpoint, when it holds none; the step it resumes from (0: none)."""
    if latest_checkpoint(partial) is not None or not resume.is_dir():
        return 0
    found = [d for d in sorted(resume.glob("step-*")) if int(d.name[5:]) < steps and reusable(d)]
    if not found:
        return 0
    tmp = partial.parent / f".{partial.name}.seed-{uuid.uuid4().hex[:8]}"
    shutil.copytree(found[-1], tmp / found[-1].name)
    partial.mkdir(parents=True, exist_ok=True)
    os.rename(tmp / found[-1].name, partial / found[-1].name)
    shutil.rmtree(tmp, ignore_errors=True)
    return int(found[-1].name[5:])


def keep_state(written: Path, resume: Path) -> None:
    """Seal the end state a pass wrote (``written/step-N``) and move it to ``resume/step-N``."""
    for step in written.glob("step-*"):
        seal(step)
        resume.mkdir(parents=True, exist_ok=True)
        if not (resume / step.name).exists():
            os.rename(step, resume / step.name)


def lock_order(specs: list[dict]) -> list[str]:
    """The store keys of ``specs`` in the one order every job takes their locks in (most steps first, then the
    key), so jobs that store each other's adapters never wait on each other in a circle."""
    return [k for _, k in sorted({(-sp["train"]["steps"], stable_hash(sp)) for sp in specs})]


@dataclass
class _Keeping:
    """What a training pass keeps besides its adapters: per style {k: (spec, folder)} of the kept steps' adapters
    (:func:`kept_steps`), and the folder its end state goes to for a longer run (None: not kept)."""

    snaps: list[dict[int, tuple[dict, Path]]]
    state: Optional[Path]
    resume: Path

    @property
    def snapshots(self) -> Optional[dict[int, list[Path]]]:
        """The backend's ``snapshots`` argument: {k: one folder per style}."""
        return {k: [sn[k][1] for sn in self.snaps] for k in self.snaps[0]} or None

    def folders(self) -> list[Path]:
        return [d for sn in self.snaps for _, d in sn.values()] + ([self.state] if self.state is not None else [])


def _keeping(backend, cfg, cache_dir: Path, kind: str, styles: list[Style], specs: list[dict], ckpt: Path) -> _Keeping:
    """Set up a pass's kept adapters and end state (their folders made), and put a shorter run's end state into
    ``ckpt`` to continue from (:func:`seed_from_shorter`). Every style gets a folder at every kept step one of them
    lacks."""
    root = Path(cache_dir) / "adapters"
    keeps = backend.keeps_snapshots
    steps = kept_steps(cfg) if keeps else []
    free = total_free(cfg)
    at = sorted({k for sp in specs for k in snapshot_specs(sp, steps, cache_dir, free)}, reverse=True)
    snaps = [{k: (snapshot_spec(sp, k, free), root / f".snap-{k}-{uuid.uuid4().hex[:8]}") for k in at} for sp in specs]
    resume = resume_dir(root, kind, specs)
    state = resume.parent / f".state-{uuid.uuid4().hex[:8]}" if keeps and continues(cfg) else None
    start = seed_from_shorter(ckpt, resume, cfg.train.steps) if keeps else 0
    if start:
        log.info(
            "style%s %s: continuing from step %d, where a train.steps=%d run ended",
            "s" if len(styles) > 1 else "",
            ", ".join(s.id for s in styles),
            start,
            start,
        )
    keeping = _Keeping(snaps, state, resume)
    for d in keeping.folders():
        d.mkdir(parents=True)
    return keeping


def _publish_snapshots(root: Path, style: Style, snaps: dict[int, tuple[dict, Path]], losses, seconds, of: str):
    """Seal and rename each snapshot folder to its key (:func:`snapshot_spec`), with the train record a k-step run
    writes."""
    steps = max(1, len(losses))
    for k, (sk, tmp) in sorted(snaps.items()):
        if not any(tmp.glob("*.safetensors")):  # before the step this pass resumed from: a shorter run kept it
            continue
        rec = _train_record(style, sk, seconds * k / steps, losses[:k])
        rec["snapshot_of"] = of
        atomic_write_json(tmp / "train.json", rec)
        if publish(tmp, root / stable_hash(sk)):
            whose = f"a train.steps={k} run's" if "snapshot_at" not in sk else "for validation"
            log.info("style %s: kept its adapter at step %d as %s (%s)", style.id, k, stable_hash(sk), whose)


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
    root = Path(cache_dir) / "adapters"
    partial = root / ".partial" / key

    def build(tmp: Path) -> None:
        steps = kept_steps(cfg) if backend.keeps_snapshots else []
        with contextlib.ExitStack() as locks:  # a shorter run of the same style waits for its adapter, then reuses
            for k in lock_order(list(snapshot_specs(spec, steps, cache_dir, total_free(cfg)).values())):
                locks.enter_context(file_lock(root / f".{k}.lock"))
            keeping = _keeping(backend, cfg, cache_dir, "style", [style], [spec], partial)
            try:
                out = backend.train(
                    [style],
                    [pool],
                    TrainSpec.from_config(cfg),
                    partial,
                    [tmp],
                    snapshots=keeping.snapshots,
                    state_to=keeping.state,
                )
                if style.id in out.failed:
                    raise TrainingDiverged(out.failed[style.id])
                result.seconds, result.losses = out.seconds, out.losses[style.id]
                _publish_snapshots(root, style, keeping.snaps[0], result.losses, result.seconds, key)
                if keeping.state is not None:
                    keep_state(keeping.state, keeping.resume)
            finally:
                for d in keeping.folders():
                    shutil.rmtree(d, ignore_errors=True)
        atomic_write_json(tmp / "train.json", _train_record(style, spec, result.seconds, result.losses))

    _, built = build_once(target, build)
    shutil.rmtree(partial, ignore_errors=True)
    result.reused = not built
    return result


def ensure_adapter(
    backend, style: Style, spec_pool: Optional[PoolSpec], spec: dict, cfg, cache_dir: Path
) -> TrainResult:
    """The style's adapter from the store, or trained now (its class pool made or found first, only then)."""
    pool = ensure_pool(backend, spec_pool, cache_dir) if spec_pool and not adapter_stored(spec, cache_dir) else None
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
    keeping = _keeping(backend, cfg, cache_dir, "group", styles, specs, ckpt)
    trained = {}
    try:
        tspec = TrainSpec.from_config(cfg)
        out = backend.train(styles, pools, tspec, ckpt, tmps, snapshots=keeping.snapshots, state_to=keeping.state)
        if keeping.state is not None and len(out.failed) < len(styles):
            keep_state(keeping.state, keeping.resume)
        share = out.seconds / len(styles)
        for style, spec, key, tmp, sn in zip(styles, specs, keys, tmps, keeping.snaps):
            if style.id in out.failed:
                continue
            _publish_snapshots(root, style, sn, out.losses[style.id], share, key)
            atomic_write_json(
                tmp / "train.json", _train_record(style, spec, share, out.losses[style.id], [s.id for s in styles])
            )
            publish(tmp, root / key)
            trained[style.id] = (share, out.losses[style.id])
    finally:
        for t in tmps + keeping.folders():
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
    specs = {sp.key: sp for _, sp, _ in todo if sp is not None}  # a shared pool: loaded once, not per style
    pools = {k: pool_for(sp) for k, sp in specs.items()}
    size = len(todo) if per_batch == 0 else per_batch
    trained, failed = {}, {}
    while todo:
        group, rest = todo[:size], todo[size:]
        steps = kept_steps(cfg) if backend.keeps_snapshots else []
        kept = [sk for g in group for sk in snapshot_specs(g[2], steps, cache, total_free(cfg)).values()]
        keys = lock_order([g[2] for g in group] + kept)
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
                        [pools[g[1].key] if g[1] is not None else None for g in group],
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
