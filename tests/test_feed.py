"""The framework-free data feed both backends draw through: what a step draws under each cache policy, its order, the
crop keys, and that a style's draws do not depend on the styles beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from stylexfer.data import Style
from stylexfer.feed import CACHED, GRID, PER_STEP, DataFeed, cache_policy
from stylexfer.prior import ClassPool


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def _style(sid: str, n: int = 3) -> Style:
    return Style(
        id=sid,
        dir=Path("."),
        image_paths=[],
        images=_images(n, int(sid)),
        image_objects=[f"thing{i}" for i in range(n)],
        objects=[],
    )


def _pool() -> ClassPool:
    return ClassPool(key="p1", dir=Path("."), prompts=["an image of a thing"] * 2, images=_images(2, 9))


AUG = {"cached_crops": True, "random_crop": True, "scale": 1.5, "rotation": 0.0, "hflip": True}


def _feed(style, pool=None, **aug) -> DataFeed:
    return DataFeed(
        style,
        pool,
        seed=3,
        instance_prompt="an image of {object} in style_{style}",
        batch_size=2,
        resolution=32,
        augmentation=OmegaConf.create({**AUG, **aug}),
    )


def test_the_cache_policy_follows_the_augmentation():
    assert cache_policy(OmegaConf.create(AUG)) == GRID
    assert cache_policy(OmegaConf.create({**AUG, "cached_crops": False})) == PER_STEP
    assert cache_policy(OmegaConf.create({**AUG, "rotation": 5.0})) == PER_STEP
    assert cache_policy(OmegaConf.create({**AUG, "random_crop": False, "hflip": False})) == CACHED


def test_grid_keys_name_the_owner_every_crop_is_listed_once_and_a_shared_pool_once_per_pass():
    pool = _pool()
    a, b = _feed(_style("00"), pool), _feed(_style("01"), pool)
    seen: set = set()
    todo_a, todo_b = a.grid_todo({}, seen), b.grid_todo({}, seen)
    # 48×40 images resized to 58×48 (shorter side 1.5 × 32): the room on the 8-px grid, two flips
    per_image = len(a.grid_todo({}, None, which=("style",))) // 3
    assert per_image > 2 and len(todo_a) == 5 * per_image  # 3 style images + 2 pool images
    assert len(todo_b) == 3 * per_image  # the pool's crops were listed by the first feed
    assert {k[0] for k in todo_a} == {("style", "00"), ("pool", "p1")} and {k[0] for k in todo_b} == {("style", "01")}
    key = todo_a[0]
    assert a.crop(key).size == (32, 32)
    assert a.grid_todo(dict.fromkeys(todo_a), None) == []  # what the cache holds is not listed again


def test_a_step_draws_crop_keys_on_the_grid_and_its_prompts_in_order():
    pool = _pool()
    feed = _feed(_style("00"), pool)
    grid = set(feed.grid_todo({}))
    d = feed.next()
    assert len(d.samples) == 4 and all(s.key in grid and s.image is None for s in d.samples)
    assert [s.key[0][0] for s in d.samples] == ["style", "style", "pool", "pool"]
    assert d.prompts[:2] == [f"an image of thing{s.key[1]} in style_00" for s in d.samples[:2]]
    assert d.prompts[2:] == ["an image of a thing"] * 2


def test_the_cached_policy_augments_an_image_only_the_first_time():
    feed = _feed(_style("00"), random_crop=False, hflip=False)
    have: dict = {}
    for _ in range(6):
        d = feed.next(have)
        assert all(s.key[0] == ("style", "00") for s in d.samples)
        # an image is augmented only while the backend's cache lacks it, and then in every sample that draws it
        assert all((s.image is None) == (s.key in have) for s in d.samples)
        have.update((s.key, True) for s in d.samples)
    assert len(have) == 3  # 12 samples of 3 images


def test_per_step_samples_are_fresh_crops_and_a_style_draws_the_same_beside_others():
    alone = _feed(_style("01"), cached_crops=False)
    beside = [_feed(_style("00"), cached_crops=False), _feed(_style("01"), cached_crops=False)]
    for _ in range(3):
        beside[0].next()
        mine, theirs = alone.next(), beside[1].next()
        assert all(s.key is None and s.image.size == (32, 32) for s in mine.samples)
        for x, y in zip(mine.samples, theirs.samples):
            assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
