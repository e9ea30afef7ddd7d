"""prior=self: prior preservation without a class pool (the style's own images under the class prompt, the target
the base model's own prediction with the adapters off), on the tiny model, float32, CPU."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from helpers import compose, train_one
from stylexfer.backends import ADAPTER_FILE
from stylexfer.backends.torch.multilora import reinstate, restore
from stylexfer.backends.torch.train import TextCache
from stylexfer.backends.torch.trainer import Pass, train_styles
from stylexfer.config import validate
from stylexfer.data import discover_styles
from stylexfer.errors import ConfigError
from stylexfer.feed import DataFeed
from stylexfer.specs import TrainSpec
from stylexfer.train import style_specs

FAST = ["augmentation=none", "train.lr=1e-3", "lora.unet_lora_rank=4", "train.batch_size=2"]


def test_the_feed_draws_the_styles_own_images_again_under_the_class_prompt(demo_root):
    style = discover_styles(demo_root)[0]
    spec = TrainSpec.from_config(compose(["prior=self", "train.batch_size=3"]))
    feed = DataFeed.of(style, None, spec)
    for _ in range(4):
        d = feed.next()
        assert len(d.samples) == 6
        inst, prior = d.samples[:3], d.samples[3:]
        # the same images (grid crop keys: owner and index), each with its own crop, the style token gone
        assert [k.key[:2] for k in inst] == [k.key[:2] for k in prior]
        assert all(k.key[0] == ("style", style.id) for k in d.samples)
        objects = [style.image_objects[k.key[1]] for k in inst]
        assert d.prompts[:3] == [f"an image of {o} in style_{style.id}" for o in objects]
        assert d.prompts[3:] == [f"an image of {o}" for o in objects]
    assert feed.cycles()[1] is None  # no class pool's order to keep
    with pytest.raises(ValueError, match="not both"):
        DataFeed(
            style,
            object(),
            seed=0,
            instance_prompt="x",
            batch_size=1,
            resolution=64,
            augmentation=spec.augmentation,
            self_prior_prompt="an image of {object}",
        )


def test_its_adapter_key_names_the_class_prompt_and_no_pool_and_no_pool_is_built(demo_root):
    styles = discover_styles(demo_root)
    pool, key = style_specs("tiny", styles, styles[0], compose(["prior=self"]))
    assert pool is None
    assert key["prior"] == {"mode": "self", "weight": 1.0, "class_prompt": "an image of {object}"}
    photo = compose(["prior=self", "prior.class_prompt='a photo of {object}'"])
    _, other = style_specs("tiny", styles, styles[0], photo)
    assert other["prior"]["class_prompt"] == "a photo of {object}"
    shared_pool, shared = style_specs("tiny", styles, styles[0], compose(["prior=shared"]))
    assert shared_pool is not None and "pool" in shared["prior"] and "class_prompt" not in shared["prior"]


def test_the_jittor_backend_refuses_it_in_one_line_naming_the_key():
    with pytest.raises(ConfigError) as e:
        validate(compose(["backend=jittor", "prior=self"]))
    assert "prior.mode" in str(e.value) and "\n" not in str(e.value)
    validate(compose(["backend=jittor", "prior=shared"]))  # the pooled modes stay


def _noisy_rows(c, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = (n, c.latent_channels, 8, 8)
    return torch.randn(shape, generator=g), torch.randint(0, 1000, (n,), generator=g)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_the_prior_rows_targets_are_the_base_models_prediction_and_the_instance_rows_keep_theirs(
    components, demo_root, kind
):
    c = components
    styles = discover_styles(demo_root)[:1]
    cfg = compose(FAST + ["prior=self", f"lora.kind={kind}", "train.steps=1"])
    p = Pass(c, styles, [None], TrainSpec.from_config(cfg))
    try:
        with torch.no_grad():  # adapters far from zero, so that "off" is not "on" by accident
            for q in p.params:
                q.normal_(0, 0.2, generator=torch.Generator().manual_seed(q.numel()))
        noisy, ts = _noisy_rows(c, 4, 0)
        text = TextCache(c, False).inputs(["an image of cat in style_00"] * 2 + ["an image of cat"] * 2)
        targets = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(1))
        p.layers.route(torch.tensor([0]), True)
        p._rows = 1
        got = p.base_targets(noisy, ts, targets, text)
        with torch.no_grad():
            adapted = c.unet(noisy, ts, text).sample
            with p.layers.off():
                base = c.unet(noisy, ts, text).sample
    finally:
        p.close()
    with torch.no_grad():
        plain = c.unet(noisy, ts, text).sample  # the model as loaded: no adapter anywhere
    assert torch.equal(got[:2], targets[:2])  # instance rows: the noise/velocity target as drawn
    torch.testing.assert_close(got[2:], plain[2:], atol=1e-5, rtol=1e-5)  # prior rows: the base model
    torch.testing.assert_close(base, plain, atol=1e-5, rtol=1e-5)
    assert (adapted - plain).abs().mean() > 1e-3  # the adapters were on outside `off`


def test_the_first_steps_prior_term_is_zero_as_the_adapters_start_at_the_base_model(
    components, demo_root, monkeypatch
):
    """peft's init leaves B = 0: at step 1 the adapted model is the base model, so the loss is the instance term."""
    from stylexfer.backends.torch import trainer as trainer_mod

    seen = []
    real = trainer_mod.style_losses

    def spy(c, per_sample, t, spec, n, use_prior):
        seen.append(per_sample.detach().view(n, -1)[:, 2:].clone())
        return real(c, per_sample, t, spec, n, use_prior)

    monkeypatch.setattr(trainer_mod, "style_losses", spy)
    style = discover_styles(demo_root)[0]
    train_one(components, style, compose(FAST + ["prior=self", "train.steps=3"]))
    assert seen[0].abs().max().item() < 1e-9
    assert seen[-1].abs().max().item() > 0  # later steps: the adapters moved, the term is live


