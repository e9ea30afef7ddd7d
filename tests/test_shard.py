"""One run over several devices (stylexfer/shard.py): which devices a run's workers get, how the pool's
chunks and the styles are split, and — through the CLI, with two CPU worker processes standing in for
two GPUs — that the sharded run ends with the same class images, adapters and images as one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open

from helpers import run_cli
from stylexfer.errors import ConfigError
from stylexfer.sample import make_in_chunks
from stylexfer.shard import plan_devices, shares


def _model(shards, device="auto"):
    return OmegaConf.create({"shards": shards, "device": device})


@pytest.mark.parametrize(
    "shards,device,sweep,gpus,expect",
    [
        (0, "auto", False, 2, ["cuda:0", "cuda:1"]),  # a single run takes every visible GPU
        (0, "auto", False, 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        (0, "auto", True, 2, []),  # a sweep job keeps the one GPU it claimed
        (0, "auto", False, 1, []),
        (0, "auto", False, 0, []),
        (0, "cpu", False, 2, []),
        (0, "cuda:1", False, 2, []),
        (1, "auto", False, 8, []),
        (2, "cpu", False, 0, ["cpu", "cpu"]),
        (3, "auto", False, 0, ["cpu", "cpu", "cpu"]),
        (2, "cuda", True, 2, ["cuda:0", "cuda:1"]),
    ],
)
def test_plan_devices(shards, device, sweep, gpus, expect):
    assert plan_devices(_model(shards, device), sweep, gpus) == expect


@pytest.mark.parametrize(
    "shards,device,gpus,words",
    [
        (3, "cuda", 2, "model.shards=3: only 2 GPU(s) visible"),
        (2, "cuda:0", 2, "model.shards=2: needs model.device=auto, cuda or cpu"),
        (-1, "auto", 2, "model.shards=-1: must be >= 0"),
    ],
)
def test_plan_devices_rejects(shards, device, gpus, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        plan_devices(_model(shards, device), False, gpus)


def test_styles_and_pool_chunks_are_split_without_overlap(tmp_path):
    ids = [f"{i:02d}" for i in range(14)]
    parts = shares(ids, 3)
    assert sorted(sum(parts, [])) == ids and [len(p) for p in parts] == [5, 5, 4]
    names = [f"{i:05d}.png" for i in range(11)]
    calls = []

    def make(i, j):
        calls.append((i, j))
        return [Image.new("RGB", (8, 8), (i, j, 0)) for _ in range(i, j)]

    for k in range(3):
        make_in_chunks(tmp_path, names, 2, make, lambda n: "x", "t", share=(k, 3))
    assert sorted(calls) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 11)]  # each chunk once
    assert sorted(p.name for p in tmp_path.glob("*.png")) == names
    calls.clear()
    make_in_chunks(tmp_path, names, 2, make, lambda n: "x", "t")  # the parent finds the pool complete
    assert calls == []


SMALL = [
    "train.steps=12",
    "train.checkpoint_every=0",
    "prior=shared",
    "prior.num_class_images=6",
    "prior.batch_size=2",
    "prior.steps=3",
    "scheduler.steps=4",
    "sample.batch_size=2",
    "data.styles=[00,01,02]",
    "data.max_objects=2",
    "augmentation=crop",
    "eval.metrics=[hist]",
    "model.device=cpu",
]


def _outputs(cwd: Path) -> tuple[dict, dict]:
    (run,) = sorted(p for p in cwd.glob("experiments/*/*") if p.is_dir())
    out = {}
    for sid in ("00", "01", "02"):
        with safe_open(str(run / "adapters" / sid / "pytorch_lora_weights.safetensors"), "pt") as f:
            out[f"adapter/{sid}"] = {k: f.get_tensor(k).numpy() for k in f.keys()}
        for img in sorted((run / "images" / sid).glob("*.png")):
            out[f"image/{sid}/{img.name}"] = np.asarray(Image.open(img), dtype=np.int16)
    (pool,) = [p for p in (cwd / "store" / "class_images").iterdir() if not p.name.startswith(".")]
    for img in sorted(pool.glob("*.png")):
        out[f"class/{img.name}"] = np.asarray(Image.open(img), dtype=np.int16)
    return out, json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_two_worker_processes_make_what_one_process_makes(tmp_path, tiny_dir, demo_root):
    results = {}
    for shards in (1, 2):
        cwd = tmp_path / f"shards{shards}"
        cwd.mkdir()
        res = run_cli(
            [f"model.path={tiny_dir}", f"data.root={demo_root}", *SMALL, f"model.shards={shards}"],
            cwd,
            env_extra={"STYLEXFER_CACHE": str(cwd / "store")},
        )
        assert res.returncode == 0, res.stderr[-3000:]
        results[shards] = (*_outputs(cwd), res.stderr)
    one, two = results[1][0], results[2][0]
    log = results[2][2]
    assert "sharding 3 style(s) over 2 worker processes on cpu, cpu" in log
    assert "[shard 0 cpu]" in log and "[shard 1 cpu]" in log
    # shard 0 trained 00 and 02 in one batched pass, shard 1 trained 01 alone; the single process all three
    assert "trained 2 styles in one pass" in log and "trained 3 styles in one pass" in results[1][2]
    assert "makes its styles itself" not in log  # no worker failed
    assert one.keys() == two.keys() and sum(k.startswith("class/") for k in one) == 6
    for k in one:
        if k.startswith("adapter/"):
            assert one[k].keys() == two[k].keys()
            for t in one[k]:  # float32 on CPU: the batched pass equals one style alone to ~2e-5 (test_batched)
                np.testing.assert_allclose(two[k][t], one[k][t], atol=1e-4, err_msg=f"{k} {t}")
        else:  # 8-bit pixels; another thread count may move a rounding
            diff = np.abs(one[k] - two[k])
            assert diff.max() <= 2 and diff.mean() < 0.05, (k, diff.max(), diff.mean())
    summary = results[2][1]
    for sid in ("00", "01", "02"):  # reported as trained by this run, not as reused
        assert summary["styles"][sid]["reused"] is False and summary["styles"][sid]["train_seconds"] > 0
    assert summary["status"] == "finished" and "hist" in summary["scores"]
    # the workers did the class pool, training and sampling; the parent only linked their results
    stages = summary["stage_seconds"]
    assert stages["workers"] > stages["train"] + stages["sample"]
    run2 = next((tmp_path / "shards2").glob("experiments/*/*"))
    assert (run2 / "logs" / "shard0.log").exists() and (run2 / "logs" / "shard1.log").exists()


@pytest.mark.slow
def test_both_remedies_in_two_worker_processes_make_what_one_process_makes(tmp_path):
    """The pocket model with style injection (the average image) and structure control at once: two CPU worker
    processes end with the images, the control images and the injection banks of one process."""
    remedies = ["inject=styleid", "inject.reference=average", "control=canny", "eval.metrics=[hist]"]
    images = {}
    for shards in (1, 2):
        cwd = tmp_path / f"shards{shards}"
        cwd.mkdir()
        res = run_cli(
            [*SMALL, *remedies, f"model.shards={shards}"], cwd, env_extra={"STYLEXFER_CACHE": str(cwd / "store")}
        )
        assert res.returncode == 0, res.stderr[-3000:]
        (run,) = sorted(p for p in cwd.glob("experiments/*/*") if p.is_dir())
        images[shards] = {
            str(p.relative_to(run)): np.asarray(Image.open(p), dtype=np.int16)
            for folder in ("images", "control", "content")
            for p in sorted((run / folder).rglob("*.png"))
        }
        assert (
            len([p for p in (cwd / "store" / "banks").iterdir() if not p.name.startswith(".")]) == 3
        )  # a bank a style
        assert (run / "control.png").is_file()
        if shards == 2:
            assert "[shard 1 cpu]" in res.stderr
    one, two = images[1], images[2]
    assert one.keys() == two.keys() and sum(k.startswith("control/") for k in one) == 6
    for k in one:
        diff = np.abs(one[k] - two[k])
        assert diff.max() <= 2 and diff.mean() < 0.05, (k, diff.max(), diff.mean())
