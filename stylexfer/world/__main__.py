"""``python -m stylexfer.world sheet OUT.png`` (every object in every style) | ``styles ROOT`` (held-out styles
in the competition layout)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import DEMO_HELD_OUT, write_styles
from .scene import OBJECTS, Pose
from .styles import STYLES, render


def sheet(size: int) -> Image.Image:
    rows = [np.concatenate([np.asarray(render(o, st, Pose.random(np.random.default_rng(i)), size, i))
                            for i, o in enumerate(sorted(OBJECTS))], 1) for st in STYLES]
    return Image.fromarray(np.concatenate(rows, 0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylexfer.world", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheet", help="every object (columns) in every style (rows: base styles, then held-out)")
    s.add_argument("out", type=Path)
    s.add_argument("--size", type=int, default=64)
    d = sub.add_parser("styles", help="held-out styles in the competition layout")
    d.add_argument("root", type=Path)
    d.add_argument("--styles", nargs="+", default=list(DEMO_HELD_OUT))
    d.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    if args.cmd == "sheet":
        sheet(args.size).save(args.out)
        print(f"{args.out}: {len(OBJECTS)} objects x {len(STYLES)} styles")
    else:
        write_styles(args.root, args.styles, size=args.size)
        print(f"{args.root}: {', '.join(args.styles)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
