"""The pipeline: for every style, train (or reuse) → sample → score; then write the run's reports.

Everything that can fail on bad input (config ranges, data, model weights) is checked first, before
any stage writes a file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from . import control, faults, inject
from .app import is_multirun, swept_values
from .backends import BackendFactory, LazyBackend
from .card import write_cards
from .config import validate
from .data import discover_styles, load_image
from .embedded import RANDOM_WEIGHTS_NOTICE, ensure_demo_data
from .errors import STORAGE_ERRNOS, PartialFailure, StylexferError, TrainingDiverged, first_line, os_error_line
from .evaluate import evaluate, preflight, write_scores
from .loggers import check as check_loggers
from .loggers import log_run, write_loss_plot
from .models import resolve_model
from .prior import ensure_pool, pool_key
from .report import image_grid, write_reports
from .sample import ensure_samples, samples_store_spec
from .shard import ShardJob, ShardOutcome, plan_devices, run_shards
from .specs import SampleSpec
from .store import FOLDER_MANIFEST, atomic_write_json, copy_tree, damage, reusable, stable_hash
from .train import (
    adapter_stored,
    continues,
    ensure_adapter,
    kept_steps,
    style_specs,
    train_in_batches,
    validation_steps,
)
from .validate import validate_run

log = logging.getLogger(__name__)


def _quiet_libraries() -> None:
    """Our own progress bars and log lines only: no per-file loading bars from diffusers/transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def job_hash(cfg: DictConfig) -> str:
    """What makes two runs the same job: the whole config but where it runs (folder, device)."""
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    c.pop("paths", None)
    c["model"].pop("device", None)
    c["model"].pop("shards", None)
    c["train"].pop("keep_steps", None)  # scheduling: which adapters a run also keeps, not what it makes
    if not c["train"].get("validate_every"):  # off: the job of a run made before it existed
        c["train"].pop("validate_every", None)
    if c["train"].get("timestep_bias") == "none":
        c["train"].pop("timestep_bias", None)
    return stable_hash(c)


RUN_MANIFEST = FOLDER_MANIFEST  # the run folder's copies of adapters and images, with their sha256


