"""The Jittor backend against the PyTorch backend, on the tiny model in float32 on the CPU: the same weights and
inputs give the same network outputs; a few training steps from the same start and the same random draws
give the same LoRA weights; adapters cross over (a Jittor adapter samples on torch and loads in stock
diffusers, a torch adapter samples on Jittor, with the same images); a killed Jittor run resumes to the same
result. Skipped, with the reason, where jittor is not installed (``pip install -e ".[jittor]"``).

Observed on 2 CPUs (jittor 1.3.11, torch 2.14): network outputs within 5e-6 (max abs), losses within 2e-6, the
adapters within 2e-5 after five steps that moved them by 5e-3, images identical to the last uint8 level.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_resume import assert_same, result_of

from helpers import compose, run_cli, train_one
from stylexfer.specs import TrainSpec

ADAPTER = "pytorch_lora_weights.safetensors"


def _why_not() -> str | None:
    if importlib.util.find_spec("jittor") is None:
        return 'jittor is not installed (pip install -e ".[jittor]")'
    if int(np.__version__.split(".")[0]) >= 2:
        return f"jittor 1.3.11 needs numpy<2 (found {np.__version__})"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@pytest.fixture(scope="module")
def jc(tiny_dir, cache_dir):
    from stylexfer.backends.jittor import runtime

    runtime.jittor(cache_dir, "cpu")
    from stylexfer.backends.jittor.models import load_components

    return load_components(tiny_dir)


@pytest.fixture(scope="module")
def data(demo_root):
    from stylexfer.data import discover_styles
    from stylexfer.prior import ClassPool

    styles = discover_styles(demo_root)
    other = styles[1]  # another style's images stand in for a class pool (prior preservation's code path)
    pool = ClassPool(
        key="test", dir=Path("."), prompts=[f"an image of {o}" for o in other.image_objects], images=other.images
    )
    return styles[0], pool


def test_networks_give_the_same_outputs_as_torch(components, jc):
    from stylexfer.backends.jittor.layers import jt
    from stylexfer.backends.jittor.models import encode_prompts

    rng = np.random.default_rng(0)
    px = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    lat = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([10, 700])
    prompts = ["an image of a cat in style_00", ""]
    with torch.no_grad():
        d = components.vae.encode(torch.from_numpy(px)).latent_dist
        ids = components.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        emb = components.text_encoder(ids.input_ids)[0]
        ref = {
            "vae mean": d.mean,
            "vae std": d.std,
            "vae decode": components.vae.decode(d.mean).sample,
            "text encoder": emb,
            "unet": components.unet(torch.from_numpy(lat), torch.from_numpy(t), emb).sample,
        }
    mean, std = jc.vae.encode(jt.array(px))
    ours = {
        "vae mean": mean,
        "vae std": std,
        "vae decode": jc.vae.decode(jt.array(d.mean.numpy())),
        "text encoder": encode_prompts(jc, prompts),
        "unet": jc.unet(jt.array(lat), jt.array(t.astype(np.int32)), jt.array(emb.numpy())),
    }
    for name, r in ref.items():
        r = r.numpy()
        o = ours[name].numpy()
        assert o.shape == r.shape, name
        assert np.abs(o - r).max() < 1e-4 * max(1.0, np.abs(r).max()), f"{name}: {np.abs(o - r).max()}"


def _torch_train(components, style, pool, overrides, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    losses, _ = train_one(components, style, pool=pool, cfg=compose(overrides), export_to=out)
    return losses


# both LoRAs (UNet and text encoder), prior preservation, random crops and flips on the latent grid, min-SNR
TRAIN = [
    "model=tiny",
    "lora=unet_te",
    "train.lr=1e-3",
    "train.checkpoint_every=0",
    "prior=shared",
    "augmentation=crop_flip",
    "train.snr_gamma=5.0",
    "train.steps=5",
]


@pytest.fixture(scope="module")
def trained(components, jc, data, tmp_path_factory):
    """The torch adapter after five steps, its seeded start, and the Jittor adapter from the same start."""
    from stylexfer.backends.jittor.train import train_style

    style, pool = data
    base = tmp_path_factory.mktemp("jittor-parity")
    _torch_train(components, style, pool, TRAIN[:-1] + ["train.steps=0"], base / "init")
    torch_losses = _torch_train(components, style, pool, TRAIN, base / "torch")
    (base / "jittor").mkdir()
    jittor_losses = train_style(
        jc, style, pool, TrainSpec.from_config(compose(TRAIN)), export_to=base / "jittor", init=base / "init" / ADAPTER
    )
    return base, torch_losses, jittor_losses


def test_training_steps_give_the_same_lora_weights(trained):
    base, torch_losses, jittor_losses = trained
    np.testing.assert_allclose(jittor_losses, torch_losses, rtol=1e-5)
    start, ref, ours = (load_file(str(base / d / ADAPTER)) for d in ("init", "torch", "jittor"))
    assert sorted(ours) == sorted(ref)
    assert any(k.startswith("text_encoder.") for k in ours) and any(k.startswith("unet.") for k in ours)
    moved = max(np.abs(ref[k] - start[k]).max() for k in ref)
    diff = max(np.abs(ours[k] - ref[k]).max() for k in ref)
    assert moved > 1e-3  # the steps trained something
    assert diff < 0.02 * moved, (diff, moved)


def _images(sampling, c, adapter, init=None):
    kw = dict(
        sampler="ddim", steps=6, guidance_scale=7.5, resolution=32, adapter_dir=adapter, init_image=init, strength=0.9
    )
    with sampling(c, **kw) as make:
        return [
            np.asarray(im, np.int16)
            for im in make(["an image of a cat in style_00", "an image of a car in style_00"], [1, 2])
        ]


@pytest.mark.parametrize("which", ["torch", "jittor"])
def test_adapters_cross_over_with_the_same_images(components, jc, trained, data, which):
    """A torch adapter sampled on Jittor and a Jittor adapter sampled on torch give the images the other backend
    gives, text-to-image and img2img from the style's average image."""
    from stylexfer.backends.jittor.sample import sampling as jittor_sampling
    from stylexfer.backends.torch.sample import sampling as torch_sampling
    from stylexfer.data import average_image

    base = trained[0]
    adapter = base / which
    for init in (None, average_image(data[0].images, 32)):
        ref = _images(torch_sampling, components, adapter, init)
        ours = _images(jittor_sampling, jc, adapter, init)
        for r, o in zip(ref, ours):
            assert np.abs(r - o).max() <= 2, np.abs(r - o).max()
        plain = _images(torch_sampling, components, None, init)
        assert any(np.abs(p - r).mean() > 0.5 for p, r in zip(plain, ref))  # the adapter changed the images