def _drift(c, layers, prompts: list[str]) -> float:
    """Mean squared difference between the trained adapter's prediction and the base model's, on fresh noisy
    latents under ``prompts``."""
    noisy, ts = _noisy_rows(c, len(prompts), 5)
    text = TextCache(c, False).inputs(prompts)
    with torch.no_grad():
        base = c.unet(noisy, ts, text).sample
        reinstate(c.unet, layers.unet)
        try:
            layers.router.index = torch.zeros(len(prompts), dtype=torch.long)
            adapted = c.unet(noisy, ts, text).sample
        finally:
            layers.router.index = None
            restore(c.unet, layers.unet)
    return (adapted - base).pow(2).mean().item()


def test_it_keeps_the_class_prompt_near_the_base_model_where_no_prior_lets_it_drift(components, demo_root):
    style = discover_styles(demo_root)[0]
    objects = sorted(set(style.image_objects))
    cls = [f"an image of {o}" for o in objects] * 2
    inst = [f"an image of {o} in style_{style.id}" for o in objects] * 2
    drift = {}
    for prior in ("none", "self"):
        _, layers = train_one(components, style, compose(FAST + [f"prior={prior}", "train.steps=16", "train.lr=3e-3"]))
        drift[prior] = (_drift(components, layers, cls), _drift(components, layers, inst))
    (cls_none, inst_none), (cls_self, inst_self) = drift["none"], drift["self"]
    assert cls_self < 0.6 * cls_none, drift  # observed 0.20x (0.017 against 0.089)
    assert inst_self > 0.1 * inst_none, drift  # the style prompt still learns (observed 0.29x)


def _tensors(folder):
    with safe_open(str(folder / ADAPTER_FILE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_a_batched_pass_equals_one_style_at_a_time(components, demo_root, tmp_path):
    styles = discover_styles(demo_root)[:2]
    spec = TrainSpec.from_config(compose(FAST + ["prior=self", "train.steps=4", "lora.text_encoder_lora_rank=2"]))
    both = [tmp_path / "both" / s.id for s in styles]
    done = train_styles(components, styles, [None, None], spec, None, both)
    assert done.failed == {}
    for s, d in zip(styles, both):
        alone = tmp_path / "alone" / s.id
        one = train_styles(components, [s], [None], spec, None, [alone])
        assert one.losses[s.id] == pytest.approx(done.losses[s.id], rel=1e-4, abs=1e-6)
        a, b = _tensors(d), _tensors(alone)
        assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
