"""Which GPU a job runs on.

In a sweep, the joblib launcher runs one job per GPU in worker processes that it reuses. An environment
variable (``CUDA_VISIBLE_DEVICES``) set inside a job comes too late once CUDA was initialised in that
worker by an earlier job, so a job instead claims a free GPU *slot* — an exclusive ``flock`` on a
per-host lock file, held for the job's lifetime and released even if the job dies — and then uses the
device ``cuda:<slot>`` explicitly (``torch.cuda.set_device`` plus the device passed to every model).
This holds for the second job a worker runs, and also keeps two sweeps on one host off each other's GPUs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger(__name__)


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch/CUDA: CPU
        return 0


def n_jobs() -> int:
    """Parallel sweep jobs: one per visible GPU, 1 on a CPU-only machine."""
    return max(1, gpu_count())


def _lock_dir() -> Path:
    d = Path(os.environ.get("STYLEXFER_GPU_LOCKS") or Path(tempfile.gettempdir()) / f"stylexfer-gpus-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def claim_gpu(count: Optional[int] = None, poll: float = 0.5) -> Iterator[int]:
    """Hold an exclusive slot on one of ``count`` GPUs for the duration of the ``with`` block."""
    count = gpu_count() if count is None else count
    if count < 1:
        raise RuntimeError("claim_gpu needs at least one GPU")
    waited = False
    while True:
        for i in range(count):
            f = open(_lock_dir() / f"gpu{i}.lock", "a+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield i
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                f.close()
            return
        if not waited:
            log.info("all %d GPUs are taken by other jobs; waiting for one", count)
            waited = True
        time.sleep(poll)


@contextlib.contextmanager
def job_device(requested: str, sweep_job: bool = True) -> Iterator[str]:
    """The device string a job should use: ``requested`` unless it is ``auto`` in a sweep job on a
    multi-GPU host, where the job claims a GPU of its own (a single run uses them all: stylexfer.shard)."""
    if requested != "auto" or not sweep_job or gpu_count() < 2:
        yield requested
        return
    import torch

    with claim_gpu() as i:
        torch.cuda.set_device(i)
        log.info("pinned to cuda:%d (%s), pid %d", i, torch.cuda.get_device_name(i), os.getpid())
        yield f"cuda:{i}"
