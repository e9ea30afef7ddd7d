"""The speed benchmark's plumbing on a tiny architecture (the real numbers come from a GPU run)."""

from __future__ import annotations

import argparse
import json

import pytest

from stylexfer.embedded import tiny_model_spec
from stylexfer.tools import bench


def tiny_arch(tmp_path):
    """The tiny model's architecture in the layout of shared/reference/sd21_architecture.json."""
    spec = tiny_model_spec()
    arch = tmp_path / "arch.json"
    te = dict(spec["text_encoder"], vocab_size=514)
    arch.write_text(
        json.dumps({"unet": spec["unet"], "vae": spec["vae"], "text_encoder": te, "scheduler": spec["scheduler"]})
    )
    return arch


SMALL = [
    "--styles",
    "2",
    "--images",
    "2",
    "--class-images",
    "2",
    "--res",
    "64",
    "--rank",
    "4",
]  # a few seconds on a CPU


def small_run(tmp_path, out, sample_steps: int) -> list[str]:
    """The tiny workload's arguments, sharing one --work and --out."""
    return [
        "--arch",
        str(tiny_arch(tmp_path)),
        *SMALL,
        "--prompts",
        "2",
        "--steps",
        "3",
        "--sample-steps",
        str(sample_steps),
        "--work",
        str(tmp_path / "w"),
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_bench_runs_both_paths_and_prints_the_table(tmp_path, capsys):
    arch = tiny_arch(tmp_path)
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--arch",
                str(arch),
                *SMALL,
                "--prompts",
                "2",
                "--steps",
                "3",
                "--sample-steps",
                "3",
                "--naive-steps",
                "2",
                "--naive-images",
                "1",
                "--work",
                str(tmp_path / "w"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| speed-up" in table and "naive" in table and "stylexfer" in table
    r = json.loads(out.read_text())
    assert r["stylexfer"]["images"] == 4 and r["stylexfer"]["failed"] == {}
    for path in ("naive", "stylexfer"):
        assert r[path]["train_s"] > 0 and r[path]["sample_s"] > 0 and r[path]["samples_per_s"] > 0
    n = r["naive"]  # extrapolated: 2 class images one per call, 2 styles × 3 steps, 2 styles × 2 images one per call
    assert n["class_images_s"] == pytest.approx(2 * n["class_image_s"]) and n["class_image_s"] > 0
    assert n["train_s"] == pytest.approx(n["class_images_s"] + n["train_step_s"] * 2 * 3)
    assert n["total_s"] == pytest.approx(n["train_s"] + n["image_s"] * 4)
    naive_row = next(line for line in table.splitlines() if line.strip().startswith("naive |"))
    assert "(in train)" in naive_row  # the naive row counts its class pool too
    a = r["arithmetic"]
    gf = a["gflop_per_sample"]
    assert 0 < gf["unet_forward"] < gf["vae_decode"] and gf["vae_encode"] > 0  # the tiny models, counted by torch
    # the safe strategy's grid-cached crops: 64 px at 1.04 leaves 3 px of room, the centre crop only, no flips:
    # (2 styles × 2 images + 2 class images) crops, each encoded once
    assert a["grid_crops"] == 6
    # 2 styles × 3 steps × 2 samples × (forward + backward to the inputs), + the crops' encodings
    assert a["train_pflop"] == pytest.approx((2 * 3 * 2 * 2 * gf["unet_forward"] + 6 * gf["vae_encode"]) / 1e6)
    # 2 class images × 25 steps × CFG; 2 styles × 2 prompts × int(3 steps × 0.9) = 2 steps × CFG,
    # + init encode and decode
    assert a["class_pool_pflop"] == pytest.approx(2 * (25 * 2 * gf["unet_forward"] + gf["vae_decode"]) / 1e6)
    assert a["sample_pflop"] == pytest.approx(
        4 * (2 * 2 * gf["unet_forward"] + gf["vae_encode"] + gf["vae_decode"]) / 1e6
    )
    total = a["class_pool_pflop"] + a["train_pflop"] + a["sample_pflop"]
    assert a["floor_s"] == pytest.approx(total * 1e3 / a["matmul_tflops"])
    assert "arithmetic floor" in table


@pytest.mark.slow
def test_bench_profile_mode_trains_without_divergence(tmp_path, capsys):
    arch = tiny_arch(tmp_path)
    res = tmp_path / "prof.json"
    assert (
        bench.main(
            [
                "--arch",
                str(arch),
                *SMALL,
                "--prompts",
                "1",
                "--sample-steps",
                "4",
                "--profile",
                "1",
                "--work",
                str(tmp_path / "w"),
                "--out",
                str(res),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "eager steps profiled: 1 (2 styles, 4 samples a step" in out and "Self CPU" in out
    assert "sampling profiled: 1 images, 3 UNet calls of 2 samples" in out
    prof = json.loads(res.read_text())["profile"]
    train, sample = prof["train_step_ms"], prof["sample_call_ms"]
    # the parts a training step has: attention, convolutions, the styles' LoRA branches (batched matmuls);
    # a sampling call (LoRA fused or none) has no LoRA branch: its batched matmuls are a small rest
    lora = "batched matmuls (in training: the LoRA branches)"
    for part in ("attention (SDPA)", "convolutions", "linear layers (mm, addmm)", "norms (GroupNorm, LayerNorm)"):
        assert train[part] > 0 and sample[part] > 0, part
    assert train[lora] / sum(train.values()) > 5 * sample.get(lora, 0) / sum(sample.values())
    summary = out[out.index("training step by part") :]
    total = float(summary.split("total")[1].split("ms")[0])
    assert total == pytest.approx(sum(train.values()), abs=0.05)


@pytest.mark.slow
def test_bench_breakdown_times_every_part(tmp_path, capsys):
    arch = tiny_arch(tmp_path)
    out = tmp_path / "bd.json"
    assert (
        bench.main(
            [
                "--arch",
                str(arch),
                *SMALL,
                "--prompts",
                "2",
                "--sample-steps",
                "2",
                "--part",
                "breakdown",
                "--work",
                str(tmp_path / "w"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())["breakdown"]
    for k in (
        "draw_s",
        "vae_encode_s",
        "lora_load_s",
        "generate_style_s",
        "generate_style_fused_s",
        "generate_style_no_lora_s",
    ):
        assert r[k] > 0, k
    assert "per training step of 4 samples" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_train_then_sample_in_two_commands_adds_up_to_the_whole_path(tmp_path, capsys):
    out = tmp_path / "b.json"
    common = small_run(tmp_path, out, 2)
    with pytest.raises(SystemExit, match="run --part train first"):
        bench.main(common + ["--part", "sample"])
    assert bench.main(common + ["--part", "train"]) == 0
    r = json.loads(out.read_text())["stylexfer"]
    assert r["trained"] == 2 and "sample_s" not in r and "total_s" not in r
    assert bench.main(common + ["--part", "sample"]) == 0
    r = json.loads(out.read_text())["stylexfer"]
    assert r["images"] == 4 and r["total_s"] == pytest.approx(r["train_s"] + r["sample_s"])


def test_bench_overrides_reach_the_stylexfer_config(tmp_path):
    args = argparse.Namespace(res=64, rank=4, steps=3, class_images=2, sample_batch=2, work=tmp_path, compile=False)
    assert bench.bench_cfg(args).train.lora_compute == "model"
    cfg = bench.bench_cfg(args, ["train.lora_compute=float32", "lora.unet_alpha=8"])
    assert cfg.train.lora_compute == "float32" and cfg.lora.unet_alpha == 8 and cfg.lora.unet_lora_rank == 4
    with pytest.raises(Exception, match="lora_compute"):
        bench.bench_cfg(args, ["train.lora_compute=fp8"])


@pytest.mark.slow
def test_bench_all_gpus_row_runs_the_sharded_path(tmp_path, capsys):
    """--part gpus: one worker process per device (two CPU processes here), its row beside the others."""
    out = tmp_path / "bench.json"
    common = small_run(tmp_path, out, 3)
    assert bench.main([*common, "--part", "stylexfer", "--label", "one"]) == 0
    assert bench.main([*common, "--part", "gpus", "--gpus", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    r = json.loads(out.read_text())
    assert {"one", "gpus"} <= r.keys() and r["gpus"]["gpus"] == 2
    g = r["gpus"]
    assert g["train_s"] >= g["class_images_s"] > 0 and g["sample_s"] > 0
    assert g["total_s"] > g["train_s"] + g["sample_s"]  # plus the workers' start (imports, model build)
    assert any(line.strip().startswith("gpus (2 GPUs) |") for line in table)
    assert any(line.strip().startswith("one |") for line in table)  # both rows of the same JSON
    made = sorted(p.name for p in (tmp_path / "w" / "store-gpus" / "samples").iterdir() if not p.name.startswith("."))
    assert len(made) == 2  # both styles' images, in the path's own store


@pytest.mark.slow
def test_bench_backends_times_a_step_of_each_backend_from_the_same_folder(tmp_path, capsys):
    """``python -m stylexfer.tools.bench_backends --arch``: the architecture written once as a diffusers folder, then a
    training and a sampling step on each backend (the Jittor row skipped without jittor)."""
    import importlib.util

    from stylexfer.tools import bench_backends

    backends = "torch,jittor" if importlib.util.find_spec("jittor") is not None else "torch"
    out = tmp_path / "bb.json"
    assert (
        bench_backends.main(
            [
                "--arch",
                str(tiny_arch(tmp_path)),
                "--res",
                "64",
                "--rank",
                "4",
                "--warm",
                "1",
                "--steps",
                "4",  # a difference of 4 steps stays above a loaded machine's noise (2 once came out below 0)
                "--backends",
                backends,
                "--work",
                str(tmp_path / "w"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (tmp_path / "w" / "sd21-random" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    r = json.loads(out.read_text())
    names = ["torch float32"] + (["jittor float32"] if "jittor" in backends else [])
    assert sorted(r["rows"]) == sorted(names)
    for name in names:
        assert r["rows"][name]["train_step_s"] > 0 and r["rows"][name]["sample_step_s"] > 0, r["rows"][name]
    table = capsys.readouterr().out
    assert "| backend | training step" in table and all(f"| {n} |" in table for n in names)


def test_backend_step_times_take_the_fastest_run_of_each_length():
    """A run slowed once (another process, a collection) must not move the per-step time: the difference of
    the fastest long and the fastest short run (timeit's rule). The first short run here is 0.5 s late; the
    difference of single runs would come out negative."""
    import time

    from stylexfer.tools.bench_backends import step_seconds

    calls = []

    def run(n):
        calls.append(n)
        time.sleep(0.05 * n + (0.5 if len(calls) == 2 else 0.0))

    per = step_seconds(run, warm=1, steps=2, repeat=3)
    assert calls == [1, 1, 1, 1, 3, 3, 3]
    assert 0.04 <= per < 0.08


def test_the_floor_counts_each_grid_crop_once_or_every_steps_encoding(tmp_path):
    from types import SimpleNamespace

    args = SimpleNamespace(
        res=512, styles=14, images=10, class_images=200, work=tmp_path, rank=32, steps=800, sample_batch=25
    )
    cfg = bench.bench_cfg(args)
    assert bench.crop_count(args, cfg) == (14 * 10 + 200) * 3 * 3  # 532 px: offsets 2, 10, 18 each way
    cfg.augmentation.hflip = True
    assert bench.crop_count(args, cfg) == 3060 * 2
    cfg.augmentation.cached_crops = False  # random 1-px crops: encoded every step, none up front
    assert bench.crop_count(args, cfg) == 0


def test_the_inductor_variants_name_real_settings_and_the_part_needs_a_gpu(tmp_path):
    import torch
    import torch._inductor.config as inductor_config

    for _name, (mode, flags) in bench.INDUCTOR_VARIANTS.items():
        assert mode in (None, "max-autotune-no-cudagraphs")
        with inductor_config.patch(flags):  # a misspelt setting raises here, not after a GPU has started
            assert all(getattr(inductor_config, k) == v for k, v in flags.items())
    assert bench.INDUCTOR_VARIANTS["tuned"][1]["coordinate_descent_tuning"] is True
    arch = tiny_arch(tmp_path)
    with pytest.raises(SystemExit, match="--variants: unknown fast"):
        bench.main(["--arch", str(arch), "--part", "inductor", "--variants", "default,fast"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--part inductor: .* no CUDA device here"):
            bench.main(["--arch", str(arch), "--part", "inductor", "--work", str(tmp_path / "w")])
        assert not (tmp_path / "w").exists()  # refused before anything was written


@pytest.mark.slow
def test_bench_remedies_times_plain_injection_and_control_sampling(tmp_path, capsys):
    """--part remedies: one style's sampling plain, injected (with its bank's size) and controlled, each in a
    store of its own, the added seconds per image against plain."""
    out = tmp_path / "r.json"
    assert bench.main(small_run(tmp_path, out, 2) + ["--part", "remedies"]) == 0
    rows = json.loads(out.read_text())["remedies"]["rows"]
    assert list(rows) == list(bench.REMEDIES)
    assert all(r["style_s"] > 0 and r["per_image_s"] > 0 for r in rows.values())
    assert rows["plain"]["bank_gib"] == 0 and rows["plain"]["added_per_image_s"] == 0
    inj = rows["inject (StyleID defaults: each image its own reference, twin)"]
    assert inj["bank_gib"] > 0 and rows["inject (the average image)"]["bank_gib"] < inj["bank_gib"]
    assert "| control (canny; first pass + ControlNet) |" in capsys.readouterr().out
