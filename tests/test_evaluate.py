"""The evaluation stage end to end: the CLI on any folder of images, and a run whose summary carries
all six metrics and the final score once every metric's weights are configured (tiny random models)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import metric_overrides
from stylexfer.metrics import METRIC_NAMES, score_components


def _evaluate(args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "stylexfer.evaluate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _upload(demo_root: Path, dest: Path, styles=("00", "01")) -> Path:
    """A competition-style upload folder: <dest>/<style>/<Object>.png, here the styles' own images."""
    from stylexfer.data import discover_styles

    for s in discover_styles(demo_root, styles=list(styles)):
        (dest / s.id).mkdir(parents=True)
        for obj, path in zip(s.image_objects[:4], s.image_paths[:4]):
            shutil.copy(path, dest / s.id / f"{obj.replace(' ', '_').title()}.png")
    return dest


def test_evaluate_cli_scores_any_folder_with_all_six_metrics(metric_models, demo_root, tmp_path):
    upload = _upload(demo_root, tmp_path / "upload")
    r = _evaluate([f"images={upload}", f"data.root={demo_root}", *metric_overrides(metric_models),
                   f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert set(doc["styles"]) == {"00", "01"} and doc["unavailable"] == {}
    for sid, st in doc["styles"].items():
        assert st["images"] == 4 and all(m in st for m in METRIC_NAMES)
        assert st["lpips"] == pytest.approx(st["lpips"]) and st["lpips"] >= 0
        assert st["final"] == pytest.approx(score_components(**{m: st[m] for m in METRIC_NAMES})["final"])
    ov = doc["overall"]
    assert ov["dino"] == pytest.approx((doc["styles"]["00"]["dino"] + doc["styles"]["01"]["dino"]) / 2)
    assert ov["final"] == pytest.approx(score_components(**{m: ov[m] for m in METRIC_NAMES})["final"])
    assert doc["models"]["dino"] == metric_models["dino"]
    md = (tmp_path / "out" / "scores.md").read_text()
    assert "**overall**" in md and f"final {ov['final']:.6f}" in md


def test_evaluate_cli_bad_input_is_one_line_and_writes_nothing(metric_models, demo_root, tmp_path):
    r = _evaluate([f"images={tmp_path / 'nope'}", f"data.root={demo_root}", *metric_overrides(metric_models),
                   f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: images=")
    assert not (tmp_path / "out").exists()
    r = _evaluate([f"images={tmp_path}", "eval.skip_missing=false", "eval.models.dino=/nowhere",
                   f"hydra.run.dir={tmp_path / 'out2'}"], cwd=tmp_path)
    assert r.returncode != 0 and "eval.models.dino" in r.stderr and "Traceback" not in r.stderr
    r = _evaluate([f"images={tmp_path}", "eval.fid_dims=100", f"hydra.run.dir={tmp_path / 'out3'}"], cwd=tmp_path)
    assert r.returncode != 0 and "eval.fid_dims=100" in r.stderr


@pytest.mark.slow
def test_a_run_with_every_metric_configured_reports_all_six_and_the_final_score(metric_models, cli, tmp_path):
    r = cli(["train.steps=4", "data.max_objects=2", "prior=none", "scheduler.steps=4", "name=all_metrics",
             *metric_overrides(metric_models), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["unavailable"] == {} and all(m in s["scores"] for m in METRIC_NAMES)
    assert s["scores"]["final"] == pytest.approx(score_components(**{m: s["scores"][m] for m in METRIC_NAMES})["final"])
    for st in s["styles"].values():
        assert st["scores"]["final"] is not None and st["scores"]["images"] == 2
    assert (tmp_path / "run" / "scores.json").exists() and "final" in (tmp_path / "run" / "summary.md").read_text()
