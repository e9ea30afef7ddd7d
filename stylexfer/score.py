"""Scoring stage: metrics between a style's generated images and its training images.

Only weight-free metrics live here for now (``hist``: colour-histogram similarity). The model-backed
metrics of the reference report (DINOv2, LPIPS, CLIP-R, FID, CLIP-IQA) and its final score plug into
:data:`METRICS` with the same signature.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image


def color_histogram(img: Image.Image, bins: int) -> np.ndarray:
    """Per-channel RGB histogram, (3, bins), each channel normalised to sum 1."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8).reshape(-1, 3)
    idx = (arr.astype(np.int64) * bins) // 256
    hist = np.stack([np.bincount(idx[:, c], minlength=bins) for c in range(3)]).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def hist_similarity(generated: Sequence[Image.Image], references: Sequence[Image.Image], bins: int = 64) -> float:
    """Mean over (generated, reference) pairs of the histogram intersection, averaged over channels.

    1.0 = identical colour distributions, 0.0 = disjoint. Weight-free and size-independent.
    """
    if not generated or not references:
        raise ValueError("hist_similarity needs at least one generated and one reference image")
    g = np.stack([color_histogram(im, bins) for im in generated])  # (G, 3, bins)
    r = np.stack([color_histogram(im, bins) for im in references])  # (R, 3, bins)
    inter = np.minimum(g[:, None], r[None]).sum(axis=-1).mean(axis=-1)  # (G, R)
    return float(inter.mean())


def _hist(generated, references, prompts, cfg) -> float:
    return hist_similarity(generated, references, cfg.eval.hist_bins)


METRICS: dict[str, Callable] = {"hist": _hist}


def score_style(generated: Sequence[Image.Image], references: Sequence[Image.Image], prompts: Sequence[str], cfg) -> dict:
    return {m: METRICS[m](generated, references, prompts, cfg) for m in cfg.eval.metrics}
