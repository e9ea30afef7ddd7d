"""The vocabulary every evaluation suite shares, with no model code: the six metrics' names, which way
each is better, the reference report's final score, the Fréchet distance's arithmetic, CLIP-R's named
candidate lists and the :class:`Scorer` a suite returns.

final = (0.2·DINOv2 + 0.4·Hist + 0.4·(1 − LPIPS)) × (0.5·CLIP-R + 0.4·(20 − min(FID, 20))/20 + 0.1·CLIP-IQA)

split as in the report's score table into a style component (the first factor), a text component
(0.5·CLIP-R) and a quality component (the FID and CLIP-IQA terms).

The suites themselves (``eval.suite``: :mod:`stylexfer.metrics`, the reference models; :mod:`stylexfer.world.metrics`,
the pocket judge) are found by name through :mod:`stylexfer.registry`, so configuration and the stages
import none of their code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError, ModelNotFoundError

FID_CLIP = 20.0
METRIC_NAMES = ("dino", "hist", "lpips", "clip_r", "fid", "clip_iqa")
HIGHER_IS_BETTER = {
    "dino": True,
    "hist": True,
    "lpips": False,
    "clip_r": True,
    "fid": False,
    "clip_iqa": True,
    "final": True,
}


def score_components(dino: float, hist: float, lpips: float, clip_r: float, fid: float, clip_iqa: float) -> dict:
    """The report's style, text and quality components and the final score (all inputs as the metrics report them)."""
    for name, v in (
        ("dino", dino),
        ("hist", hist),
        ("lpips", lpips),
        ("clip_r", clip_r),
        ("fid", fid),
        ("clip_iqa", clip_iqa),
    ):
        if v is None or not math.isfinite(v):
            raise ValueError(f"{name} is {v}: the final score needs all six metrics")
    style = 0.2 * dino + 0.4 * hist + 0.4 * (1.0 - lpips)
    text = 0.5 * clip_r
    quality = 0.4 * (FID_CLIP - min(fid, FID_CLIP)) / FID_CLIP + 0.1 * clip_iqa
    return {"style": style, "text": text, "quality": quality, "final": style * (text + quality)}


# ----------------------------------------------------------------------------- FID arithmetic


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (N, D) feature matrix, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) feature matrix, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), robust to rank-deficient covariances.

    With ten reference images the covariances have rank ≤ 9, where ``scipy.linalg.sqrtm(Σ1 Σ2)`` can
    return NaN or a complex matrix. Σ1 Σ2 is similar to the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, so
    Tr((Σ1 Σ2)^½) is the sum of the square roots of that matrix's eigenvalues (round-off negatives clipped
    to 0): always real and finite.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt, 0.0))


def frechet_of(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between two (N, D) feature sets (each one's mean and covariance)."""
    (m1, s1), (m2, s2) = feature_stats(features_a), feature_stats(features_b)
    return frechet_distance(m1, s1, m2, s2)


# ----------------------------------------------------------------------------- Pixel-Hist (weight-free)


FID_BLOCKS = {64: 0, 192: 1, 768: 2, 2048: 3}


# Named CLIP-R candidate lists: name → (where it is published, what it is). Not shipped (the project ships
# no third-party data); put the file at <eval.prompt_lists_dir>/<name>.txt.
PROMPT_LISTS = {
    "checker": (
        "https://github.com/Xlucidator/JDiffArtFlow/blob/main/evaluation/clip_r_prompts.txt",
        "the competition checker's CLIP-R candidates (215 object names), carried with the checker by the "
        "public course repository Xlucidator/JDiffArtFlow",
    ),
}


def prompt_list_file(ev) -> Path:
    """The file behind ``eval.clip_r_prompts``: a named list (:data:`PROMPT_LISTS`) or a path."""
    name = ev.clip_r_prompts
    if name in PROMPT_LISTS:
        f = Path(ev.prompt_lists_dir).expanduser() / f"{name}.txt"
        if not f.is_file():
            url, what = PROMPT_LISTS[name]
            raise ModelNotFoundError(
                f"eval.clip_r_prompts={name}: {f} not found; it is {what}: save {url} "
                f"(raw) as {f}, or set eval.clip_r_prompts=/path/to/list.txt"
            )
        return f
    f = Path(name).expanduser()
    if not f.is_file():
        raise ConfigError(f"eval.clip_r_prompts={name}: no such file (named lists: {', '.join(PROMPT_LISTS)})")
    return f


@dataclass
class Scorer:
    """The metrics that can run (models loaded once) and why the others cannot."""

    metrics: dict
    unavailable: dict
    models: dict  # metric -> the id/path it used
    # scores beside the six that the final score does not use (world suite: the judge's style attribution)
    diagnostics: dict = field(default_factory=dict)
    # diagnostics per object: name -> f(generated, references, objects=...) -> {object: value}
    per_object: dict = field(default_factory=dict)

    def score_objects(self, generated, references, objects) -> dict:
        """{diagnostic: {object: value}} for one style's images (empty where the suite has none)."""
        return {m: f(generated, references, objects=objects) for m, f in self.per_object.items()}

    def score_style(self, generated, references, objects, skip: Sequence[str] = ()) -> dict:
        return {
            m: f(generated, references, objects=objects)
            for m, f in {**self.metrics, **self.diagnostics}.items()
            if m not in skip
        }
