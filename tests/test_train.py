"""Training stage on the tiny model (CPU, float32): the loss goes down, the target follows the
scheduler config, adapters save/load through stock diffusers, and a style's adapter is reproducible."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from helpers import compose, train_one
from stylexfer.backends import ADAPTER_FILE
from stylexfer.backends.torch.models import encode_prompts, load_components
from stylexfer.backends.torch.multilora import reinstate, restore
from stylexfer.backends.torch.tensors import to_tensor
from stylexfer.backends.torch.train import denoising_loss
from stylexfer.data import discover_styles, fit_square
from stylexfer.models import resolve_model
from stylexfer.specs import TrainSpec
from stylexfer.train import adapter_spec, train_style

FAST = ["prior=none", "augmentation=none", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def style(demo_root):
    return discover_styles(demo_root, styles=["00"])[0]


def fixed_eval_loss(components, style, draws: int = 4) -> float:
    """Denoising loss on the style's images with fixed noise and timesteps (the training objective)."""
    gen = torch.Generator().manual_seed(1234)
    px = torch.stack([to_tensor(fit_square(im, 64)) for im in style.images])
    cond = encode_prompts(components, [f"an image of {o} in style_00" for o in style.image_objects])
    with torch.no_grad():
        return float(torch.stack([denoising_loss(components, px, cond, gen) for _ in range(draws)]).mean())


@contextlib.contextmanager
def trained(components, ad):
    """The one-style loop's trained LoRA layers put back into the model for the block."""
    reinstate(components.unet, ad.unet)
    reinstate(components.text_encoder, ad.text_encoder)
    ad.router.groups, ad.router.all_slots = torch.zeros(1, dtype=torch.long), True
    try:
        yield
    finally:
        ad.router.groups = None
        restore(components.unet, ad.unet)
        restore(components.text_encoder, ad.text_encoder)


def no_lora_left(components) -> bool:
    return not any(
        "Lora" in type(m).__name__ for part in (components.unet, components.text_encoder) for m in part.modules()
    )


def unet_out(components, cond, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        return components.unet(x, torch.tensor([10, 500]), cond.expand(2, -1, -1)).sample


def test_training_lowers_the_denoising_loss_on_the_style_images(components, style):
    before = fixed_eval_loss(components, style)
    cfg = compose(FAST + ["train.steps=80"])
    losses, ad = train_one(components, style, cfg=cfg)
    assert no_lora_left(components) and fixed_eval_loss(components, style) == pytest.approx(before, rel=1e-6)
    with trained(components, ad):
        after = fixed_eval_loss(components, style)
    assert len(losses) == 80 and all(np.isfinite(losses))
    assert after < 0.95 * before, (before, after)


def test_loss_target_follows_the_scheduler_prediction_type(tiny_dir, tmp_path, cache_dir):
    from omegaconf import OmegaConf

    vdir = tmp_path / "tiny_v"
    shutil.copytree(tiny_dir, vdir)
    sc = vdir / "scheduler" / "scheduler_config.json"
    sc.write_text(json.dumps(dict(json.loads(sc.read_text()), prediction_type="v_prediction")))
    mc = OmegaConf.create(
        {
            "path": str(vdir),
            "revision": None,
            "variant": None,
            "local_files_only": True,
            "device": "cpu",
            "dtype": "float32",
        }
    )
    resolved = resolve_model(mc, cache_dir)
    assert resolved.prediction_type == "v_prediction"
    c = load_components(resolved, mc)
    px = torch.rand(2, 3, 64, 64) * 2 - 1
    cond = encode_prompts(c, ["a", "b"])
    got = denoising_loss(c, px, cond, torch.Generator().manual_seed(7))
    # the same draws, by hand
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        d = c.vae.encode(px).latent_dist
        lat = (d.mean + d.std * torch.randn(d.mean.shape, generator=g)) * c.vae.config.scaling_factor
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        pred = c.unet(c.noise_scheduler.add_noise(lat, noise, t), t, cond).sample
        v = c.noise_scheduler.get_velocity(lat, noise, t)
        want_v = ((pred - v) ** 2).mean(dim=(1, 2, 3))
        want_eps = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got, want_v)
    assert not torch.allclose(got, want_eps)


def test_adapter_with_text_encoder_lora_loads_through_stock_diffusers(components, style, tiny_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    cfg = compose(
        FAST
        + [
            "train.steps=6",
            "train.lr=5e-2",
            "lora.unet_lora_rank=4",
            "lora.unet_alpha=8",
            "lora.text_encoder_lora_rank=2",
            "lora.text_encoder_alpha=1",
        ]
    )
    prompt = ["an image of aquarium in style_00"]
    _, ad = train_one(components, style, cfg=cfg, export_to=tmp_path)
    with trained(components, ad):
        trained_emb = encode_prompts(components, prompt)
        trained_out = unet_out(components, trained_emb)

    f = tmp_path / ADAPTER_FILE
    with safe_open(str(f), "pt") as sf:
        keys = list(sf.keys())
        meta = sf.metadata()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    assert any("q_proj" in k for k in keys if k.startswith("text_encoder."))
    assert any("to_out" in k for k in keys if k.startswith("unet."))
    assert "lora_adapter_metadata" in json.dumps(meta)

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_dir), safety_checker=None, requires_safety_checker=False)
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        base_emb = pipe.text_encoder(ids)[0]
    pipe.load_lora_weights(str(tmp_path))
    with torch.no_grad():
        loaded_emb = pipe.text_encoder(ids)[0]
    assert (loaded_emb - base_emb).abs().max() > 1e-3  # the text-encoder LoRA changes the embeddings ...
    torch.testing.assert_close(loaded_emb, trained_emb, atol=1e-5, rtol=1e-4)  # ... exactly as trained
    torch.testing.assert_close(unet_out(pipe, loaded_emb), trained_out, atol=1e-5, rtol=1e-4)  # alpha != rank kept


