"""Scores during training (``train.validate_every``): the adapters kept every N steps, sampled and scored after
training; the best step per style."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from helpers import compose, run_cli
from stylexfer.config import validate
from stylexfer.errors import ConfigError
from stylexfer.train import kept_steps, validation_steps
from stylexfer.validate import best_step, validation_plot

FAST = ["+strategy=safe", "data.max_objects=1", "prior=none", "scheduler.steps=2", "eval.metrics=[hist]"]


def test_the_validation_steps_and_the_best_one():
    cfg = compose(["train.steps=800", "train.validate_every=300"], strategy="safe")
    assert validation_steps(cfg) == [300, 600] and kept_steps(cfg) == [600, 300]
    cfg.train.lr_scheduler = "cosine"  # kept all the same (under keys of this run's own)
    assert kept_steps(cfg) == [600, 300]
    assert validation_steps(compose(["train.validate_every=0"], strategy="safe")) == []
    assert best_step({100: {"final": 0.2}, 200: {"final": 0.3}, 300: {"final": 0.3}}) == 200  # earliest of ties
    assert best_step({100: {"final": None, "attribution": 0.5}, 200: {"final": None, "attribution": 0.1}}) == 100
    assert best_step({100: {}}) is None
    png = validation_plot({"00": {1: {"final": 0.1}, 2: {"final": 0.2}}, "01": {1: {"final": 0.3}}}, ["hist", "final"])
    with Image.open(io.BytesIO(png)) as im:
        assert im.size[0] > 300  # one panel: final (no style has hist)
    assert validation_plot({"00": {1: {}}}, ["final"]) is None


@pytest.mark.parametrize(
    "over, rule",
    [
        (["train.validate_every=-1"], r"^train\.validate_every=-1: must be >= 0"),
        (["train.steps=100", "train.validate_every=200"], r"^train\.validate_every=200: is beyond train\.steps=100"),
        (["train.validate_every=100", "train.fp8=true"], r"^train\.validate_every=100: cannot keep adapters"),
        (["train.validate_every=100", "backend=jittor"], r"^train\.validate_every=100: the jittor backend keeps no"),
    ],
)
def test_bad_validation_settings_are_refused_naming_the_key(over, rule):
    with pytest.raises(ConfigError, match=rule):
        validate(compose(over, strategy="safe"))


@pytest.mark.slow
def test_a_validated_run_scores_each_kept_adapter_as_a_run_of_that_many_steps_would(tmp_path):
    """Four steps, validated every 2, two styles: step 2's scores equal those of a 2-step run made in a store of
    its own (the same adapter, images and scores); step 4's are the run's; the best step is the argmax; under a
    cosine schedule the kept adapters have keys of the run's own (a 2-step run does not find them)."""
    store = {"STYLEXFER_CACHE": str(tmp_path / "store")}
    run = tmp_path / "run"
    args = [*FAST, "data.styles=[00,01]", "train.steps=4", "train.validate_every=2", "logger=[csv,tensorboard]"]
    res = run_cli([*args, f"hydra.run.dir={run}"], tmp_path, env_extra=store)

    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    record = json.loads((run / "validation.json").read_text())
    assert record["steps"] == [2, 4] and summary["validation"]["every"] == 2
    two = tmp_path / "two"
    res = run_cli(
        [*FAST, "data.styles=[00,01]", "train.steps=2", f"hydra.run.dir={two}"],
        tmp_path,
        env_extra={"STYLEXFER_CACHE": str(tmp_path / "own")},
    )
    assert res.returncode == 0 and "trained 2 styles in one pass" in res.stderr
    alone = json.loads((two / "summary.json").read_text())
    for sid in ("00", "01"):
        curve = record["styles"][sid]
        assert curve["2"]["hist"] == alone["styles"][sid]["scores"]["hist"]
        assert curve["4"]["hist"] == summary["styles"][sid]["scores"]["hist"]
        by = "final" if curve["4"].get("final") is not None else "attribution"
        assert summary["validation"]["best_step"][sid] == best_step({int(k): v for k, v in curve.items()})
        assert by in curve["2"]
    assert (run / "validation/step-0000002/images/00").is_dir() and (
        run / "validation/step-0000002/scores.json"
    ).is_file()
    manifest = json.loads((run / "sha256.json").read_text())
    assert any(k.startswith("validation/step-0000002/images/01/") for k in manifest)
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = list(csv.DictReader((run / "logs/csv/validation.csv").open()))  # the loggers get every metric per step
    hist = {(r["step"], r["style"]): float(r["value"]) for r in rows if r["metric"] == "hist"}
    assert hist == {(k, sid): record["styles"][sid][k]["hist"] for sid in ("00", "01") for k in ("2", "4")}
    ea = EventAccumulator(str(run / "logs/tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    scalars = ea.Scalars("validation/hist/01")
    assert [e.step for e in scalars] == [2, 4]
    assert [e.value for e in scalars] == pytest.approx([record["styles"]["01"][k]["hist"] for k in ("2", "4")])
    with Image.open(run / "validation.png") as im:
        assert im.size[0] >= 400
    assert "![validation](validation.png)" in (run / "summary.md").read_text()

    cos = tmp_path / "cosine"
    args = [*FAST, "data.styles=[00]", "train.lr_scheduler=cosine", "train.steps=4", "train.validate_every=2"]
    res = run_cli([*args, f"hydra.run.dir={cos}"], tmp_path, env_extra=store)
    assert res.returncode == 0 and "kept its adapter at step 2 as" in res.stderr and "(for validation)" in res.stderr
    res = run_cli([*args[:-2], "train.steps=2", f"hydra.run.dir={tmp_path / 'cos2'}"], tmp_path, env_extra=store)
    assert res.returncode == 0 and "trained adapter" in res.stderr and "reusing it" not in res.stderr
