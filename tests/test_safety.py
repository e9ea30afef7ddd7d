"""Safe loading: weights are safetensors, state is JSON; nothing is unpickled, no remote code runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stylexfer.errors import ModelNotFoundError
from stylexfer.models import resolve_model

PACKAGE = Path(__file__).resolve().parent.parent / "stylexfer"


def test_no_pickle_loading_or_remote_code_in_the_package():
    """Runs read safetensors only. The one exception is the explicit converter of the upstream LPIPS/FID
    pickles (python -m stylexfer.tools.convert_weights), whose single load uses PyTorch's restricted unpickler."""
    pattern = re.compile(
        r"torch\.load\(|pickle\.load|import pickle|trust_remote_code\s*=\s*True|weights_only\s*=\s*False"
    )
    hits = [
        (p.name, line) for p in PACKAGE.rglob("*.py") for line in p.read_text().splitlines() if pattern.search(line)
    ]
    code = [(f, l) for f, l in hits if not l.lstrip().startswith(("#", "(", "This", "``"))]
    assert [f for f, _ in code] == ["convert_weights.py"], code
    assert "weights_only=True" in code[0][1]


def test_a_model_folder_with_only_pickle_weights_is_refused(tiny_dir, tmp_path, cache_dir):
    bad = tmp_path / "pickled"
    shutil.copytree(tiny_dir, bad)
    for f in (bad / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    mc = OmegaConf.create({"path": str(bad), "revision": None, "variant": None, "local_files_only": True})
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(mc, cache_dir)
    assert (
        str(e.value)
        == f"model.path={bad}: unet/ has only pickle weights (.bin/.ckpt); stylexfer loads safetensors only"
    )


def test_a_folder_that_is_not_a_diffusers_model_is_named(tmp_path, cache_dir):
    (tmp_path / "m" / "unet").mkdir(parents=True)
    mc = OmegaConf.create({"path": str(tmp_path / "m"), "revision": None, "variant": None, "local_files_only": True})
    with pytest.raises(ModelNotFoundError, match=r"model\.path=.*/m: not a diffusers folder \(vae/ missing\)"):
        resolve_model(mc, cache_dir)
