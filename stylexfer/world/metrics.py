"""The six metrics in the pocket world (``eval.suite=world``), computed with the pocket judge
(:mod:`stylexfer.world.judge`) instead of the checker's models, and the same final-score formula.

metric key (role in the reference suite): what the world suite computes

- ``dino`` (DINOv2 style similarity): cosine similarity of the judge's pooled features, every (generated,
  reference) pair;
- ``hist`` (Pixel-Hist): the same (weight-free);
- ``lpips`` (LPIPS distance): LPIPS form on the judge's four stage maps: channel-normalised, squared
  difference, spatial mean, mean over stages;
- ``clip_r`` (CLIP-R retrieval): the judge's object head: the image's object ranks first among the
  candidate objects;
- ``fid`` (FID, Inception): Fréchet distance of the judge's pooled features, scaled so that two held-out
  styles are 40 apart (median);
- ``clip_iqa`` (CLIP-IQA): the judge's quality head: probability of a clean rendering (not noise, blur,
  blends or shuffles);
- ``attribution`` (a diagnostic, not in the final score): share of generated images the judge's style head
  assigns to the style of the data's own images.

World scores do not compare with the report's numbers: other models, another world.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..scoring import Scorer, frechet_of
from .judge import ASSETS, load_judge, to_input

log = logging.getLogger(__name__)


class WorldJudge:
    """The judge loaded once; its outputs for a list of images (batched)."""

    def __init__(self, device: str = "cpu", folder=ASSETS):
        self.device = device
        self.net, self.record = load_judge(folder, device)
        self.objects = list(self.record["objects"])
        self.fid_scale = float(self.record.get("fid_feature_scale", 1.0))

    def __call__(self, images, chunk: int = 64) -> dict:
        outs = []
        with torch.no_grad():
            for i in range(0, len(images), chunk):
                outs.append(self.net(to_input(images[i : i + chunk]).to(self.device)))
        return {
            "maps": [torch.cat([o["maps"][k] for o in outs]) for k in range(len(outs[0]["maps"]))],
            **{k: torch.cat([o[k] for o in outs]) for k in ("feature", "object", "style", "quality")},
        }

    @property
    def label(self) -> str:
        return f"pocket judge {self.record['sha256'][:12]} (world suite)"


def style_similarity(judge: WorldJudge, generated, references, **_) -> float:
    g = F.normalize(judge(generated)["feature"], dim=-1)
    r = F.normalize(judge(references)["feature"], dim=-1)
    return float((g @ r.T).mean())


def perceptual_distance(judge: WorldJudge, generated, references, **_) -> float:
    gm, rm = judge(generated)["maps"], judge(references)["maps"]
    total = torch.zeros(len(generated), len(references), device=gm[0].device)
    for g, r in zip(gm, rm):
        g, r = F.normalize(g, dim=1), F.normalize(r, dim=1)  # unit length over channels at each position
        # ‖g_i − r_j‖² per position, spatial mean: 2 − 2⟨g_i, r_j⟩ averaged over positions
        dot = torch.einsum("ichw,jchw->ij", g, r) / (g.shape[2] * g.shape[3])
        total += 2 - 2 * dot
    return float(total.mean() / len(gm) / 2)  # in [0, 1]: 0 = the same maps


def object_retrieval(judge: WorldJudge, generated, references=None, *, objects: Sequence[str], **_) -> float:
    """Fraction of images whose object ranks first among the candidates (the style's objects); an object the
    judge does not know counts as not retrieved."""
    known = {o: i for i, o in enumerate(judge.objects)}
    truths = [o.lower() for o in objects]
    unknown = sorted({t for t in truths if t not in known})
    if unknown:
        log.warning("world suite: the judge knows no %s: counted as not retrieved", ", ".join(unknown))
    cand = sorted({known[t] for t in truths if t in known})
    if not cand:
        return 0.0
    logits = judge(generated)["object"][:, cand]
    picks = [cand[j] for j in logits.argmax(1).tolist()]
    return float(np.mean([t in known and known[t] == p for t, p in zip(truths, picks)]))


def feature_fid(judge: WorldJudge, generated, references, **_) -> float:
    f = lambda ims: judge(ims)["feature"].double().cpu().numpy() * judge.fid_scale  # noqa: E731
    return frechet_of(f(references), f(generated))


def quality(judge: WorldJudge, generated, references=None, **_) -> float:
    return float(torch.sigmoid(judge(generated)["quality"]).mean())


def style_attribution(judge: WorldJudge, generated, references, **_) -> float:
    """Share of the generated images the judge's style head assigns to the style it assigns most of the
    references to (a diagnostic, not one of the six metrics)."""
    ref = torch.bincount(judge(references)["style"].argmax(1)).argmax()
    return float((judge(generated)["style"].argmax(1) == ref).float().mean())


def attribution_per_object(judge: WorldJudge, generated, references, *, objects: Sequence[str], **_) -> dict:
    """{object: share of its images the style head assigns to the references' style}: which objects resist
    the style."""
    ref = torch.bincount(judge(references)["style"].argmax(1)).argmax()
    hits = (judge(generated)["style"].argmax(1) == ref).tolist()
    out: dict[str, list] = {}
    for o, h in zip(objects, hits):
        out.setdefault(o, []).append(float(h))
    return {o: float(np.mean(v)) for o, v in sorted(out.items())}


def run_attribution(run_dir, judge: WorldJudge | None = None) -> dict:
    """{style id: attribution} for a finished run's images against its data's images, and their mean."""
    import json
    from pathlib import Path

    from ..data import discover_styles, generated_images

    images = Path(run_dir) / "images"
    judge = judge or WorldJudge()
    root = Path(json.loads((Path(run_dir) / "summary.json").read_text())["data_root"])
    out = {}
    for style in discover_styles(root, sorted(p.name for p in images.iterdir() if p.is_dir())):
        generated, _ = generated_images(images / style.id, style)
        if generated:
            out[style.id] = style_attribution(judge, generated, style.images)
    return {"styles": out, "mean": float(np.mean(list(out.values()))) if out else float("nan")}


WORLD_METRICS = {
    "dino": style_similarity,
    "lpips": perceptual_distance,
    "clip_r": object_retrieval,
    "fid": feature_fid,
    "clip_iqa": quality,
}


def fid_scale(net, seed: int = 1, per_style: int = 10) -> tuple[float, dict]:
    """The feature scale that puts the median FID between two held-out styles' renders at 40 (so that the
    final score's FID term, clipped at 20, rewards being near the style), and what it gives."""
    from .scene import OBJECTS, Pose
    from .styles import HELD_OUT_STYLES, render

    names = sorted(OBJECTS)
    feats = {}
    with torch.no_grad():
        for k, st in enumerate(HELD_OUT_STYLES):
            rng = np.random.default_rng([seed, k])
            ims = [render(names[i % len(names)], st, Pose.random(rng), 64, seed=i) for i in range(2 * per_style)]
            feats[st.name] = net(to_input(ims))["feature"].double().numpy()

    cross = [frechet_of(feats[a][:per_style], feats[b][:per_style]) for a in feats for b in feats if a < b]
    same = [frechet_of(f[:per_style], f[per_style:]) for f in feats.values()]
    scale = float(np.sqrt(40.0 / np.median(cross)))
    return scale, {"fid_median_cross_style": 40.0, "fid_median_same_style": float(np.median(same)) * scale**2}


class WorldSuite:
    """The suite interface (:mod:`stylexfer.registry`) over the pocket judge: shipped, or the folder ``eval.judge``
    names; Pixel-Hist as in the reference suite; the judge's style attribution as a diagnostic."""

    @staticmethod
    def preflight(ev, demo: bool) -> dict[str, str]:
        from .judge import judge_record

        judge_record(_judge_folder(ev))  # a missing or damaged judge fails here, before any work
        return {}

    @staticmethod
    def scorer(ev, device: str, candidates: Sequence[str], offline: bool, skip: Sequence[str] = ()) -> Scorer:
        from functools import partial

        from ..metrics import HIST

        judge = WorldJudge(device, _judge_folder(ev))
        metrics, models = {}, {}
        for m in (m for m in ev.metrics if m not in skip):
            if m == "hist":
                metrics[m], models[m] = HIST
            else:
                metrics[m] = partial(WORLD_METRICS[m], judge)
                models[m] = judge.label
        return Scorer(
            metrics=metrics,
            unavailable={},
            models=models,
            diagnostics={"attribution": partial(style_attribution, judge)},
            per_object={"attribution": partial(attribution_per_object, judge)},
        )


def _judge_folder(ev):
    from pathlib import Path

    return Path(ev.judge).expanduser() if ev.judge else ASSETS


SUITE = WorldSuite()
