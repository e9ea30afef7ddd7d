"""One run over several devices: the styles are sharded over worker processes, one per GPU.

A single run (not a sweep job) on a host with several visible GPUs starts one worker process per GPU
(``model.shards=0``, the default; ``model.shards=1`` keeps one process; ``model.shards=N`` asks for N,
and on ``model.device=cpu`` makes N CPU processes, which is how the tests run it). Each worker loads
the model on its device and then, all through the ordinary stages and the stage store:

1. makes its share of every class pool the run needs (chunks k, k+N, ... of the pool's fixed chunks,
   into the pool's partial folder), and waits for the others (a barrier); the first worker to reach
   :func:`stylexfer.prior.ensure_pool` then publishes the whole pool, which every worker reads;
2. trains its styles — every N-th of the styles that still need work — in one batched pass;
3. samples its styles.

The parent process then runs the pipeline as usual and finds every adapter and image in the store
(it loads the model itself only if something is still missing, e.g. a worker failed). Every style's
random streams are its own and every image has its own seed, so a style's adapter and images do not
depend on which worker made them or which styles shared its pass (the same up to floating-point noise
of a different batch: ``tests/test_shard.py``). A sweep keeps one GPU per job instead
(:mod:`stylexfer.devices`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from omegaconf import OmegaConf

from .errors import ConfigError, StylexferError, first_line

log = logging.getLogger(__name__)


def plan_devices(model_cfg, sweep_job: bool, gpus: Optional[int] = None) -> list[str]:
    """The devices of the run's worker processes; ``[]`` = no workers (the run computes in its own process)."""
    from .devices import gpu_count

    n, dev = int(model_cfg.shards), str(model_cfg.device)
    if n < 0:
        raise ConfigError(f"model.shards={n}: must be >= 0 (0 = one per visible GPU, 1 = one process)")
    if n == 1:
        return []
    gpus = gpu_count() if gpus is None else gpus
    if n == 0:  # auto: every visible GPU, for a single run on the GPUs
        return [f"cuda:{i}" for i in range(gpus)] if not sweep_job and dev in ("auto", "cuda") and gpus >= 2 else []
    if dev == "cpu" or (dev == "auto" and gpus == 0):
        return ["cpu"] * n
    if dev not in ("auto", "cuda"):
        raise ConfigError(f"model.shards={n}: needs model.device=auto, cuda or cpu (not {dev})")
    if n > gpus:
        raise ConfigError(f"model.shards={n}: only {gpus} GPU(s) visible")
    return [f"cuda:{i}" for i in range(n)]


@dataclass
class ShardJob:
    """What every worker needs, picklable: how to load the backend on a device (``make_backend(device)``),
    the resolved config, the data, which styles need work, and where to log."""

    make_backend: Callable[[str], object]
    cfg: dict
    data_root: str
    style_ids: list[str]  # every style of the run (class pools are built from all of them)
    work_ids: list[str]  # the styles that still need an adapter or images: these are sharded
    model_identity: str
    devices: list[str]
    log_dir: Optional[str] = None


@dataclass
class ShardOutcome:
    trained: dict = field(default_factory=dict)  # style id → (seconds, losses), trained by a worker
    failed: dict = field(default_factory=dict)  # style id → one line: training diverged
    errors: dict = field(default_factory=dict)  # style id → one line: anything else (the parent retries)
    made: set = field(default_factory=set)  # style ids whose images a worker made
    seconds: dict = field(
        default_factory=dict
    )  # wall-clock parts: start, pool, train, sample, total (max over workers)


def shares(ids: list[str], n: int) -> list[list[str]]:
    """Style ids dealt round-robin to n workers."""
    return [ids[k::n] for k in range(n)]


def _setup_worker(rank: int, device: str, n: int, log_dir: Optional[str]) -> None:
    fmt = logging.Formatter(f"[%(asctime)s][shard {rank} {device}][%(name)s][%(levelname)s] - %(message)s")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    h = logging.StreamHandler()
    h.setFormatter(fmt)
    root.addHandler(h)
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(log_dir) / f"shard{rank}.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if device == "cpu":
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    elif device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(device))


