"""The pocket world's styles: how an object's part map becomes a picture.

A style is a *family* (the drawing procedure: flat poster colours, stripes, pencil hatching, mosaic,
neon on black, ...) with a palette. The families are split: *base* styles, which the pocket base model
is pretrained on (their prompts may name them with their ``words``), and *held-out* styles, which it
never sees — the ones a DreamBooth-LoRA run has to learn from ten images. :func:`render` draws at 4×
the asked size and reduces (anti-aliased edges); the same (object, style, seed) gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .scene import BODY, DETAIL, Pose, part_map

SS = 4  # supersampling factor


@dataclass(frozen=True)
class Style:
    name: str
    family: str
    palette: tuple  # (background, body, body 2 / pattern, detail, ink) as RGB triples
    words: str  # how a pretraining prompt names it ("" for held-out styles: never named)
    held_out: bool = False


def _style(name, family, pal, words="", held_out=False):
    return Style(name, family, tuple(tuple(c) for c in pal), words, held_out)


STYLES: dict[str, Style] = {
    s.name: s
    for s in [
        # base styles: the pocket model is pretrained on these
        _style(
            "flat_warm",
            "flat",
            [(250, 236, 200), (230, 90, 50), (0, 0, 0), (40, 110, 170), (30, 25, 25)],
            "flat colors",
        ),
        _style(
            "flat_cool",
            "flat",
            [(215, 235, 245), (60, 150, 110), (0, 0, 0), (240, 200, 60), (20, 30, 40)],
            "flat colors",
        ),
        _style(
            "stripes_red",
            "stripes",
            [(245, 245, 240), (200, 40, 50), (250, 220, 210), (40, 40, 60), (30, 20, 20)],
            "stripes",
        ),
        _style(
            "stripes_green",
            "stripes",
            [(235, 240, 225), (40, 120, 70), (200, 230, 190), (120, 60, 30), (20, 30, 20)],
            "stripes",
        ),
        _style(
            "checker_bw",
            "checker",
            [(200, 210, 225), (20, 20, 20), (240, 240, 240), (220, 60, 60), (10, 10, 10)],
            "checkered",
        ),
        _style(
            "checker_gold",
            "checker",
            [(60, 40, 70), (230, 180, 40), (140, 90, 20), (240, 240, 230), (20, 10, 20)],
            "checkered",
        ),
        _style(
            "pencil", "hatch", [(244, 240, 230), (60, 60, 60), (0, 0, 0), (30, 30, 30), (35, 35, 35)], "pencil sketch"
        ),
        _style(
            "sunset",
            "silhouette",
            [(250, 170, 80), (30, 20, 40), (0, 0, 0), (30, 20, 40), (120, 40, 90)],
            "silhouette at sunset",
        ),
        _style(
            "dusk",
            "silhouette",
            [(120, 180, 230), (20, 30, 50), (0, 0, 0), (20, 30, 50), (40, 60, 140)],
            "silhouette at sunset",
        ),
        _style(
            "blueprint",
            "blueprint",
            [(30, 70, 150), (235, 240, 255), (70, 110, 190), (235, 240, 255), (235, 240, 255)],
            "blueprint",
        ),
        # held-out styles: never seen in pretraining
        _style(
            "dots",
            "dots",
            [(250, 225, 120), (40, 90, 170), (250, 250, 250), (220, 60, 90), (20, 30, 60)],
            held_out=True,
        ),
        _style(
            "mosaic",
            "mosaic",
            [(210, 200, 180), (190, 70, 40), (0, 0, 0), (40, 120, 140), (90, 85, 80)],
            held_out=True,
        ),
        _style("neon", "neon", [(8, 6, 14), (255, 40, 200), (0, 0, 0), (60, 240, 255), (0, 0, 0)], held_out=True),
        _style(
            "watercolor",
            "watercolor",
            [(248, 244, 236), (120, 160, 220), (0, 0, 0), (240, 150, 150), (0, 0, 0)],
            held_out=True,
        ),
        _style(
            "pointillism",
            "pointillism",
            [(252, 250, 245), (230, 120, 40), (0, 0, 0), (70, 50, 160), (0, 0, 0)],
            held_out=True,
        ),
    ]
}
BASE_STYLES = [s for s in STYLES.values() if not s.held_out]
HELD_OUT_STYLES = [s for s in STYLES.values() if s.held_out]


def _edges(parts: np.ndarray, width: int, between_parts: bool = True) -> np.ndarray:
    """Pixels within ``width`` of a boundary (object/background, and between parts if asked)."""
    lab = parts if between_parts else (parts > 0).astype(np.uint8)
    e = np.zeros(parts.shape, bool)
    e[:-1] |= lab[:-1] != lab[1:]
    e[1:] |= lab[:-1] != lab[1:]
    e[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    e[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    return _dilate(e, width // 2)


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    for _ in range(r):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _blur(arr: np.ndarray, radius: float) -> np.ndarray:
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)


def _fill(parts, pal, body=None):
    h, w = parts.shape
    img = np.empty((h, w, 3), np.float32)
    img[:] = pal[0]
    img[parts == BODY] = pal[1] if body is None else body[parts == BODY]
    img[parts == DETAIL] = pal[3]
    return img


def _render_family(fam: str, parts: np.ndarray, pal: tuple, rng: np.random.Generator) -> np.ndarray:
    n = parts.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    ink = np.array(pal[4], np.float32)
    if fam == "flat":
        img = _fill(parts, pal)
        img[_edges(parts, 2 * SS)] = ink
    elif fam in ("stripes", "checker"):
        if fam == "stripes":
            a = np.deg2rad(45 + rng.uniform(-10, 10))
            on = ((xx * np.cos(a) + yy * np.sin(a)) // (5 * SS)) % 2 == 0
        else:
            p = 6 * SS
            on = ((xx // p + yy // p) % 2) == 0
        body = np.where(on[..., None], np.array(pal[1], np.float32), np.array(pal[2], np.float32))
        img = _fill(parts, pal, body)
        img[_edges(parts, 2 * SS)] = ink
    elif fam == "hatch":
        img = np.empty((n, n, 3), np.float32)
        img[:] = pal[0]
        img += rng.normal(0, 5, (n, n, 1))
        period = 3 * SS
        diag = ((xx + yy) % period) < SS
        cross = ((xx - yy) % period) < SS
        ink_mask = ((parts == BODY) & diag) | ((parts == DETAIL) & (diag | cross))
        img[ink_mask] = img[ink_mask] * 0.3 + ink * 0.7
        img[_edges(parts, SS)] = ink
    elif fam == "silhouette":
        t = (yy / n)[..., None]
        top, bottom = np.array(pal[0], np.float32), np.array(pal[4], np.float32)
        img = top * (1 - t) + bottom * t
        cx, cy = rng.uniform(0.2, 0.8) * n, rng.uniform(0.15, 0.45) * n
        sun = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.12 * n) ** 2
        img[sun] = img[sun] * 0.4 + np.array([255, 240, 200], np.float32) * 0.6
        img[parts > 0] = pal[1]
    elif fam == "blueprint":
        img = np.empty((n, n, 3), np.float32)
        img[:] = pal[0]
        grid = ((xx % (8 * SS)) < SS // 2) | ((yy % (8 * SS)) < SS // 2)
        img[grid] = pal[2]
        img[_edges(parts, SS + SS // 2)] = pal[1]
    elif fam == "dots":
        p = 6 * SS
        gx, gy = xx % p - p / 2, (yy + (xx // p % 2) * p / 2) % p - p / 2
        dot = gx**2 + gy**2 < (0.3 * p) ** 2
        body = np.where(dot[..., None], np.array(pal[2], np.float32), np.array(pal[1], np.float32))
        img = _fill(parts, pal, body)
        bg_dot = dot & (parts == 0)
        img[bg_dot] = img[bg_dot] * 0.85 + np.array(pal[3], np.float32) * 0.15
        img[_edges(parts, 2 * SS)] = ink
    elif fam == "mosaic":
        img = _fill(parts, pal)
        t = 4 * SS
        tiles = img.reshape(n // t, t, n // t, t, 3).mean(axis=(1, 3))
        tiles += rng.normal(0, 6, tiles.shape)
        img = np.repeat(np.repeat(tiles, t, axis=0), t, axis=1)
        grout = ((xx % t) < SS // 2) | ((yy % t) < SS // 2)
        img[grout] = img[grout] * 0.5 + ink * 0.5
    elif fam == "neon":
        img = np.empty((n, n, 3), np.float32)
        img[:] = pal[0]
        for part, colour in ((BODY, pal[1]), (DETAIL, pal[3])):
            line = _edges((parts == part).astype(np.uint8), SS + SS // 2, between_parts=False)
            layer = np.zeros((n, n, 3), np.float32)
            layer[line] = colour
            img += _blur(layer, 3 * SS) * 1.6 + layer * 0.6
        img[parts > 0] += 18
    elif fam == "watercolor":
        img = _fill(parts, pal)
        img = _blur(img, 1.5 * SS)
        rim = _edges(parts, 2 * SS) & (parts > 0)
        img[rim] *= 0.8
        noise = _blur(rng.normal(128, 60, (n, n, 1)).repeat(3, axis=2), 3 * SS) - 128
        img += noise * 0.25
    elif fam == "pointillism":
        flat = _fill(parts, pal)
        img = np.empty((n, n, 3), np.float32)
        img[:] = pal[0]
        k = (n * n) // (3 * SS * SS)
        ys, xs = rng.integers(0, n, k), rng.integers(0, n, k)
        r = int(1.2 * SS)
        for y, x in zip(ys, xs):
            c = flat[y, x] + rng.normal(0, 20, 3)
            img[max(0, y - r) : y + r, max(0, x - r) : x + r] = c
    else:
        raise KeyError(f"unknown style family {fam!r}")
    return np.clip(img, 0, 255)


def render(obj: str, style: str | Style, pose: Pose, size: int = 64, seed: int = 0) -> Image.Image:
    """``obj`` at ``pose`` in ``style``, ``size`` px; ``seed`` drives the style's own randomness."""
    st = STYLES[style] if isinstance(style, str) else style
    rng = np.random.default_rng([seed, size, *map(ord, st.name), *map(ord, obj)])
    parts = part_map(obj, pose, size * SS)
    arr = _render_family(st.family, parts, st.palette, rng)
    return Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.BOX)
