"""Experiment loggers (``logger=none|csv|tensorboard|mlflow``; a list composes: ``logger=[csv,tensorboard]``).

At the end of a run each configured logger receives, through its own library: every style's training
loss and learning rate per step (from the adapter's ``train.json``; a reused adapter logs the curve it
was trained with), the sample grid and each style's images, every metric (per style and overall) and
the composed config as hyperparameters. Everything stays offline by default, under the run folder:

- ``csv``: ``logs/csv/steps.csv`` (style, step, loss, lr), ``logs/csv/metrics.csv`` and ``hparams.json``;
- ``tensorboard``: event files under ``logs/tensorboard/`` (``tensorboard --logdir experiments``);
- ``mlflow``: a SQLite tracking store ``logs/mlflow/mlflow.db`` with artifacts beside it
  (``mlflow ui --backend-store-uri sqlite:///.../mlflow.db``), or ``logger.mlflow.tracking_uri``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import math
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from .config import LrSchedule, value
from .errors import ConfigError
from .store import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# logger → the modules it needs (and the extra that brings them)
NEEDS = {"csv": [], "tensorboard": ["tensorboard"], "mlflow": ["mlflow", "sqlalchemy", "alembic"]}


def lr_at(schedule: str, lr: float, warmup: int, total: int, step: int) -> float:
    """The learning rate of step ``step`` (0-based) under diffusers' ``get_scheduler`` schedules."""
    schedule = value(schedule)
    if warmup and step < warmup and schedule != LrSchedule.constant.value:
        return lr * step / max(1, warmup)
    if schedule in (LrSchedule.constant.value, LrSchedule.constant_with_warmup.value):
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == LrSchedule.linear.value:
        return lr * max(0.0, 1.0 - progress)
    return lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine, half a cycle


def enabled(cfg) -> list[str]:
    return [k for k in ("csv", "tensorboard", "mlflow") if cfg.get("logger") and cfg.logger.get(k) is not None]