def _worker(job: ShardJob, rank: int, barrier, results) -> None:
    from .data import discover_styles
    from .errors import TrainingDiverged
    from .prior import ensure_pool, make_pool_share, pool_key
    from .sample import ensure_samples, samples_store_spec
    from .specs import SampleSpec
    from .store import stable_hash
    from .train import adapter_stored, ensure_adapter, style_specs, train_in_batches

    n, device = len(job.devices), job.devices[rank]
    _setup_worker(rank, device, n, job.log_dir)
    t0 = time.time()
    out = {"trained": {}, "failed": {}, "errors": {}, "made": [], "seconds": {}}
    try:
        backend = job.make_backend(device)
        cfg = OmegaConf.create(job.cfg)
        sampling = SampleSpec.from_config(cfg)
        cache = Path(cfg.paths.cache_dir)
        styles = discover_styles(job.data_root, job.style_ids, list(cfg.data.objects), cfg.data.max_objects)
        specs = {s.id: style_specs(job.model_identity, styles, s, cfg) for s in styles}
        mine_ids = shares(job.work_ids, n)[rank]
        mine = [s for s in styles if s.id in mine_ids]
        log.info(
            "model loaded on %s in %.1fs; styles of this shard: %s",
            device,
            time.time() - t0,
            ", ".join(mine_ids) or "none",
        )
        out["seconds"]["start"] = time.time() - t0
        pools = {}
        for sid in job.work_ids:
            sp, aspec = specs[sid]
            if sp is not None and not adapter_stored(aspec, cache):
                pools[pool_key(sp)] = sp
        for sp in pools.values():
            make_pool_share(backend, sp, cache, (rank, n))
    except BaseException:
        barrier.abort()  # the other workers stop waiting; the parent makes what is missing
        raise
    try:
        barrier.wait()
    except threading.BrokenBarrierError:  # another worker died: whatever of the pool is missing is made below
        log.warning("another shard failed before the class pool was complete; this one makes what is missing")
    out["seconds"]["pool"] = time.time() - t0
    todo = [(s, *specs[s.id]) for s in mine if not adapter_stored(specs[s.id][1], cache)]
    trained, failed = train_in_batches(backend, todo, cfg, cache, lambda sp: ensure_pool(backend, sp, cache))
    out["trained"].update(trained)
    out["failed"].update(failed)
    for s in mine:  # what the batched pass left (one style, a failed pass), then the images
        if s.id in failed:
            continue
        try:
            res = ensure_adapter(backend, s, *specs[s.id], cfg, cache)
            if not res.reused and s.id not in out["trained"]:
                out["trained"][s.id] = (res.seconds, res.losses)
        except TrainingDiverged as e:
            out["failed"][s.id] = str(e)
        except Exception as e:  # noqa: BLE001 - recorded; the parent tries this style again itself
            out["errors"][s.id] = first_line(e, with_type=not isinstance(e, StylexferError))
            log.error("style %s: %s", s.id, out["errors"][s.id])
    out["seconds"]["train"] = time.time() - t0 - out["seconds"]["pool"]
    t1 = time.time()
    for s in mine:
        if s.id in out["failed"] or s.id in out["errors"]:
            continue
        try:
            key = stable_hash(specs[s.id][1])
            sspec = samples_store_spec(s, sampling, key, job.model_identity)
            ensure_samples(backend, s, cache / "adapters" / key, sampling, sspec, cache)
            out["made"].append(s.id)
        except Exception as e:  # noqa: BLE001
            out["errors"][s.id] = first_line(e, with_type=not isinstance(e, StylexferError))
            log.error("style %s: %s", s.id, out["errors"][s.id])
    out["seconds"]["sample"] = time.time() - t1
    out["seconds"]["total"] = time.time() - t0
    if device.startswith("cuda"):
        import torch

        out["seconds"]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    results[rank] = out


def _entry(job: ShardJob, rank: int, barrier, results) -> None:
    try:
        _worker(job, rank, barrier, results)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which carries on alone
        results[rank] = {"crashed": first_line(e, with_type=True), "traceback": traceback.format_exc()}
        raise SystemExit(1) from None


def run_shards(job: ShardJob) -> ShardOutcome:
    """Run the workers (one process per entry of ``job.devices``) and gather what they did. A worker that
    dies leaves its styles to the parent; nothing it finished is lost (the store keeps it)."""
    n = len(job.devices)
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    t0 = time.time()
    log.info("sharding %d style(s) over %d worker processes on %s", len(job.work_ids), n, ", ".join(job.devices))
    outcome = ShardOutcome()
    with ctx.Manager() as manager:
        barrier, results = manager.Barrier(n), manager.dict()
        procs = [
            ctx.Process(target=_entry, args=(job, rank, barrier, results), name=f"stylexfer-shard{rank}")
            for rank in range(n)
        ]
        procs[0].start()
        quiet = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"  # one set of progress bars on the terminal: shard 0's (a child
        try:  # takes the environment of the moment it starts)
            for p in procs[1:]:
                p.start()
        finally:
            if quiet is None:
                os.environ.pop("TQDM_DISABLE")
            else:
                os.environ["TQDM_DISABLE"] = quiet
        aborted = False
        try:
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(timeout=0.5)
                    if (
                        p.exitcode not in (None, 0) and not aborted
                    ):  # a dead worker must not hold the others at the barrier
                        barrier.abort()
                        aborted = True
        except BaseException:
            for p in procs:
                p.terminate()
            raise
        gathered = dict(results)
    for rank in range(n):
        r = gathered.get(rank)
        if r is None or "crashed" in r:
            why = r["crashed"] if r else f"exit code {procs[rank].exitcode}"
            log.error("shard %d (%s) failed: %s; the run makes its styles itself", rank, job.devices[rank], why)
            if r and r.get("traceback"):
                log.debug("shard %d: %s", rank, r["traceback"])
            continue
        outcome.trained.update({k: tuple(v) for k, v in r["trained"].items()})
        outcome.failed.update(r["failed"])
        outcome.errors.update(r["errors"])
        outcome.made.update(r["made"])
        for k, v in r["seconds"].items():
            outcome.seconds[k] = max(outcome.seconds.get(k, 0.0), v)
    outcome.seconds["wall"] = time.time() - t0
    log.info(
        "shards done in %.1fs: %d style(s) trained, %d sampled",
        outcome.seconds["wall"],
        len(outcome.trained),
        len(outcome.made),
    )
    return outcome