def test_a_jittor_adapter_loads_in_stock_diffusers(components, trained):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from peft.tuners.lora import LoraLayer

    base = trained[0]
    file = load_file(str(base / "jittor" / ADAPTER))
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(str(base / "jittor"), adapter_name="j")
    try:
        loaded = {
            f"{part}.{name}": m
            for part, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder))
            for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and "j" in m.lora_A
        }
        down = {
            k.rsplit(".", 3)[0]: v
            for k, v in file.items()  # "<part>.<module>.lora.down.weight" → "<part>.<module>"
            if k.endswith(("lora.down.weight", "lora_linear_layer.down.weight"))
        }
        assert set(loaded) == set(down)
        for name, m in loaded.items():
            np.testing.assert_array_equal(m.lora_A["j"].weight.detach().numpy(), down[name])
    finally:
        pipe.delete_adapters("j")


def test_other_samplers_are_refused_in_one_line(jc):
    from stylexfer.backends.jittor.sample import sampling
    from stylexfer.errors import ConfigError

    with pytest.raises(ConfigError, match="scheduler.name=euler: the jittor backend samples with ddim only"):
        with sampling(jc, sampler="euler", steps=2, guidance_scale=1.0, resolution=32):
            pass


SMALL = [
    "backend=jittor",
    "train.steps=30",
    "train.checkpoint_every=10",
    "prior=shared",
    "prior.num_class_images=4",
    "prior.batch_size=2",
    "prior.steps=3",
    "scheduler.steps=4",
    "sample.batch_size=1",
    "data.styles=[00,01]",
    "data.max_objects=2",
    "eval.metrics=[hist]",
]


@pytest.mark.slow
def test_a_killed_jittor_run_resumes_to_the_same_result(tmp_path, tiny_dir, demo_root):
    args = [f"model.path={tiny_dir}", f"data.root={demo_root}", *SMALL]
    runs = {}
    for name, kill in (("whole", None), ("killed", "train:01:20")):
        cwd = tmp_path / name
        cwd.mkdir()
        env = {"STYLEXFER_CACHE": str(cwd / "store")}
        if kill:
            res = run_cli(args, cwd, env_extra={**env, "STYLEXFER_KILL_AT": kill})
            assert res.returncode == -9, res.stderr[-2000:]
        res = run_cli(args, cwd, env_extra=env)
        assert res.returncode == 0, res.stderr[-3000:]
        if kill:
            assert "resuming training from its checkpoint at step 20" in res.stderr
            assert "style 00: adapter" in res.stderr  # trained before the kill: reused
        done = [p for p in cwd.glob("experiments/*/*") if (p / "summary.json").exists()]
        assert len(done) == 1
        summary = json.loads((done[0] / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["config"]["backend"]["name"] == "jittor"
        runs[name] = result_of(done[0])
    assert len([k for k in runs["whole"] if k.startswith("image/")]) >= 4
    assert_same(runs["killed"], runs["whole"])
