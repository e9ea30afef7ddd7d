"""One training step and one sampling step on each backend, on the same model:
``python -m stylexfer.tools.bench_backends``.

The model is the SD 2.1-shaped one with random weights (``--arch``, written once as a diffusers safetensors
folder so that both backends load the same file) or any diffusers folder (``--model-dir``, e.g. the tiny
model on a CPU). A training step is the recipe's (one instance and one class sample through the UNet with
LoRA rank ``--rank`` on the attention projections, the loss, the gradients, clipping, AdamW), timed as the
difference between a run of ``--warm + --steps`` steps and one of ``--warm`` steps (so each backend's
one-time work — jittor's kernel compilation, the crop cache — is left out); a sampling step is one DDIM step
for one image with classifier-free guidance (a UNet forward of two samples), timed the same way. The table
gives seconds per step; the JSON goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..specs import TrainSpec
from ..store import atomic_write_json

log = logging.getLogger("stylexfer.tools.bench_backends")


def write_sd21_folder(arch: Path, folder: Path) -> Path:
    """The SD 2.1-shaped random-weight model (:func:`stylexfer.tools.bench.build_components`) as a diffusers folder."""
    from .bench import build_components

    if (folder / "unet" / "config.json").exists():
        return folder
    c = build_components(arch, "cpu", torch.float32)
    tmp = folder.with_name(folder.name + ".tmp")
    for name, m in (("unet", c.unet), ("vae", c.vae), ("text_encoder", c.text_encoder)):
        m.save_pretrained(str(tmp / name), safe_serialization=True)
    c.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    (tmp / "scheduler").mkdir(parents=True, exist_ok=True)
    (tmp / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDIMScheduler", **c.scheduler_config})
    )
    tmp.rename(folder)
    return folder


def _style(root: Path, res: int):
    from ..data import Style

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)) for _ in range(2)]
    from ..prior import ClassPool

    style = Style(
        id="00", dir=root, image_paths=[], images=images, image_objects=["thing", "object"], objects=["thing"]
    )
    pool = ClassPool(key="bench", dir=root, prompts=["an image of thing", "an image of object"], images=images)
    return style, pool


def _cfg(res: int, rank: int, steps: int, device: str):
    from hydra import compose, initialize_config_dir

    from ..app import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                "+strategy=safe",
                f"model.resolution={res}",
                "prior=shared",
                f"lora.unet_lora_rank={rank}",
                f"train.steps={steps}",
                "train.checkpoint_every=0",
                f"model.device={device}",
            ],
        )


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def step_seconds(run, warm: int, steps: int, repeat: int = 3) -> float:
    """Seconds per step: the time of ``warm + steps`` steps less that of ``warm`` steps (the set-up cancels),
    each the fastest of ``repeat`` runs, as timeit does: a run slowed by the machine (another process, a
    collection) would otherwise move the difference, on a small model even below zero."""
    run(warm)  # one-time work (compiling, caches) happens here
    short = min(_timed(lambda: run(warm)) for _ in range(repeat))
    long = min(_timed(lambda: run(warm + steps)) for _ in range(repeat))
    return (long - short) / steps


def _steps(c, train_style, sampling, device: str, folder: Path, args) -> dict:
    """Seconds per training step and per sampling step of ``train_style(c, style, pool, spec)`` and
    ``sampling(c, ...)`` (one backend's functions) on the loaded model ``c``."""
    style, pool = _style(folder, args.res)

    def train(n):
        train_style(c, style, pool, TrainSpec.from_config(_cfg(args.res, args.rank, n, device)))

    def sample(n):
        with sampling(c, sampler="ddim", steps=n, guidance_scale=7.5, resolution=args.res) as make:
            make(["an image of thing in style_00"], [0])

    return _both(train, sample, args)


def torch_steps(folder: Path, device: str, dtype: str, args) -> dict:
    from omegaconf import OmegaConf

    from ..backends.torch.models import load_components
    from ..backends.torch.sample import sampling
    from ..backends.torch.trainer import train_styles
    from ..models import ResolvedModel

    mc = OmegaConf.create(
        {
            "path": str(folder),
            "revision": None,
            "variant": None,
            "local_files_only": True,
            "device": device,
            "dtype": dtype,
        }
    )
    resolved = ResolvedModel(
        folder=folder, source=str(folder), identity="bench", random_weights=True, prediction_type="epsilon"
    )

    def one_style(c, style, pool, spec):
        train_styles(c, [style], [pool], spec)

    return _steps(load_components(resolved, mc), one_style, sampling, device, folder, args)


def jittor_steps(folder: Path, device: str, args) -> dict:
    from ..backends.jittor import runtime

    runtime.jittor(Path(args.work), device)
    from ..backends.jittor.models import load_components
    from ..backends.jittor.sample import sampling
    from ..backends.jittor.train import train_style

    return _steps(load_components(folder, device), train_style, sampling, device, folder, args)


def _both(train, sample, args) -> dict:
    """Sampling first, then training; a part that fails is recorded with its first line, the other still runs."""
    out = {}
    for key, run in (("sample_step_s", sample), ("train_step_s", train)):
        if key.split("_")[0] not in args.parts.split(","):
            continue
        try:
            out[key] = step_seconds(run, args.warm, args.steps, args.repeat)
        except Exception as e:  # noqa: BLE001 - a part that cannot run says why in the table
            out[key[:-2] + "_error"] = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            )
            log.exception("%s failed", key)
        print(key, out, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylexfer.tools.bench_backends", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=Path, help="SD 2.1's published configs (shared/reference/sd21_architecture.json)")
    p.add_argument("--model-dir", type=Path, help="a diffusers folder instead of the SD 2.1-shaped model")
    p.add_argument("--res", type=int, default=512)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--warm", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3, help="runs of each length; the fastest counts (timeit's rule)")
    p.add_argument("--backends", default="torch,jittor")
    p.add_argument("--parts", default="sample,train", help="which steps to time: sample, train or both")
    p.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="stylexfer-bench-backends-")))
    p.add_argument("--out", type=Path, default=Path("bench-backends.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (args.arch is None) == (args.model_dir is None):
        p.error("give one of --arch and --model-dir")
    folder = args.model_dir or write_sd21_folder(args.arch, args.work / "sd21-random")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = {}
    for name in args.backends.split(","):
        try:
            if name == "torch":
                if device == "cuda":
                    rows["torch bf16"] = torch_steps(folder, device, "bfloat16", args)
                rows["torch float32"] = torch_steps(folder, device, "float32", args)
            elif name == "jittor":
                rows["jittor float32"] = jittor_steps(folder, device, args)
        except Exception as e:  # noqa: BLE001 - a backend that cannot run is a row that says why
            rows[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            log.exception("%s failed", name)
        print(name, json.dumps(rows), flush=True)
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "model": str(args.arch or folder),
        "res": args.res,
        "rank": args.rank,
        "steps": args.steps,
        "warm": args.warm,
        "rows": rows,
    }
    atomic_write_json(args.out, result)
    print(f"\n{result['device']}, {result['model']}, {args.res} px, LoRA rank {args.rank}: seconds per step")
    print(
        "| backend | training step (1 instance + 1 class sample) | sampling step (1 image, guidance) |\n|---|---|---|"
    )
    for name, r in rows.items():
        cells = [
            f"{r[k]:.3f}" if k in r else r.get(k[:-2] + "_error", r.get("error", ""))
            for k in ("train_step_s", "sample_step_s")
        ]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
