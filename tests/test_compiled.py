"""When the batched pass compiles the UNet (train.compile: auto = only with a warm cache;
backends/torch/compiled.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from stylexfer.backends.torch import compiled
from stylexfer.specs import TrainSpec


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(compiled, "_gpu", lambda device: "NVIDIA-H100" if device.type == "cuda" else "cpu")
    return SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16, model=SimpleNamespace(identity="m1"))


def test_auto_compiles_only_once_this_graph_is_in_the_cache(fake_gpu, compose_cfg, tmp_path):
    cfg = compose_cfg(strategy="safe")

    def spec():  # the spec of the config as it is now
        return TrainSpec.from_config(cfg)

    assert cfg.train.compile is None  # the default: auto
    assert not compiled.decide(fake_gpu, spec(), 14)  # cold: eager
    compiled.mark_warm(fake_gpu, spec(), 14)
    assert (tmp_path / "inductor" / "stylexfer-warm").is_dir()
    assert compiled.decide(fake_gpu, spec(), 14)  # warm: compiled
    assert not compiled.decide(fake_gpu, spec(), 7)  # another shape (7 styles per pass) is still cold
    cfg.lora.unet_lora_rank = 4
    assert not compiled.decide(fake_gpu, spec(), 14)  # another LoRA rank: another graph
    cfg.lora.unet_lora_rank = 32
    cfg.train.compile = False
    assert not compiled.decide(fake_gpu, spec(), 14)  # false: never
    cfg.train.compile = True
    assert compiled.decide(fake_gpu, spec(), 7)  # true: always (and that warms it)
    cpu = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32, model=SimpleNamespace(identity="m1"))
    assert not compiled.decide(cpu, spec(), 14)  # never on CPU


def test_compile_cache_is_per_torch_version_and_gpu_inside_the_store(fake_gpu, tmp_path):
    d = compiled.cache_dir(tmp_path / "store", torch.device("cuda"))
    assert d.parent == tmp_path / "store" / "torch-compile"
    assert torch.__version__ in d.name and d.name.endswith("NVIDIA-H100")


def test_compiling_does_not_change_the_adapter_key(compose_cfg, demo_root):
    """How a pass is computed (compiled or not) is scheduling: the stored adapter is reused either way."""
    from stylexfer.data import discover_styles
    from stylexfer.train import adapter_spec

    style = discover_styles(demo_root)[0]
    keys = set()
    for over in ([], ["train.compile=true"], ["train.compile=false"], ["train.compile_vae=false"]):
        keys.add(str(adapter_spec(style, compose_cfg(over, strategy="safe"), "m", None)))
    assert len(keys) == 1
    assert (
        str(adapter_spec(style, compose_cfg(["train.fp8=true"], strategy="safe"), "m", None)) not in keys
    )  # fp8 is arithmetic


def test_the_compile_mode_is_scheduling_not_arithmetic_and_a_typo_fails(compose_cfg, demo_root):
    """train.compile_mode changes how the UNet runs, not what it computes: the adapter key ignores it, the
    warm-cache marker does not (another mode is another compiled graph); an unknown mode fails naming the key."""
    from types import SimpleNamespace

    from stylexfer.config import validate
    from stylexfer.data import discover_styles
    from stylexfer.errors import ConfigError
    from stylexfer.train import adapter_spec

    style = discover_styles(demo_root)[0]
    a, b = compose_cfg([], strategy="safe"), compose_cfg(["train.compile_mode=reduce-overhead"], strategy="safe")
    validate(b)
    assert str(adapter_spec(style, a, "m", None)) == str(adapter_spec(style, b, "m", None))
    c = SimpleNamespace(model=SimpleNamespace(identity="m"), dtype=torch.bfloat16, device=torch.device("cpu"))
    assert compiled.graph_key(c, TrainSpec.from_config(a), 3) != compiled.graph_key(c, TrainSpec.from_config(b), 3)
    with pytest.raises(ConfigError, match="train.compile_mode"):
        validate(compose_cfg(["train.compile_mode=fastest"], strategy="safe"))


def test_the_sampling_unet_compiles_only_once_its_batch_shape_is_in_the_cache(fake_gpu):
    """sample.compile / prior.compile: auto = compile a pipeline context's UNet when the cache holds the graph
    of its first call's batch shape (model, resolution, prompts per call, dtype, torch, GPU)."""
    assert not compiled.decide_sampling(fake_gpu, None, 512, 25)  # cold: eager
    compiled.mark_sampling_warm(fake_gpu, 512, 25)
    assert compiled.decide_sampling(fake_gpu, None, 512, 25)  # warm
    assert not compiled.decide_sampling(fake_gpu, None, 512, 8)  # another batch shape is cold
    assert not compiled.decide_sampling(fake_gpu, None, 768, 25)  # another resolution too
    assert not compiled.decide_sampling(fake_gpu, False, 512, 25)  # false: never
    assert compiled.decide_sampling(fake_gpu, True, 512, 8)  # true: always
    cpu = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32, model=SimpleNamespace(identity="m1"))
    assert not compiled.decide_sampling(cpu, True, 512, 25)  # never on CPU


def test_cuda_graphs_and_compiled_sampling_are_scheduling_not_arithmetic(compose_cfg, demo_root):
    """Recording the step as a CUDA graph and compiling the sampling UNet leave the adapter, pool and sample
    keys alone (the same stored results are reused either way)."""
    from helpers import samples_spec
    from stylexfer.data import discover_styles
    from stylexfer.prior import pool_key, pool_objects, pool_spec
    from stylexfer.train import adapter_spec

    style = discover_styles(demo_root)[0]
    keys = set()
    for over in (
        [],
        ["train.cuda_graphs=true"],
        ["train.cuda_graphs=false"],
        ["sample.compile=true"],
        ["prior.compile=false"],
    ):
        cfg = compose_cfg(over, strategy="safe")
        pool = pool_key(pool_spec(pool_objects([style], style, cfg.prior.mode), cfg.prior, "m", 512, "torch"))
        keys.add(str((adapter_spec(style, cfg, "m", pool), samples_spec(style, cfg, "a", "m"), pool)))
    assert len(keys) == 1


def test_the_step_is_recorded_as_a_cuda_graph_on_cuda_unless_told_otherwise(compose_cfg, caplog):
    from stylexfer.backends.torch import graphed

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    cfg = compose_cfg(strategy="safe")
    assert cfg.train.cuda_graphs is None and graphed.wanted(TrainSpec.from_config(cfg), cuda)  # auto: on CUDA
    assert not graphed.wanted(TrainSpec.from_config(cfg), cpu)
    assert not graphed.wanted(TrainSpec.from_config(compose_cfg(["train.cuda_graphs=false"], strategy="safe")), cuda)
    assert not graphed.wanted(TrainSpec.from_config(compose_cfg(["train.cuda_graphs=true"], strategy="safe")), cpu)
    own = compose_cfg(["train.cuda_graphs=true", "train.compile_mode=reduce-overhead"], strategy="safe")
    assert not graphed.wanted(TrainSpec.from_config(own), cuda)  # torch.compile records the UNet's graphs itself
    assert "train.compile_mode=reduce-overhead" in caplog.text
    with pytest.raises(Exception, match="cuda_graph"):
        compose_cfg(["train.cuda_graph=true"], strategy="safe")  # a typo fails at once
