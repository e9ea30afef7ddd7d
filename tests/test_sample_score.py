"""Sampling (seeded, batch-independent, every sampler) and the weight-free score."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stylexfer.data import discover_styles
from stylexfer.sample import generate, make_pipeline
from stylexfer.score import color_histogram, hist_similarity


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


def test_hist_similarity_properties():
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    assert hist_similarity(imgs[1:], imgs[:1], 64) < 1.0
    assert hist_similarity(imgs[:1], imgs[:1], 64) == pytest.approx(1.0)
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    assert hist_similarity([red], [red]) == pytest.approx(1.0)
    assert hist_similarity([red], [blue]) == pytest.approx(1 / 3)  # only the green channel (0) agrees
    warm = [Image.fromarray(np.clip(rng.normal((200, 90, 40), 20, (32, 32, 3)), 0, 255).astype(np.uint8)) for _ in range(3)]
    shuffled = [Image.fromarray(np.asarray(im)[..., ::-1].copy()) for im in warm]  # channels swapped
    assert hist_similarity(warm, warm) > hist_similarity(shuffled, warm) + 0.3
    h = color_histogram(red, 16)
    assert h.shape == (3, 16) and np.allclose(h.sum(axis=1), 1.0)
    # independent of image size
    assert hist_similarity([red.resize((64, 64))], [red]) == pytest.approx(1.0)
