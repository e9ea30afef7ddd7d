"""The reference report's six metrics and its final score.

final = (0.2·DINOv2 + 0.4·Hist + 0.4·(1 − LPIPS)) × (0.5·CLIP-R + 0.4·(20 − min(FID, 20))/20 + 0.1·CLIP-IQA)

split as in the report's score table into a style component (the first factor), a text component
(0.5·CLIP-R) and a quality component (the FID and CLIP-IQA terms).

Each metric follows the competition's checker (``jdiff_checker``) where its definition is known; the
README's metric table says which model variant each one uses and where stylexfer differs. Every model
is loaded from a hub id or a local path named in ``eval.models`` (safetensors only, no remote code) and
once per evaluation, not once per style.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .config import EvalSuite, value
from .errors import ModelNotFoundError
from .models import hub_offline, looks_like_hub_id

FID_CLIP = 20.0
METRIC_NAMES = ("dino", "hist", "lpips", "clip_r", "fid", "clip_iqa")
MODEL_METRICS = ("dino", "lpips", "clip_r", "fid", "clip_iqa")  # hist needs no weights
FILE_METRICS = ("lpips", "fid")  # weights in one safetensors file (made by stylexfer.convert_weights)
HIGHER_IS_BETTER = {"dino": True, "hist": True, "lpips": False, "clip_r": True, "fid": False, "clip_iqa": True,
                    "final": True}


def score_components(dino: float, hist: float, lpips: float, clip_r: float, fid: float, clip_iqa: float) -> dict:
    """The report's style, text and quality components and the final score (all inputs as the metrics report them)."""
    for name, v in (("dino", dino), ("hist", hist), ("lpips", lpips), ("clip_r", clip_r), ("fid", fid), ("clip_iqa", clip_iqa)):
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

def _bgr(img: Image.Image) -> np.ndarray:
    """What ``cv2.imread`` gives for the image: uint8 BGR (alpha dropped)."""
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8)[..., ::-1])


def rgb_histogram(bgr: np.ndarray, bins: int = 16) -> np.ndarray:
    """The checker's "RGB" histogram: 16 levels per channel combined as ``B·256 + G·16 + R`` into 4096
    cells, pixel counts. Computed exactly as the checker does, in uint8 arithmetic, where ``B·256``
    wraps to 0: the blue channel drops out and only cells 0–255 (green × red) are ever filled."""
    import cv2

    q = bgr // np.uint8(256 // bins)
    b = np.uint8(bins)
    index = (q[..., 0] * b) * b + q[..., 1] * b + q[..., 2]  # uint8, wraps as in the checker
    return cv2.calcHist([index], [0], None, [bins ** 3], [0, bins ** 3])


def hsv_histogram(bgr: np.ndarray) -> np.ndarray:
    """The checker's 72-cell HSV histogram (8 hue × 3 saturation × 3 value bands).

    Kept exactly as the checker computes it, quirks included, so scores stay comparable with the
    competition's: OpenCV's hue (0–179) is doubled in uint8 arithmetic, which wraps hues above 127
    (254°–358°) to small values; and ``calcHist`` over the range [0, 71) drops the last cell (71).
    """
    import cv2

    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    h = (hsv[..., 0] * np.uint8(2)).astype(np.int32)  # the checker's uint8 ``2*h``: wraps modulo 256
    s, v = hsv[..., 1], hsv[..., 2]
    H = np.zeros(h.shape, np.uint8)
    for k, (lo, hi) in enumerate([(20, 40), (40, 75), (75, 155), (155, 190), (190, 270), (270, 295), (295, 315)], start=1):
        H[(h > lo) & (h <= hi)] = k
    S = np.where(s <= 51, 0, np.where(s <= 178, 1, 2)).astype(np.uint8)
    V = np.where(v <= 51, 0, np.where(v <= 178, 1, 2)).astype(np.uint8)
    g = (9 * H + 3 * S + V).astype(np.uint8)
    return cv2.calcHist([g], [0], None, [72], [0, 71])


def hist_score(generated: Sequence[Image.Image], references: Sequence[Image.Image]) -> float:
    """Pixel-Hist as the checker defines it: each generated image's histogram correlated
    (``cv2.HISTCMP_CORREL``) with the mean histogram of the style's references, averaged over images,
    once for the RGB and once for the HSV histogram; the score is the mean of the two (1 = same colours)."""
    import cv2

    if not generated or not references:
        raise ValueError("hist_score needs at least one generated and one reference image")
    gen, ref = [_bgr(i) for i in generated], [_bgr(i) for i in references]
    out = []
    for hist in (rgb_histogram, hsv_histogram):
        ref_hist = np.mean([hist(r) for r in ref], axis=0).astype(np.float32)
        out.append(float(np.mean([cv2.compareHist(ref_hist, hist(g), cv2.HISTCMP_CORREL) for g in gen])))
    return float(np.mean(out))


