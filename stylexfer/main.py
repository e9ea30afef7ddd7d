"""Hydra entrypoint: ``python -m stylexfer [+strategy=NAME] [overrides...]`` (``-m`` for sweeps).

Composes the config, runs the pipeline (:func:`stylexfer.run.run`) on a device of its own, and turns
errors into one line: a single run prints ``error: ...`` and exits non-zero; a sweep job records the
error in its folder (``error.json``, read by ``stylexfer.compare``) and fails alone, so the other jobs
of the sweep go on.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .app import CONFIG_DIR, discard_if_empty, is_multirun
from .config import renamed_keys
from .devices import job_device
from .errors import StylexferError, first_line
from .store import atomic_write_json

log = logging.getLogger("stylexfer")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .run import run

    out = Path(cfg.paths.output_dir)
    try:
        with job_device(cfg.model.device, sweep_job=is_multirun()) as device:
            cfg.model.device = device
            summary = run(cfg)
    except Exception as e:  # noqa: BLE001 - every failure is reported in one line and recorded
        line = first_line(e, with_type=not isinstance(e, StylexferError))
        if is_multirun():
            atomic_write_json(out / "error.json", {"error": line, "traceback": traceback.format_exc()})
            log.error("job failed: %s", line)
            raise
        if not isinstance(e, StylexferError):
            raise
        print(f"error: {e}", file=sys.stderr)
        discard_if_empty(out)
        sys.exit(e.exit_code)
    scores = summary["scores"]
    return scores.get("final", scores.get("hist"))


def cli() -> None:
    """``python -m stylexfer``: a renamed key on the command line fails in one line before Hydra composes."""
    renamed = renamed_keys(sys.argv[1:])
    if renamed:
        print(f"error: {renamed[0]}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
