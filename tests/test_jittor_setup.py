"""The Jittor backend's setup, which needs no jittor: the one-line refusals (jittor or its archives missing,
numpy 2, a CUDA 13 toolkit), the device ``auto`` picks, and the config group."""

from __future__ import annotations

import importlib.util
import stat

import numpy as np
import pytest

from helpers import compose


def test_missing_jittor_or_numpy2_is_one_line(monkeypatch):
    from stylexfer.backends.jittor import runtime
    from stylexfer.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "jittor_offline" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r'jittor_offline is not installed; pip install -e "\.\[jittor\]"'):
        runtime.check_installed()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(np, "__version__", "2.1.0")
    with pytest.raises(ConfigError, match=r"needs numpy<2 \(found 2\.1\.0\)"):
        runtime.check_installed()


def _fake_nvcc(tmp_path, release: str):
    nvcc = tmp_path / f"nvcc-{release}"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return str(nvcc)


def test_a_cuda13_toolkit_is_refused_in_one_line_and_auto_falls_back_to_the_cpu(tmp_path, monkeypatch, caplog):
    import torch

    from stylexfer.backends.jittor import runtime
    from stylexfer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"jittor 1\.3\.11 does not run on CUDA 13\.0 .*model\.device=cpu"):
        runtime._check_cuda_toolkit(_fake_nvcc(tmp_path, "13.0"))
    runtime._check_cuda_toolkit(_fake_nvcc(tmp_path, "12.4"))  # supported: no error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("nvcc_path", _fake_nvcc(tmp_path, "13.0"))
    assert runtime.pick_device("auto") == "cpu"
    assert "computing on the CPU" in caplog.text
    monkeypatch.setenv("nvcc_path", _fake_nvcc(tmp_path, "12.4"))
    assert runtime.pick_device("auto") == "cuda"
    assert runtime.pick_device("cpu") == "cpu"


def test_the_backend_group_composes_and_the_jittor_backend_trains_one_style_per_pass():
    from stylexfer.backends import BACKENDS, backend_names
    from stylexfer.backends.jittor import JittorBackend

    assert backend_names() == ["jittor", "torch"]
    assert BACKENDS["jittor"][2] == "jittor"  # the extra a missing jittor names
    cfg = compose(["backend=jittor"], strategy="safe")
    assert cfg.backend.name == "jittor"
    assert JittorBackend.trains_together is False
