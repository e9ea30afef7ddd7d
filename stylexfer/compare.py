"""Compare the jobs of one or more sweeps: ``python -m stylexfer.compare multirun/<date>/<time> [...]``.

Prints and writes a table — one row per job, the overrides that differ between jobs as columns, every
metric, sorted by the final score (or the first metric while the full suite is not configured), the
best row marked — as Markdown and CSV, plus an image grid of the same prompts across jobs (PNG) and
an HTML page with both. Works on a sweep that is still running or had failed jobs: such rows show
their status and the error's first line.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image

from .report import image_grid
from .store import atomic_write_bytes, atomic_write_text

RANK_METRICS = ("final", "hist")  # the first present ranks the rows; higher is better


@dataclass
class Job:
    dir: Path
    name: str
    overrides: dict
    status: str  # finished | failed | running | killed
    scores: dict = field(default_factory=dict)
    error: str = ""
    summary: Optional[dict] = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _overrides(job_dir: Path) -> dict:
    import yaml

    f = job_dir / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(f.read_text()) if f.exists() else []
    out = {}
    for item in items or []:
        key, _, val = str(item).partition("=")
        out[key.lstrip("+~")] = val
    return out


def read_job(job_dir: Path, label: str) -> Job:
    job = Job(dir=job_dir, name=label, overrides=_overrides(job_dir), status="running")
    summary, error, state = (job_dir / n for n in ("summary.json", "error.json", "status.json"))
    if summary.exists():
        job.summary = json.loads(summary.read_text())
        job.status = job.summary.get("status", "finished")
        job.scores = job.summary.get("scores", {})
        if job.summary.get("failed_styles"):
            job.error = "; ".join(f"{k}: {v}" for k, v in job.summary["failed_styles"].items()).splitlines()[0]
    elif error.exists():
        job.status, job.error = "failed", json.loads(error.read_text()).get("error", "").splitlines()[0]
    elif state.exists():
        st = json.loads(state.read_text())
        if not _pid_alive(int(st.get("pid", -1))):
            job.status, job.error = "killed", "process ended without a summary (killed?)"
    return job


def find_jobs(sweeps: list[Path]) -> list[Job]:
    jobs = []
    for sweep in sweeps:
        if not sweep.is_dir():
            raise SystemExit(f"error: {sweep}: no such sweep folder")
        dirs = sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name))
        if not dirs and (sweep / ".hydra").is_dir():
            dirs = [sweep]  # a single run folder
        prefix = f"{sweep.parent.name}/{sweep.name}/" if len(sweeps) > 1 else ""
        jobs += [read_job(d, prefix + d.name) for d in dirs]
    if not jobs:
        raise SystemExit(f"error: {', '.join(map(str, sweeps))}: no jobs found (folders with .hydra/)")
    return jobs


def rank_metric(jobs: list[Job]) -> Optional[str]:
    present = {k for j in jobs for k, v in j.scores.items() if isinstance(v, (int, float))}
    return next((m for m in RANK_METRICS if m in present), None)


def table(jobs: list[Job]) -> tuple[list[str], list[list[str]], list[Job]]:
    keys = sorted({k for j in jobs for k in j.overrides})
    differing = [k for k in keys if len({j.overrides.get(k, "") for j in jobs}) > 1]
    metrics = sorted({k for j in jobs for k in j.scores}, key=lambda m: (m not in RANK_METRICS, RANK_METRICS.index(m) if m in RANK_METRICS else 0, m))
    rank = rank_metric(jobs)

    def order(j: Job):
        v = j.scores.get(rank) if rank else None
        return (v is None or (isinstance(v, float) and math.isnan(v)), -(v or 0.0), j.name)

    ordered = sorted(jobs, key=order)
    best = ordered[0] if ordered and rank and ordered[0].scores.get(rank) is not None else None
    header = ["", "job", "status", *differing, *metrics, "error"]
    rows = []
    for j in ordered:
        vals = [f"{j.scores[m]:.4f}" if isinstance(j.scores.get(m), (int, float)) else "—" for m in metrics]
        rows.append(["★" if j is best else "", j.name, j.status, *[j.overrides.get(k, "") for k in differing], *vals, j.error])
    return header, rows, ordered


def markdown(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def grid(jobs: list[Job], max_images: int = 8) -> Optional[Image.Image]:
    """One row per finished job, the same (style, object) images in the same columns."""
    finished = [j for j in jobs if j.summary]
    if not finished:
        return None
    common = None
    for j in finished:
        files = [f for st in j.summary["styles"].values() for f in st.get("images", [])]
        common = files if common is None else [f for f in common if f in set(files)]
    common = (common or [])[:max_images]
    rows = []
    for j in finished:
        items = [(f.split("/", 1)[-1].rsplit(".", 1)[0], Image.open(j.dir / f)) for f in common if (j.dir / f).exists()]
        rows.append((j.name[-6:], items))
    return image_grid(rows, cell=96) if common else None


def write_outputs(out: Path, header, rows, img: Optional[Image.Image]) -> list[Path]:
    md = markdown(header, rows)
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + rows)
    written = [atomic_write_text(out / "compare.md", md), atomic_write_text(out / "compare.csv", buf.getvalue())]
    page = ["<!doctype html><meta charset='utf-8'><title>stylexfer compare</title>",
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>",
            "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    page += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
    page.append("</table>")
    if img is not None:
        b = io.BytesIO()
        img.save(b, format="PNG")
        written.append(atomic_write_bytes(out / "compare.png", b.getvalue()))
        page.append("<p><img src='compare.png'></p>")
    written.append(atomic_write_text(out / "compare.html", "\n".join(page)))
    return written


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylexfer.compare", description=__doc__.splitlines()[0])
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (multirun/<date>/<time>) or run folders")
    p.add_argument("--out", type=Path, default=None, help="where to write compare.{md,csv,png,html} (default: the first sweep folder)")
    args = p.parse_args(argv)
    jobs = find_jobs(args.sweeps)
    header, rows, ordered = table(jobs)
    print(markdown(header, rows), end="")
    for path in write_outputs(args.out or args.sweeps[0], header, rows, grid(ordered)):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
