"""Loggers read back through their own libraries, the learning rates they log against diffusers' schedules,
and the run's loss plot."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers import compose
from stylexfer.loggers import lr_at

QUICK = [
    "train.steps=12",
    "prior=none",
    "augmentation=none",
    "scheduler.steps=2",
    "data.styles=[00,01]",
    "data.max_objects=2",
    "eval.metrics=[hist]",
    "train.checkpoint_every=0",
]


@pytest.mark.parametrize(
    "schedule,warmup", [("constant", 0), ("constant_with_warmup", 3), ("linear", 2), ("cosine", 4)]
)
def test_logged_learning_rates_are_diffusers_schedules(schedule, warmup):
    from diffusers.optimization import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_scheduler(schedule, opt, num_warmup_steps=warmup, num_training_steps=20)
    for step in range(20):
        assert lr_at(schedule, 1e-3, warmup, 20, step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_dir, demo_root, cache_dir):
    from stylexfer.run import run

    out = tmp_path_factory.mktemp("run")
    cfg = compose(
        QUICK
        + [
            f"model.path={tiny_dir}",
            f"data.root={demo_root}",
            f"paths.output_dir={out}",
            f"paths.cache_dir={cache_dir}",
            "logger=[csv,tensorboard,mlflow]",
            "model.device=cpu",
        ]
    )
    summary = run(cfg)
    curves = {sid: json.loads((out / "adapters" / sid / "train.json").read_text())["losses"] for sid in ("00", "01")}
    return out, summary, curves


def test_csv_logger_has_every_step_of_every_style_and_the_metrics(logged_run):
    out, summary, curves = logged_run
    rows = list(csv.DictReader((out / "logs" / "csv" / "steps.csv").open()))
    assert len(rows) == 24
    for sid in ("00", "01"):
        mine = [r for r in rows if r["style"] == sid]
        assert [int(r["step"]) for r in mine] == list(range(1, 13))
        assert [float(r["loss"]) for r in mine] == pytest.approx(curves[sid])
        assert {float(r["lr"]) for r in mine} == {1e-4}
    metrics = {
        (r["style"], r["metric"]): float(r["value"])
        for r in csv.DictReader((out / "logs" / "csv" / "metrics.csv").open())
    }
    assert metrics[("overall", "hist")] == pytest.approx(summary["scores"]["hist"])
    assert metrics[("01", "hist")] == pytest.approx(summary["styles"]["01"]["scores"]["hist"])
    hp = json.loads((out / "logs" / "csv" / "hparams.json").read_text())
    assert hp["lora.unet_lora_rank"] == 32 and hp["train.steps"] == 12


def test_tensorboard_events_read_back(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, summary, curves = logged_run
    ea = EventAccumulator(str(out / "logs" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    loss = ea.Scalars("train/loss/01")
    assert [e.step for e in loss] == list(range(1, 13))
    assert [e.value for e in loss] == pytest.approx(curves["01"], rel=1e-6)
    assert ea.Scalars("metrics/overall/hist")[0].value == pytest.approx(summary["scores"]["hist"], rel=1e-6)
    tags = ea.Tags()["images"]
    assert "samples/grid" in tags and sum(t.startswith("samples/00/") for t in tags) == 2


def test_mlflow_run_reads_back(logged_run):
    from mlflow.tracking import MlflowClient

    out, summary, curves = logged_run
    uri = f"sqlite:///{out / 'logs' / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    hist = client.get_metric_history(run.info.run_id, "train/loss/00")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(1, 13))
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(curves["00"])
    assert run.data.metrics["metrics/overall/hist"] == pytest.approx(summary["scores"]["hist"])
    assert run.data.params["lora.unet_lora_rank"] == "32" and run.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/grid.png", "samples/00", "samples/01"} <= arts
    assert summary["loggers"]["mlflow"].startswith(uri)


def test_each_run_has_a_loss_plot_of_every_style(logged_run):
    from PIL import Image

    out, summary, _ = logged_run
    assert summary["loss_plot"] == "loss.png"
    with Image.open(out / "loss.png") as im:
        assert im.size == (700, 400) and len(set(im.convert("RGB").getdata())) > 50
    assert "![training loss](loss.png)" in (out / "summary.md").read_text()
    assert not list((out / "images" / "00").glob("_*")) and (out / "init" / "00" / "average.png").exists()


def test_a_logger_whose_library_is_missing_fails_before_any_work(monkeypatch):
    import importlib.util

    from stylexfer import loggers
    from stylexfer.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "tensorboard" else real(m, *a))
    with pytest.raises(
        ConfigError, match=r'^logger=tensorboard: tensorboard not installed; pip install -e "\.\[loggers\]"$'
    ):
        loggers.check(compose(["logger=[csv,tensorboard]"]))
