"""The shipped pocket model (stylexfer/assets/pocket/, made by ``python -m stylexfer.world pretrain`` on a GPU):
its files are what its record says, it is the default model and is scored by the world suite, it draws the
requested objects, and the default demo's DreamBooth-LoRA training moves its images towards the held-out
styles it never saw."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from helpers import compose, run_cli
from stylexfer.embedded import POCKET_DIR, pocket_model_dir
from stylexfer.errors import ModelNotFoundError


def test_the_shipped_weights_match_their_record_and_stay_small():
    rec = json.loads((POCKET_DIR / "pocket.json").read_text())
    files = sorted(POCKET_DIR.rglob("*.safetensors"))
    assert {str(f.relative_to(POCKET_DIR)) for f in files} == set(rec["weights_sha256"]) and len(files) == 3
    for f in files:
        assert hashlib.sha256(f.read_bytes()).hexdigest() == rec["weights_sha256"][str(f.relative_to(POCKET_DIR))]
        assert f.stat().st_size < 16 * 2**20
    assert sum(f.stat().st_size for f in POCKET_DIR.rglob("*") if f.is_file()) <= 30e6
    assert rec["random_weights"] is False and rec["unet_steps_done"] > 1000
    assert rec["vae_reconstruction_mse"]["held_out"] < 0.02  # the codec reconstructs the held-out styles
    assert pocket_model_dir() == POCKET_DIR


def test_a_damaged_pocket_model_is_refused_in_one_line_naming_the_file(tmp_path):
    copy = tmp_path / "pocket"
    shutil.copytree(POCKET_DIR, copy)
    unet = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(unet.read_bytes())
    data[-1] ^= 1
    unet.write_bytes(bytes(data))
    with pytest.raises(ModelNotFoundError, match=r"unet/diffusion_pytorch_model\.safetensors: sha256 differs") as e:
        pocket_model_dir(copy)
    assert "\n" not in str(e.value)
    unet.unlink()
    with pytest.raises(ModelNotFoundError, match="missing"):
        pocket_model_dir(copy)


def test_the_default_model_is_the_pocket_model_scored_by_the_world_suite(cache_dir):
    from stylexfer.models import resolve_model

    cfg = compose([])
    assert cfg.model.name == "pocket" and cfg.model.path is None and str(cfg.eval.suite.value) == "world"
    r = resolve_model(cfg.model, cache_dir)
    assert r.folder == POCKET_DIR and r.random_weights is False and "pocket world" in r.notice
    assert r.prediction_type == "epsilon"
    tiny = compose(["model=tiny"])  # the random-weight model for plumbing keeps the reference suite
    assert tiny.model.name == "tiny" and str(tiny.eval.suite.value) == "reference"
    assert resolve_model(tiny.model, cache_dir).random_weights is True
    with pytest.raises(ModelNotFoundError, match=r"model.name=sd21"):
        resolve_model(compose(["model=sd21", "model.path=null"]).model, cache_dir)


@pytest.mark.slow
def test_the_base_model_draws_the_requested_objects():
    """The judge recognises the requested object in the pocket model's text-to-image samples (issue target:
    >= 0.8; observed 1.00 on 56 samples, 4 per object, 30 steps) and attributes none of them to a held-out style."""
    from stylexfer.world.check import base_model_check

    rec, images = base_model_check(per_object=2, steps=20)
    assert len(images) == 28 and images[0].size == (64, 64)
    assert rec["object_accuracy"] >= 0.8, rec["per_object_accuracy"]
    assert rec["held_out_attribution"] <= 0.1, rec["styles_attributed"]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The README's demo (``python -m stylexfer +strategy=safe``) and the same with train.steps=0."""
    root = tmp_path_factory.mktemp("demo")
    cache = root / "cache"
    runs = {}
    for name, extra in (("safe", []), ("untrained", ["train.steps=0"])):
        res = run_cli(["+strategy=safe", f"name={name}", f"paths.cache_dir={cache}", *extra], root, timeout=1200)
        assert res.returncode == 0, res.stderr[-3000:]
        (run_dir,) = (root / "experiments" / name).iterdir()
        runs[name] = run_dir
    return runs


@pytest.mark.slow
def test_the_demo_reports_all_six_world_metrics_and_a_final_score(demo_runs):
    s = json.loads((demo_runs["safe"] / "summary.json").read_text())
    assert s["status"] == "finished" and not s["unavailable"] and s["model"]["random_weights"] is False
    assert "pocket world" in s["notice"]
    for name in ("dino", "hist", "lpips", "clip_r", "fid", "clip_iqa", "final"):
        assert isinstance(s["scores"][name], float), name
    assert 0 < s["scores"]["final"] < 1 and sorted(s["styles"]) == ["00", "01", "02"]
    assert all(len(st["images"]) == 6 for st in s["styles"].values())  # 2 objects drawn in the style + 4 absent
    assert "pocket judge" in json.dumps(s["metric_models"])


@pytest.mark.slow
def test_training_moves_the_images_towards_the_held_out_styles(demo_runs):
    """After +strategy=safe training the judge attributes the images to their style far more often than the
    untrained model's (observed on CPU: 0.50 vs 0.00), and the world style score rises (0.40 vs 0.32)."""
    from stylexfer.world.metrics import run_attribution

    trained, untrained = run_attribution(demo_runs["safe"]), run_attribution(demo_runs["untrained"])
    assert trained["mean"] >= untrained["mean"] + 0.25, (trained, untrained)
    dino = {k: json.loads((d / "summary.json").read_text())["scores"]["dino"] for k, d in demo_runs.items()}
    assert dino["safe"] >= dino["untrained"] + 0.03, dino


def test_a_style_with_one_image_gets_every_metric_but_fid_and_no_final_score(demo_root, tmp_path):
    """data.max_objects=1 makes one image per style: a Fréchet distance needs two, so FID is reported
    unavailable (named, with the reason) instead of failing the run after its training."""
    from stylexfer.data import discover_styles
    from stylexfer.evaluate import evaluate

    styles = discover_styles(demo_root, styles=["00", "01"])
    upload = tmp_path / "upload"
    for s, n in zip(styles, (1, 3)):
        (upload / s.id).mkdir(parents=True)
        for obj, path in zip(s.image_objects[:n], s.image_paths[:n]):
            shutil.copy(path, upload / s.id / f"{obj}.png")
    doc = evaluate(upload, styles, compose([]).eval, "cpu")
    one, three = doc["styles"]["00"], doc["styles"]["01"]
    assert "fid" not in one and one["final"] is None and one["images"] == 1
    assert {"dino", "hist", "lpips", "clip_r", "clip_iqa", "attribution"} <= set(one)
    assert three["fid"] >= 0 and three["final"] is not None
    assert "fid" not in doc["overall"] and doc["overall"]["final"] is None
    assert "00" in doc["unavailable"]["fid"]
