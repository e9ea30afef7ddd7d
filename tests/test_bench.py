"""The speed benchmark's plumbing on a tiny architecture (the real numbers come from a GPU run)."""

from __future__ import annotations

import json

import pytest

from stylexfer import bench
from stylexfer.embedded import tiny_model_spec


@pytest.mark.slow
def test_bench_runs_both_paths_and_prints_the_table(tmp_path, capsys):
    spec = tiny_model_spec()
    arch = tmp_path / "arch.json"
    te = dict(spec["text_encoder"], vocab_size=514)
    arch.write_text(json.dumps({"unet": spec["unet"], "vae": spec["vae"], "text_encoder": te, "scheduler": spec["scheduler"]}))
    out = tmp_path / "bench.json"
    assert bench.main(["--arch", str(arch), "--styles", "2", "--images", "2", "--prompts", "2", "--steps", "3",
                       "--class-images", "2", "--res", "64", "--rank", "4", "--sample-steps", "3",
                       "--naive-steps", "2", "--naive-images", "1", "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| speed-up" in table and "naive" in table and "stylexfer" in table
    r = json.loads(out.read_text())
    assert r["stylexfer"]["images"] == 4 and r["stylexfer"]["failed"] == {}
    for path in ("naive", "stylexfer"):
        assert r[path]["train_s"] > 0 and r[path]["sample_s"] > 0 and r[path]["samples_per_s"] > 0
    assert r["naive"]["train_s"] == pytest.approx(r["naive"]["train_step_s"] * 2 * 3)  # extrapolated to 2 styles × 3 steps


@pytest.mark.slow
def test_bench_profile_mode_trains_without_divergence(tmp_path, capsys):
    spec = tiny_model_spec()
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"unet": spec["unet"], "vae": spec["vae"], "text_encoder": dict(spec["text_encoder"], vocab_size=514),
                                "scheduler": spec["scheduler"]}))
    assert bench.main(["--arch", str(arch), "--styles", "2", "--images", "2", "--prompts", "1", "--class-images", "2",
                       "--res", "64", "--rank", "4", "--profile", "1", "--work", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "4 steps of 2 styles" in out and "Self CPU" in out
