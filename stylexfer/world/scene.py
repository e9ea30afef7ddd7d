"""The pocket world's objects: each a few filled shapes in a unit frame, drawn at a random pose.

An object is a list of primitives in coordinates [-1, 1] (y down), each belonging to a *part*: 1 = the
body, 2 = details (windows, eyes, wheels ...). :func:`part_map` draws one at a pose (scale, rotation,
position, mirror) into an integer map (0 = background), supersampled so that the styles can draw
anti-aliased edges. Everything is deterministic given the pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

BODY, DETAIL = 1, 2


def _ellipse(cx, cy, rx, ry, part, a0=0.0, a1=360.0, n=32):
    pts = [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(a0, a1, n, endpoint=a1 - a0 < 360)
    ]
    return ("poly", pts, part)


def _rect(x0, y0, x1, y1, part):
    return ("poly", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], part)


def _line(pts, width, part):
    return ("line", pts, part, width)


def _star(n, r0, r1, part, cx=0.0, cy=0.0):
    pts = [
        (
            cx + (r1 if k % 2 == 0 else r0) * math.sin(math.pi * k / n),
            cy - (r1 if k % 2 == 0 else r0) * math.cos(math.pi * k / n),
        )
        for k in range(2 * n)
    ]
    return ("poly", pts, part)


OBJECTS: dict[str, list] = {
    "fish": [
        _ellipse(-0.1, 0, 0.6, 0.35, BODY),
        ("poly", [(0.45, 0), (0.95, -0.4), (0.95, 0.4)], BODY),
        ("poly", [(-0.15, -0.3), (0.1, -0.6), (0.25, -0.28)], DETAIL),
        _ellipse(-0.4, -0.08, 0.08, 0.08, DETAIL),
    ],
    "house": [
        _rect(-0.6, -0.1, 0.6, 0.75, BODY),
        ("poly", [(-0.78, -0.08), (0, -0.8), (0.78, -0.08)], DETAIL),
        _rect(-0.13, 0.3, 0.13, 0.75, DETAIL),
        _rect(0.25, 0.05, 0.48, 0.28, DETAIL),
    ],
    "tree": [_rect(-0.11, 0.15, 0.11, 0.9, DETAIL), _ellipse(0, -0.25, 0.58, 0.52, BODY)],
    "boat": [
        ("poly", [(-0.85, 0.25), (0.85, 0.25), (0.55, 0.6), (-0.55, 0.6)], BODY),
        _line([(0, 0.25), (0, -0.8)], 0.07, DETAIL),
        ("poly", [(0.06, -0.75), (0.06, 0.15), (0.65, 0.15)], DETAIL),
    ],
    "cup": [
        ("poly", [(-0.45, -0.45), (0.45, -0.45), (0.35, 0.5), (-0.35, 0.5)], BODY),
        _line([(0.42, -0.25), (0.72, -0.15), (0.75, 0.1), (0.4, 0.25)], 0.12, BODY),
        _ellipse(0, 0.58, 0.7, 0.11, DETAIL),
    ],
    "bird": [
        _ellipse(0.05, 0.1, 0.45, 0.3, BODY),
        _ellipse(-0.42, -0.22, 0.23, 0.23, BODY),
        ("poly", [(-0.62, -0.28), (-0.92, -0.18), (-0.62, -0.12)], DETAIL),
        ("poly", [(-0.05, 0.0), (0.35, -0.45), (0.35, 0.08)], DETAIL),
        ("poly", [(0.45, 0.05), (0.9, -0.2), (0.85, 0.25)], BODY),
        _line([(-0.05, 0.38), (-0.1, 0.7)], 0.05, DETAIL),
        _line([(0.15, 0.38), (0.15, 0.7)], 0.05, DETAIL),
    ],
    "lamp": [
        ("poly", [(-0.5, -0.15), (0.5, -0.15), (0.28, -0.75), (-0.28, -0.75)], DETAIL),
        _line([(0, -0.15), (0, 0.65)], 0.08, BODY),
        _ellipse(0, 0.7, 0.42, 0.13, BODY),
    ],
    "phone": [
        _rect(-0.36, -0.8, 0.36, 0.8, BODY),
        _rect(-0.27, -0.65, 0.27, 0.5, DETAIL),
        _ellipse(0, 0.65, 0.08, 0.08, DETAIL),
    ],
    "wallet": [
        _rect(-0.75, -0.42, 0.75, 0.45, BODY),
        ("poly", [(-0.75, -0.42), (0.75, -0.42), (0.75, -0.02), (0, 0.12), (-0.75, -0.02)], DETAIL),
        _ellipse(0, 0.12, 0.09, 0.09, BODY),
    ],
    "car": [
        _rect(-0.88, 0.0, 0.88, 0.4, BODY),
        ("poly", [(-0.5, 0.02), (-0.32, -0.38), (0.35, -0.38), (0.55, 0.02)], BODY),
        ("poly", [(-0.36, -0.02), (-0.24, -0.3), (0.05, -0.3), (0.05, -0.02)], DETAIL),
        _ellipse(-0.5, 0.45, 0.2, 0.2, DETAIL),
        _ellipse(0.5, 0.45, 0.2, 0.2, DETAIL),
    ],
    "star": [_star(5, 0.38, 0.9, BODY), _ellipse(0, 0.05, 0.16, 0.16, DETAIL)],
    "cat": [
        _ellipse(0, 0.1, 0.62, 0.52, BODY),
        ("poly", [(-0.6, -0.1), (-0.5, -0.82), (-0.1, -0.36)], BODY),
        ("poly", [(0.6, -0.1), (0.5, -0.82), (0.1, -0.36)], BODY),
        _ellipse(-0.23, 0.0, 0.1, 0.13, DETAIL),
        _ellipse(0.23, 0.0, 0.1, 0.13, DETAIL),
        ("poly", [(-0.08, 0.2), (0.08, 0.2), (0, 0.31)], DETAIL),
        _line([(-0.15, 0.3), (-0.6, 0.22)], 0.03, DETAIL),
        _line([(0.15, 0.3), (0.6, 0.22)], 0.03, DETAIL),
    ],
    "umbrella": [
        _ellipse(0, 0.0, 0.85, 0.62, BODY, 180, 360),
        _line([(0, 0.0), (0, 0.62), (0.14, 0.78), (0.27, 0.62)], 0.08, DETAIL),
    ],
    "mushroom": [
        _rect(-0.2, -0.05, 0.2, 0.7, DETAIL),
        _ellipse(0, 0.0, 0.75, 0.62, BODY, 180, 360),
        _ellipse(-0.3, -0.3, 0.1, 0.1, DETAIL),
        _ellipse(0.25, -0.4, 0.12, 0.12, DETAIL),
        _ellipse(0.05, -0.15, 0.08, 0.08, DETAIL),
    ],
}


@dataclass(frozen=True)
class Pose:
    scale: float = 0.75  # half-extent of the unit frame as a fraction of half the canvas
    angle: float = 0.0  # degrees, counter-clockwise
    dx: float = 0.0  # centre offset as a fraction of half the canvas
    dy: float = 0.0
    mirror: bool = False

    @staticmethod
    def random(rng: np.random.Generator) -> "Pose":
        scale = float(rng.uniform(0.65, 0.92))
        room = (1.0 - scale) * 0.8
        return Pose(
            scale=scale,
            angle=float(rng.uniform(-25, 25)),
            dx=float(rng.uniform(-room, room)),
            dy=float(rng.uniform(-room, room)),
            mirror=bool(rng.integers(0, 2)),
        )


def part_map(obj: str, pose: Pose, size: int) -> np.ndarray:
    """(size, size) uint8: 0 background, 1 body, 2 details, drawn in the order the object lists them."""
    if obj not in OBJECTS:
        raise KeyError(f"unknown object {obj!r}; known: {', '.join(sorted(OBJECTS))}")
    half = size / 2
    c, s = math.cos(math.radians(pose.angle)), math.sin(math.radians(pose.angle))

    def to_px(p):
        x, y = (-p[0] if pose.mirror else p[0]), p[1]
        x, y = c * x + s * y, -s * x + c * y
        return (half + (x * pose.scale + pose.dx) * half, half + (y * pose.scale + pose.dy) * half)

    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    for prim in OBJECTS[obj]:
        pts = [to_px(p) for p in prim[1]]
        if prim[0] == "poly":
            d.polygon(pts, fill=prim[2])
        else:
            w = max(1, int(round(prim[3] * pose.scale * half)))
            d.line(pts, fill=prim[2], width=w, joint="curve")
            r = w / 2
            for x, y in (pts[0], pts[-1]):
                d.ellipse((x - r, y - r, x + r, y + r), fill=prim[2])
    return np.asarray(img)
