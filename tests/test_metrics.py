"""The report's score formula and the FID arithmetic (no model weights needed)."""

from __future__ import annotations

import numpy as np
import pytest

from stylexfer.metrics import feature_stats, frechet_distance, score_components

# The reference report's score table (section 4.2) and its submission's components (section 4.1).
REPORT = {
    "baseline": (dict(dino=0.1130, hist=0.4388, fid=1.7101, lpips=0.5391, clip_iqa=0.7567, clip_r=0.8293), 0.3274),
    "safe": (dict(dino=0.120226, hist=0.779055, fid=1.674596, lpips=0.428658, clip_iqa=0.757711, clip_r=0.930667), 0.512078),
    "aggressive": (dict(dino=0.1318, hist=0.7977, fid=1.5406, lpips=0.4342, clip_iqa=0.7273, clip_r=0.9067), 0.5119),
}


@pytest.mark.parametrize("name", REPORT)
def test_formula_reproduces_the_report_table(name):
    metrics, final = REPORT[name]
    s = score_components(**metrics)
    assert round(s["final"], 4) == round(final, 4)
    if name == "safe":  # the report's own component lines: 0.5642, 0.4653, 0.4423, final 0.512078
        assert (round(s["style"], 4), round(s["text"], 4), round(s["quality"], 4)) == (0.5642, 0.4653, 0.4423)
        assert abs(s["final"] - 0.512078) < 1e-6  # the report's inputs are themselves rounded to 6 decimals


def test_fid_is_clipped_at_20_and_missing_metrics_are_refused():
    worse = score_components(dino=0.1, hist=0.5, lpips=0.5, clip_r=0.9, fid=35.0, clip_iqa=0.7)
    at20 = score_components(dino=0.1, hist=0.5, lpips=0.5, clip_r=0.9, fid=20.0, clip_iqa=0.7)
    assert worse == at20 and at20["quality"] == pytest.approx(0.07)
    with pytest.raises(ValueError, match="lpips is nan"):
        score_components(dino=0.1, hist=0.5, lpips=float("nan"), clip_r=0.9, fid=1.0, clip_iqa=0.7)


def test_frechet_distance_matches_an_independent_float64_reference():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (400, 16))
    b = rng.normal(0.3, 1.5, (400, 16)) @ rng.normal(0, 0.5, (16, 16))
    (m1, s1), (m2, s2) = feature_stats(a), feature_stats(b)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy_linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_on_ten_images_is_real_finite_and_zero_on_itself():
    rng = np.random.default_rng(1)
    ten, other = rng.normal(size=(10, 2048)), rng.normal(0.2, 1.0, size=(10, 2048))  # rank-deficient covariances
    (m1, s1), (m2, s2) = feature_stats(ten), feature_stats(other)
    d = frechet_distance(m1, s1, m2, s2)
    assert isinstance(d, float) and np.isfinite(d) and d > 0
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))


# ------------------------------------------- model-backed metrics on tiny random models (hub layout)

@pytest.fixture(scope="module")
def tiny_metric_models(tmp_path_factory):
    import torch
    from transformers import (BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              Dinov2Config, Dinov2Model)

    from stylexfer.embedded import build_tokenizer

    root = tmp_path_factory.mktemp("metric_models")
    torch.manual_seed(0)
    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=56, patch_size=14))
    dino.save_pretrained(root / "dino", safe_serialization=True)
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(root / "dino")
    tok = build_tokenizer(root / "tok")
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8), projection_dim=16))
    clip.save_pretrained(root / "clip", safe_serialization=True)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(root / "clip")
    return root


def _images(n, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_dino_similarity_runs_through_its_loading_code(tiny_metric_models):
    from stylexfer.metrics import dino_similarity

    a, b = _images(1, 0), _images(3, 1)
    path = str(tiny_metric_models / "dino")
    assert dino_similarity(a, a, path) == pytest.approx(1.0, abs=1e-5)  # an image against itself
    v = dino_similarity(a, b, path)
    assert -1.0 <= v < 1.0


def test_clip_r_and_clip_iqa_run_through_their_loading_code(tiny_metric_models):
    from stylexfer.metrics import clip_iqa, clip_r_precision

    path = str(tiny_metric_models / "clip")
    imgs = _images(4, 2)
    candidates = ["an image of cat", "an image of boat", "an image of tree"]
    truth = [0, 1, 2, 0]
    precision, picks = clip_r_precision(imgs, truth, candidates, path)
    assert len(picks) == 4 and all(0 <= p < 3 for p in picks)
    assert precision == pytest.approx(np.mean([p == t for p, t in zip(picks, truth)]))  # the bookkeeping
    assert clip_r_precision(imgs, picks, candidates, path)[0] == 1.0  # its own picks are all "right"
    q = clip_iqa(imgs, path)
    assert 0.0 < q < 1.0
