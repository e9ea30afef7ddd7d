"""Compare the jobs of one or more sweeps: ``python -m stylexfer.compare [multirun/<date>/<time> ...]``
(no argument: the latest sweep under ``multirun/``).

Prints and writes a table — one row per job, the overrides that differ between jobs as columns, every
metric, sorted by the final score (or the first metric while the full suite is not configured), the
best row marked — as Markdown (for people) and CSV (for pandas: numbers as numbers, empty cells where a
value is missing, a boolean ``best`` column); for every swept numeric key, one plot per metric of that
metric against the key (overall and per style; one line per sweep and per value of the other swept
keys); an image grid of the same prompts across jobs; and an HTML page with all of it. Works on a sweep
that is still running or had failed jobs: such rows show their status and the error's first line.

When a seed is swept (an override named ``*.seed``, or ``--over KEY``), a second table averages over it:
one row per setting of the other keys, every metric as mean ± sample standard deviation over the seeds
(``compare_seeds.md``/``.csv``), sorted by the mean final score; seeds are then not plotted as an axis.

Where the runs' scores have a diagnostic per object (the world suite's judge attribution), a third table shows
which objects resist the style: one row per object, one column per setting (``compare_objects.md``/``.csv``).
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

from .report import axes_png, image_grid, new_axes
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
    sweep: str = ""


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


def latest_sweep(root: Path = Path("multirun")) -> Path:
    """The newest sweep folder ``multirun/<date>/<time>`` (by name: Hydra's folders sort by time)."""
    found = sorted(p for p in root.glob("*/*") if p.is_dir() and any((q / ".hydra").is_dir() for q in p.iterdir()))
    if not found:
        raise SystemExit(
            f"error: no sweep under {root.resolve()}/ (run one with `python -m stylexfer -m ...`) "
            "— or name sweep folders: python -m stylexfer.compare multirun/<date>/<time>"
        )
    return found[-1]


def find_jobs(sweeps: list[Path]) -> list[Job]:
    jobs = []
    for sweep in sweeps:
        if not sweep.is_dir():
            raise SystemExit(f"error: {sweep}: no such sweep folder")
        dirs = sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name))
        if not dirs and (sweep / ".hydra").is_dir():
            dirs = [sweep]  # a single run folder
        prefix = f"{sweep.parent.name}/{sweep.name}/" if len(sweeps) > 1 else ""
        for d in dirs:
            job = read_job(d, prefix + d.name)
            job.sweep = f"{sweep.parent.name}/{sweep.name}"
            jobs.append(job)
    if not jobs:
        raise SystemExit(f"error: {', '.join(map(str, sweeps))}: no jobs found (folders with .hydra/)")
    return jobs


def rank_metric(jobs: list[Job]) -> Optional[str]:
    present = {k for j in jobs for k, v in j.scores.items() if isinstance(v, (int, float))}
    return next((m for m in RANK_METRICS if m in present), None)


