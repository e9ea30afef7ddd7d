"""Sweeps through the CLI: the joblib launcher, shared stages computed once, failure isolation,
kill-and-rerun, the compare tool, and submitit's local executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_cli
from stylexfer import compare

QUICK = ["train.steps=5", "prior=none", "scheduler.steps=4", "data.styles=[00]", "data.max_objects=1"]


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))}


@pytest.mark.slow
def test_two_value_sweep_with_joblib_and_the_compare_table(tmp_path, cache_dir, tiny_dir):
    sweep = tmp_path / "sw"
    res = run_cli(["-m", "lora.unet_lora_rank=2,4", *QUICK, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Joblib.Parallel" in res.stdout + res.stderr  # the default launcher for -m
    jobs = summaries(sweep)
    assert sorted(j["config"]["lora"]["unet_lora_rank"] for j in jobs.values()) == [2, 4]

    out = subprocess.run([sys.executable, "-m", "stylexfer.compare", str(sweep)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    first_table = out.stdout.split("\n\n")[0]  # the job table (the per-object one follows)
    lines = [l for l in first_table.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert "lora.unet_lora_rank" in header and "hist" in header and "train.steps" not in header  # only what differs
    assert "Judge attribution per object" in out.stdout  # the pocket world's scores have it
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    assert len(rows) == 2
    h = header.index("hist")
    values = [float(r[h]) for r in rows]
    assert values == sorted(values, reverse=True) and rows[0][0] == "★" and rows[1][0] == ""
    assert {r[header.index("lora.unet_lora_rank")] for r in rows} == {"2", "4"}
    for f in ("compare.md", "compare.csv", "compare.png", "compare.html"):
        assert (sweep / f).stat().st_size > 0
    csv_rows = (sweep / "compare.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and "lora.unet_lora_rank" in csv_rows[0]


@pytest.mark.slow
def test_strength_sweep_trains_each_style_once(tmp_path, cache_dir, tiny_dir):
    sweep = tmp_path / "sw"
    res = run_cli(
        [
            "-m",
            "init.strength=0.5,0.7,0.9",
            "train.steps=5",
            "prior=shared",
            "prior.num_class_images=4",
            "prior.steps=3",
            "scheduler.steps=4",
            "data.styles=[00,01]",
            "data.max_objects=1",
            "train.seed=11",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = summaries(sweep)
    assert len(jobs) == 3
    for sid in ("00", "01"):
        trained = [j for j in jobs.values() if not j["styles"][sid]["reused"]]
        assert len(trained) == 1, sid  # one job trained it, the other two reused it
        assert len({j["styles"][sid]["adapter_key"] for j in jobs.values()}) == 1
    logs = "".join((sweep / n / "main.log").read_text() for n in jobs)
    assert logs.count("generating 4 class images") == 1  # the shared class pool was made once


@pytest.mark.slow
def test_a_failed_job_is_isolated_and_shown_in_the_comparison(tmp_path, cache_dir, tiny_dir):
    sweep = tmp_path / "sw"
    res = run_cli(["-m", "init.strength=0.5,1.5", *QUICK, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert res.returncode != 0
    ok = next(d for d in sweep.iterdir() if (d / "summary.json").exists())
    bad = next(d for d in sweep.iterdir() if (d / "error.json").exists())
    assert json.loads((ok / "summary.json").read_text())["status"] == "finished"
    assert json.loads((bad / "error.json").read_text())["error"] == "init.strength=1.5: must be in (0, 1]"
    header, rows, _ = compare.table(compare.find_jobs([sweep]))
    by_status = {r[header.index("status")]: r for r in rows}
    assert set(by_status) == {"finished", "failed"}
    assert by_status["failed"][-1] == "init.strength=1.5: must be in (0, 1]"


@pytest.mark.slow
def test_a_killed_sweep_keeps_finished_jobs_and_a_rerun_completes_only_the_rest(tmp_path, cache_dir, tiny_dir):
    sweep = tmp_path / "sw"
    args = [
        "-m",
        "train.seed=1,2",
        "train.steps=400",
        "prior=none",
        "augmentation=none",
        "scheduler.steps=4",
        "data.styles=[00]",
        "data.max_objects=1",
        f"hydra.sweep.dir={sweep}",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stylexfer", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while not (sweep / "0" / "summary.json").exists():
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before job 0 finished"
            time.sleep(0.2)
        while not (sweep / "1" / "status.json").exists():  # job 1 is under way
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = (sweep / "0" / "summary.json").read_bytes()
    assert not (sweep / "1" / "summary.json").exists()
    header, rows, _ = compare.table(compare.find_jobs([sweep]))
    assert sorted(r[header.index("status")] for r in rows) == ["finished", "killed"]

    res = run_cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "already finished with the same config: skipping" in (sweep / "0" / "main.log").read_text()
    assert (sweep / "0" / "summary.json").read_bytes() == first  # untouched
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_submitit_local_launcher_runs_real_subprocesses(tmp_path, cache_dir, tiny_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sw"
    res = run_cli(
        ["-m", "hydra/launcher=submitit_local", "lora.unet_lora_rank=2,4", *QUICK, f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = summaries(sweep)
    assert sorted(j["config"]["lora"]["unet_lora_rank"] for j in jobs.values()) == [2, 4]
    assert len({json.loads((sweep / n / "status.json").read_text())["pid"] for n in jobs}) == 2
    assert list(sweep.glob(".submitit/*")) or list(sweep.glob("*/.submitit")) or (sweep / ".submitit").exists()


@pytest.mark.slow
def test_ray_launcher_runs_a_two_job_sweep_on_a_local_ray_instance(tmp_path, cache_dir, tiny_dir):
    """The cluster preset (hydra/launcher=ray_gpu) one config away from this tested path: a local Ray
    instance, each job a Ray task (here with no GPU and one CPU each, so it runs on a CPU machine)."""
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher", reason="pip install -e '.[ray]' (CI installs it via .[test])"
    )
    sweep = tmp_path / "sw"
    res = run_cli(
        [
            "-m",
            "hydra/launcher=ray_gpu",
            "hydra.launcher.ray.remote.num_gpus=0",
            "hydra.launcher.ray.remote.num_cpus=1",
            "+hydra.launcher.ray.init.num_cpus=2",
            "+hydra.launcher.ray.init.include_dashboard=false",
            "lora.unet_lora_rank=2,4",
            *QUICK,
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        env_extra={"RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert "Ray Launcher is launching 2 jobs" in log and "Started a local Ray instance" in log
    jobs = summaries(sweep)
    assert sorted(j["config"]["lora"]["unet_lora_rank"] for j in jobs.values()) == [2, 4]
    assert all(j["status"] == "finished" and "hist" in j["scores"] for j in jobs.values())
    pids = {json.loads((sweep / n / "status.json").read_text())["pid"] for n in jobs}
    assert len(pids) == 2 and os.getpid() not in pids  # two Ray worker processes
    cmp = compare.compare_jobs(compare.find_jobs([sweep]))
    assert len(cmp.jobs) == 2 and cmp.differing == ["lora.unet_lora_rank"] and cmp.best is not None
