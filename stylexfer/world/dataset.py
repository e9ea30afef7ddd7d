"""Data sets of the pocket world: held-out styles in the competition layout, and the pretraining stream.

:func:`write_styles` writes ``<root>/<style>/images/<object>.png`` (ten objects at random poses) and
``<root>/<style>/prompt.json`` asking for objects both drawn in the style's images and absent from
them, as the competition does. :func:`pretraining_example` draws one (image, prompt) of a *base* style
for the pocket base model: ``an image of {object}`` or ``an image of {object}, {style words}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..store import atomic_save_image, atomic_write_json, atomic_write_text
from .scene import OBJECTS, Pose
from .styles import BASE_STYLES, STYLES, render

DEMO_HELD_OUT = ("dots", "mosaic", "neon")


def write_styles(
    root: Path,
    styles: Sequence[str] = DEMO_HELD_OUT,
    images: int = 10,
    present_prompts: int = 2,
    size: int = 64,
    seed: int = 0,
    ids: Sequence[str] | None = None,
) -> Path:
    """The styles' images and prompts in the competition layout under ``root`` (made fresh); each style's folder
    is named by ``ids`` (as the competition numbers its styles) or by the style's name."""
    root = Path(root)
    ids = list(ids) if ids is not None else list(styles)
    if len(ids) != len(styles):
        raise ValueError(f"ids={ids}: one folder name per style ({len(styles)})")
    names = sorted(OBJECTS)
    if not 1 <= images < len(names):
        raise ValueError(f"images={images}: must leave some of the {len(names)} objects absent")
    for k, (name, folder) in enumerate(zip(styles, ids)):
        if name not in STYLES:
            raise KeyError(f"unknown style {name!r}; known: {', '.join(STYLES)}")
        rng = np.random.default_rng([seed, k])
        order = [names[i] for i in rng.permutation(len(names))]
        drawn, absent = order[:images], order[images:]
        for i, obj in enumerate(drawn):
            atomic_save_image(
                render(obj, name, Pose.random(rng), size, seed=seed * 1000 + i),
                root / folder / "images" / f"{obj}.png",
            )
        prompts = drawn[:present_prompts] + absent
        atomic_write_json(root / folder / "prompt.json", {str(i): o for i, o in enumerate(prompts)})
    atomic_write_text(
        root / "README.md",
        (
            "# stylexfer pocket-world styles\n\nProcedural images made by `stylexfer.world` (held-out styles the "
            "pocket "
            f"base model never saw), {images} per style at {size} px, in the competition layout "
            "`<style>/images/<object>.png` + `<style>/prompt.json` (objects drawn in the images and absent from "
            "them).\n\n" + "".join(f"- `{f}`: {n}\n" for f, n in zip(ids, styles))
        ),
    )
    return root


def pretraining_example(
    rng: np.random.Generator, size: int = 64, named: float = 0.5, every_style: bool = False
) -> tuple[Image.Image, str, str, str]:
    """One picture of a base style (of any style with ``every_style``, for the VAE) and its prompt:
    (image, prompt, object, style name)."""
    obj = sorted(OBJECTS)[int(rng.integers(len(OBJECTS)))]
    pool = list(STYLES.values()) if every_style else BASE_STYLES
    style = pool[int(rng.integers(len(pool)))]
    img = render(obj, style, Pose.random(rng), size, seed=int(rng.integers(2**31)))
    prompt = f"an image of {obj}" + (f", {style.words}" if rng.random() < named else "")
    return img, prompt, obj, style.name


def write_demo(folder: Path, ids: Sequence[str]) -> None:
    """The embedded demo's data (:data:`stylexfer.registry.DEMO_DATA`): the held-out styles of
    :data:`DEMO_HELD_OUT` in the competition layout, named ``ids``."""
    write_styles(folder, DEMO_HELD_OUT, ids=ids)
