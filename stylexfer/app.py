"""What every Hydra entrypoint of stylexfer shares: where the configs are, the resolvers they use, and
how a failed run leaves its folder.

The configs live at the repository's top level (``conf/``, and the sweep presets in
``experiments/ablation/``). A checkout (or an editable install) reads them there; a regular install
carries copies inside the package (``stylexfer/_conf``, ``stylexfer/_experiments``: setup.cfg maps
them), so ``python -m stylexfer`` works from any folder.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from omegaconf import OmegaConf

from .config import register_configs
from .devices import n_jobs
from .errors import os_error_line
from .store import claim_dir

PACKAGE = Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    raise SystemExit(
        f"error: stylexfer's configs are missing (looked in {', '.join(map(str, candidates))}); "
        "reinstall with `pip install -e .` from a checkout, or `pip install .`"
    )


def config_dir() -> str:
    return str(_first_existing(PACKAGE.parent / "conf", PACKAGE / "_conf"))


def experiments_dir() -> str:
    """Where the sweep presets (``ablation/``) are found: the checkout's ``experiments/`` or the packaged copy."""
    return str(_first_existing(PACKAGE.parent / "experiments", PACKAGE / "_experiments"))


def claim_run_dir(path: str) -> str:
    """``${stylexfer.claim:PATH}``: the run (or sweep) folder, created exclusively (:func:`stylexfer.store.claim_dir`:
    ``PATH``, or ``PATH-1``… when another run took it in the same second). Cached, so that Hydra, which reads the
    key several times (and hands it to every job of a sweep), gets one folder. A folder that cannot be created
    ends the command in one line naming it."""
    try:
        return str(claim_dir(path))
    except OSError as e:
        print(f"error: cannot create the run folder: {os_error_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None


CONFIG_DIR = config_dir()
register_configs()
OmegaConf.register_new_resolver("stylexfer.experiments", experiments_dir, replace=True)
OmegaConf.register_new_resolver("stylexfer.n_jobs", n_jobs, replace=True)
OmegaConf.register_new_resolver("stylexfer.claim", claim_run_dir, replace=True, use_cache=True)


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's own bookkeeping (nothing half-written), and
    its ``experiments/<name>/`` folder if that run was all it held."""
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.parent.parent.name == "experiments":
            with contextlib.suppress(OSError):  # not empty: other runs of that name stay
                run_dir.parent.rmdir()


def is_multirun() -> bool:
    """Whether this process runs a job of a Hydra sweep (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def swept_values(key: str) -> list[str]:
    """The values a ``-m`` sweep gives ``key`` (from the command line, read back from the sweep folder's
    ``multirun.yaml``, or a preset's ``hydra.sweeper.params``), as strings; [] outside a sweep or when the sweep
    does not sweep ``key``."""
    if not is_multirun():
        return []
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hc = HydraConfig.get()
    sweep = Path(hc.sweep.dir) / "multirun.yaml"
    task = list(OmegaConf.load(sweep).hydra.overrides.task) if sweep.is_file() else list(hc.overrides.task)
    params = OmegaConf.to_container(hc.sweeper.params, resolve=False) if hc.sweeper.get("params") else {}
    found: list[str] = []
    for ov in OverridesParser.create().parse_overrides(task + [f"{k}={v}" for k, v in params.items()]):
        if ov.key_or_group != key:
            continue
        found = (
            [str(v) for v in ov.sweep_string_iterator()] if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        )
    return found
