"""The reference report's score, and the metric arithmetic that needs no model weights.

final = (0.2·DINOv2 + 0.4·Hist + 0.4·(1 − LPIPS)) × (0.5·CLIP-R + 0.4·(20 − min(FID, 20))/20 + 0.1·CLIP-IQA)

split as in the report's score table into a style component (the first factor), a text component
(0.5·CLIP-R) and a quality component (the FID and CLIP-IQA terms). The model-backed metrics (DINOv2,
LPIPS, CLIP-R, FID features, CLIP-IQA) are issue 3's remaining work; :func:`frechet_distance` is the FID
arithmetic on any two feature sets.
"""

from __future__ import annotations

import math

import numpy as np

FID_CLIP = 20.0


def score_components(dino: float, hist: float, lpips: float, clip_r: float, fid: float, clip_iqa: float) -> dict:
    """The report's style, text and quality components and the final score (all inputs as the metrics report them)."""
    for name, v in (("dino", dino), ("hist", hist), ("lpips", lpips), ("clip_r", clip_r), ("fid", fid), ("clip_iqa", clip_iqa)):
        if v is None or not math.isfinite(v):
            raise ValueError(f"{name} is {v}: the final score needs all six metrics")
    style = 0.2 * dino + 0.4 * hist + 0.4 * (1.0 - lpips)
    text = 0.5 * clip_r
    quality = 0.4 * (FID_CLIP - min(fid, FID_CLIP)) / FID_CLIP + 0.1 * clip_iqa
    return {"style": style, "text": text, "quality": quality, "final": style * (text + quality)}


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (N, D) feature matrix, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) feature matrix, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), robust to rank-deficient covariances.

    With ten reference images the 2048-dim covariances have rank ≤ 9, where ``scipy.linalg.sqrtm(Σ1 Σ2)``
    can return NaN or a complex matrix. Σ1 Σ2 is similar to the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, so
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


# ----------------------------------------------------------------------------- model-backed metrics
# Each takes a model folder or hub id (loaded with from_pretrained, safetensors only, no remote code).
# They are tested on tiny random-weight models of the same architectures saved in the hub layout; real
# weights (facebook/dinov2-*, openai/clip-vit-*) are a config value away. Not yet wired into runs.

def _load(kind: str, path: str, device: str = "cpu"):
    import torch
    from transformers import AutoImageProcessor, AutoProcessor, CLIPModel, Dinov2Model

    if kind == "dino":
        model, proc = Dinov2Model.from_pretrained(path, use_safetensors=True), AutoImageProcessor.from_pretrained(path)
    else:
        model, proc = CLIPModel.from_pretrained(path, use_safetensors=True), AutoProcessor.from_pretrained(path)
    return model.to(device).eval().requires_grad_(False), proc, torch


def dino_similarity(generated, references, model_path: str, device: str = "cpu") -> float:
    """Mean cosine similarity of DINOv2 image embeddings (the normalised CLS token) over all
    (generated, reference) pairs: structure/style similarity, 1 for identical images."""
    model, proc, torch = _load("dino", model_path, device)

    def embed(images):
        with torch.no_grad():
            out = model(**proc(images=list(images), return_tensors="pt").to(device))
        return torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)

    return float((embed(generated) @ embed(references).T).mean())


def _clip_embeddings(model, proc, torch, device, images, texts):
    with torch.no_grad():
        img = model.get_image_features(**proc(images=list(images), return_tensors="pt").to(device))
        txt = model.get_text_features(**proc(text=list(texts), return_tensors="pt", padding=True).to(device))
    img = img.pooler_output if hasattr(img, "pooler_output") else img
    txt = txt.pooler_output if hasattr(txt, "pooler_output") else txt
    return torch.nn.functional.normalize(img.float(), dim=-1), torch.nn.functional.normalize(txt.float(), dim=-1)


def clip_r_precision(images, prompt_index, candidates, model_path: str, device: str = "cpu") -> tuple[float, list[int]]:
    """CLIP retrieval precision: the fraction of images whose best-matching prompt among ``candidates``
    (the style's prompts) is the one it was generated from (``prompt_index[i]``). Returns (precision, picks)."""
    model, proc, torch = _load("clip", model_path, device)
    img, txt = _clip_embeddings(model, proc, torch, device, images, candidates)
    picks = (img @ txt.T).argmax(dim=1).tolist()
    return float(np.mean([p == t for p, t in zip(picks, prompt_index)])), picks


CLIP_IQA_PROMPTS = ("Good photo.", "Bad photo.")


def clip_iqa(images, model_path: str, device: str = "cpu", prompts=CLIP_IQA_PROMPTS) -> float:
    """CLIP-IQA: softmax over the antonym pair (logit scale 100, as CLIP-IQA) of each image's cosine
    similarity to "Good photo." vs "Bad photo."; the mean probability of the positive prompt."""
    model, proc, torch = _load("clip", model_path, device)
    img, txt = _clip_embeddings(model, proc, torch, device, images, prompts)
    probs = torch.softmax(100.0 * img @ txt.T, dim=1)[:, 0]
    return float(probs.mean())
