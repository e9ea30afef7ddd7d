"""The reference suite (``eval.suite=reference``): the reference report's six metrics on their published
models. The final score and the shared arithmetic are :mod:`stylexfer.scoring`'s.

Each metric follows the competition's checker (``jdiff_checker``) where its definition is known; the
README's metric table says which model variant each one uses and where stylexfer differs. Every model
is loaded from a hub id or a local path named in ``eval.models`` (safetensors only, no remote code) and
once per evaluation, not once per style.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import ModelNotFoundError
from .models import looks_like_hub_id, offline_for
from .scoring import FID_BLOCKS, Scorer, frechet_of

MODEL_METRICS = ("dino", "lpips", "clip_r", "fid", "clip_iqa")  # hist needs no weights
FILE_METRICS = ("lpips", "fid")  # weights in one safetensors file (made by python -m stylexfer.tools.convert_weights)


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
    return cv2.calcHist([index], [0], None, [bins**3], [0, bins**3])


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
    for k, (lo, hi) in enumerate(
        [(20, 40), (40, 75), (75, 155), (155, 190), (190, 270), (270, 295), (295, 315)], start=1
    ):
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
    "lpips": "a .safetensors file made by `python -m stylexfer.tools.convert_weights lpips`",
    "fid": "a .safetensors file made by `python -m stylexfer.tools.convert_weights fid`",
}


def locate(metric: str, source: str, offline: bool) -> Path:
    """The local file or folder holding ``metric``'s weights; ModelNotFoundError with the reason if absent."""
    if source and looks_like_hub_id(source) and metric not in FILE_METRICS:
        from huggingface_hub import snapshot_download

        try:
            return Path(
                snapshot_download(
                    source, allow_patterns=HUB_METRIC_PATTERNS, ignore_patterns=PICKLES, local_files_only=offline
                )
            )
        except Exception as e:  # noqa: BLE001 - becomes one line naming the key
            why = (
                "not in the local Hugging Face cache (offline)"
                if offline
                else f"could not be downloaded ({type(e).__name__})"
            )
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
            raise ModelNotFoundError(
                f"{path}: not an LPIPS-{net} state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.model.to(device).eval().requires_grad_(False)

    def tensor(self, images):
        arrs = [
            np.asarray(i.convert("RGB").resize((self.size, self.size), Image.BILINEAR), np.float32) for i in images
        ]
        return self.torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).to(self.device) / 127.5 - 1.0

    def __call__(self, generated, references, **_) -> float:
        g, r = self.tensor(generated), self.tensor(references)
        total = 0.0
        with self.torch.no_grad():
            for k in range(g.shape[0]):  # one generated image against every reference per call
                total += float(self.model(g[k : k + 1].expand_as(r), r).sum())
        return total / (g.shape[0] * r.shape[0])


def fid_structure():
    """pytorch-fid's ``fid_inception_v3`` (torchvision's Inception with the FID blocks), minus its
    download: random weights until a state dict is loaded."""
    import pytorch_fid.inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = (
        pfi.FIDInceptionA(192, pool_features=32),
        pfi.FIDInceptionA(256, pool_features=64),
        pfi.FIDInceptionA(288, pool_features=64),
    )
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
            txt = self.model.get_text_features(
                **self.proc(text=list(texts), return_tensors="pt", padding=True, truncation=True).to(self.device)
            )
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
        return [
            [texts[j] for j in row if texts[j] in cands or texts[j] == own][: self.top_k]
            for row, own in zip(order, truths)
        ]

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


def skip_missing(ev, demo: bool) -> bool:
    """``eval.skip_missing``, with null meaning: skip for the embedded demo, fail for real work."""
    return demo if ev.skip_missing is None else bool(ev.skip_missing)


class ReferenceSuite:
    """The suite interface (:mod:`stylexfer.registry`) over the reference models named in ``eval.models``."""

    @staticmethod
    def preflight(ev, demo: bool) -> dict[str, str]:
        """{metric: why} for the metrics whose weights are missing and may be skipped (``eval.skip_missing``);
        raises ModelNotFoundError naming every missing model otherwise. For the demo nothing is downloaded:
        only local files and the local hub cache count."""
        missing = check_weights(list(ev.metrics), ev.models, offline=offline_for(demo))
        if missing and not skip_missing(ev, demo):
            raise ModelNotFoundError(
                f"metric weights missing for {', '.join(missing)}: "
                + "; ".join(f"{m}: {why}" for m, why in missing.items())
                + " — or set eval.skip_missing=true to score without them"
            )
        return missing

    @staticmethod
    def scorer(ev, device: str, candidates: Sequence[str], offline: bool, skip: Sequence[str] = ()) -> Scorer:
        """Every metric of ``ev.metrics`` but ``skip`` (already found unavailable: not looked up again)."""
        names = [m for m in ev.metrics if m not in skip]
        paths, missing = find_weights(names, ev.models, offline)
        metrics, models = {}, {}
        for m in names:
            if m in missing:
                continue
            if m == "hist":
                metrics[m], models[m] = HIST
                continue
            metrics[m] = _load_metric(m, paths[m], device, ev, candidates)
            models[m] = getattr(ev.models, m)
        return Scorer(metrics=metrics, unavailable=missing, models=models)


def _load_metric(m: str, path: Path, device: str, ev, candidates: Sequence[str]):
    if m == "dino":
        return Dino(path, device)
    if m == "lpips":
        return Lpips(path, device)
    if m == "fid":
        return Fid(path, device, ev.fid_dims)
    if m == "clip_r":
        return ClipR(path, device, candidates, ev.clip_r_top_k)
    return ClipIqa(path, device)


SUITE = ReferenceSuite()