def run(cfg: DictConfig) -> dict:
    t0 = time.time()
    validate(cfg)
    sampling = SampleSpec.from_config(cfg)
    check_loggers(cfg)
    _quiet_libraries()
    cache = Path(cfg.paths.cache_dir).expanduser()
    run_dir = Path(cfg.paths.output_dir)
    config_hash = job_hash(cfg)
    if cfg.train.keep_steps is None:  # auto: a sweep of train.steps trains once (the sweep's other values)
        cfg.train.keep_steps = sorted({int(v) for v in swept_values("train.steps") if int(v) > 0} - {cfg.train.steps})
        if cfg.train.keep_steps and (kept_steps(cfg) or continues(cfg)):
            log.info(
                "train.keep_steps=%s (the sweep's other train.steps): the shorter runs' adapters are kept on the way, "
                "the longer runs continue from this one's end",
                list(cfg.train.keep_steps),
            )
    done = run_dir / "summary.json"
    if done.exists():  # a re-run of a sweep (same hydra.sweep.dir): finished jobs are skipped, never redone
        try:
            previous = json.loads(done.read_text())
        except (OSError, ValueError) as e:
            raise StylexferError(
                f"{done}: unreadable ({first_line(e)}); refusing to write into that folder (move it away)"
            ) from None
        if previous.get("config_hash") != config_hash:
            raise StylexferError(
                f"{run_dir}: already holds a finished run of another config; refusing to overwrite it"
            )
        why = damage(run_dir, RUN_MANIFEST, extra_ok=True) if (run_dir / RUN_MANIFEST).exists() else None
        if why is None:
            log.info("%s: already finished with the same config: skipping", run_dir)
            return previous
        log.warning("%s: finished, but %s: mending it from the store", run_dir, why)

    data_root = Path(cfg.data.root).expanduser() if cfg.data.root else ensure_demo_data(cache)
    styles, data_errors = discover_styles(
        data_root, cfg.data.styles, list(cfg.data.objects), cfg.data.max_objects, collect_errors=True
    )
    for sid, why in data_errors.items():
        log.error("style %s skipped: %s", sid, why)
    log.info("data: %d style(s) from %s: %s", len(styles), data_root, ", ".join(s.id for s in styles))
    resolved = resolve_model(cfg.model, cache)
    inject.check(cfg.inject, resolved.folder, {s.id: len(s.images) for s in styles})
    control.check(cfg.control, cfg.model.name, styles)
    # metric weights too: a missing model fails the run now, not after an hour of training
    demo = cfg.model.path is None
    unavailable = preflight(cfg.eval, demo)
    factory = BackendFactory(cfg.backend.name, resolved, OmegaConf.to_container(cfg.model, resolve=True), str(cache))
    # one worker process per GPU is the PyTorch backend's way; the Jittor backend picks its own device
    # (CUDA 13 is not one it can use) and runs in the run's process unless model.shards says otherwise
    auto_shards = cfg.backend.name == "torch" or int(cfg.model.shards) != 0
    shard_devices = plan_devices(cfg.model, is_multirun()) if auto_shards else []
    work = (
        [s.id for s in styles if not _samples_stored(resolved.identity, styles, s, cfg, sampling, cache)]
        if shard_devices
        else []
    )
    workers = shard_devices[: len(work)] if len(work) >= 2 else []  # one process per device: pool, training, sampling
    sharded = ShardOutcome()
    stages: dict = {}  # wall-clock seconds of each stage of this run (summary.json "stage_seconds")
    if workers:
        sharded = run_shards(
            ShardJob(
                make_backend=factory,
                cfg=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
                data_root=str(data_root),
                style_ids=[s.id for s in styles],
                work_ids=work,
                model_identity=resolved.identity,
                devices=workers,
                log_dir=str(run_dir / "logs"),
            )
        )
        stages["workers"] = round(sharded.seconds.get("wall", 0.0), 2)
        backend = LazyBackend(factory, cfg.backend.name, workers[0])  # loaded only if something is left
        log.info(
            "model: %s (%s backend, %d worker processes on %s, %s prediction)",
            resolved.source,
            backend.name,
            len(workers),
            ", ".join(workers),
            resolved.prediction_type,
        )
    else:
        backend = factory()
        log.info(
            "model: %s (%s backend, %s, %s, %s prediction)",
            resolved.source,
            backend.name,
            backend.device,
            backend.dtype,
            resolved.prediction_type,
        )

    atomic_write_json(
        run_dir / "status.json",
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "device": backend.device,
            "backend": backend.name,
        },
    )
    summary = {
        "name": cfg.name,
        "status": "running",
        "config_hash": config_hash,
        "run_dir": str(run_dir),
        "data_root": str(data_root),
        "model": {
            "source": resolved.source,
            "folder": str(resolved.folder),
            "identity": resolved.identity,
            "random_weights": resolved.random_weights,
            "prediction_type": resolved.prediction_type,
        },
        "notice": resolved.notice or (RANDOM_WEIGHTS_NOTICE if resolved.random_weights else None),
        "metric_names": list(cfg.eval.metrics) + ["final"],
        "styles": {},
        "scores": {},
        "unavailable": dict(unavailable),
        "failed_styles": {},
        "workers": workers,
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    grid_rows, curves, copies, raised = [], {}, {}, {}
    for sid, why in data_errors.items():
        summary["styles"][sid] = {"error": why}
        summary["failed_styles"][sid] = why
    todo = [(style, *style_specs(resolved.identity, styles, style, cfg)) for style in styles]
    todo = [t for t in todo if not adapter_stored(t[2], cache)]
    t_stage = time.time()
    batch_trained, batch_failed = train_in_batches(
        backend, todo, cfg, cache, lambda spec: ensure_pool(backend, spec, cache)
    )
    stages["train"] = time.time() - t_stage
    stages["sample"] = 0.0
    batch_trained.update(sharded.trained)
    batch_failed.update(sharded.failed)
    for style in styles:
        st = summary["styles"][style.id] = {"objects": style.objects}
        try:
            if style.id in batch_failed:
                raise TrainingDiverged(batch_failed[style.id])
            grid_rows.append(
                _run_style(
                    backend,
                    resolved,
                    styles,
                    style,
                    cfg,
                    sampling,
                    cache,
                    run_dir,
                    st,
                    batch_trained,
                    sharded.made,
                    stages,
                    copies,
                )
            )
            curves[style.id] = _losses(run_dir / "adapters" / style.id)
        except Exception as e:  # noqa: BLE001 - one style's failure must not cost the others
            raised[style.id] = e
            line = (
                os_error_line(e)
                if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS
                else first_line(e, with_type=not isinstance(e, StylexferError))
            )
            if not isinstance(e, StylexferError):
                log.debug("style %s", style.id, exc_info=True)
            st["error"] = summary["failed_styles"][style.id] = line
            log.error("style %s failed: %s", style.id, line.removeprefix(f"style {style.id}: "))
            continue
        faults.checkpoint(f"style:{style.id}")

    sampled = [s for s in styles if "images" in summary["styles"][s.id]]
    if not sampled:  # nothing to show, score or summarise: the run fails by its styles' causes, in one line
        raise _nothing_made(summary["failed_styles"], raised)
    atomic_write_json(run_dir / RUN_MANIFEST, dict(sorted(copies.items())))
    t_stage = time.time()
    doc = evaluate(run_dir / "images", sampled, cfg.eval, backend.device, unavailable, demo)
    write_scores(run_dir, doc, f"stylexfer run `{cfg.name}`: scores")
    for sid, sc in doc["styles"].items():
        summary["styles"][sid]["scores"] = sc
    if validation_steps(cfg):  # the adapters kept every train.validate_every steps, sampled and scored
        t_val = time.time()
        specs = {s.id: style_specs(resolved.identity, styles, s, cfg)[1] for s in sampled}
        final = {s.id: summary["styles"][s.id].get("scores", {}) for s in sampled}
        summary["validation"], more = validate_run(
            backend, resolved.identity, sampled, specs, cfg, sampling, cache, run_dir, final, unavailable, demo
        )
        copies.update(more)
        atomic_write_json(run_dir / RUN_MANIFEST, dict(sorted(copies.items())))
        stages["validate"] = time.time() - t_val
    summary["scores"], summary["unavailable"], summary["metric_models"] = (
        doc["overall"],
        doc["unavailable"],
        doc["models"],
    )
    if summary["unavailable"]:
        log.warning(
            "metrics unavailable (final score not computed): %s",
            "; ".join(f"{m}: {why}" for m, why in summary["unavailable"].items()),
        )
    summary["status"] = "partial" if summary["failed_styles"] else "finished"
    stages["score"] = time.time() - t_stage
    summary["seconds"] = round(time.time() - t0, 2)
    summary["stage_seconds"] = {k: round(v, 2) for k, v in stages.items()}
    grid = image_grid(grid_rows)
    if any("control_images" in summary["styles"].get(sid, {}) for sid, _ in grid_rows):
        summary["control_grid"] = "control.png"
        write_control_grid(run_dir, summary)
    if write_loss_plot(run_dir, curves) is not None:
        summary["loss_plot"] = "loss.png"
    summary["loggers"] = log_run(
        cfg,
        run_dir,
        summary,
        curves,
        grid,
        {sid: [it for it in items if it[0] != "average"] for sid, items in grid_rows},
    )
    summary["model_cards"] = write_cards(run_dir, summary, grid_rows)
    write_reports(run_dir, summary, grid)
    log.info("run %s in %.1fs: %s", summary["status"], summary["seconds"], run_dir / "summary.md")
    if resolved.random_weights:
        log.warning(RANDOM_WEIGHTS_NOTICE)
    elif resolved.notice:
        log.info("note: %s", resolved.notice)
    if summary["failed_styles"]:
        failed = summary["failed_styles"]
        raise PartialFailure(
            f"{len(failed)} of {len(summary['styles'])} style(s) failed ("
            + "; ".join(f"{k}: {v}" for k, v in failed.items())
            + f"); see {run_dir / 'summary.md'}"
        )
    return summary


def _nothing_made(failed: dict, raised: dict) -> StylexferError:
    """The error of a run none of whose styles was made: the one style's own error, or all of them in one
    line (exit 3 when every style diverged, else 1)."""
    if len(failed) == 1:
        sid, why = next(iter(failed.items()))
        e = raised.get(sid)
        return (
            e
            if isinstance(e, StylexferError)
            else PartialFailure(why if why.startswith("style ") else f"style {sid}: {why}")
        )
    kind = TrainingDiverged if all(isinstance(raised.get(s), TrainingDiverged) for s in failed) else PartialFailure
    return kind(f"all {len(failed)} styles failed (" + "; ".join(f"{k}: {v}" for k, v in failed.items()) + ")")


def _losses(adapter_dir: Path) -> list:
    """The training curve recorded with a style's adapter (also when it was reused from the store)."""
    rec = adapter_dir / "train.json"
    return json.loads(rec.read_text()).get("losses", []) if rec.exists() else []


def _samples_stored(identity: str, styles, style, cfg, sampling: SampleSpec, cache: Path) -> bool:
    """Whether the style's images are in the store already (then nothing about it needs a device)."""
    key = stable_hash(style_specs(identity, styles, style, cfg)[1])
    return reusable(cache / "samples" / stable_hash(samples_store_spec(style, sampling, key, identity)))


def _run_style(
    backend,
    resolved,
    styles,
    style,
    cfg,
    sampling: SampleSpec,
    cache: Path,
    run_dir: Path,
    st: dict,
    batch_trained: dict,
    made_by_shards: set,
    stages: dict,
    copies: dict,
):
    """Train (or reuse) → sample (or reuse) one style; fills ``st``; returns its grid row. Adds the seconds
    of its training (one style at a time) and sampling to ``stages["train"]`` and ``stages["sample"]``, and the
    sha256 of the files it copies into the run folder to ``copies``."""
    spec_pool, spec = style_specs(resolved.identity, styles, style, cfg)
    pkey = pool_key(spec_pool) if spec_pool else None
    t = time.time()
    result = ensure_adapter(backend, style, spec_pool, spec, cfg, cache)
    stages["train"] += time.time() - t
    if style.id in batch_trained:  # trained by this run, together with other styles
        result.reused = False
        result.seconds, result.losses = batch_trained[style.id]
    if not cfg.train.steps:
        log.info(
            "style %s: untrained adapter %s (train.steps=0: the base model behind an all-zero adapter)",
            style.id,
            result.key,
        )
    elif style.id in batch_trained:
        log.info(
            "style %s: trained adapter %s in a batched pass (loss %.4f → %.4f)",
            style.id,
            result.key,
            float(np.mean(result.losses[:20])),
            float(np.mean(result.losses[-20:])),
        )
    elif result.reused:
        log.info("style %s: adapter %s found in the store: reusing it, nothing to train", style.id, result.key)
    else:
        log.info(
            "style %s: trained adapter %s in %.1fs (loss %.4f → %.4f)",
            style.id,
            result.key,
            result.seconds,
            float(np.mean(result.losses[:20])),
            float(np.mean(result.losses[-20:])),
        )
    _copy_in(result.dir, run_dir, f"adapters/{style.id}", copies)
    st.update(adapter_key=result.key, reused=result.reused, train_seconds=round(result.seconds, 2), pool=pkey)

    sspec = samples_store_spec(style, sampling, result.key, resolved.identity)
    t = time.time()
    sdir, records, sreused = ensure_samples(backend, style, result.dir, sampling, sspec, cache)
    stages["sample"] += time.time() - t
    if sreused and style.id in made_by_shards:
        sreused = False
        log.info("style %s: images %s made by a worker process", style.id, stable_hash(sspec))
    elif sreused:
        log.info("style %s: images %s found in the store: reusing them", style.id, stable_hash(sspec))
    # images/<style>/ holds exactly the generated images (what is uploaded and scored); the init image
    # of img2img goes to init/<style>/
    _copy_in(sdir / "images", run_dir, f"images/{style.id}", copies)
    generated = [load_image(run_dir / r.file) for r in records]
    st["images"] = [r.file for r in records]
    st["samples_key"] = stable_hash(sspec)
    avg = []
    if (sdir / "init").is_dir():
        _copy_in(sdir / "init", run_dir, f"init/{style.id}", copies)
        st["init_image"] = f"init/{style.id}/average.png"
        avg = [("average", load_image(run_dir / st["init_image"]))]
    if (sdir / "control").is_dir():  # structure control: what the first pass drew, its edges
        _copy_in(sdir / "control", run_dir, f"control/{style.id}", copies)
        _copy_in(sdir / "content", run_dir, f"content/{style.id}", copies)
        st["control_images"] = [f"control/{style.id}/{Path(r.file).name}" for r in records]
    return style.id, avg + [(r.object, img) for r, img in zip(records, generated)]


def write_control_grid(run_dir: Path, summary: dict) -> None:
    """``control.png``: per style three rows, what the first pass drew (or the content image), its edges (the
    control images) and the result."""
    from .store import atomic_write_bytes

    rows = []
    for sid, st in summary["styles"].items():
        if "control_images" not in st:
            continue
        names = [Path(f).name for f in st["control_images"]]
        for what, folder in (("drawn", "content"), ("edges", "control"), ("result", "images")):
            rows.append((f"{sid} {what}", [(Path(n).stem, load_image(run_dir / folder / sid / n)) for n in names]))
    buf = io.BytesIO()
    image_grid(rows, label_w=64).save(buf, format="PNG")
    atomic_write_bytes(run_dir / "control.png", buf.getvalue())


def _copy_in(entry: Path, run_dir: Path, where: str, copies: dict) -> None:
    """Copy a store entry (or a folder of one) into the run folder at ``where``; record the copies' sha256."""
    copies.update({f"{where}/{rel}": digest for rel, digest in copy_tree(entry, run_dir / where).items()})
