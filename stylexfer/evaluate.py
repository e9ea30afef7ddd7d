"""Evaluation stage: the six metrics and the final score of a folder of generated images, per style
and overall, written to ``scores.json`` and ``scores.md``.

Called at the end of every run (on the run's ``images/``) and usable alone on any folder laid out the
same way (``<images>/<style id>/<object>.png``, as the competition's upload folders are)::

    python -m stylexfer.evaluate images=path/to/images data.root=path/to/styles [eval.models.dino=...]

Overall values follow the checker: every metric is the mean over styles, except CLIP-R, which is the
fraction of all images retrieved. A metric whose weights are missing is ``null`` with the reason in
``unavailable``; the final score is then ``null`` too, never a number made of fewer metrics.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .data import Style, generated_images
from .errors import DataError
from .models import offline_for
from .registry import suite
from .report import fmt
from .scoring import HIGHER_IS_BETTER, METRIC_NAMES, prompt_list_file, score_components
from .store import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def preflight(ev, demo: bool) -> dict[str, str]:
    """Check every configured metric's weights before any work starts: {metric: why} for the metrics that
    will be unavailable (``eval.skip_missing``); raises ModelNotFoundError naming what is missing otherwise
    (the suite's :meth:`preflight`, :mod:`stylexfer.registry`)."""
    return suite(ev.suite).preflight(ev, demo)


def candidate_prompts(ev, styles: Sequence[Style]) -> list[str]:
    """CLIP-R's candidate texts: the lines of ``eval.clip_r_prompts``, or every object of the data set."""
    if ev.clip_r_prompts:
        lines = prompt_list_file(ev).read_text(encoding="utf-8").splitlines()
        return sorted({l.strip().lower() for l in lines if l.strip()})
    return sorted({o.lower() for s in styles for o in s.objects})


def evaluate(
    images_root: Path, styles: Sequence[Style], ev, device: str, unavailable: Optional[dict] = None, demo: bool = False
) -> dict:
    """Score every style that has a folder under ``images_root``; returns the scores document.
    ``unavailable``: what :func:`preflight` found missing; ``demo``: look up nothing on the hub."""
    images_root = Path(images_root)
    if not images_root.is_dir():
        raise DataError(f"images={images_root}: no such folder")
    present = [s for s in styles if (images_root / s.id).is_dir()]
    if not present:
        raise DataError(f"images={images_root}: no folder named after a style ({', '.join(s.id for s in styles)})")
    scorer = suite(ev.suite).scorer(
        ev, device, candidate_prompts(ev, styles), offline=offline_for(demo), skip=list(unavailable or {})
    )
    per_style, retrieved, no_fid = {}, [], []
    for s in present:
        images, objects = generated_images(images_root / s.id, s)
        if not images:
            per_style[s.id] = {"error": f"{images_root / s.id}: no images"}
            continue
        skip = ("fid",) if len(images) < 2 and "fid" in scorer.metrics else ()
        if skip:  # a Fréchet distance needs a covariance: the style gets every other metric and no final score
            log.warning("style %s: FID needs at least 2 images, it has %d: not computed", s.id, len(images))
            no_fid.append(s.id)
        scores = scorer.score_style(images, s.images, objects, skip=skip)
        if "clip_r" in scores:
            retrieved.append((scores["clip_r"], len(images)))
        per_style[s.id] = {**scores, **_final(scores), "images": len(images)}
        by_object = scorer.score_objects(images, s.images, objects)
        if by_object:
            per_style[s.id]["per_object"] = by_object
        log.info("scores %s: %s", s.id, ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    ok = [v for v in per_style.values() if "error" not in v]
    overall = {
        m: float(np.mean([v[m] for v in ok]))
        for m in [*scorer.metrics, *scorer.diagnostics]
        if ok and all(m in v for v in ok)
    }
    if retrieved:  # the checker's CLIP-R: the fraction of all images, not the mean of styles' fractions
        overall["clip_r"] = float(sum(r * n for r, n in retrieved) / sum(n for _, n in retrieved))
    overall.update(_final(overall))
    why = dict(unavailable or {})
    why.update(scorer.unavailable)
    if no_fid:
        why["fid"] = f"needs at least 2 images per style ({', '.join(no_fid)}: fewer)"
    return {
        "metrics": list(ev.metrics),
        "diagnostics": list(scorer.diagnostics),
        "objects": objects_across_styles(per_style),
        "models": scorer.models,
        "fid_dims": ev.fid_dims,
        "clip_r_top_k": ev.clip_r_top_k,
        "styles": per_style,
        "overall": overall,
        "unavailable": {m: why[m] for m in ev.metrics if m in why},
    }


def objects_across_styles(per_style: dict) -> dict:
    """{diagnostic: {object: {style id: value, ..., "mean": mean over the styles that drew it}}}."""
    out: dict = {}
    for sid, st in per_style.items():
        for m, by_object in st.get("per_object", {}).items():
            for o, v in by_object.items():
                out.setdefault(m, {}).setdefault(o, {})[sid] = v
    for by_object in out.values():
        for row in by_object.values():
            row["mean"] = float(np.mean(list(row.values())))
    return {m: dict(sorted(rows.items(), key=lambda kv: (kv[1]["mean"], kv[0]))) for m, rows in out.items()}


def _final(scores: dict) -> dict:
    if all(m in scores for m in METRIC_NAMES):
        return score_components(**{m: scores[m] for m in METRIC_NAMES})
    return {"final": None}


def markdown(doc: dict, title: str) -> str:
    cols = [m for m in METRIC_NAMES if m in doc["metrics"]] + ["final"]
    arrow = {m: " ↑" if HIGHER_IS_BETTER[m] else " ↓" for m in cols}
    lines = [
        f"# {title}",
        "",
        "| style | " + " | ".join(c + arrow[c] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for sid, st in doc["styles"].items():
        lines.append(f"| {sid} | " + " | ".join(fmt(st.get(c)) for c in cols) + " |")
    ov = doc["overall"]
    lines.append("| **overall** | " + " | ".join(f"**{fmt(ov.get(c))}**" for c in cols) + " |")
    if ov.get("final") is not None:
        lines += [
            "",
            f"Style component {ov['style']:.4f} · text component {ov['text']:.4f} · "
            f"quality component {ov['quality']:.4f} · **final {ov['final']:.6f}**",
        ]
    for d in doc.get("diagnostics", []):
        lines += [
            "",
            f"Diagnostic (not in the final score): {d} "
            + ", ".join(f"{sid} {fmt(st.get(d))}" for sid, st in doc["styles"].items())
            + f", overall {fmt(ov.get(d))}",
        ]
    for d, rows in doc.get("objects", {}).items():
        sids = list(doc["styles"])
        lines += [
            "",
            f"{d} per object (least first: the objects that resist the style):",
            "",
            "| object | " + " | ".join(sids) + " | mean |",
            "|---|" + "---|" * (len(sids) + 1),
        ]
        lines += [
            f"| {o} | " + " | ".join(fmt(row.get(sid)) for sid in sids) + f" | {fmt(row['mean'])} |"
            for o, row in rows.items()
        ]
    if doc["unavailable"]:
        lines += ["", "Unavailable (the final score needs all six):"] + [
            f"- `{m}`: {why}" for m, why in doc["unavailable"].items()
        ]
    lines += ["", "Models: " + "; ".join(f"{m}: `{v}`" for m, v in doc["models"].items())]
    return "\n".join(lines) + "\n"


def write_scores(out_dir: Path, doc: dict, title: str) -> None:
    atomic_write_text(Path(out_dir) / "scores.md", markdown(doc, title))
    atomic_write_json(Path(out_dir) / "scores.json", doc)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _main(cfg) -> None:
    from .config import check_known_keys, validate_eval
    from .data import discover_styles
    from .embedded import ensure_demo_data

    check_known_keys(cfg)
    validate_eval(cfg.eval)
    demo = cfg.data.root is None
    missing = preflight(cfg.eval, demo)
    cache = Path(cfg.paths.cache_dir).expanduser()
    root = Path(cfg.data.root).expanduser() if cfg.data.root else ensure_demo_data(cache)
    styles = discover_styles(root, cfg.data.styles, list(cfg.data.objects), cfg.data.max_objects)
    doc = evaluate(Path(cfg.images).expanduser(), styles, cfg.eval, _device(cfg.device), missing, demo)
    doc.update(images=str(Path(cfg.images).expanduser().resolve()), data_root=str(root))
    out = Path(cfg.paths.output_dir)
    write_scores(out, doc, f"stylexfer scores: {cfg.images}")
    log.info("overall: %s → %s", ", ".join(f"{k}={fmt(v)}" for k, v in doc["overall"].items()), out / "scores.md")


def cli() -> None:
    import hydra
    from omegaconf import DictConfig

    from .app import CONFIG_DIR, discard_if_empty
    from .errors import StylexferError

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
    def app(cfg: DictConfig) -> None:
        try:
            _main(cfg)
        except StylexferError as e:
            print(f"error: {e}", file=sys.stderr)
            discard_if_empty(Path(cfg.paths.output_dir))
            sys.exit(e.exit_code)

    app()


if __name__ == "__main__":
    cli()