# ----------------------------------------------------------------------------- model sources

HUB_METRIC_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
PICKLES = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx"]
# How to obtain the weights a metric reads (named in the missing-weights error).
HOW_TO_GET = {
    "dino": "a transformers Dinov2Model folder or hub id",
    "clip_r": "a transformers CLIPModel folder or hub id",
    "clip_iqa": "a transformers CLIPModel folder or hub id",
    "lpips": "a .safetensors file made by `python -m stylexfer.convert_weights lpips`",
    "fid": "a .safetensors file made by `python -m stylexfer.convert_weights fid`",
}


def locate(metric: str, source: str, offline: bool) -> Path:
    """The local file or folder holding ``metric``'s weights; ModelNotFoundError with the reason if absent."""
    if source and looks_like_hub_id(source) and metric not in FILE_METRICS:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(source, allow_patterns=HUB_METRIC_PATTERNS, ignore_patterns=PICKLES,
                                          local_files_only=offline))
        except Exception as e:  # noqa: BLE001 - becomes one line naming the key
            why = "not in the local Hugging Face cache (offline)" if offline else f"could not be downloaded ({type(e).__name__})"
            raise ModelNotFoundError(f"{source}: {why}") from None
    p = Path(source).expanduser() if source else None
    if p is None or not p.exists():
        raise ModelNotFoundError(f"{source}: no such file or folder")
    if metric in FILE_METRICS:
        if p.suffix != ".safetensors" or not p.is_file():
            raise ModelNotFoundError(f"{source}: expected a .safetensors file")
    elif not (p / "config.json").exists() or not list(p.glob("*.safetensors")):
        raise ModelNotFoundError(f"{source}: expected a transformers folder with config.json and *.safetensors")
    return p


def find_weights(metrics: Sequence[str], models, offline: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """({metric: local weights}, {metric: why its weights are unavailable}) for the model-backed metrics."""
    found, missing = {}, {}
    for m in metrics:
        if m in MODEL_METRICS:
            try:
                found[m] = locate(m, getattr(models, m), offline)
            except ModelNotFoundError as e:
                missing[m] = f"{e} (set eval.models.{m}: {HOW_TO_GET[m]})"
    return found, missing


def check_weights(metrics: Sequence[str], models, offline: bool) -> dict[str, str]:
    """{metric: why its weights are unavailable} for every model-backed metric in ``metrics``."""
    return find_weights(metrics, models, offline)[1]


# ----------------------------------------------------------------------------- model-backed metrics
# Each class loads its model once; ``__call__`` scores one style. All run under torch.no_grad.

def _torch():
    import torch

    return torch


class Dino:
    """DINOv2 similarity (checker: facebook/dinov2-base): the cosine similarity of the pooled (CLS)
    embeddings of every (generated, reference) pair, averaged per generated image, then over images."""

    def __init__(self, path: Path, device: str):
        from transformers import AutoImageProcessor, Dinov2Model

        torch = _torch()
        self.device = device
        self.model = Dinov2Model.from_pretrained(path, use_safetensors=True).to(device).eval().requires_grad_(False)
        self.proc = AutoImageProcessor.from_pretrained(path)
        self.torch = torch

    def embed(self, images):
        with self.torch.no_grad():
            out = self.model(**self.proc(images=list(images), return_tensors="pt").to(self.device))
        return self.torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)

    def __call__(self, generated, references, **_) -> float:
        return float((self.embed(generated) @ self.embed(references).T).mean())


class Lpips:
    """LPIPS distance (checker: torchmetrics' LPIPS, SqueezeNet, v0.1 linear heads): images resized to
    256×256, scaled to [−1, 1], every (generated, reference) pair, mean. Built with the ``lpips`` package
    (the same network torchmetrics wraps) and loaded from a safetensors file."""

    size = 256

    def __init__(self, path: Path, device: str, net: str = "squeeze"):
        import lpips
        from safetensors.torch import load_file

        self.torch = _torch()
        self.device = device
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        state = load_file(str(path))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not re.match(r"lin\d+\.", k)]  # lin0..6 alias lins.0..6
        if missing or unexpected:
            raise ModelNotFoundError(f"{path}: not an LPIPS-{net} state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.model.to(device).eval().requires_grad_(False)

    def tensor(self, images):
        arrs = [np.asarray(i.convert("RGB").resize((self.size, self.size), Image.BILINEAR), np.float32) for i in images]
        return self.torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).to(self.device) / 127.5 - 1.0

    def __call__(self, generated, references, **_) -> float:
        g, r = self.tensor(generated), self.tensor(references)
        total = 0.0
        with self.torch.no_grad():
            for k in range(g.shape[0]):  # one generated image against every reference per call
                total += float(self.model(g[k:k + 1].expand_as(r), r).sum())
        return total / (g.shape[0] * r.shape[0])


