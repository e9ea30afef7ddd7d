"""``python -m stylexfer.tools.seal_assets [--check]``: the shipped folders' ``sha256.json`` (every file of the
pocket model, the tiny model's configs, the pocket judge, the pocket ControlNet), which the loaders check on every use.

Run it after replacing a shipped file on purpose (a new pocket model from ``python -m stylexfer.world
pretrain``, an edited ``assets/tiny_sd/*.json``); ``--check`` only compares and exits 1 naming the first
file that differs.
"""

from __future__ import annotations

import argparse
import sys

from ..control import SHIPPED_POCKET as CONTROLNET_DIR
from ..embedded import POCKET_DIR, TINY_SD_DIR
from ..store import FOLDER_MANIFEST, atomic_write_json, damage, digests
from ..world.judge import ASSETS as JUDGE_DIR

SHIPPED = {
    "pocket model": POCKET_DIR,
    "tiny model": TINY_SD_DIR,
    "pocket judge": JUDGE_DIR,
    "pocket ControlNet": CONTROLNET_DIR,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stylexfer.tools.seal_assets", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 when a file differs")
    args = ap.parse_args(argv)
    bad = 0
    for what, folder in SHIPPED.items():
        if args.check:
            why = damage(folder, FOLDER_MANIFEST)
            print(f"{what}: {folder}: {why or 'ok'}")
            bad += why is not None
        else:
            files = digests(folder, FOLDER_MANIFEST)
            atomic_write_json(folder / FOLDER_MANIFEST, files)
            print(f"{what}: {folder / FOLDER_MANIFEST}: {len(files)} files")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
