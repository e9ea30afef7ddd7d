"""The six metrics and the final score: the report's formula, the FID arithmetic, Pixel-Hist as the
checker computes it, and every model-backed metric through its real loading code on tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylexfer.metrics import hist_score, rgb_histogram
from stylexfer.scoring import feature_stats, frechet_distance, score_components

# The reference report's score table (section 4.2) and its submission's components (section 4.1).
REPORT = {
    "baseline": (dict(dino=0.1130, hist=0.4388, fid=1.7101, lpips=0.5391, clip_iqa=0.7567, clip_r=0.8293), 0.3274),
    "safe": (
        dict(dino=0.120226, hist=0.779055, fid=1.674596, lpips=0.428658, clip_iqa=0.757711, clip_r=0.930667),
        0.512078,
    ),
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


# ------------------------------------------------------------------ Pixel-Hist (the checker's)


def _smooth(rng, mean, n=3, size=32):
    return [Image.fromarray(np.clip(rng.normal(mean, 25, (size, size, 3)), 0, 255).astype(np.uint8)) for _ in range(n)]


def test_hist_is_one_on_itself_and_drops_for_shuffled_colours():
    rng = np.random.default_rng(0)
    warm = _smooth(rng, (200, 90, 40))
    assert hist_score(warm[:1], warm[:1]) == pytest.approx(1.0)
    assert hist_score([warm[0]] * 3, [warm[0]]) == pytest.approx(1.0)
    assert hist_score([warm[0].resize((64, 64), Image.NEAREST)], [warm[0]]) == pytest.approx(1.0)  # size-free
    shuffled = [Image.fromarray(np.asarray(im)[..., [1, 0, 2]].copy()) for im in warm]  # red and green swapped
    assert hist_score(warm, warm) > hist_score(shuffled, warm) + 0.3
    assert -1.0 <= hist_score(shuffled, warm) < 0.9


def test_hist_keeps_the_checkers_uint8_arithmetic():
    # the checker combines B·256 + G·16 + R in uint8, so blue wraps away: only 256 of 4096 cells fill
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    h = rgb_histogram(np.asarray(img)[..., ::-1].copy())
    assert h.size == 4096 and h.sum() == 32 * 32 and h[256:].sum() == 0
    a = np.asarray(img).copy()
    a[..., 2] = 255 - a[..., 2]  # a different blue channel: the same "RGB" histogram
    assert (rgb_histogram(a[..., ::-1].copy()) == h).all()


# ------------------------------------------- model-backed metrics on tiny random models (real loaders)


def _images(n, seed, size=48):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _eval_cfg(models, **kw):
    from omegaconf import OmegaConf

    from helpers import compose

    ev = compose(["eval.suite=reference"] + [f"eval.models.{k}={v}" for k, v in models.items()]).eval
    for k, v in kw.items():
        OmegaConf.update(ev, k, v)
    return ev


def test_dino_is_one_on_itself_and_a_cosine_otherwise(metric_models):
    from stylexfer.metrics import Dino

    dino = Dino(metric_models["dino"], "cpu")
    a, b = _images(1, 0), _images(3, 1)
    assert dino(a, a) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= dino(a, b) < 1.0
    emb = dino.embed(a + b)
    manual = float((emb[:1] @ emb[1:].T).mean())  # every (generated, reference) pair, averaged
    assert dino(a, b) == pytest.approx(manual, abs=1e-6)


def test_lpips_loads_the_converted_file_and_equals_the_lpips_package(metric_models):
    import lpips
    import torch

    from stylexfer.metrics import Lpips

    ours = Lpips(metric_models["lpips"], "cpu")
    # the lpips package's own loader (its v0.1 heads) around the same SqueezeNet weights
    ref = lpips.LPIPS(net="squeeze", pretrained=True, pnet_rand=True, verbose=False)
    sq = torch.load(str(Path(metric_models["lpips"]).parent / "squeezenet1_1.pth"), weights_only=True)
    for slice_ in ref.net.children():
        for idx, layer in slice_.named_children():
            layer.load_state_dict(
                {k[len(f"features.{idx}.") :]: v for k, v in sq.items() if k.startswith(f"features.{idx}.")}
            )
    gen, refs = _images(2, 3), _images(3, 4)
    with torch.no_grad():
        want = np.mean([float(ref(ours.tensor([g]), ours.tensor([r]))) for g in gen for r in refs])
    assert ours(gen, refs) == pytest.approx(want, rel=1e-5)
    assert ours(gen[:1], gen[:1]) == pytest.approx(0.0, abs=1e-7)  # an image against itself
    assert ours(gen, refs) > 0


def test_fid_features_load_back_and_fid_is_zero_on_itself(metric_models):
    import torch

    from stylexfer.metrics import Fid, fid_network, fid_structure

    imgs, other = _images(10, 5, size=64), _images(10, 6, size=64)
    for dims in (64, 2048):
        fid = Fid(metric_models["fid"], "cpu", dims)
        feats = fid.features(imgs)
        assert feats.shape == (10, dims) and np.isfinite(feats).all()
        v = fid(imgs, imgs)
        assert v == pytest.approx(0.0, abs=1e-6 * max(1.0, float(np.trace(np.cov(feats, rowvar=False)))))
        d = fid(other, imgs)
        assert np.isfinite(d) and d > 0
    # the loaded network is the converted one: same output as the pickle loaded into pytorch-fid's structure
    src = torch.load(str(Path(metric_models["fid"]).parent / "pt_inception.pth"), weights_only=True)

    def loaded():
        net = fid_structure()
        net.load_state_dict(src)
        return net

    ref = fid_network(0, structure=loaded).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(Fid(metric_models["fid"], "cpu", 64).model(x)[0], ref(x)[0], atol=1e-6)


def test_clip_r_bookkeeping_and_clip_iqa_range(metric_models):
    from stylexfer.metrics import ClipIqa, ClipR

    imgs = _images(4, 2)
    candidates = ["cat", "boat", "tree", "house", "dog", "car", "lamp"]
    top1 = ClipR(metric_models["clip_r"], "cpu", candidates, top_k=1)
    picks = top1.picks(imgs, ["cat"] * 4)
    assert len(picks) == 4 and all(len(p) == 1 and p[0] in candidates for p in picks)
    assert top1(imgs, objects=[p[0] for p in picks]) == 1.0  # its own picks are all retrieved
    wrong = [next(c for c in candidates if c != p[0]) for p in picks]
    assert top1(imgs, objects=wrong) == 0.0
    all7 = ClipR(metric_models["clip_r"], "cpu", candidates, top_k=7)
    assert all7(imgs, objects=wrong) == 1.0  # top-7 of 7 candidates always holds the truth
    q = ClipIqa(metric_models["clip_iqa"], "cpu")(imgs)
    assert 0.0 < q < 1.0


def test_missing_weights_are_all_named_before_anything_runs(metric_models, tmp_path):
    from stylexfer.errors import ModelNotFoundError
    from stylexfer.evaluate import preflight

    models = dict(
        metric_models,
        dino=str(tmp_path / "no_dino"),
        fid=str(tmp_path / "no_fid.safetensors"),
        clip_iqa="someone/not-cached-clip",
    )
    ev = _eval_cfg(models, skip_missing=False)
    with pytest.raises(ModelNotFoundError) as e:
        preflight(ev, demo=False)
    msg = str(e.value)
    assert "\n" not in msg
    for key in ("eval.models.dino", "eval.models.fid", "eval.models.clip_iqa", "no_dino", "someone/not-cached-clip"):
        assert key in msg
    assert "eval.models.lpips" not in msg and "eval.models.clip_r" not in msg  # those are present
    ev.skip_missing = True
    assert set(preflight(ev, demo=False)) == {"dino", "fid", "clip_iqa"}
    ev.skip_missing = None  # null: skip for the demo model, fail for a real one
    assert set(preflight(ev, demo=True)) == {"dino", "fid", "clip_iqa"}
    with pytest.raises(ModelNotFoundError):
        preflight(ev, demo=False)


def test_a_pickled_lora_adapter_converts_to_safetensors_with_the_same_tensors(tmp_path):
    """JDiffusion writes pytorch_lora_weights.bin (a pickle): convert_weights lora reads it with the restricted
    unpickler and writes the same keys and tensors as safetensors beside it; a non-weights file fails in one line."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    state = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.randn(4, 320),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight": torch.randn(320, 4),
    }
    src = tmp_path / "style_00" / "pytorch_lora_weights.bin"
    src.parent.mkdir()
    torch.save(state, src)
    r = subprocess.run(
        [sys.executable, "-m", "stylexfer.tools.convert_weights", "lora", "--src", str(src)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    out = load_file(str(src.with_suffix(".safetensors")))
    assert set(out) == set(state) and all(torch.equal(out[k], state[k]) for k in state)
    src.write_bytes(b"not a pickle")
    r = subprocess.run(
        [sys.executable, "-m", "stylexfer.tools.convert_weights", "lora", "--src", str(src)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "not a PyTorch weights file" in r.stderr