def _number(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _parsed(text: str):
    """An override's value as a number where it is one (``4``, ``0.9``), else the text."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


@dataclass
class Comparison:
    jobs: list  # ordered: best first
    differing: list[str]  # overrides that differ between jobs
    metrics: list[str]
    rank: Optional[str]
    best: Optional[Job]


def compare_jobs(jobs: list[Job]) -> Comparison:
    keys = sorted({k for j in jobs for k in j.overrides})
    differing = [k for k in keys if len({j.overrides.get(k, "") for j in jobs}) > 1]
    metrics = sorted(
        {k for j in jobs for k, v in j.scores.items() if v is None or isinstance(v, (int, float))},
        key=lambda m: (m not in RANK_METRICS, RANK_METRICS.index(m) if m in RANK_METRICS else 0, m),
    )
    rank = rank_metric(jobs)

    def order(j: Job):
        v = _number(j.scores.get(rank)) if rank else None
        return (v is None, -(v or 0.0), j.name)

    ordered = sorted(jobs, key=order)
    best = ordered[0] if ordered and rank and _number(ordered[0].scores.get(rank)) is not None else None
    return Comparison(ordered, differing, metrics, rank, best)


def table(jobs: list[Job]) -> tuple[list[str], list[list[str]], list[Job]]:
    """The comparison as text cells for people (Markdown, HTML): 4 decimals, "—" where missing, "★" on the best."""
    c = compare_jobs(jobs)
    header = ["", "job", "status", *c.differing, *c.metrics, "error"]
    rows = []
    for j in c.jobs:
        vals = [f"{v:.4f}" if (v := _number(j.scores.get(m))) is not None else "—" for m in c.metrics]
        rows.append(
            [
                "★" if j is c.best else "",
                j.name,
                j.status,
                *[j.overrides.get(k, "") for k in c.differing],
                *vals,
                j.error,
            ]
        )
    return header, rows, c.jobs


def records(jobs: list[Job]) -> tuple[list[str], list[list]]:
    """The comparison for machines (CSV): typed values, None where missing, a boolean ``best`` column."""
    c = compare_jobs(jobs)
    header = ["job", "sweep", "status", "best", *c.differing, *c.metrics, "error"]
    rows = [
        [
            j.name,
            j.sweep,
            j.status,
            j is c.best,
            *[_parsed(j.overrides[k]) if k in j.overrides else None for k in c.differing],
            *[_number(j.scores.get(m)) for m in c.metrics],
            j.error or None,
        ]
        for j in c.jobs
    ]
    return header, rows


def seed_keys(jobs: list[Job]) -> list[str]:
    """The swept overrides that are seeds (``train.seed``, ``sample.seed``, ``seed``)."""
    return [k for k in compare_jobs(jobs).differing if k.rsplit(".", 1)[-1] == "seed"]


def mean_sd(vals: list[float]) -> tuple[Optional[float], Optional[float]]:
    """The mean and the sample standard deviation (0 for one value; (None, None) for none)."""
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0


def aggregate(jobs: list[Job], over: list[str]) -> tuple[list[str], list[list[str]], list[str], list[list]]:
    """Finished jobs grouped by every differing override except ``over``: (Markdown header, text rows with
    "mean ± sd", CSV header, CSV rows with mean and sd columns), best mean first."""
    c = compare_jobs(jobs)
    keys = [k for k in c.differing if k not in over]
    groups: dict[tuple, list[Job]] = {}
    for j in c.jobs:
        if j.status == "finished" and j.scores:
            groups.setdefault(tuple(j.overrides.get(k, "") for k in keys), []).append(j)

    def stats(group, m):
        return mean_sd([v for j in group if (v := _number(j.scores.get(m))) is not None])

    rows = [(setting, group, {m: stats(group, m) for m in c.metrics}) for setting, group in groups.items()]
    if c.rank:  # best mean first, groups without one last
        rows.sort(key=lambda r: (r[2][c.rank][0] is None, -(r[2][c.rank][0] or 0.0)))
    header = [*keys, "n", *c.metrics]
    text, rec = [], []
    for setting, group, by_metric in rows:
        st = [by_metric[m] for m in c.metrics]
        text.append([*setting, str(len(group)), *[f"{a:.4f} ± {b:.4f}" if a is not None else "—" for a, b in st]])
        rec.append([*[_parsed(v) for v in setting], len(group), *[x for a, b in st for x in (a, b)]])
    return header, text, [*keys, "n", *[f"{m}_{x}" for m in c.metrics for x in ("mean", "sd")]], rec


def object_scores(job: Job) -> dict:
    """{diagnostic: {object: mean over the job's styles}} from the job's ``scores.json`` (empty without one)."""
    f = job.dir / "scores.json"
    if job.status != "finished" or not f.exists():
        return {}
    doc = json.loads(f.read_text())
    return {m: {o: row["mean"] for o, row in rows.items()} for m, rows in doc.get("objects", {}).items()}


def objects_table(jobs: list[Job], over: list[str], metric: str = "attribution") -> Optional[tuple]:
    """Which objects resist the style, across settings: (header, text rows, CSV header, CSV rows); one row per
    object, one column per setting of the differing overrides but ``over`` (mean ± sd over ``over``), least
    first by the mean over settings. None when no job has per-object scores."""
    c = compare_jobs(jobs)
    keys = [k for k in c.differing if k not in over]
    groups: dict[str, list[dict]] = {}
    for j in c.jobs:
        per = object_scores(j).get(metric)
        if per:
            label = setting_label(j, keys)
            groups.setdefault(label, []).append(per)
    if not groups:
        return None
    objects = sorted({o for g in groups.values() for per in g for o in per})

    cells = {o: [mean_sd([per[o] for per in g if o in per]) for g in groups.values()] for o in objects}
    overall = {o: [m for m, _ in cells[o] if m is not None] for o in objects}
    objects.sort(key=lambda o: (sum(overall[o]) / max(len(overall[o]), 1), o))
    header = ["object", *groups]
    text = [[o, *[f"{m:.2f} ± {sd:.2f}" if m is not None else "—" for m, sd in cells[o]]] for o in objects]
    rec = [[o, *[x for m, sd in cells[o] for x in (m, sd)]] for o in objects]
    return header, text, ["object", *[f"{g}_{x}" for g in groups for x in ("mean", "sd")]], rec


def csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def plot_sweep(jobs: list[Job], skip: tuple = ()) -> dict[str, bytes]:
    """{file name: PNG}: for every swept numeric key (but ``skip``), every metric against it — the overall value
    (thick, with markers) and each style's (thin) — one line per sweep and per value of the other swept keys."""
    c = compare_jobs(jobs)
    done = [j for j in jobs if j.summary and j.scores]
    numeric = [
        k
        for k in c.differing
        if k not in skip and all(isinstance(_parsed(j.overrides.get(k, "")), (int, float)) for j in done)
    ]
    out = {}
    for key in numeric:
        others = [k for k in c.differing if k != key]
        for metric in c.metrics:
            lines: dict[str, list] = {}
            for j in done:
                label = " ".join(
                    [j.sweep] * (len({x.sweep for x in done}) > 1) + [f"{k}={j.overrides.get(k, '')}" for k in others]
                )
                lines.setdefault(label, []).append(j)
            if not any(_number(j.scores.get(metric)) is not None for j in done):
                continue
            fig, ax = new_axes(6, 4)
            if len(lines) > 1 and all(len(g) == 1 for g in lines.values()):  # a search: each trial its own point
                scatter_trials(ax, done, key, metric)
                out[f"plot_{_safe(key)}_{_safe(metric)}.png"] = axes_png(
                    fig, ax, key, metric, f"{metric} vs {key}: one point per trial (its job number)", 7
                )
                continue
            for n, (label, group) in enumerate(sorted(lines.items())):
                color = f"C{n % 10}"
                group = sorted(group, key=lambda j: _parsed(j.overrides[key]))
                xs = [_parsed(j.overrides[key]) for j in group]
                ys = [_number(j.scores.get(metric)) for j in group]
                ax.plot(
                    xs,
                    [float("nan") if y is None else y for y in ys],
                    "o-",
                    color=color,
                    lw=2.2,
                    label=(label + " " if label else "") + "overall",
                )
                styles = sorted({sid for j in group for sid in (j.summary.get("styles") or {})})
                for sid in styles:
                    ys = [_number((j.summary["styles"].get(sid) or {}).get("scores", {}).get(metric)) for j in group]
                    if any(y is not None for y in ys):
                        ax.plot(
                            xs, [float("nan") if y is None else y for y in ys], "-", color=color, lw=0.8, alpha=0.5
                        )
                        ax.annotate(
                            sid, (xs[-1], ys[-1] if ys[-1] is not None else 0), fontsize=7, color=color, alpha=0.7
                        )
            out[f"plot_{_safe(key)}_{_safe(metric)}.png"] = axes_png(
                fig, ax, key, metric, f"{metric} vs {key} (thin: per style)", 7
            )
    return out


def scatter_trials(ax, jobs: list[Job], key: str, metric: str) -> None:
    """Each job's overall ``metric`` against its ``key`` as one point labelled with the job (a search's trials,
    which share no value of the other keys: lines through them would join unrelated runs)."""
    pts = [(_parsed(j.overrides[key]), _number(j.scores.get(metric)), j.name) for j in jobs]
    pts = [p for p in pts if p[1] is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color="C0", ms=6, label="trials (overall)")
    for x, y, label in pts:
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if key.endswith(("lr", "learning_rate")) and all(p[0] > 0 for p in pts):
        ax.set_xscale("log")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "-" for ch in name).strip("-")


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
    differing = compare_jobs(jobs).differing
    for j in finished:
        items = [
            (f.split("/", 1)[-1].rsplit(".", 1)[0], Image.open(j.dir / f)) for f in common if (j.dir / f).exists()
        ]
        rows.append((setting_label(j, differing, short=True)[:32], items))
    width = 8 + 6 * max((len(label) for label, _ in rows), default=6)
    return image_grid(rows, cell=96, label_w=min(max(width, 48), 200)) if common else None


def compact(v: str) -> str:
    """An override's value as a row label shows it: a float to 3 significant digits (a search's
    ``0.786830121714593`` as ``0.787``), anything else as it is."""
    if not any(ch in v for ch in ".eE") or v.lower() in ("inf", "-inf", "nan"):
        return v
    try:
        return f"{float(v):.3g}"
    except ValueError:
        return v


def setting_label(job: Job, keys: list[str], short: bool = False) -> str:
    """A job by its values of the differing overrides it sets (``inject=styleid control=canny``; ``short``: the
    values only, floats to 3 digits, after the job's number), or by its name where it sets none of them."""
    parts = [(k, job.overrides[k]) for k in keys if job.overrides.get(k, "") != ""]
    name = job.name.rsplit("/", 1)[-1]
    if not parts:
        return name if short else job.name
    if short:
        return f"#{name} " + " ".join(compact(v) for _, v in parts)
    return " ".join(f"{k}={v}" for k, v in parts)


def write_outputs(out: Path, jobs: list[Job], img: Optional[Image.Image], over: tuple = ()) -> list[Path]:
    header, rows, _ = table(jobs)
    md = markdown(header, rows)
    written = [
        atomic_write_text(out / "compare.md", md),
        atomic_write_text(out / "compare.csv", csv_text(*records(jobs))),
    ]
    agg = aggregate(jobs, list(over)) if over else None
    if agg:
        written += [
            atomic_write_text(out / "compare_seeds.md", seeds_markdown(agg, over)),
            atomic_write_text(out / "compare_seeds.csv", csv_text(agg[2], agg[3])),
        ]
    objs = objects_table(jobs, list(over))
    if objs:
        written += [
            atomic_write_text(out / "compare_objects.md", objects_markdown(objs, over)),
            atomic_write_text(out / "compare_objects.csv", csv_text(objs[2], objs[3])),
        ]
    plots = plot_sweep(jobs, skip=tuple(over))
    for name, png in plots.items():
        written.append(atomic_write_bytes(out / name, png))
    page = [
        "<!doctype html><meta charset='utf-8'><title>stylexfer compare</title>",
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>",
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
    ]
    page += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
    page.append("</table>")
    if agg:
        page += [
            f"<h3>mean ± sd over {html.escape(', '.join(over))}</h3><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in agg[0])
            + "</tr>"
        ]
        page += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in agg[1]]
        page.append("</table>")
    if objs:
        page += [
            "<h3>judge attribution per object (least first)</h3><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in objs[0])
            + "</tr>"
        ]
        page += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in objs[1]]
        page.append("</table>")
    page += [f"<img src='{html.escape(name)}'>" for name in plots]
    if img is not None:
        b = io.BytesIO()
        img.save(b, format="PNG")
        written.append(atomic_write_bytes(out / "compare.png", b.getvalue()))
        page.append("<p><img src='compare.png'></p>")
    written.append(atomic_write_text(out / "compare.html", "\n".join(page)))
    return written


