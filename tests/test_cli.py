"""The CLI as a user runs it: the embedded default end to end, stage reuse, sweeps, and bad input."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, run_cli

QUICK = ["train.steps=5", "prior=none", "scheduler.steps=4", "data.styles=[00]", "data.max_objects=1"]


def finished_runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("experiments/*/*/summary.json"))


@pytest.fixture(scope="module")
def safe_runs(tmp_path_factory, cache_dir, tiny_dir):
    """The README's main command on the random-weight tiny model (plumbing: the pocket model's own run is
    tests/test_pocket.py), then the same with an inference-only change, then with init=noise."""
    cwd = tmp_path_factory.mktemp("safe")
    first = run_cli(["+strategy=safe", "model=tiny"], cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(["+strategy=safe", "model=tiny", "init.strength=0.8"], cwd)
    assert second.returncode == 0, second.stderr[-3000:]
    third = run_cli(["+strategy=safe", "model=tiny", "init=noise"], cwd)
    assert third.returncode == 0, third.stderr[-3000:]
    runs = finished_runs(cwd)
    assert len(runs) == 3
    by_strength = {}
    for r in runs:
        s = json.loads((r / "summary.json").read_text())
        by_strength[(s["config"]["init"]["mode"], s["config"]["init"]["strength"])] = (r, s)
    return first, second, third, by_strength


@pytest.mark.slow
def test_safe_strategy_runs_end_to_end(safe_runs):
    first, _, _, runs = safe_runs
    run_dir, s = runs[("avg_image", 0.9)]
    assert s["status"] == "finished" and s["name"] == "safe"
    assert set(s["styles"]) == {"00", "01", "02"}
    for sid, st in s["styles"].items():
        assert not st["reused"]
        assert (run_dir / "adapters" / sid / "pytorch_lora_weights.safetensors").stat().st_size > 1000
        assert len(st["images"]) == 6  # prompt.json: 2 objects drawn in the style's images, 4 absent
        for f in st["images"]:
            assert Image.open(run_dir / f).size == (64, 64)
        assert -1.0 <= st["scores"]["hist"] <= 1.0 and st["scores"]["final"] is None
        record = json.loads((run_dir / "adapters" / sid / "train.json").read_text())
        assert len(record["losses"]) == 800
        assert np.mean(record["losses"][-100:]) < np.mean(record["losses"][:100])  # it learned something
    assert s["scores"]["hist"] == pytest.approx(np.mean([st["scores"]["hist"] for st in s["styles"].values()]))
    assert s["model"]["random_weights"] and "RANDOM weights" in (run_dir / "summary.md").read_text()
    assert "RANDOM weights" in first.stderr
    assert (run_dir / "grid.png").exists() and (run_dir / "main.log").exists()
    stages = s["stage_seconds"]  # where the run's time went
    assert set(stages) == {"train", "sample", "score"} and all(v > 0 for v in stages.values())
    assert sum(stages.values()) <= s["seconds"]
    assert (
        f"- stages: class pool and training {stages['train']:.1f} s, sampling" in (run_dir / "summary.md").read_text()
    )
    first_object = json.loads((Path(s["data_root"]) / "00" / "prompt.json").read_text())["0"]
    assert (run_dir / "images" / "00" / f"{first_object}.png").exists()


@pytest.mark.slow
def test_inference_only_override_trains_nothing_and_changes_images(safe_runs):
    _, second, _, runs = safe_runs
    (r1, s1), (r2, s2) = runs[("avg_image", 0.9)], runs[("avg_image", 0.8)]
    assert second.stderr.count("nothing to train") == 3 and "trained adapter" not in second.stderr
    assert "generating" not in second.stderr  # nor class images
    assert s2["stage_seconds"]["train"] < s1["stage_seconds"]["train"] / 4  # reusing is not training
    for sid in s1["styles"]:
        assert s2["styles"][sid]["reused"] and s2["styles"][sid]["adapter_key"] == s1["styles"][sid]["adapter_key"]
        for f in s1["styles"][sid]["images"]:
            assert (np.asarray(Image.open(r1 / f)) != np.asarray(Image.open(r2 / f))).any()


@pytest.mark.slow
def test_average_image_init_matches_the_style_colours_better_than_noise(safe_runs):
    runs = safe_runs[3]
    avg = runs[("avg_image", 0.9)][1]["scores"]["hist"]
    (noise,) = [s["scores"]["hist"] for (mode, _), (_, s) in runs.items() if mode == "noise"]
    assert avg > 1.1 * noise, (avg, noise)


def _bad(tmp_path: Path, tiny_dir: Path) -> dict:
    empty = tmp_path / "data_empty"
    (empty / "07" / "images").mkdir(parents=True)
    corrupt = tmp_path / "data_corrupt"
    (corrupt / "00" / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(corrupt / "00" / "images" / "Cat.png")
    (corrupt / "00" / "images" / "Dog.png").write_bytes(b"not a png at all")
    (corrupt / "00" / "prompt.json").write_text('["cat"]')
    return {
        "unknown key": (["lora.unet_rnk=4"], r"unet_rnk"),
        "rank 0": (["lora.unet_lora_rank=0"], r"^error: lora\.unet_lora_rank=0: must be >= 1$"),
        "strength 1.5": (["init.strength=1.5"], r"^error: init\.strength=1\.5: must be in \(0, 1\]$"),
        "missing root": (
            [f"data.root={tmp_path}/nowhere"],
            rf"^error: data\.root={tmp_path}/nowhere: no such folder$",
        ),
        "empty style": ([f"data.root={empty}"], rf"^error: {empty}/07/images: no images"),
        "corrupt image": ([f"data.root={corrupt}"], rf"^error: {corrupt}/00/images/Dog\.png: cannot read image"),
        "missing model folder": (
            [f"model.path={tmp_path}/no_model"],
            rf"^error: model\.path={tmp_path}/no_model: no such folder$",
        ),
        "sd21 offline": (
            ["model=sd21"],
            r"^error: model\.path=stabilityai/stable-diffusion-2-1: weights not in the local Hugging Face cache "
            r"and the hub is offline",
        ),
        # a real model (not the demo): missing metric weights stop the run before training, all named
        "metric weights": (
            ["model=tiny", f"model.path={tiny_dir}"],
            r"^error: metric weights missing for dino, lpips, clip_r, fid, "
            r"clip_iqa: dino: facebook/dinov2-base: .*eval\.models\.lpips.*eval\.models\.clip_iqa.* "
            r"or set eval\.skip_missing=true",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown key",
        "rank 0",
        "strength 1.5",
        "missing root",
        "empty style",
        "corrupt image",
        "missing model folder",
        "sd21 offline",
        "metric weights",
    ],
)
def test_bad_input_gets_one_clear_line_and_leaves_nothing(tmp_path, cache_dir, demo_root, tiny_dir, case):
    args, pattern = _bad(tmp_path, tiny_dir)[case]
    res = run_cli(args, tmp_path, timeout=300, env_extra={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode != 0
    assert re.search(pattern, res.stderr, re.MULTILINE), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("experiments/*/*")), "a failed run left a run folder behind"


def test_a_regular_install_carries_its_configs_and_runs_from_any_folder(tmp_path):
    """``pip install .`` (not editable): the configs, sweep presets and shipped weights travel inside the package."""
    import subprocess
    import sys

    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "stylexfer" / "_conf" / "config.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-m", "stylexfer", "--help"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "strategy: aggressive, baseline, safe" in out.stdout and "backend: jittor, torch" in out.stdout
    cfg = subprocess.run(
        [sys.executable, "-m", "stylexfer", "+ablation=unet_lora_rank", "--cfg", "hydra"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cfg.returncode == 0 and "lora.unet_lora_rank: 4,16,32,64" in cfg.stdout, cfg.stderr[-2000:]
    code = "import stylexfer.app as a; print(a.CONFIG_DIR)"
    where = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.stdout.strip() == str(target / "stylexfer" / "_conf")
    # the shipped pocket model and judge travel too, and pass their hash checks from there
    code = (
        "from stylexfer.embedded import pocket_model_dir; from stylexfer.world.judge import judge_record; "
        "print(pocket_model_dir()); judge_record()"
    )
    pocket = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert pocket.returncode == 0, pocket.stderr[-2000:]
    assert pocket.stdout.strip() == str(target / "stylexfer" / "assets" / "pocket")
    for f in ("model_index.json", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json", "unet/config.json"):
        assert (target / "stylexfer" / "assets" / "pocket" / f).is_file(), f
