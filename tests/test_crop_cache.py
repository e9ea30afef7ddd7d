"""Crops cached on the latent grid (the default): the offsets, the cached posteriors against encoding the same
crop on the spot, uniform coverage of the grid, and no VAE call in the training steps."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from helpers import compose, train_one
from stylexfer.backends.torch.tensors import to_tensor
from stylexfer.backends.torch.train import Feed
from stylexfer.data import crop_at, crop_grid, discover_styles, draw_grid_crop, grid_cached_crops
from stylexfer.specs import TrainSpec


def test_the_grid_is_the_vae_grid_centred_in_the_room_the_resize_leaves():
    assert crop_grid((532, 532), 512) == ([2, 10, 18], [2, 10, 18])  # 512 px at 1.04: 20 px of room
    assert crop_grid((67, 67), 64) == ([1], [1])  # less than 8 px of room: the centre
    assert crop_grid((96, 80), 64) == ([0, 8, 16, 24, 32], [0, 8, 16])
    aug = OmegaConf.create({"cached_crops": True, "random_crop": True, "scale": 1.04, "rotation": 0.0, "hflip": True})
    assert grid_cached_crops(aug)
    assert not grid_cached_crops(OmegaConf.merge(aug, {"rotation": 10.0}))  # rotation: encoded every step
    assert not grid_cached_crops(OmegaConf.merge(aug, {"cached_crops": False}))  # the exact 1-px path


def test_the_drawn_offsets_cover_the_grid_uniformly():
    aug = OmegaConf.create({"hflip": True})
    rng = np.random.default_rng(0)
    n = 18000
    counts = collections.Counter(draw_grid_crop((532, 532), 512, aug, rng) for _ in range(n))
    assert set(counts) == {(x, y, f) for x in (2, 10, 18) for y in (2, 10, 18) for f in (False, True)}
    expected = n / 18
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 40.8  # 17 degrees of freedom, p = 0.001


@pytest.fixture
def grid_cfg():
    return compose(
        [
            "model.resolution=64",
            "augmentation=crop_flip",
            "augmentation.scale=1.5",
            "prior=none",
            "train.steps=6",
            "lora.unet_lora_rank=4",
        ]
    )


def test_cached_posteriors_equal_encoding_the_same_crop_on_the_spot(components, demo_root, grid_cfg):
    (style,) = discover_styles(demo_root, styles=["00"])
    feed = Feed(components, style, None, TrainSpec.from_config(grid_cfg))
    assert feed.prepare() == 10 * 5 * 5 * 2 and feed.prepare() == 0  # every (image, offset, flip), once
    checked = 0
    for (owner, i, x, y, flip), (mean, std) in feed.crops.items():
        assert owner == ("style", "00")
        if (x, y) not in ((0, 0), (16, 32)):
            continue
        img = feed.data.resized_image(style.images, i)
        with torch.no_grad():
            d = components.vae.encode(to_tensor(crop_at(img, 64, x, y, flip))[None]).latent_dist
        torch.testing.assert_close(mean, d.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std, d.std, atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked == 10 * 2 * 2


def test_no_training_step_runs_the_vae(components, demo_root, grid_cfg, monkeypatch):
    (style,) = discover_styles(demo_root, styles=["00"])
    calls = []
    real = components.vae.encode
    monkeypatch.setattr(components.vae, "encode", lambda x, *a, **k: calls.append(len(x)) or real(x, *a, **k))
    train_one(components, style, cfg=grid_cfg)
    assert sum(calls) == 500 and len(calls) == math.ceil(500 / 64)  # the up-front encoding only
    calls.clear()
    train_one(
        components,
        style,
        cfg=compose(
            [
                "model.resolution=64",
                "augmentation=crop_flip",
                "augmentation.scale=1.5",
                "prior=none",
                "train.steps=6",
                "lora.unet_lora_rank=4",
                "augmentation.cached_crops=false",
            ]
        ),
    )
    assert calls == [1] * 6  # the exact path: one crop encoded per step
