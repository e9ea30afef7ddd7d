"""stylexfer.compare on sweep folders laid out as Hydra and stylexfer leave them (made here, no training):
the table's order and best row, a CSV pandas reads as numbers, plots of every metric against the swept
key, several sweeps together, and the latest sweep when no folder is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stylexfer import compare


def make_job(folder: Path, overrides: list[str], scores: dict | None, styles: dict | None = None, error: str = ""):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if scores is not None:
        summary = {
            "status": "finished",
            "scores": scores,
            "styles": {sid: {"scores": sc, "images": []} for sid, sc in (styles or {}).items()},
        }
        (folder / "summary.json").write_text(json.dumps(summary))
    else:
        (folder / "error.json").write_text(json.dumps({"error": error}))


def rank_sweep(root: Path, finals=(0.30, 0.45, 0.40), hist_missing_at: int | None = None) -> Path:
    for n, (rank, final) in enumerate(zip((4, 16, 32), finals)):
        scores = {"final": final, "hist": 0.5 + n / 10, "fid": 10.0 - n}
        if n == hist_missing_at:
            scores["hist"] = None
        make_job(
            root / str(n),
            [f"lora.unet_lora_rank={rank}", "+strategy=safe"],
            scores,
            {"00": {"final": final - 0.05, "hist": 0.4}, "01": {"final": final + 0.05, "hist": 0.6}},
        )
    make_job(root / "3", ["lora.unet_lora_rank=64", "+strategy=safe"], None, error="out of memory")
    return root


def test_the_csv_is_for_pandas_numbers_empty_cells_and_a_boolean_best(tmp_path):
    pd = pytest.importorskip("pandas")
    sweep = rank_sweep(tmp_path / "multirun" / "2026-11-25" / "10-00-00", hist_missing_at=2)
    compare.main([str(sweep)])
    df = pd.read_csv(sweep / "compare.csv", dtype={"job": str})
    assert list(df["job"]) == ["1", "2", "0", "3"]  # by final score, the failed job last
    assert df["best"].dtype == bool and list(df["best"]) == [True, False, False, False]
    for col in ("lora.unet_lora_rank", "final", "hist", "fid"):
        assert pd.api.types.is_numeric_dtype(df[col]), col
    assert list(df["lora.unet_lora_rank"]) == [16, 32, 4, 64]
    assert df["final"].tolist()[:3] == [0.45, 0.40, 0.30] and pd.isna(df["final"][3])
    assert pd.isna(df.loc[df["job"] == "2", "hist"]).all()  # missing: an empty cell, not a glyph
    text = (sweep / "compare.csv").read_text()
    assert "—" not in text and "★" not in text
    assert df.loc[df["job"] == "3", "error"].item() == "out of memory"
    md = (sweep / "compare.md").read_text()
    assert "★" in md and "—" in md  # the people's table keeps its marks


def test_every_metric_is_plotted_against_the_swept_key_and_shown_in_the_page(tmp_path):
    from PIL import Image

    sweep = rank_sweep(tmp_path / "sw")
    written = compare.write_outputs(sweep, compare.find_jobs([sweep]), None)
    plots = sorted(p.name for p in written if p.name.startswith("plot_"))
    assert plots == [
        "plot_lora-unet_lora_rank_fid.png",
        "plot_lora-unet_lora_rank_final.png",
        "plot_lora-unet_lora_rank_hist.png",
    ]
    for name in plots:
        with Image.open(sweep / name) as im:
            assert im.size == (600, 400)
            # not a blank canvas: lines were drawn in more than the background and the axes' colours
            assert len(set(im.convert("RGB").getdata())) > 50
        assert f"<img src='{name}'>" in (sweep / "compare.html").read_text()


def test_two_sweeps_compare_in_one_table_and_one_plot(tmp_path):
    pd = pytest.importorskip("pandas")
    a = rank_sweep(tmp_path / "multirun" / "d" / "a")
    b = rank_sweep(tmp_path / "multirun" / "d" / "b", finals=(0.35, 0.50, 0.20))
    out = tmp_path / "both"
    compare.main([str(a), str(b), "--out", str(out)])
    df = pd.read_csv(out / "compare.csv")
    assert len(df) == 8 and set(df["sweep"]) == {"d/a", "d/b"}
    assert df.loc[df["best"], "job"].item() == "d/b/1"
    lines = compare.compare_jobs(compare.find_jobs([a, b]))
    assert lines.best.name == "d/b/1"
    assert (out / "plot_lora-unet_lora_rank_final.png").exists()


def test_no_argument_takes_the_latest_sweep_under_multirun(tmp_path):
    rank_sweep(tmp_path / "multirun" / "2026-11-24" / "23-59-00")
    latest = rank_sweep(tmp_path / "multirun" / "2026-11-25" / "08-00-00")
    res = subprocess.run([sys.executable, "-m", "stylexfer.compare"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (latest / "compare.csv").exists() and not (
        tmp_path / "multirun" / "2026-11-24" / "23-59-00" / "compare.csv"
    ).exists()
    empty = tmp_path / "nothing"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-m", "stylexfer.compare"], cwd=empty, capture_output=True, text=True)
    assert res.returncode != 0 and res.stderr.strip().startswith("error: no sweep under")
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_swept_seed_is_averaged_over_mean_and_sample_sd_best_mean_first(tmp_path, capsys):
    """+report rows × train.seed: compare_seeds.{md,csv} has one row per report row with the mean and the
    sample standard deviation over the seeds; the failed job is left out of its row's n; the seed is not
    plotted as an axis; --over none turns it off and an unknown key fails naming it."""
    pd = pytest.importorskip("pandas")
    sweep = tmp_path / "sw"
    finals = {"safe": (0.20, 0.22, 0.24), "untrained": (0.14, 0.15, 0.16)}
    n = 0
    for row, vals in finals.items():
        for seed, v in enumerate(vals):
            make_job(sweep / str(n), [f"+report={row}", f"train.seed={seed}"], {"final": v, "hist": 2 * v})
            n += 1
    make_job(sweep / str(n), ["+report=safe", "train.seed=3"], None, error="boom")
    compare.main([str(sweep)])
    out = capsys.readouterr().out
    assert "Mean ± sample standard deviation over train.seed" in out and "0.2200 ± 0.0200" in out
    df = pd.read_csv(sweep / "compare_seeds.csv")
    assert list(df["report"]) == ["safe", "untrained"] and list(df["n"]) == [3, 3]
    assert df["final_mean"].tolist() == pytest.approx([0.22, 0.15]) and df["final_sd"].tolist() == pytest.approx(
        [0.02, 0.01]
    )
    assert df["hist_mean"].tolist() == pytest.approx([0.44, 0.30])
    assert not list(sweep.glob("plot_train-seed_*.png"))
    (sweep / "compare_seeds.csv").unlink()
    compare.main([str(sweep), "--over", "none"])
    assert not (sweep / "compare_seeds.csv").exists() and list(sweep.glob("plot_train-seed_*.png"))
    with pytest.raises(SystemExit, match="--over lora.unet_lora_rank: not a swept key"):
        compare.main([str(sweep), "--over", "lora.unet_lora_rank"])


def test_objects_that_resist_the_style_are_one_table_least_first(tmp_path, capsys):
    """Jobs whose scores.json has attribution per object: compare_objects.{md,csv} has one row per object, one
    column per setting (mean ± sd over the seeds, best final first), the least-attributed object first; the page
    shows it."""
    pd = pytest.importorskip("pandas")
    sweep = tmp_path / "sw"
    per_setting = {"none": {"mushroom": 0.0, "cat": 1.0, "umbrella": 0.5}, "styleid": {"mushroom": 0.5, "cat": 1.0}}
    n = 0
    for inject, base in per_setting.items():
        for seed in range(2):
            job = sweep / str(n)
            make_job(job, [f"inject={inject}", f"train.seed={seed}"], {"final": 0.2 + n / 100})
            rows = {o: {"00": v, "01": v, "mean": v + seed / 10} for o, v in base.items()}
            (job / "scores.json").write_text(json.dumps({"objects": {"attribution": rows}}))
            n += 1
    compare.main([str(sweep)])
    assert "Judge attribution per object" in capsys.readouterr().out
    df = pd.read_csv(sweep / "compare_objects.csv")
    assert list(df["object"]) == ["mushroom", "umbrella", "cat"]
    assert df["inject=none_mean"].tolist() == pytest.approx([0.05, 0.55, 1.05])
    assert df["inject=none_sd"].tolist() == pytest.approx([0.0707107] * 3)
    assert df["inject=styleid_mean"].tolist()[0] == pytest.approx(0.55) and pd.isna(df["inject=styleid_mean"][1])
    md = (sweep / "compare_objects.md").read_text()
    assert "| object | inject=styleid | inject=none |" in md  # settings in the table's order: best final first
    assert "| mushroom | 0.55 ± 0.07 | 0.05 ± 0.07 |" in md and "| umbrella | — | 0.55 ± 0.07 |" in md
    assert "attribution per object" in (sweep / "compare.html").read_text()


def test_no_per_object_scores_no_objects_table(tmp_path):
    rank_sweep(tmp_path / "sw")
    compare.main([str(tmp_path / "sw")])
    assert not (tmp_path / "sw" / "compare_objects.md").exists()


def test_the_grids_row_labels_give_the_job_and_its_floats_to_three_digits(tmp_path):
    make_job(tmp_path / "14", ["train.lr=0.00048041572972098626", "init.strength=0.7868301217145934"], {"final": 1})
    make_job(tmp_path / "3", ["train.lr=1e-4", "init.strength=0.9"], {"final": 0.5})
    jobs = [compare.read_job(tmp_path / n, n) for n in ("14", "3")]
    keys = ["train.lr", "init.strength"]
    assert compare.setting_label(jobs[0], keys, short=True) == "#14 0.00048 0.787"
    assert compare.setting_label(jobs[1], keys, short=True) == "#3 0.0001 0.9"
    assert compare.setting_label(jobs[0], keys) == "train.lr=0.00048041572972098626 init.strength=0.7868301217145934"
    assert [compare.compact(v) for v in ("64", "styleid", "[a,b]", "1e-4", "nan")] == [
        "64",
        "styleid",
        "[a,b]",
        "0.0001",
        "nan",
    ]
