"""Shared fixtures: one stage store per test session (the tiny model is built once), no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session's stage store; STYLEXFER_CACHE points at it so CLI subprocesses share it."""
    path = Path(os.environ.get("STYLEXFER_TEST_CACHE") or tmp_path_factory.mktemp("store"))
    os.environ["STYLEXFER_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(cache_dir) -> Path:
    from stylexfer.embedded import ensure_tiny_model

    return ensure_tiny_model(cache_dir)


@pytest.fixture(scope="session")
def demo_root(cache_dir) -> Path:
    from stylexfer.embedded import ensure_demo_data

    return ensure_demo_data(cache_dir)


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


@pytest.fixture
def compose_cfg():
    return compose


@pytest.fixture(scope="session")
def components(tiny_dir, cache_dir):
    """The tiny model's components on CPU in float32 (shared; tests must leave no adapter behind)."""
    from omegaconf import OmegaConf

    from stylexfer.models import load_components, resolve_model

    mc = OmegaConf.create({"path": str(tiny_dir), "revision": None, "variant": None, "local_files_only": True,
                           "device": "cpu", "dtype": "float32"})
    return load_components(resolve_model(mc, cache_dir), mc)


def run_cli(args, cwd: Path, timeout: int = 900, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "stylexfer", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
