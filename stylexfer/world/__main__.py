"""``python -m stylexfer.world sheet OUT.png`` (every object in every style) | ``styles ROOT`` (held-out styles
in the competition layout) | ``judge --out DIR`` (train the pocket judge) | ``pretrain --out DIR`` (the pocket
base model) | ``check [--model DIR]`` (the judge's object accuracy on a base model's samples) |
``attribution RUN...`` (the judge's style attribution of runs' images) | ``ceiling [--model DIR] [--data ROOT]``
(the attribution of the styles' own images after the VAE's round trip: what no sampler can beat) |
``controlnet --out DIR`` (train the pocket ControlNet on base-style edges; a GPU: minutes)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from .controlnet import ControlNetTrainConfig
from .dataset import DEMO_HELD_OUT, write_styles
from .pretrain import PretrainConfig
from .scene import OBJECTS, Pose
from .styles import STYLES, render


def sheet(size: int) -> Image.Image:
    rows = [
        np.concatenate(
            [
                np.asarray(render(o, st, Pose.random(np.random.default_rng(i)), size, i))
                for i, o in enumerate(sorted(OBJECTS))
            ],
            1,
        )
        for st in STYLES
    ]
    return Image.fromarray(np.concatenate(rows, 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylexfer.world", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheet", help="every object (columns) in every style (rows: base styles, then held-out)")
    s.add_argument("out", type=Path)
    s.add_argument("--size", type=int, default=64)
    j = sub.add_parser(
        "judge", help="train the pocket judge (CPU, minutes) into --out (judge.safetensors + judge.json)"
    )
    j.add_argument("--out", type=Path, required=True)
    j.add_argument("--steps", type=int, default=2500)
    j.add_argument("--per-pair", type=int, default=12, help="renders of each (style, object) to train on")
    j.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("pretrain", help="pretrain the pocket base model on the base styles (a GPU: minutes)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--device", default="cuda")
    for f in fields(PretrainConfig):
        t.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    c = sub.add_parser(
        "check", help="the judge's object accuracy on a base model's samples (default: the shipped one)"
    )
    c.add_argument("--model", type=Path, default=None, help="a diffusers folder (default: the shipped pocket model)")
    c.add_argument("--per-object", type=int, default=4)
    c.add_argument("--steps", type=int, default=30)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu")
    c.add_argument(
        "--out", type=Path, default=None, help="write the record (JSON) and a grid of the samples (PNG) here"
    )
    a = sub.add_parser(
        "attribution",
        help="the judge's style attribution of finished runs' images (share assigned "
        "to the style of the data's own images)",
    )
    a.add_argument("runs", type=Path, nargs="+", help="run folders (with summary.json and images/)")
    n = sub.add_parser("controlnet", help="train the pocket ControlNet on base-style renders' Canny edges (a GPU)")
    n.add_argument("--out", type=Path, required=True)
    n.add_argument("--model", type=Path, default=None, help="the base model (default: the shipped pocket model)")
    n.add_argument("--device", default="cuda")
    for f in fields(ControlNetTrainConfig):
        n.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    v = sub.add_parser(
        "ceiling",
        help="the judge's attribution of the styles' own images after a round trip through the model's VAE",
    )
    v.add_argument("--model", type=Path, default=None, help="a diffusers folder (default: the shipped pocket model)")
    v.add_argument("--data", type=Path, default=None, help="styles in the competition layout (default: the demo's)")
    v.add_argument("--device", default="cpu")
    v.add_argument("--out", type=Path, default=None, help="write the record (JSON) here")
    d = sub.add_parser("styles", help="held-out styles in the competition layout")
    d.add_argument("root", type=Path)
    d.add_argument("--styles", nargs="+", default=list(DEMO_HELD_OUT))
    d.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    if args.cmd == "pretrain":
        import logging

        from .pretrain import pretrain

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        rec = pretrain(
            args.out, PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)}), args.device
        )
        print(f"{args.out}: {rec['seconds']}; weights {rec['sizes_mib']} MiB; samples.png")
    elif args.cmd == "judge":
        import logging

        from .judge import save_judge, train

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        from .metrics import fid_scale

        net, record = train(steps=args.steps, per_pair=args.per_pair, seed=args.seed)
        scale, fid_check = fid_scale(net)
        path = save_judge(net, {**record, "fid_feature_scale": scale, **fid_check}, args.out)
        print(
            f"{path}: held-back object accuracy {record['heldback_object_accuracy']:.3f}, style "
            f"{record['heldback_style_accuracy']:.3f}, quality clean {record['heldback_quality_clean']:.2f} vs "
            f"degraded {record['heldback_quality_degraded']:.2f}"
        )
    elif args.cmd == "check":
        import json

        from ..store import atomic_save_image, atomic_write_json
        from .check import base_model_check, check_grid

        rec, images = base_model_check(args.model, args.per_object, args.steps, seed=args.seed, device=args.device)
        if args.out:
            atomic_write_json(args.out.with_suffix(".json"), rec)
            atomic_save_image(check_grid(images, args.per_object), args.out.with_suffix(".png"))
        print(
            json.dumps(
                {k: rec[k] for k in ("object_accuracy", "held_out_attribution", "per_object_accuracy")}, indent=1
            )
        )
        print(f"judge object accuracy {rec['object_accuracy']:.3f} on {rec['samples']} samples of {rec['model']}")
    elif args.cmd == "attribution":
        from .metrics import WorldJudge, run_attribution

        judge = WorldJudge()
        for run in args.runs:
            r = run_attribution(run, judge)
            print(f"{run}: mean {r['mean']:.3f} (" + ", ".join(f"{k} {v:.2f}" for k, v in r["styles"].items()) + ")")
    elif args.cmd == "controlnet":
        import logging

        from ..embedded import pocket_model_dir
        from .controlnet import train_controlnet

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        cfg = ControlNetTrainConfig(**{f.name: getattr(args, f.name) for f in fields(ControlNetTrainConfig)})
        rec = train_controlnet(args.model or pocket_model_dir(), args.out, cfg, args.device)
        agree = rec["check"]["edge_agreement"]
        print(
            f"{args.out}: {rec['seconds']}; {rec['size_mib']} MiB; final loss {rec['final_loss']}; edge agreement "
            f"without control {agree['without']:.3f}, with {agree['with']:.3f}"
        )
    elif args.cmd == "ceiling":
        from ..store import atomic_write_json
        from .check import vae_ceiling

        rec = vae_ceiling(args.data, args.model, args.device)
        if args.out:
            atomic_write_json(args.out, rec)
        for sid, r in rec["styles"].items():
            low = [o for o, v in r["vae_per_object"].items() if v < 1]
            print(
                f"{sid}: own images {r['raw']:.2f}, after the VAE {r['vae']:.2f}"
                + (f" (lost: {', '.join(low)})" if low else "")
            )
        print(f"mean: own images {rec['mean']['raw']:.2f}, after the VAE {rec['mean']['vae']:.2f} ({rec['model']})")
    elif args.cmd == "sheet":
        sheet(args.size).save(args.out)
        print(f"{args.out}: {len(OBJECTS)} objects x {len(STYLES)} styles")
    else:
        write_styles(args.root, args.styles, size=args.size)
        print(f"{args.root}: {', '.join(args.styles)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
