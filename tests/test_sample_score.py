"""Sampling: seeded, batch-independent, every sampler; img2img from the average image."""

from __future__ import annotations

import numpy as np
import pytest

from stylexfer.backends.torch.sample import generate, make_pipeline
from stylexfer.data import discover_styles
from stylexfer.specs import TrainSpec


def arr(img):
    return np.asarray(img, dtype=np.int16)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp", "euler_a", "pndm", "euler", "unipc"])
def test_every_sampler_is_seeded_and_batch_independent(components, sampler):
    pipe = make_pipeline(components, sampler)
    prompts = ["an image of cat in style_00", "an image of dog in style_00", "an image of boat in style_01"]
    batch = generate(pipe, prompts, [11, 12, 13], 6, 7.5, 64)
    again = generate(pipe, prompts, [11, 12, 13], 6, 7.5, 64)
    single = [generate(pipe, [p], [s], 6, 7.5, 64)[0] for p, s in zip(prompts, [11, 12, 13])]
    assert all(im.size == (64, 64) for im in batch)
    for a, b, c in zip(batch, again, single):
        assert (arr(a) == arr(b)).all()  # same seeds, same images
        assert np.abs(arr(a) - arr(c)).max() <= 2  # batching changes nothing but float rounding
    assert np.abs(arr(batch[0]) - arr(batch[1])).mean() > 1  # different prompts/seeds differ


def test_img2img_from_the_average_image_depends_on_strength(components, demo_root):
    from stylexfer.data import average_image

    (style,) = discover_styles(demo_root, styles=["01"])
    avg = average_image(style.images, 64)
    pipe = make_pipeline(components, "ddim", img2img=True)
    low = generate(pipe, ["x"], [5], 20, 7.5, 64, avg, 0.3)[0]
    high = generate(pipe, ["x"], [5], 20, 7.5, 64, avg, 0.9)[0]
    d_low = np.abs(arr(low) - arr(avg)).mean()
    d_high = np.abs(arr(high) - arr(avg)).mean()
    assert d_low < d_high  # less noise added, closer to the average image


def test_fused_lora_sampling_matches_unfused_and_restores_the_base_weights_exactly(components, tmp_path):
    import torch

    from helpers import compose
    from stylexfer.backends.torch.sample import fuse_exactly, plain_layers, unfuse_exactly
    from stylexfer.backends.torch.train import add_adapters, remove_adapters, save_adapter

    c = components
    cfg = compose(["lora=unet_te", "lora.unet_lora_rank=4", "lora.text_encoder_lora_rank=4"])
    add_adapters(c, TrainSpec.from_config(cfg), 0)
    torch.manual_seed(3)
    with torch.no_grad():
        for m in list(c.unet.modules()) + list(c.text_encoder.modules()):
            if hasattr(m, "lora_B") and "default" in m.lora_B:
                m.lora_B["default"].weight.normal_(0, 0.05)  # a trained-looking, non-zero adapter
    save_adapter(c, tmp_path / "ad")
    remove_adapters(c)
    before = {k: v.clone() for k, v in list(c.unet.state_dict().items()) + list(c.text_encoder.state_dict().items())}
    pipe = make_pipeline(c, "ddim")
    pipe.load_lora_weights(str(tmp_path / "ad"), adapter_name="s")
    prompts = ["an image of cat in style_00", "an image of boat in style_00"]
    unfused = generate(pipe, prompts, [1, 2], 6, 7.5, 64)
    base = fuse_exactly(pipe, "s")
    fused = generate(pipe, prompts, [1, 2], 6, 7.5, 64)
    wrappers = {n for n, m in c.unet.named_modules() if hasattr(m, "lora_A")}
    with plain_layers(pipe) as n_plain:  # fused wrappers out (what a compiled UNet is traced on): same images
        assert not any(hasattr(m, "lora_A") for m in c.unet.modules())
        on_plain = generate(pipe, prompts, [1, 2], 6, 7.5, 64)
    assert n_plain > len(wrappers) > 0 and {n for n, m in c.unet.named_modules() if hasattr(m, "lora_A")} == wrappers
    assert all((arr(f) == arr(p)).all() for f, p in zip(fused, on_plain))
    unfuse_exactly(pipe, base)
    again = generate(pipe, prompts, [1, 2], 6, 7.5, 64)
    pipe.delete_adapters("s")
    plain = generate(pipe, prompts, [1, 2], 6, 7.5, 64)
    for u, f, a, p in zip(unfused, fused, again, plain):
        assert np.abs(arr(u) - arr(f)).max() <= 2  # fusing changes only float rounding
        assert (arr(u) == arr(a)).all()  # unfused again: the same images as before fusing
        assert np.abs(arr(u) - arr(p)).mean() > 0.5  # and the adapter did something
    after = dict(list(c.unet.state_dict().items()) + list(c.text_encoder.state_dict().items()))
    after = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}  # peft's wrappers stay
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_sampling_unet_that_fails_to_compile_falls_back_to_eager_with_one_warning(components, monkeypatch, caplog):
    """sample.compile on a machine where compiling fails (no compiler, say): the call is made eagerly, the
    images are the eager ones, the rest of the context stays eager, and the log says so once."""
    import logging

    import torch

    from stylexfer.backends.torch import compiled
    from stylexfer.backends.torch.sample import sampling

    calls = []

    class Broken(torch.nn.Module):
        def __getattr__(self, name):  # the pipeline reads the UNet's config before calling it
            if name in ("config", "dtype", "device"):
                return getattr(components.unet, name)
            return super().__getattr__(name)

        def forward(self, *a, **k):
            calls.append(1)
            raise RuntimeError("no C compiler")

    monkeypatch.setattr(compiled, "decide_sampling", lambda c, want, *a: bool(want))
    monkeypatch.setattr(compiled, "mark_sampling_warm", lambda *a: None)
    monkeypatch.setattr(compiled, "sampling_unet", lambda c: Broken())
    prompts = ["an image of cat in style_00", "an image of boat in style_00"]
    with caplog.at_level(logging.WARNING):
        with sampling(components, sampler="ddim", steps=4, guidance_scale=7.5, resolution=64, compile=True) as make:
            got = make(prompts, [1, 2]) + make(prompts, [3, 4])
    with sampling(components, sampler="ddim", steps=4, guidance_scale=7.5, resolution=64, compile=False) as make:
        want = make(prompts, [1, 2]) + make(prompts, [3, 4])
    assert len(calls) == 1 and components.unet is not None
    assert all((arr(a) == arr(b)).all() for a, b in zip(got, want))
    assert sum("sampling without compiling" in r.message for r in caplog.records) == 1