def seeds_markdown(agg, over) -> str:
    return f"Mean ± sample standard deviation over {', '.join(over)}:\n\n" + markdown(agg[0], agg[1])


def objects_markdown(objs, over) -> str:
    how = f"mean ± sd over {', '.join(over)}" if over else "one job each"
    return f"Judge attribution per object, mean over styles ({how}), least first:\n\n" + markdown(objs[0], objs[1])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylexfer.compare", description=__doc__.splitlines()[0])
    p.add_argument(
        "sweeps",
        nargs="*",
        type=Path,
        help="sweep folders (multirun/<date>/<time>) or run folders; none: the latest sweep under multirun/",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write compare.{md,csv,png,html} and the plots (default: the first sweep folder)",
    )
    p.add_argument(
        "--over",
        action="append",
        default=None,
        metavar="KEY",
        help="average over this swept key (repeatable; default: every swept *.seed; 'none': no averaging)",
    )
    args = p.parse_args(argv)
    sweeps = args.sweeps or [latest_sweep()]
    jobs = find_jobs(sweeps)
    header, rows, ordered = table(jobs)
    print(markdown(header, rows), end="")
    over = tuple(seed_keys(jobs) if args.over is None else [k for k in args.over if k != "none"])
    differing = compare_jobs(jobs).differing
    for k in over:
        if k not in differing:
            raise SystemExit(f"error: --over {k}: not a swept key of these jobs ({', '.join(differing) or 'none'})")
    if over:
        print("\n" + seeds_markdown(aggregate(jobs, list(over)), over), end="")
    objs = objects_table(jobs, list(over))
    if objs:
        print("\n" + objects_markdown(objs, over), end="")
    for path in write_outputs(args.out or sweeps[0], jobs, grid(ordered), over):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