def test_a_style_adapter_is_reproducible_and_independent_of_other_styles(backend, demo_root, tmp_path):
    s00, s01 = discover_styles(demo_root, styles=["00", "01"])
    cfg = compose(["prior=none", "train.steps=5", "lora.unet_lora_rank=4"])
    spec = adapter_spec(s00, cfg, "tiny", None)
    a = train_style(backend, s00, None, cfg, spec, tmp_path / "a")
    train_style(backend, s01, None, cfg, adapter_spec(s01, cfg, "tiny", None), tmp_path / "b")
    b = train_style(backend, s00, None, cfg, spec, tmp_path / "b")  # after another style
    assert not a.reused and not b.reused and a.key == b.key
    with safe_open(str(a.dir / ADAPTER_FILE), "pt") as fa, safe_open(str(b.dir / ADAPTER_FILE), "pt") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        for k in fa.keys():
            assert torch.equal(fa.get_tensor(k), fb.get_tensor(k)), k
    again = train_style(backend, s00, None, cfg, spec, tmp_path / "a")
    assert again.reused
    record = json.loads((a.dir / "train.json").read_text())
    assert len(record["losses"]) == 5 and record["spec"] == json.loads(json.dumps(spec))


def test_adapter_key_ignores_sampling_and_scoring_settings(style):
    base = adapter_spec(style, compose(), "m", "p")
    for ov in [
        "init.strength=0.8",
        "scheduler=dpmpp",
        "scheduler.steps=10",
        "sample.seed=3",
        "eval.fid_dims=2048",
        "init=noise",
        "data.prompt='{object}'",
    ]:
        assert adapter_spec(style, compose([ov]), "m", "p") == base, ov
    for ov in [
        "lora.unet_lora_rank=4",
        "train.steps=10",
        "prior.weight=0.5",
        "augmentation=crop_flip",
        "data.instance_prompt='{object}'",
        "train.seed=1",
        "train.snr_gamma=5",
        "train.noise_offset=0.05",
        "lora.kind=dora",
    ]:
        assert adapter_spec(style, compose([ov]), "m", "p") != base, ov


def test_nan_loss_stops_the_style_with_the_step(components, style, monkeypatch, tmp_path):
    """A pass of one style whose loss turns NaN: the backend says which style and step, writes no adapter and
    leaves the model as it was (the framework turns the line into a TrainingDiverged)."""
    from stylexfer.backends.torch import TorchBackend
    from stylexfer.backends.torch import trainer as trainer_mod

    real = trainer_mod.style_losses
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(trainer_mod, "style_losses", poisoned)
    out = TorchBackend.from_components(components, tmp_path / "cache").train(
        [style], [None], TrainSpec.from_config(compose(FAST + ["train.steps=10"])), None, [tmp_path / "adapter"]
    )
    assert out.failed == {"00": "style 00: loss is nan at step 3"} and len(out.losses["00"]) == 2
    assert calls["n"] == 3  # the style stopped with the step
    assert not (tmp_path / "adapter").exists() and no_lora_left(components)


def test_a_checkpoint_keeps_a_tensor_learning_rate_a_tensor(tmp_path):
    """A CUDA-graph pass reads the LR from a tensor the schedule fills: a checkpoint stores its value as a number
    (JSON) and resuming fills the same tensor object, so the recorded optimizer step keeps reading it."""
    from diffusers.optimization import get_scheduler

    from stylexfer.backends.torch.train import load_checkpoint, save_checkpoint
    from stylexfer.streams import Stream

    def setup():
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.AdamW([{"params": [p], "lr": torch.tensor(1e-3)}])
        sched = get_scheduler("linear", opt, num_warmup_steps=4, num_training_steps=10)
        return p, opt, sched

    p, opt, sched = setup()
    for _ in range(3):
        p.grad = torch.full_like(p, 0.5)
        opt.step()
        sched.step()
    lr_then = float(opt.param_groups[0]["lr"])
    assert lr_then == pytest.approx(1e-3 * 3 / 4)
    save_checkpoint(tmp_path, 3, [p], opt, [Stream(0, "00")], [None], [])
    q, opt2, sched2 = setup()
    lr_tensor = opt2.param_groups[0]["lr"]
    start, _ = load_checkpoint(tmp_path, [q], opt2, [Stream(0, "00")], [None])
    assert start == 3 and torch.equal(q, p)
    assert opt2.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(lr_then)
    for _ in range(start):
        sched2.step()
    assert opt2.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(lr_then)
