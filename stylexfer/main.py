"""Hydra entrypoint: ``python -m stylexfer [+strategy=NAME] [overrides...]`` (``-m`` for sweeps).

Composes the config, runs the pipeline (:func:`stylexfer.run.run`) on a device of its own, and turns
errors into one line: a single run prints ``error: ...`` and exits non-zero; a sweep job records the
error in its folder (``error.json``, read by ``stylexfer.compare``) and fails alone, so the other jobs
of the sweep go on.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import register_configs
from .devices import job_device, n_jobs
from .errors import StylexferError, first_line
from .store import atomic_write_json

log = logging.getLogger("stylexfer")
ROOT = Path(__file__).resolve().parent.parent
# conf/ (and the ablation presets under experiments/) sit at the repository's top level, the project's layout.
CONFIG_DIR = str(ROOT / "conf")
register_configs()
OmegaConf.register_new_resolver("stylexfer.root", lambda: str(ROOT), replace=True)
OmegaConf.register_new_resolver("stylexfer.n_jobs", n_jobs, replace=True)


def _discard_if_empty(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's own bookkeeping (nothing half-written), and
    its ``experiments/<name>/`` folder if that run was all it held."""
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.parent.parent.name == "experiments":
            with contextlib.suppress(OSError):  # not empty: other runs of that name stay
                run_dir.parent.rmdir()


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .run import run

    out = Path(cfg.paths.output_dir)
    try:
        with job_device(cfg.model.device) as device:
            cfg.model.device = device
            summary = run(cfg)
    except Exception as e:  # noqa: BLE001 - every failure is reported in one line and recorded
        line = first_line(e, with_type=not isinstance(e, StylexferError))
        if _is_multirun():
            atomic_write_json(out / "error.json", {"error": line, "traceback": traceback.format_exc()})
            log.error("job failed: %s", line)
            raise
        if not isinstance(e, StylexferError):
            raise
        print(f"error: {e}", file=sys.stderr)
        _discard_if_empty(out)
        sys.exit(e.exit_code)
    scores = summary["scores"]
    return scores.get("final", scores.get("hist"))


if __name__ == "__main__":
    main()
