"""Hydra entrypoint: ``python -m stylexfer [+strategy=NAME] [overrides...]`` (``-m`` for sweeps).

Composes the config, runs the pipeline (:func:`stylexfer.run.run`) on a device of its own, and turns
errors into one line: a single run prints ``error: ...`` and exits non-zero; a sweep job records the
error in its folder (``error.json``, read by ``stylexfer.compare``) and fails alone, so the other jobs
of the sweep go on.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import faults
from .app import CONFIG_DIR, discard_if_empty, is_multirun
from .config import renamed_keys
from .devices import job_device
from .errors import STORAGE_ERRNOS, Interrupted, StylexferError, first_line, os_error_line
from .store import atomic_write_json

log = logging.getLogger("stylexfer")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .run import run

    out = Path(cfg.paths.output_dir)
    sweep_job = is_multirun()
    try:
        with job_device(cfg.model.device, sweep_job=sweep_job) as device, _sigterm_interrupts(not sweep_job):
            cfg.model.device = device
            summary = run(cfg)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Interrupted): every finally has run on the way here
        if sweep_job:
            raise
        signum = getattr(e, "signum", signal.SIGINT)
        print(
            f"error: interrupted ({signal.Signals(signum).name}) {faults.describe(faults.last_point())}: "
            "run the same command to resume (finished stages and the last checkpoint are reused)",
            file=sys.stderr,
        )
        discard_if_empty(out)
        sys.exit(128 + signum)
    except Exception as e:  # noqa: BLE001 - every failure is reported in one line and recorded
        storage = isinstance(e, OSError) and e.errno in STORAGE_ERRNOS
        line = os_error_line(e) if storage else first_line(e, with_type=not isinstance(e, StylexferError))
        if sweep_job:
            atomic_write_json(out / "error.json", {"error": line, "traceback": traceback.format_exc()})
            log.error("job failed: %s", line)
            raise
        if not isinstance(e, StylexferError) and not storage:
            raise
        print(f"error: {line if storage else e}", file=sys.stderr)
        discard_if_empty(out)
        sys.exit(1 if storage else e.exit_code)
    return objective(summary)


def objective(summary: dict) -> float | None:
    """What the task returns to a sweeper: the run's overall final score. A search (``hydra/sweeper=optuna``,
    ``+hparams_search=...``) cannot go on without it, so there a missing one fails the trial in one line."""
    final = summary["scores"].get("final")
    if final is None and _searching():
        why = "; ".join(f"{m}: {w}" for m, w in (summary.get("unavailable") or {}).items())
        raise StylexferError(
            "a search needs the final score, and this trial has none ("
            + (why or "a metric was not computed: FID needs 2 images per style, e.g. data.max_objects >= 2")
            + ")"
        )
    return final


def _searching() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return is_multirun() and "optuna" in str(HydraConfig.get().sweeper.get("_target_", ""))


@contextlib.contextmanager
def _sigterm_interrupts(on: bool):
    """While a single run works, SIGTERM interrupts it as Ctrl-C does (:class:`stylexfer.errors.Interrupted`),
    so that it stops cleanly where it is and says so."""
    if not on or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli() -> None:
    """``python -m stylexfer``: a renamed key on the command line fails in one line before Hydra composes."""
    renamed = renamed_keys(sys.argv[1:])
    if renamed:
        print(f"error: {renamed[0]}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
