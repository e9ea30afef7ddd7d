"""What people sweep beyond the report: min-SNR-γ, offset noise and the adapter variants (DoRA, LoHa, LoKr)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from helpers import compose, train_one
from stylexfer.backends import ADAPTER_FILE
from stylexfer.backends.torch.train import draw_noise, snr_weights
from stylexfer.backends.torch.trainer import train_styles
from stylexfer.data import discover_styles
from stylexfer.specs import TrainSpec

FAST = ["prior=none", "augmentation=none", "train.steps=4", "train.lr=1e-3", "lora.unet_lora_rank=4"]


def test_min_snr_weights_follow_the_formula(components):
    sched = components.noise_scheduler
    t = torch.tensor([0, 10, 300, 999])
    ac = sched.alphas_cumprod[t].double()
    snr = ac / (1 - ac)
    assert snr_weights(sched, t, 5.0).double() == pytest.approx((torch.clamp(snr, max=5.0) / snr).tolist(), rel=1e-5)
    assert snr_weights(sched, t, 1e9).tolist() == pytest.approx([1.0] * 4, rel=1e-5)  # γ never binds: plain MSE
    w = snr_weights(sched, t, 5.0)
    assert w[0] < 0.01 and w[-1] == pytest.approx(1.0)  # low-noise steps are down-weighted, high-noise ones kept


def test_offset_noise_adds_a_per_channel_constant_and_leaves_the_streams_alone_when_off():
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    eps0, noise0, t0 = draw_noise(g(), (64, 4, 8, 8), 1000)
    eps1, noise1, t1 = draw_noise(g(), (64, 4, 8, 8), 1000, noise_offset=0.1)
    assert torch.equal(eps0, eps1) and torch.equal(t0, t1)
    offset = noise1 - noise0
    assert torch.allclose(offset, offset[:, :, :1, :1].expand_as(offset), atol=1e-6)  # constant over the image
    assert offset[:, :, 0, 0].std().item() == pytest.approx(0.1, rel=0.2)
    again = draw_noise(g(), (64, 4, 8, 8), 1000)
    assert torch.equal(again[1], noise0)


def test_timestep_bias_favours_high_or_low_noise_and_leaves_the_default_stream_as_it_was():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    shape = (20000, 4, 1, 1)
    eps0, noise0, t0 = draw_noise(g(), shape, 1000)
    gen = g()  # the default: the same draws, in the same order, as before the option existed
    assert torch.equal(torch.randn(shape, generator=gen), eps0) and torch.equal(
        torch.randn(shape, generator=gen), noise0
    )
    assert torch.equal(torch.randint(0, 1000, (shape[0],), generator=gen), t0)
    eps, noise, ts = draw_noise(g(), shape, 1000, timestep_bias="style")
    _, _, tc = draw_noise(g(), shape, 1000, timestep_bias="content")
    assert torch.equal(eps, eps0) and torch.equal(noise, noise0)  # only the timesteps differ
    assert ts.dtype == t0.dtype and int(ts.min()) >= 0 and int(ts.max()) <= 999
    # (1 - u^3)·T: median 0.875·T; u^3·T: median 0.125·T; uniform: 0.5·T (20000 draws: within 1% of T)
    assert float(ts.float().median()) == pytest.approx(875, abs=10)
    assert float(tc.float().median()) == pytest.approx(125, abs=10)
    assert float(t0.float().median()) == pytest.approx(500, abs=10)
    assert float((ts >= 900).float().mean()) == pytest.approx(0.1 ** (1 / 3), abs=0.01)  # P(u^3 <= 0.1): 0.46


def test_snr_gamma_and_noise_offset_change_training_and_batched_still_equals_one_at_a_time(
    components, demo_root, tmp_path
):
    styles = discover_styles(demo_root, styles=["00", "01"], max_objects=2)
    plain = compose(FAST)
    cfg = compose(FAST + ["train.snr_gamma=5.0", "train.noise_offset=0.1", "train.timestep_bias=style"])
    base, _ = train_one(components, styles[1], cfg=plain)
    one, _ = train_one(components, styles[1], cfg=cfg, export_to=tmp_path / "one")
    assert one != pytest.approx(base, rel=1e-3)  # the options reach the loss
    done = train_styles(
        components, styles, [None, None], TrainSpec.from_config(cfg), None, [tmp_path / s.id for s in styles]
    )
    losses, failed = done.losses, done.failed
    assert not failed and losses["01"] == pytest.approx(one, rel=1e-4, abs=1e-6)
    with (
        safe_open(str(tmp_path / "one" / ADAPTER_FILE), "pt") as a,
        safe_open(str(tmp_path / "01" / ADAPTER_FILE), "pt") as b,
    ):
        for k in a.keys():
            torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), atol=2e-5, rtol=1e-4)


PROMPT = ["an image of apple in style_00"]


def _picture(backend, **kw):
    import numpy as np

    with backend.generate(sampler="ddim", steps=3, guidance_scale=7.5, resolution=64, **kw) as make:
        return np.asarray(make(PROMPT, [1])[0], dtype=np.int16)


@pytest.mark.parametrize("kind,te", [("dora", 2), ("dora", 0), ("loha", 2), ("lokr", 2)])
def test_each_adapter_variant_trains_saves_and_samples_the_way_it_was_trained(
    kind, te, backend, components, demo_root, tmp_path
):
    """The variant learns (loss falls), its file samples through the backend with the trained layers (fused
    and unfused agree), the model is exactly as before afterwards, and a UNet-only DoRA file also loads
    through stock diffusers with the same result."""
    import numpy as np

    from stylexfer.backends.torch.sample import generate, make_pipeline
    from stylexfer.backends.torch.train import remove_adapters

    (style,) = discover_styles(demo_root, styles=["00"], max_objects=1)
    cfg = compose(
        [
            "prior=none",
            "augmentation=none",
            "train.steps=30",
            "train.lr=3e-3",
            f"lora.kind={kind}",
            "lora.unet_lora_rank=4",
            f"lora.text_encoder_lora_rank={te}",
        ]
    )
    bare_before = _picture(backend)
    losses, ad = train_one(components, style, cfg=cfg, export_to=tmp_path)
    assert ad is None and sum(losses[-10:]) < sum(losses[:10])
    with safe_open(str(tmp_path / ADAPTER_FILE), "pt") as f:
        keys, meta = list(f.keys()), f.metadata() or {}
    assert any(k.startswith("text_encoder") for k in keys) == (te > 0)
    marker = {"dora": "lora_magnitude_vector", "loha": "hada_w1_a", "lokr": "lokr_w1"}[kind]
    assert any(marker in k for k in keys), keys[:5]
    assert ("stylexfer_peft_kind" in meta) == (kind != "dora" or te > 0)
    fused = _picture(backend, adapter_dir=tmp_path, fuse_lora=True)
    unfused = _picture(backend, adapter_dir=tmp_path, fuse_lora=False)
    assert np.abs(fused - unfused).max() <= 2  # fused = unfused up to rounding
    assert np.abs(fused - bare_before).mean() > 0.5  # the adapter changes the picture
    assert np.array_equal(_picture(backend), bare_before)  # and leaves the model as it was
    if "stylexfer_peft_kind" not in meta:  # stock diffusers reads the file and gives the same picture
        pipe = make_pipeline(components, "ddim")
        pipe.load_lora_weights(str(tmp_path), adapter_name="x")
        try:
            stock = generate(pipe, PROMPT, [1], 3, 7.5, 64)[0]
        finally:
            pipe.delete_adapters("x")
            remove_adapters(components)
        assert np.abs(np.asarray(stock, dtype=np.int16) - unfused).max() <= 2
        assert np.array_equal(_picture(backend), bare_before)
