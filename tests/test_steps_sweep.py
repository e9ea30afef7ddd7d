"""A steps sweep that trains once (``train.keep_steps``): under a learning rate that does not depend on the total,
step k of a longer run is the k-step run, so the longer run keeps the shorter runs' adapters under their keys and
continues from where a shorter run ended; under one that depends on it (cosine, linear) nothing is shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from helpers import compose, run_cli
from stylexfer.config import validate
from stylexfer.errors import ConfigError
from stylexfer.specs import SCHEDULING_KEYS
from stylexfer.train import continues, kept_steps, lock_order

FAST = ["data.max_objects=1", "prior=none", "scheduler.steps=2", "eval.metrics=[hist]"]


def _adapter(run: Path, style: str) -> dict:
    return load_file(str(run / "adapters" / style / "pytorch_lora_weights.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _key(run: Path, style: str) -> str:
    return json.loads((run / "summary.json").read_text())["styles"][style]["adapter_key"]


def test_which_steps_a_run_keeps_and_whether_a_longer_one_continues_from_it():
    cfg = compose(["train.steps=400", "train.keep_steps=[200,400,800,100]"], strategy="safe")
    assert kept_steps(cfg) == [200, 100] and continues(cfg)
    assert "keep_steps" in SCHEDULING_KEYS  # not in the adapter's key: a kept adapter is found by a k-step run
    cfg.train.lr_scheduler = "constant_with_warmup"
    assert kept_steps(cfg) == [200, 100]  # the warm-up does not depend on the total either
    for sched in ("cosine", "linear"):
        cfg.train.lr_scheduler = sched
        assert kept_steps(cfg) == [] and not continues(cfg)
    cfg = compose(["train.steps=400", "train.keep_steps=[200]", "train.fp8=true"], strategy="safe")
    assert kept_steps(cfg) == [] and not continues(cfg)
    a = {"train": {"steps": 800}, "x": 1}
    b = {"train": {"steps": 200}, "x": 1}
    c = {"train": {"steps": 800}, "x": 2}
    order = lock_order([b, c, a, b])
    assert len(order) == 3 and order[-1] == lock_order([b])[0]  # most steps first, each key once


def test_keep_steps_under_a_schedule_that_depends_on_the_total_is_refused_naming_the_key(tmp_path):
    cfg = compose(["train.keep_steps=[200]", "train.lr_scheduler=cosine"], strategy="safe")
    with pytest.raises(ConfigError, match=r"^train\.keep_steps=\[200\]: needs a learning rate that does not depend"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"^train\.keep_steps=\[0\]: every step must be >= 1"):
        validate(compose(["train.keep_steps=[0]"], strategy="safe"))
    run = tmp_path / "run"
    res = run_cli(
        ["+strategy=safe", "train.keep_steps=[2]", "train.lr_scheduler=linear", f"hydra.run.dir={run}"], tmp_path
    )
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: train.keep_steps=[2]: needs")
    assert not (run / "summary.json").exists() and not (run / "adapters").exists()


@pytest.mark.slow
def test_a_longer_run_keeps_a_shorter_runs_adapter_bit_identical(tmp_path):
    """One style (the one-style path): a 4-step run keeping step 2, then a 2-step run in the same store finds its
    adapter; it equals, tensor for tensor, a 2-step run trained in a store of its own."""
    one, other = tmp_path / "store", tmp_path / "other"
    args = [*FAST, "+strategy=safe", "data.styles=[00]", "train.checkpoint_every=3"]
    res = run_cli(
        [*args, "train.steps=4", "train.keep_steps=[2]", f"hydra.run.dir={tmp_path / 'long'}"],
        tmp_path,
        env_extra={"STYLEXFER_CACHE": str(one)},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "style 00: kept its adapter at step 2 as" in res.stderr
    res = run_cli(
        [*args, "train.steps=2", f"hydra.run.dir={tmp_path / 'short'}"],
        tmp_path,
        env_extra={"STYLEXFER_CACHE": str(one)},
    )
    assert "found in the store: reusing it, nothing to train" in res.stderr
    res = run_cli(
        [*args, "train.steps=2", f"hydra.run.dir={tmp_path / 'alone'}"],
        tmp_path,
        env_extra={"STYLEXFER_CACHE": str(other)},
    )
    assert res.returncode == 0 and "trained adapter" in res.stderr
    assert _key(tmp_path / "short", "00") == _key(tmp_path / "alone", "00")
    kept, alone = _adapter(tmp_path / "short", "00"), _adapter(tmp_path / "alone", "00")
    assert _same(kept, alone) and max(np.abs(v).max() for k, v in alone.items() if ".up." in k) > 0  # trained
    record = json.loads((tmp_path / "short" / "adapters/00/train.json").read_text())
    assert record["snapshot_of"] == _key(tmp_path / "long", "00") and len(record["losses"]) == 2


@pytest.mark.slow
def test_a_steps_sweep_trains_once_in_either_order_and_not_under_cosine(tmp_path):
    """``-m train.steps=2,4`` over two styles (the batched pass): the 4-step job continues from the 2-step job's
    end (shortest first) or keeps its adapter (longest first), and its adapters equal a 4-step run's of a store of
    their own; under a cosine schedule both jobs train from the start."""
    args = [*FAST, "+strategy=safe", "data.styles=[00,01]"]
    alone = tmp_path / "alone"
    res = run_cli(
        [*args, "train.steps=4", f"hydra.run.dir={alone}"],
        tmp_path,
        env_extra={"STYLEXFER_CACHE": str(tmp_path / "s0")},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    for order, store in (("2,4", "s1"), ("4,2", "s2")):
        sweep = tmp_path / f"sweep-{store}"
        res = run_cli(
            ["-m", *args, f"train.steps={order}", f"hydra.sweep.dir={sweep}"],
            tmp_path,
            env_extra={"STYLEXFER_CACHE": str(tmp_path / store)},
        )
        assert res.returncode == 0, res.stderr[-2000:]
        if order == "2,4":
            assert "styles 00, 01: continuing from step 2, where a train.steps=2 run ended" in res.stderr
        else:
            assert (
                "style 01: kept its adapter at step 2" in res.stderr
                and res.stderr.count("reusing it, nothing to train") == 2
            )
        long_job = sweep / ("1" if order == "2,4" else "0")
        assert json.loads((long_job / "summary.json").read_text())["config"]["train"]["steps"] == 4
        for style in ("00", "01"):
            assert _same(_adapter(long_job, style), _adapter(alone, style)), (order, style)
    sweep = tmp_path / "sweep-cosine"
    res = run_cli(
        ["-m", *args, "train.lr_scheduler=cosine", "train.steps=2,4", f"hydra.sweep.dir={sweep}"],
        tmp_path,
        env_extra={"STYLEXFER_CACHE": str(tmp_path / "s3")},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "continuing from" not in res.stderr and "kept its adapter" not in res.stderr
    assert res.stderr.count("trained 2 styles in one pass") == 2