def fid_structure():
    """pytorch-fid's ``fid_inception_v3`` (torchvision's Inception with the FID blocks), minus its
    download: random weights until a state dict is loaded."""
    import pytorch_fid.inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (pfi.FIDInceptionA(192, pool_features=32),
                                                pfi.FIDInceptionA(256, pool_features=64),
                                                pfi.FIDInceptionA(288, pool_features=64))
    net.Mixed_6b, net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=128), pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d, net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=160), pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b, net.Mixed_7c = pfi.FIDInceptionE_1(1280), pfi.FIDInceptionE_2(2048)
    return net


def fid_network(block: int, structure=fid_structure):
    """pytorch-fid's InceptionV3 feature extractor (resize to 299, scale to [−1, 1]) up to ``block``,
    around ``structure()`` instead of the downloaded network."""
    from unittest import mock

    import pytorch_fid.inception as pfi

    with mock.patch.object(pfi, "fid_inception_v3", structure):
        return pfi.InceptionV3([block], resize_input=True, normalize_input=True)


FID_BLOCKS = {64: 0, 192: 1, 768: 2, 2048: 3}


class Fid:
    """FID between a style's generated images and its references on Inception features (checker:
    torchmetrics ``FrechetInceptionDistance(feature=64)``: the 64-channel first-pool features,
    spatially averaged; 2048 is the usual FID). Ten references give rank-deficient covariances:
    :func:`frechet_distance` keeps the result real and finite, but it is a noisy number."""

    def __init__(self, path: Path, device: str, dims: int = 64):
        from safetensors.torch import load_file

        if dims not in FID_BLOCKS:
            raise ValueError(f"eval.fid_dims={dims}: must be one of {sorted(FID_BLOCKS)}")
        self.torch = _torch()
        self.device = device
        self.model = fid_network(FID_BLOCKS[dims])
        own = self.model.state_dict()
        state = load_file(str(path))
        absent = [k for k in own if k not in state]
        if absent:
            raise ModelNotFoundError(f"{path}: not a FID Inception state dict (missing {absent[:3]})")
        self.model.load_state_dict({k: state[k] for k in own})
        self.model.to(device).eval().requires_grad_(False)

    def features(self, images) -> np.ndarray:
        x = [self.torch.from_numpy(np.asarray(i.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1) for i in images]
        out = []
        with self.torch.no_grad():
            for t in x:  # sizes may differ between images; the network resizes each to 299
                f = self.model(t[None].to(self.device))[0]
                out.append(f.mean(dim=(2, 3)).squeeze(0).double().cpu().numpy())
        return np.stack(out)

    def __call__(self, generated, references, **_) -> float:
        return frechet_of(self.features(references), self.features(generated))


# Named CLIP-R candidate lists: name → (where it is published, what it is). Not shipped (the project ships
# no third-party data); put the file at <eval.prompt_lists_dir>/<name>.txt.
PROMPT_LISTS = {
    "checker": ("https://github.com/Xlucidator/JDiffArtFlow/blob/main/evaluation/clip_r_prompts.txt",
                "the competition checker's CLIP-R candidates (215 object names), carried with the checker by the "
                "public course repository Xlucidator/JDiffArtFlow"),
}


def prompt_list_file(ev) -> Path:
    """The file behind ``eval.clip_r_prompts``: a named list (:data:`PROMPT_LISTS`) or a path."""
    name = ev.clip_r_prompts
    if name in PROMPT_LISTS:
        f = Path(ev.prompt_lists_dir).expanduser() / f"{name}.txt"
        if not f.is_file():
            url, what = PROMPT_LISTS[name]
            raise ModelNotFoundError(f"eval.clip_r_prompts={name}: {f} not found; it is {what}: save {url} "
                                     f"(raw) as {f}, or set eval.clip_r_prompts=/path/to/list.txt")
        return f
    f = Path(name).expanduser()
    if not f.is_file():
        from .errors import ConfigError

        raise ConfigError(f"eval.clip_r_prompts={name}: no such file (named lists: {', '.join(PROMPT_LISTS)})")
    return f


class _Clip:
    def __init__(self, path: Path, device: str):
        from transformers import AutoProcessor, CLIPModel

        self.torch = _torch()
        self.device = device
        self.model = CLIPModel.from_pretrained(path, use_safetensors=True).to(device).eval().requires_grad_(False)
        self.proc = AutoProcessor.from_pretrained(path)

    def embed(self, images, texts):
        torch = self.torch
        with torch.no_grad():
            img = self.model.get_image_features(**self.proc(images=list(images), return_tensors="pt").to(self.device))
            txt = self.model.get_text_features(**self.proc(text=list(texts), return_tensors="pt", padding=True,
                                                           truncation=True).to(self.device))
        img = img.pooler_output if hasattr(img, "pooler_output") else img
        txt = txt.pooler_output if hasattr(txt, "pooler_output") else txt
        return torch.nn.functional.normalize(img.float(), dim=-1), torch.nn.functional.normalize(txt.float(), dim=-1)


class ClipR(_Clip):
    """CLIP-R (checker: openai/clip-vit-large-patch14): an image counts as retrieved when its own
    prompt (its object name, lower case) is among the ``top_k`` (5) best-matching texts of the candidate
    list (``eval.clip_r_prompts``, lower case, plus its own name). Per style: the fraction retrieved;
    overall (``stylexfer.evaluate``): the fraction of all images, as the checker counts."""

    def __init__(self, path: Path, device: str, candidates: Sequence[str], top_k: int = 5):
        super().__init__(path, device)
        self.candidates, self.top_k = list(candidates), top_k

    def picks(self, images, truths: Sequence[str]) -> list[list[str]]:
        """Each image's ``top_k`` texts among the candidates plus its *own* truth only (as the checker ranks:
        another image's object is not a candidate for this one)."""
        cands = set(self.candidates)
        texts = sorted(cands | set(truths))
        img, txt = self.embed(images, texts)
        order = (img @ txt.T).argsort(dim=1, descending=True).tolist()
        return [[texts[j] for j in row if texts[j] in cands or texts[j] == own][:self.top_k]
                for row, own in zip(order, truths)]

    def __call__(self, generated, references=None, *, objects: Sequence[str], **_) -> float:
        truths = [o.lower() for o in objects]
        return float(np.mean([t in p for t, p in zip(truths, self.picks(generated, truths))]))


class ClipIqa(_Clip):
    """CLIP-IQA: per image, the softmax (logit scale 100) of its similarity to "Good photo." against
    "Bad photo." (torchmetrics' "quality" pair); the mean probability of the positive prompt."""

    prompts = ("Good photo.", "Bad photo.")

    def __call__(self, generated, references=None, **_) -> float:
        img, txt = self.embed(generated, self.prompts)
        return float(self.torch.softmax(100.0 * img @ txt.T, dim=1)[:, 0].mean())


# Pixel-Hist in every suite: (metric, what computes it)
HIST = (lambda g, r, **_: hist_score(g, r), "weight-free (checker's RGB 16³ + HSV 72-cell histograms)")


@dataclass
class Scorer:
    """The metrics that can run (models loaded once) and why the others cannot."""

    metrics: dict
    unavailable: dict
    models: dict  # metric -> the id/path it used
    # scores beside the six that the final score does not use (world suite: the judge's style attribution)
    diagnostics: dict = field(default_factory=dict)

    @classmethod
    def load(cls, ev, device: str, candidates: Sequence[str], offline: Optional[bool] = None,
             skip: Sequence[str] = ()) -> "Scorer":
        """``skip``: metrics already found unavailable (not looked up again)."""
        offline = hub_offline() if offline is None else offline
        names = [m for m in ev.metrics if m not in skip]
        if value(ev.suite) == EvalSuite.world.value:
            return cls._world(ev, device, names)
        paths, missing = find_weights(names, ev.models, offline)
        metrics, models = {}, {}
        for m in names:
            if m in missing:
                continue
            if m == "hist":
                metrics[m], models[m] = HIST
                continue
            path = paths[m]
            metrics[m] = {"dino": lambda: Dino(path, device),
                          "lpips": lambda: Lpips(path, device),
                          "fid": lambda: Fid(path, device, ev.fid_dims),
                          "clip_r": lambda: ClipR(path, device, candidates, ev.clip_r_top_k),
                          "clip_iqa": lambda: ClipIqa(path, device)}[m]()
            models[m] = getattr(ev.models, m)
        return cls(metrics=metrics, unavailable=missing, models=models)

    @classmethod
    def _world(cls, ev, device: str, names: Sequence[str]) -> "Scorer":
        """``eval.suite=world``: every model-backed metric from the pocket judge (stylexfer/world/metrics.py)."""
        from functools import partial

        from .world.metrics import WORLD_METRICS, WorldJudge, style_attribution

        judge = WorldJudge(device, *([Path(ev.judge).expanduser()] if ev.judge else []))
        metrics, models = {}, {}
        for m in names:
            if m == "hist":
                metrics[m], models[m] = HIST
            else:
                metrics[m] = partial(WORLD_METRICS[m], judge)
                models[m] = judge.label
        return cls(metrics=metrics, unavailable={}, models=models,
                   diagnostics={"attribution": partial(style_attribution, judge)})

    def score_style(self, generated, references, objects, skip: Sequence[str] = ()) -> dict:
        return {m: f(generated, references, objects=objects) for m, f in {**self.metrics, **self.diagnostics}.items()
                if m not in skip}
