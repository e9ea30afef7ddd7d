"""GPU slots for sweep jobs (the lock logic runs on the CPU), and a GPU smoke run (skipped without CUDA)."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from stylexfer.devices import claim_gpu, job_device
from stylexfer.specs import TrainSpec


def test_concurrent_jobs_get_different_gpus_and_wait_for_a_free_one(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEXFER_GPU_LOCKS", str(tmp_path))
    got, order = [], []
    release = threading.Event()

    def job(name):
        with claim_gpu(count=2, poll=0.05) as i:
            got.append(i)
            order.append((name, "start", time.monotonic()))
            if name != "third":
                release.wait(5)
            order.append((name, "end", time.monotonic()))

    a, b = threading.Thread(target=job, args=("first",)), threading.Thread(target=job, args=("second",))
    a.start(), b.start()
    time.sleep(0.3)
    assert sorted(got) == [0, 1]  # two jobs, two different GPUs
    c = threading.Thread(target=job, args=("third",))
    c.start()
    time.sleep(0.3)
    assert len(got) == 2  # the third waits: both GPUs are held
    release.set()
    for t in (a, b, c):
        t.join(5)
    assert len(got) == 3 and got[2] in (0, 1)
    third_start = next(t for n, e, t in order if n == "third" and e == "start")
    first_end = min(t for n, e, t in order if n != "third" and e == "end")
    assert third_start >= first_end


def test_explicit_device_is_left_alone():
    with job_device("cpu") as d:
        assert d == "cpu"


@pytest.fixture
def gpu_components(tiny_dir, cache_dir):
    """The tiny model loaded on the GPU in the default dtype (bf16), as a run loads it."""
    from omegaconf import OmegaConf

    from stylexfer.backends.torch.models import load_components
    from stylexfer.models import resolve_model

    mc = OmegaConf.create(
        {
            "path": str(tiny_dir),
            "revision": None,
            "variant": None,
            "local_files_only": True,
            "device": "cuda",
            "dtype": "auto",
        }
    )
    return load_components(resolve_model(mc, cache_dir), mc)


@pytest.fixture
def gpu_backend(gpu_components, cache_dir):
    from stylexfer.backends.torch import TorchBackend

    return TorchBackend.from_components(gpu_components, cache_dir)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_and_sampling_on_the_gpu_in_bf16(demo_root, gpu_components, gpu_backend, tmp_path):
    from helpers import compose, make_samples
    from stylexfer.data import discover_styles
    from stylexfer.train import adapter_spec, train_style

    c = gpu_components
    assert c.dtype == torch.bfloat16 and c.device.type == "cuda"
    (style,) = discover_styles(demo_root, styles=["00"], max_objects=2)
    cfg = compose(["prior=none", "train.steps=20", "model.device=cuda", "scheduler.steps=5"])
    res = train_style(gpu_backend, style, None, cfg, adapter_spec(style, cfg, "gpu", None), tmp_path)
    assert len(res.losses) == 20 and all(math.isfinite(x) for x in res.losses)
    folder, recs, reused = make_samples(gpu_backend, style, res, cfg, "gpu", tmp_path)
    assert not reused and len(recs) == 2
    assert all((folder / "images" / r.file.split("/", 2)[-1]).exists() for r in recs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_training_with_the_compiled_vae_encoder_on_the_gpu(demo_root, gpu_components, tmp_path):
    from helpers import compose
    from stylexfer.backends.torch.trainer import train_styles
    from stylexfer.data import discover_styles

    c = gpu_components
    plain = c.vae.encoder
    styles = discover_styles(demo_root, styles=["00", "01"], max_objects=2)
    losses = {}
    for on in (True, False):
        cfg = compose(
            [
                "prior=none",
                "augmentation=crop",
                "train.steps=6",
                "model.device=cuda",
                f"train.compile_vae={str(on).lower()}",
            ]
        )
        done = train_styles(
            c, styles, [None, None], TrainSpec.from_config(cfg), None, [tmp_path / f"{on}" / s.id for s in styles]
        )
        got, failed = done.losses, done.failed
        assert not failed and c.vae.encoder is plain  # put back after training
        losses[on] = got
        for s in styles:
            assert (tmp_path / f"{on}" / s.id / "pytorch_lora_weights.safetensors").exists()
    for s in styles:  # the same draws through a compiled and an eager encoder: close, not bit-equal
        assert all(math.isfinite(x) for x in losses[True][s.id])
        assert losses[True][s.id] == pytest.approx(losses[False][s.id], rel=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_lora_matmuls_and_batching_stay_within_bf16_noise_on_the_gpu(
    demo_root, gpu_components, gpu_backend, tmp_path
):
    """On CPU in float32 batched equals one-at-a-time to 2e-5 (test_batched.py). In bf16 on a GPU, kernels
    differ with the batch size, so they agree only to bf16 noise; bf16 LoRA matmuls add about as much.
    Observed on H100s after 8 steps at lr 1e-3: losses within 0.08%, weights 2-6% (bf16 vs float32 matmuls)
    and 7% (one style vs batched; Adam's first steps are nearly sign(gradient), so weights show noise more
    than losses do). The bounds catch real faults: a wrong slot or scale moves weights by ~100%."""
    from safetensors.torch import load_file

    from helpers import compose
    from stylexfer.backends import ADAPTER_FILE
    from stylexfer.backends.torch.trainer import train_styles
    from stylexfer.data import discover_styles
    from stylexfer.train import adapter_spec, train_style

    c = gpu_components
    styles = discover_styles(demo_root, styles=["00", "01"], max_objects=2)
    weights, losses = {}, {}
    for mode in ("model", "float32"):
        cfg = compose(
            [
                "prior=none",
                "augmentation=none",
                "train.steps=8",
                "train.lr=1e-3",
                "model.device=cuda",
                f"train.lora_compute={mode}",
            ]
        )
        done = train_styles(
            c, styles, [None, None], TrainSpec.from_config(cfg), None, [tmp_path / mode / s.id for s in styles]
        )
        losses[mode], failed = done.losses, done.failed
        assert not failed
        weights[mode] = {s.id: load_file(str(tmp_path / mode / s.id / ADAPTER_FILE)) for s in styles}
    one = train_style(gpu_backend, styles[1], None, cfg, adapter_spec(styles[1], cfg, "gpu", None), tmp_path / "one")
    weights["one"] = {styles[1].id: load_file(str(one.dir / ADAPTER_FILE))}  # float32 matmuls, one style at a time
    losses["one"] = {styles[1].id: one.losses}

    def rel(a, b):
        return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in b)

    s1 = styles[1].id
    print(
        "relative weight differences: bf16 vs float32 matmuls",
        {s.id: round(rel(weights["model"][s.id], weights["float32"][s.id]), 4) for s in styles},
        "; one style vs batched",
        round(rel(weights["one"][s1], weights["float32"][s1]), 4),
        "; largest loss difference",
        max(
            abs(x / y - 1)
            for m in ("model", "one")
            for sid in losses[m]
            for x, y in zip(losses[m][sid], losses["float32"][sid])
        ),
    )
    for s in styles:
        assert losses["model"][s.id] == pytest.approx(losses["float32"][s.id], rel=0.01)
        assert rel(weights["model"][s.id], weights["float32"][s.id]) < 0.15
    assert losses["one"][s1] == pytest.approx(losses["float32"][s1], rel=0.01)
    assert rel(weights["one"][s1], weights["float32"][s1]) < 0.15


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_training_with_the_compiled_unet_on_the_gpu(demo_root, gpu_components, tmp_path):
    """``train.compile=true`` traces the per-style LoRA layer (routing, bf16 matmuls, folded add) with dynamo."""
    from helpers import compose
    from stylexfer.backends.torch.trainer import train_styles
    from stylexfer.data import discover_styles

    c = gpu_components
    styles = discover_styles(demo_root, styles=["00", "01"], max_objects=2)
    losses = {}
    for on in (True, False):
        cfg = compose(
            [
                "prior=none",
                "augmentation=none",
                "train.steps=4",
                "model.device=cuda",
                f"train.compile={str(on).lower()}",
            ]
        )
        done = train_styles(
            c, styles, [None, None], TrainSpec.from_config(cfg), None, [tmp_path / f"{on}" / s.id for s in styles]
        )
        losses[on], failed = done.losses, done.failed
        assert not failed
    for s in styles:
        assert losses[True][s.id] == pytest.approx(losses[False][s.id], rel=0.02)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_world_metrics_on_the_gpu_equal_the_cpu(demo_root):
    """eval.suite=world on CUDA (a sweep job's device): every metric as on the CPU, within float32 noise."""
    from PIL import Image

    from stylexfer.world.metrics import WORLD_METRICS, WorldJudge, style_attribution

    refs = [Image.open(p).convert("RGB") for p in sorted((demo_root / "00" / "images").glob("*.png"))]
    gen = [Image.open(p).convert("RGB") for p in sorted((demo_root / "01" / "images").glob("*.png"))][:6]
    objects = [p.stem for p in sorted((demo_root / "01" / "images").glob("*.png"))][:6]
    cpu, gpu = WorldJudge("cpu"), WorldJudge("cuda")
    for name, fn in {**WORLD_METRICS, "attribution": style_attribution}.items():
        a, b = fn(cpu, gen, refs, objects=objects), fn(gpu, gen, refs, objects=objects)
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (name, a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_batched_step_recorded_as_a_cuda_graph_trains_as_the_eager_step(
    demo_root, gpu_components, tmp_path, caplog
):
    """``train.cuda_graphs``: after 3 eager steps the whole step (forward, backward, per-slot clipping, the
    capturable fused AdamW with its LR tensor) is replayed as one graph. Same kernels, so the same losses and
    weights up to the GPU's run-to-run noise (atomics in attention's backward); a warmup schedule checks that
    the replayed optimizer reads the LR the schedule fills in."""
    import logging

    from safetensors.torch import load_file

    from helpers import compose
    from stylexfer.backends import ADAPTER_FILE
    from stylexfer.backends.torch.trainer import train_styles
    from stylexfer.data import discover_styles

    c = gpu_components
    styles = discover_styles(demo_root, styles=["00", "01"], max_objects=2)
    losses, weights = {}, {}
    for on in (True, False):
        cfg = compose(
            [
                "prior=none",
                "augmentation=none",
                "train.steps=10",
                "train.lr=1e-3",
                "model.device=cuda",
                "train.lr_scheduler=linear",
                "train.lr_warmup_steps=6",
                f"train.cuda_graphs={str(on).lower()}",
            ]
        )
        caplog.clear()
        with caplog.at_level(logging.INFO):
            done = train_styles(
                c, styles, [None, None], TrainSpec.from_config(cfg), None, [tmp_path / f"{on}" / s.id for s in styles]
            )
            losses[on], failed = done.losses, done.failed
        assert not failed
        assert any("recorded as a CUDA graph" in r.message for r in caplog.records) == on
        assert not any("graph failed" in r.message for r in caplog.records)
        weights[on] = {s.id: load_file(str(tmp_path / f"{on}" / s.id / ADAPTER_FILE)) for s in styles}
    for s in styles:
        assert len(losses[True][s.id]) == 10
        assert losses[True][s.id] == pytest.approx(losses[False][s.id], rel=0.01)
        a, b = weights[True][s.id], weights[False][s.id]
        assert max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in b) < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_with_the_compiled_unet_matches_eager_and_warms_the_cache(
    demo_root, gpu_components, gpu_backend, tmp_path, monkeypatch
):
    """``sample.compile=true``: the fused-LoRA pipeline runs a compiled UNet for its batch shape (a smaller
    last chunk runs eagerly), the images equal the eager ones up to float rounding, the base weights come
    back exactly, and the cache marker makes auto compile next time."""
    import numpy as np

    from stylexfer.backends.torch import compiled

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    c = gpu_components
    c.extra.pop("sampling_unet", None)
    before = {k: v.clone() for k, v in c.unet.state_dict().items()}
    prompts, seeds = ["an image of cat in style_00", "an image of boat in style_00", "an image of cup"], [1, 2, 3]
    images = {}
    for on in (False, True):
        with gpu_backend.generate(sampler="ddim", steps=6, guidance_scale=7.5, resolution=64, compile=on) as make:
            images[on] = make(prompts[:2], seeds[:2]) + make(prompts[2:], seeds[2:])
    assert "sampling_unet" in c.extra
    assert compiled.decide_sampling(c, None, 64, 2) and not compiled.decide_sampling(c, None, 64, 1)
    for a, b in zip(images[False], images[True]):
        d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert d.mean() <= 1.5 and d.max() <= 24  # bf16 rounding of fused kernels, not another image
    assert all(torch.equal(before[k], v) for k, v in c.unet.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_style_injection_under_the_compiled_unet_compiles_the_same_graphs_for_4_steps_as_for_8(
    demo_root, gpu_components, gpu_backend, tmp_path, monkeypatch
):
    """``inject=styleid`` with ``sample.compile=true``: the injecting processors are traced with the UNet and the
    step reaches them as a tensor, so how many graphs are compiled does not grow with the sampling steps (before,
    every step was a graph of its own, up to dynamo's limit); with ``share=0.5`` the injected and the plain
    attention are chosen by the step inside the graph. The images equal the eager ones up to bf16 rounding, and
    the graph's warm marker is its own (injection's variant), not plain sampling's."""
    import numpy as np
    from torch._dynamo.utils import counters

    from helpers import compose
    from stylexfer.backends.torch import compiled
    from stylexfer.data import average_image, discover_styles
    from stylexfer.sample import injection_request, samples_store_spec
    from stylexfer.specs import SampleSpec
    from stylexfer.store import stable_hash

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    c = gpu_components
    (style,) = discover_styles(demo_root, styles=["01"])
    init = average_image(style.images, 64)
    prompts, seeds = [f"an image of {o} in style_01" for o in ("cat", "boat", "cup")], [1, 2, 3]
    graphs, images = {}, {}
    for steps, on in ((4, True), (8, False), (8, True)):
        torch._dynamo.reset()
        c.extra.pop("sampling_unet", None)
        cfg = compose(["model.resolution=64", f"scheduler.steps={steps}", "inject=styleid", "inject.share=0.5"])
        sp = SampleSpec.from_config(cfg)
        request, refs = injection_request(style, sp, samples_store_spec(style, sp, None, "gpu"), tmp_path, init)
        kw = dict(sampler="ddim", steps=steps, guidance_scale=7.5, resolution=64, init_image=init, strength=0.9)
        before = counters["stats"]["unique_graphs"]
        with gpu_backend.generate(**kw, compile=on, inject=request) as make:
            images[steps, on] = make(prompts, seeds, refs[:3])
        graphs[steps, on] = counters["stats"]["unique_graphs"] - before
    print(f"graphs compiled (steps, compiled): {graphs}")
    assert graphs[8, False] == 0 and 0 < graphs[8, True] == graphs[4, True]
    variant = "inject:" + stable_hash(request["spec"])
    assert compiled.decide_sampling(c, None, 64, 6, variant)  # warm: 3 prompts and their twins per call
    assert not compiled.decide_sampling(c, None, 64, 6)  # plain sampling's graph is another one
    for a, b in zip(images[8, False], images[8, True]):
        d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        print(f"eager vs compiled: mean {d.mean():.2f}, max {d.max()}")
        assert d.mean() <= 2.5 and d.max() <= 48  # bf16 rounding of fused kernels, not another image
