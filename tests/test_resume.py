"""Fault injection: a real ``python -m stylexfer`` killed (SIGKILL) during class images, training,
between styles and during sampling resumes, on a re-run of the same command, to the same adapters and
images as an uninterrupted run; a bad style fails alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from helpers import run_cli

SMALL = [
    "train.steps=30",
    "train.checkpoint_every=10",
    "prior=shared",
    "prior.num_class_images=6",
    "prior.batch_size=2",
    "prior.steps=3",
    "scheduler.steps=4",
    "sample.batch_size=1",
    "data.styles=[00,01]",
    "data.max_objects=2",
    "augmentation=crop",
    "eval.metrics=[hist]",
]  # the tiny model passed as a real one: only the weight-free metric


def args_for(tiny_dir: Path, demo_root: Path) -> list[str]:
    return [f"model.path={tiny_dir}", f"data.root={demo_root}", *SMALL]


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p for p in cwd.glob("experiments/*/*") if p.is_dir())


def result_of(run_dir: Path) -> dict:
    """Everything a run produced that must match: adapter tensors, losses and image bytes."""
    out = {}
    for sid in ("00", "01"):
        with safe_open(str(run_dir / "adapters" / sid / "pytorch_lora_weights.safetensors"), "pt") as f:
            out[f"adapter/{sid}"] = {k: f.get_tensor(k) for k in f.keys()}
        out[f"losses/{sid}"] = json.loads((run_dir / "adapters" / sid / "train.json").read_text())["losses"]
        for img in sorted((run_dir / "images" / sid).glob("*.png")):
            out[f"image/{sid}/{img.name}"] = img.read_bytes()
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("adapter/"):
            assert a[k].keys() == b[k].keys()
            for t in a[k]:
                assert (a[k][t] == b[k][t]).all(), f"{k} {t}"
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_dir, demo_root):
    cwd = tmp_path_factory.mktemp("reference")
    res = run_cli(args_for(tiny_dir, demo_root), cwd, env_extra={"STYLEXFER_CACHE": str(cwd / "store")})
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(cwd)
    return result_of(run)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point,expect",
    [
        ("class:3", "generating 6 class images with the base model"),
        ("train:00:20", "resuming training from their checkpoint at step 20"),  # 00 and 01 train in one batch
        ("style:00", "style 00: adapter"),
        ("sample:01:1", "style 01: adapter"),
    ],
)
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_dir, demo_root, reference, point, expect):
    env = {"STYLEXFER_CACHE": str(tmp_path / "store")}
    killed = run_cli(args_for(tiny_dir, demo_root), tmp_path, env_extra={**env, "STYLEXFER_KILL_AT": point})
    assert killed.returncode == -9, killed.stderr[-2000:]  # it really died there
    (first,) = run_dirs(tmp_path)
    assert not (first / "summary.json").exists()
    resumed = run_cli(args_for(tiny_dir, demo_root), tmp_path, env_extra=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert expect in resumed.stderr
    if point == "class:3":
        assert "4 already made" in resumed.stderr
    if point in ("style:00", "sample:01:1"):
        assert "style 00: adapter" in resumed.stderr and "nothing to train" in resumed.stderr
        assert "style 00: images" in resumed.stderr  # style 00's images were finished: reused, not redone
    second = [d for d in run_dirs(tmp_path) if d != first]
    assert len(second) == 1 and (second[0] / "summary.json").exists()
    assert_same(result_of(second[0]), reference)
    assert not list((tmp_path / "store").glob("*/.partial/*"))  # no resume state left behind


@pytest.mark.slow
def test_a_bad_style_fails_alone_and_the_exit_code_says_so(tmp_path, tiny_dir, demo_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    broken = sorted((root / "01" / "images").glob("*.png"))[0]
    broken.write_bytes(b"\x89PNG truncated")
    res = run_cli(
        [
            f"model.path={tiny_dir}",
            f"data.root={root}",
            "train.steps=3",
            "prior=none",
            "scheduler.steps=3",
            "data.max_objects=1",
            "eval.skip_missing=true",
        ],
        tmp_path,
    )
    assert res.returncode == 1
    assert f"style 01 skipped: {broken}: cannot read image" in res.stderr
    assert "error: 1 of 3 style(s) failed (01:" in res.stderr
    (run,) = run_dirs(tmp_path)
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "partial" and list(s["failed_styles"]) == ["01"]
    assert set(k for k, v in s["styles"].items() if "scores" in v) == {"00", "02"}
    first_object = json.loads((root / "02" / "prompt.json").read_text())["0"]
    assert Image.open(run / "images" / "02" / f"{first_object}.png").size == (64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name,code", [("INT", 130), ("TERM", 143)])
def test_an_interrupted_run_says_where_it_stopped_and_resumes_without_a_warning(
    tmp_path, tiny_dir, demo_root, reference, signal_name, code
):
    """Ctrl-C (SIGINT) and a scheduler's SIGTERM mid-training: one line saying where the run stopped and that
    the same command resumes it; the checkpoint is whole; the re-run is bit-identical and warns of nothing."""
    env = {"STYLEXFER_CACHE": str(tmp_path / "store")}
    stopped = run_cli(
        args_for(tiny_dir, demo_root),
        tmp_path,
        env_extra={**env, "STYLEXFER_KILL_AT": "train:00:20", "STYLEXFER_KILL_SIGNAL": signal_name},
    )
    assert stopped.returncode == code, stopped.stderr[-2000:]
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: interrupted (SIG{signal_name}) in style 00's training, its checkpoint of step 20 saved: "
        "run the same command to resume (finished stages and the last checkpoint are reused)"
    ]
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    (ckpt,) = (tmp_path / "store").glob("adapters/.partial/*/step-0000020")  # complete, under its final name
    assert {p.name for p in ckpt.iterdir()} == {"state.safetensors", "state.json"}
    resumed = run_cli(args_for(tiny_dir, demo_root), tmp_path, env_extra=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming training from their checkpoint at step 20" in resumed.stderr
    assert "lr_scheduler.step()" not in resumed.stderr and "Warning" not in resumed.stderr
    (second,) = [d for d in run_dirs(tmp_path) if (d / "summary.json").exists()]
    assert_same(result_of(second), reference)
