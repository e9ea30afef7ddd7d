"""Scores during training (``train.validate_every=N``): pick the step by a number, not by eye.

Every N steps the training pass keeps each style's adapter in the stage store (:func:`stylexfer.train.kept_steps`:
under a learning rate that does not depend on the total, under the key a ``train.steps=k`` run computes, so that
run finds it; otherwise under a key of this run's own). After training, each kept adapter samples the style's
prompts exactly as the run's final one does (the same seeds, sampler and start image: the sampling stage, batched
and stored as ever) and the run's eval suite scores them. The run folder gets ``validation/step-k/`` (the images
and ``scores.json``), ``validation.json`` and ``validation.png`` (each metric against the step, per style), and
``summary.json`` the best step of each style by final score (by style attribution where no final score exists).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Optional

from .evaluate import evaluate, write_scores
from .sample import ensure_samples, samples_store_spec
from .specs import SampleSpec
from .store import atomic_write_bytes, atomic_write_json, copy_tree, reusable, stable_hash
from .train import snapshot_spec, total_free, validation_steps

log = logging.getLogger(__name__)

PLOT = "validation.png"
RECORD = "validation.json"


def best_step(curve: dict[int, dict]) -> Optional[int]:
    """The step whose scores are best: the highest final score, else the highest attribution (earliest on ties)."""
    for metric in ("final", "attribution"):
        scored = [(v[metric], -k) for k, v in curve.items() if isinstance(v.get(metric), (int, float))]
        if scored:
            return -max(scored)[1]
    return None


def validate_run(
    backend,
    identity: str,
    styles: list,
    specs: dict,
    cfg,
    sampling: SampleSpec,
    cache: Path,
    run_dir: Path,
    final: dict,
    unavailable,
    demo,
) -> tuple[dict, dict]:
    """Sample and score each style's kept adapters (``specs``: {style id: its adapter spec}); ``final``: {style id:
    the run's own scores at ``train.steps``}. Returns (the summary's ``validation`` entry, the sha256 of the files
    copied into the run folder)."""
    steps = validation_steps(cfg)
    free = total_free(cfg)
    copies: dict[str, str] = {}
    scored: dict[int, dict] = {}
    for k in steps:
        here = run_dir / "validation" / f"step-{k:07d}"
        done = []
        for style in styles:
            key = stable_hash(snapshot_spec(specs[style.id], k, free))
            adapter = Path(cache) / "adapters" / key
            if not reusable(adapter):
                log.warning("style %s: no adapter kept at step %d (%s): not validated there", style.id, k, key)
                continue
            sspec = samples_store_spec(style, sampling, key, identity)
            sdir, _, _ = ensure_samples(backend, style, adapter, sampling, sspec, cache)
            rel = f"validation/step-{k:07d}/images/{style.id}"
            copies.update({f"{rel}/{r}": d for r, d in copy_tree(sdir / "images", run_dir / rel).items()})
            done.append(style)
        if not done:
            continue
        doc = evaluate(here / "images", done, cfg.eval, backend.device, unavailable, demo)
        write_scores(here, doc, f"validation at step {k}")
        scored[k] = doc["styles"]
    curves = {
        s.id: {**{k: scored[k][s.id] for k in scored if s.id in scored[k]}, cfg.train.steps: final.get(s.id, {})}
        for s in styles
    }
    best = {sid: best_step(c) for sid, c in curves.items()}
    for sid, k in best.items():
        log.info("style %s: best step %s of %s (validation)", sid, k, sorted(curves[sid]))
    record = {
        "every": cfg.train.validate_every,
        "steps": sorted({k for c in curves.values() for k in c}),
        "styles": {sid: {str(k): v for k, v in sorted(c.items())} for sid, c in curves.items()},
        "best_step": best,
    }
    atomic_write_json(run_dir / RECORD, record)
    png = validation_plot(curves, [m for m in list(cfg.eval.metrics) + ["final", "attribution"]])
    if png is not None:
        atomic_write_bytes(run_dir / PLOT, png)
    return {"every": record["every"], "best_step": best, "record": RECORD, "plot": PLOT if png else None}, copies


def validation_plot(curves: dict[str, dict[int, dict]], metrics: list[str]) -> Optional[bytes]:
    """A PNG of each metric (one panel each, those any style has) against the training step, a line per style."""
    shown = [
        m
        for m in dict.fromkeys(metrics)
        if any(isinstance(v.get(m), (int, float)) for c in curves.values() for v in c.values())
    ]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100, squeeze=False)
    for ax, m in zip(axes.flat, shown):
        for n, (sid, c) in enumerate(sorted(curves.items())):
            pts = sorted((k, v[m]) for k, v in c.items() if isinstance(v.get(m), (int, float)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{n % 10}", label=f"style {sid}")
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("scores during training (validation)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
