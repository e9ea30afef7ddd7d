"""Run reports: ``summary.json`` (machine-readable), ``summary.md`` (for people), ``grid.png`` (to look at)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from .store import atomic_write_bytes, atomic_write_json, atomic_write_text


def image_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, Image.Image]]]], cell: int = 128, label_w: int = 48
) -> Image.Image:
    """One row per style: its average image (if any) then each generated image, captioned."""
    ncols = max((len(r[1]) for r in rows), default=1)
    cap_h = 14
    grid = Image.new("RGB", (label_w + ncols * cell, len(rows) * (cell + cap_h)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, items) in enumerate(rows):
        y = r * (cell + cap_h)
        draw.text((4, y + cell // 2), label, fill="black")
        for c, (caption, img) in enumerate(items):
            x = label_w + c * cell
            grid.paste(img.convert("RGB").resize((cell, cell)), (x, y))
            draw.text((x + 2, y + cell), caption[:20], fill="black")
    return grid


def new_axes(width: float, height: float):
    """A matplotlib figure and axes for a report plot (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def axes_png(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int = 8) -> bytes:
    """Label, grid and legend a report plot; its PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


# what each of a run's stage_seconds covers (summary.md)
STAGE_NAMES = {
    "workers": "GPU workers (their class pool, training and sampling)",
    "train": "class pool and training",
    "sample": "sampling",
    "score": "scoring (metric models included)",
    "validate": "validation (sampling and scoring the kept adapters)",
}


def write_reports(run_dir: Path, summary: dict, grid: Image.Image | None) -> None:
    if grid is not None:
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        atomic_write_bytes(run_dir / "grid.png", buf.getvalue())
    lines = [f"# stylexfer run `{summary['name']}`", ""]
    if summary.get("notice"):
        lines += [f"> **{summary['notice']}**", ""]
    lines += [
        f"- model: {summary['model']['source']}",
        f"- data: {summary['data_root']}",
        f"- status: {summary['status']}",
        f"- seconds: {summary['seconds']:.1f}",
    ]
    if summary.get("stage_seconds"):
        lines.append(
            "- stages: " + ", ".join(f"{STAGE_NAMES.get(k, k)} {v:.1f} s" for k, v in summary["stage_seconds"].items())
        )
    lines.append("")
    metrics = summary["metric_names"]
    lines += ["| style | adapter | trained | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    for sid, st in summary["styles"].items():
        trained = "reused" if st.get("reused") else f"{st.get('train_seconds', 0):.0f}s"
        vals = [fmt(st.get("scores", {}).get(m, "—")) for m in metrics]
        lines.append(f"| {sid} | `{st.get('adapter_key', '—')}` | {trained} | " + " | ".join(vals) + " |")
    lines.append("| **overall** | | | " + " | ".join(fmt(summary["scores"].get(m, "—")) for m in metrics) + " |")
    if summary.get("unavailable"):
        lines += ["", "Unavailable metrics (so no final score):"] + [
            f"- `{k}`: {v}" for k, v in summary["unavailable"].items()
        ]
    lines += ["", "![grid](grid.png)", ""]
    if summary.get("loss_plot"):
        lines += [f"![training loss]({summary['loss_plot']})", ""]
    if summary.get("validation"):
        v = summary["validation"]
        best = ", ".join(f"{sid}: step {k}" for sid, k in v["best_step"].items())
        lines += [f"Validation every {v['every']} steps ({v['record']}); best step by final score: {best}", ""]
        if v.get("plot"):
            lines += [f"![validation]({v['plot']})", ""]
    if summary.get("loggers"):
        lines += ["Loggers: " + "; ".join(f"{k}: `{v}`" for k, v in summary["loggers"].items()), ""]
    atomic_write_text(run_dir / "summary.md", "\n".join(lines))
    atomic_write_json(run_dir / "summary.json", summary)  # last: its presence marks a finished run
