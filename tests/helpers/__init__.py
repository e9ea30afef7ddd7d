"""Helpers the tests import (``from helpers import compose``): composing the real config, running the CLI,
the metric overrides of the tiny metric models. Fixtures stay in ``conftest.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CONF = REPO / "conf"


def compose(overrides=(), strategy: str | None = None, hydra: bool = False):
    """Compose the real config (as the CLI would) without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import stylexfer.main  # noqa: F401 - registers the schema and the resolvers, as the CLI does

    GlobalHydra.instance().clear()
    ov = list(overrides) + ([f"+strategy={strategy}"] if strategy else [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=ov, return_hydra_config=hydra)


def run_cli(args, cwd: Path, timeout: int = 900, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "stylexfer", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def metric_overrides(models: dict) -> list[str]:
    return [f"eval.models.{k}={v}" for k, v in models.items()]


def train_one(components, style, cfg, pool=None, export_to: Path | None = None):
    """One style trained by the PyTorch backend's trainer (a pass of one slot): its losses and the trained layers
    (None for peft's kinds), the model left as it was."""
    from stylexfer.backends.torch.trainer import train_styles
    from stylexfer.specs import TrainSpec

    done = train_styles(components, [style], [pool], TrainSpec.from_config(cfg), export_dirs=[export_to])
    assert not done.failed, done.failed
    return done.losses[style.id], done.layers


def samples_spec(style, cfg, adapter_key, identity: str) -> dict:
    """The samples' store spec of ``style`` under ``cfg``, from the SampleSpec a run builds."""
    from stylexfer.sample import samples_store_spec
    from stylexfer.specs import SampleSpec

    return samples_store_spec(style, SampleSpec.from_config(cfg), adapter_key, identity)


def make_samples(backend, style, adapter, cfg, identity: str, cache: Path):
    """The sampling stage as a run calls it for ``style`` with ``adapter`` (a training result, or None): the
    stored folder, the records and whether they were reused."""
    from stylexfer.sample import ensure_samples, samples_store_spec
    from stylexfer.specs import SampleSpec

    sp = SampleSpec.from_config(cfg)
    key, folder = (adapter.key, adapter.dir) if adapter is not None else (None, None)
    return ensure_samples(backend, style, folder, sp, samples_store_spec(style, sp, key, identity), cache)