def check(cfg) -> None:
    """Fail before any work if a configured logger's library is missing (one line naming the extra)."""
    for name in enabled(cfg):
        missing = [m for m in NEEDS[name] if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f'logger={name}: {", ".join(missing)} not installed; pip install -e ".[loggers]"')


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
    return out


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def log_run(cfg, run_dir: Path, summary: dict, curves: dict, grid, images: dict) -> dict:
    """Send the run to every configured logger. ``curves``: {style: losses}; ``images``: {style: [(object,
    PIL image)]}. Returns {logger: where it wrote}. A logger that fails warns and leaves the run as it is."""
    tr = cfg.train
    hparams = {
        k: ("" if v is None else v)
        for k, v in _flat(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)).items()
        if not k.startswith("paths.")
    }
    te = cfg.lora.text_encoder_lora_rank > 0
    steps = {
        sid: [(i, loss, lr_at(tr.lr_scheduler, tr.lr, tr.lr_warmup_steps, tr.steps, i)) for i, loss in enumerate(ls)]
        for sid, ls in curves.items()
    }
    te_scale = cfg.lora.text_encoder_lr_scale
    metrics = {
        f"{sid}/{m}": v
        for sid, st in summary["styles"].items()
        for m, v in (st.get("scores") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    metrics.update(
        {
            f"overall/{m}": v
            for m, v in summary["scores"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    val = validation_points(run_dir, summary)
    where = {}
    for name in enabled(cfg):
        try:
            where[name] = _LOGGERS[name](
                cfg.logger[name], run_dir, cfg, hparams, steps, te, te_scale, metrics, grid, images, val
            )
        except Exception as e:  # noqa: BLE001 - a logger must not cost the run its results
            log.warning("logger %s failed: %s: %s", name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return where


def validation_points(run_dir: Path, summary: dict) -> list[tuple[int, str, str, float]]:
    """(step, style, metric, value) of every score of a validated run (``train.validate_every``: its
    validation.json), the last step's included; [] for a run without validation."""
    v = summary.get("validation")
    if not v or not (Path(run_dir) / v["record"]).is_file():
        return []
    record = json.loads((Path(run_dir) / v["record"]).read_text())
    return [
        (int(k), sid, m, float(x))
        for sid, curve in sorted(record["styles"].items())
        for k, scores in curve.items()
        for m, x in scores.items()
        if isinstance(x, (int, float)) and not isinstance(x, bool) and m != "images"
    ]


def _csv(lc, run_dir: Path, cfg, hparams, steps, te, te_scale, metrics, grid, images, val) -> str:
    import csv

    out = run_dir / (lc.dir or "logs/csv")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["style", "step", "loss", "lr"] + (["text_encoder_lr"] if te else []))
    for sid, rows in steps.items():
        for i, loss, lr in rows:
            w.writerow([sid, i + 1, loss, lr] + ([lr * te_scale] if te else []))
    atomic_write_text(out / "steps.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["style", "metric", "value"])
    for key, v in metrics.items():
        w.writerow([*key.split("/", 1), v])
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    if val:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", "style", "metric", "value"])
        w.writerows(val)
        atomic_write_text(out / "validation.csv", buf.getvalue())
    atomic_write_json(out / "hparams.json", hparams)
    return str(out)


def _tensorboard(lc, run_dir: Path, cfg, hparams, steps, te, te_scale, metrics, grid, images, val) -> str:
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    out = run_dir / (lc.dir or "logs/tensorboard")
    with SummaryWriter(log_dir=str(out)) as w:
        for sid, rows in steps.items():
            for i, loss, lr in rows:
                w.add_scalar(f"train/loss/{sid}", loss, i + 1)
                w.add_scalar(f"train/lr/{sid}", lr, i + 1)
                if te:
                    w.add_scalar(f"train/text_encoder_lr/{sid}", lr * te_scale, i + 1)
        if grid is not None:
            w.add_image("samples/grid", np.asarray(grid.convert("RGB")), 0, dataformats="HWC")
        for sid, items in images.items():
            for obj, img in items:
                w.add_image(f"samples/{sid}/{obj}", np.asarray(img.convert("RGB")), 0, dataformats="HWC")
        for key, v in metrics.items():
            w.add_scalar(f"metrics/{key}", v, 0)
        for step, sid, m, v in val:
            w.add_scalar(f"validation/{m}/{sid}", v, step)
        w.add_hparams(
            {k: v for k, v in hparams.items()},
            {f"hparam/{k}": v for k, v in metrics.items() if k.startswith("overall/")},
            run_name=".",
        )
    return str(out)


def _mlflow(lc, run_dir: Path, cfg, hparams, steps, te, te_scale, metrics, grid, images, val) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    base = run_dir / (lc.dir or "logs/mlflow")
    base.mkdir(parents=True, exist_ok=True)
    uri = lc.tracking_uri or f"sqlite:///{(base / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(lc.experiment or cfg.name)
    exp_id = (
        exp.experiment_id
        if exp is not None
        else client.create_experiment(
            lc.experiment or cfg.name, artifact_location=(base / "artifacts").resolve().as_uri()
        )
    )
    run = client.create_run(exp_id, run_name=f"{cfg.name}/{run_dir.name}")
    rid = run.info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in hparams.items()]
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i : i + 100])
    batch = []
    for sid, rows in steps.items():
        for i, loss, lr in rows:
            batch += [Metric(f"train/loss/{sid}", loss, 0, i + 1), Metric(f"train/lr/{sid}", lr, 0, i + 1)]
            if te:
                batch.append(Metric(f"train/text_encoder_lr/{sid}", lr * te_scale, 0, i + 1))
    batch += [Metric(f"metrics/{k}", v, 0, 0) for k, v in metrics.items()]
    batch += [Metric(f"validation/{m}/{sid}", v, 0, step) for step, sid, m, v in val]
    for i in range(0, len(batch), 1000):
        client.log_batch(rid, metrics=batch[i : i + 1000])
    if grid is not None:
        client.log_image(rid, grid, "samples/grid.png")
    for sid, items in images.items():
        for obj, img in items:
            client.log_image(rid, img, f"samples/{sid}/{obj}.png")
    client.set_terminated(rid)
    return f"{uri} (run {rid})"


_LOGGERS = {"csv": _csv, "tensorboard": _tensorboard, "mlflow": _mlflow}


def loss_plot(curves: dict, window: Optional[int] = None) -> Optional[bytes]:
    """A PNG of every style's training loss per step: raw (thin) and smoothed (a trailing moving average)."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    import numpy as np

    from .report import axes_png, new_axes

    fig, ax = new_axes(7, 4)
    for n, (sid, ls) in enumerate(sorted(curves.items())):
        y = np.asarray(ls, dtype=float)
        x = np.arange(1, len(y) + 1)
        k = window or max(1, len(y) // 20)
        smooth = np.convolve(y, np.ones(k) / k, mode="valid") if len(y) >= k else y
        color = f"C{n % 10}"
        ax.plot(x, y, color=color, lw=0.6, alpha=0.3)
        ax.plot(x[len(x) - len(smooth) :], smooth, color=color, lw=2, label=f"style {sid}")
    return axes_png(
        fig,
        ax,
        "step",
        "training loss",
        f"training loss per style (thin: raw; thick: mean of {window or 'steps/20'} steps)",
    )


def write_loss_plot(run_dir: Path, curves: dict) -> Optional[Path]:
    png = loss_plot(curves)
    return atomic_write_bytes(run_dir / "loss.png", png) if png is not None else None
