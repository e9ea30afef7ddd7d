"""The pocket judge: a small CNN trained on the pocket world, the world's stand-in for DINOv2, CLIP, LPIPS and
Inception (:mod:`stylexfer.world.metrics` turns it into the six metrics).

Four stride-2 stages (64 px → 4 × 4) give feature maps (the perceptual distance's layers) and a pooled
128-d feature, read by three heads: the object (which of the world's objects), the style (which of its
styles, held-out ones included: the judge sees every style, the base model does not) and a quality
logit (a clean rendering against degraded ones: heavy noise, heavy blur, two pictures blended, shuffled
tiles, noise alone). It is trained on renders of every (style, object) at random poses, with mild blur,
noise and shifts so that it reads imperfect generations too.

``python -m stylexfer.world judge`` trains it (CPU, minutes) and writes ``judge.safetensors`` with a
``judge.json`` beside it (its sha256, the training settings and the held-back accuracies); the package
ships both (``stylexfer/assets/world/``) and :func:`load_judge` checks the hash before use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..store import FOLDER_MANIFEST, damage, file_digest
from .scene import OBJECTS, Pose
from .styles import STYLES, render

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "world"
OBJECT_NAMES = sorted(OBJECTS)
STYLE_NAMES = list(STYLES)
SIZE = 64


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class Judge(nn.Module):
    def __init__(self, widths=(24, 48, 96, 128), n_objects: int = len(OBJECT_NAMES), n_styles: int = len(STYLE_NAMES)):
        super().__init__()
        chans = (3, *widths)
        self.stages = nn.ModuleList([_stage(chans[i], chans[i + 1]) for i in range(len(widths))])
        self.object_head = nn.Linear(widths[-1], n_objects)
        self.style_head = nn.Linear(widths[-1], n_styles)
        self.quality_head = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> dict:
        """``x``: (N, 3, 64, 64) in [−1, 1]. Returns the stage maps, the pooled feature and the three heads."""
        maps = []
        for s in self.stages:
            x = s(x)
            maps.append(x)
        feat = x.mean(dim=(2, 3))
        return {
            "maps": maps,
            "feature": feat,
            "object": self.object_head(feat),
            "style": self.style_head(feat),
            "quality": self.quality_head(feat).squeeze(1),
        }


def to_input(images) -> torch.Tensor:
    """PIL images → (N, 3, 64, 64) in [−1, 1] (resized to the judge's size)."""
    from PIL import Image

    arrs = [
        np.asarray(
            i.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR) if i.size != (SIZE, SIZE) else i.convert("RGB"),
            np.float32,
        )
        for i in images
    ]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) / 127.5 - 1.0


# ------------------------------------------------------------------------------------------- training


def _renders(per_pair: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    imgs, objs, stys = [], [], []
    for si, st in enumerate(STYLE_NAMES):
        for oi, obj in enumerate(OBJECT_NAMES):
            rng = np.random.default_rng([seed, si, oi])
            for k in range(per_pair):
                imgs.append(render(obj, st, Pose.random(rng), SIZE, seed=seed * 100_000 + k))
                objs.append(oi)
                stys.append(si)
    return to_input(imgs), torch.tensor(objs), torch.tensor(stys)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur (sigma 0 = unchanged), 5×5 separable."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(r[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    n, c = x.shape[:2]
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(F.pad(x.reshape(1, n * c, *x.shape[2:]), (2, 2, 0, 0), mode="replicate"), kx, groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), ky, groups=n * c).reshape(x.shape)
    return torch.where((sigma > 0.05)[:, None, None, None], y, x)


def _mild(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    sigma = torch.rand(n, generator=g) * 1.2 * (torch.rand(n, generator=g) < 0.4)
    x = _blur(x, sigma)
    x = x * (1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)) + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = x + torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.08
    dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=g))
    return torch.roll(x, (dy, dx), dims=(2, 3)).clamp(-1, 1)


def degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Pictures a judge of quality should score low: heavy noise, heavy blur, two blended, shuffled tiles, noise."""
    n = x.shape[0]
    kind = torch.randint(0, 5, (n,), generator=g)
    out = x.clone()
    noisy = x + torch.randn(x.shape, generator=g) * (0.35 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
    small = F.interpolate(
        F.interpolate(x, size=int(torch.randint(6, 14, (1,), generator=g)), mode="area"),
        size=SIZE,
        mode="bilinear",
        align_corners=False,
    )
    blended = 0.5 * x + 0.5 * x[torch.randperm(n, generator=g)]
    t = SIZE // 4
    tiles = x.unfold(2, t, t).unfold(3, t, t).reshape(n, 3, 16, t, t)[:, :, torch.randperm(16, generator=g)]
    shuffled = tiles.reshape(n, 3, 4, 4, t, t).permute(0, 1, 2, 4, 3, 5).reshape(n, 3, SIZE, SIZE)
    pure = torch.rand(x.shape, generator=g) * 2 - 1
    for k, v in enumerate((noisy, small, blended, shuffled, pure)):
        out[kind == k] = v[kind == k]
    return out.clamp(-1, 1)


def train(
    steps: int = 1200, batch: int = 64, per_pair: int = 12, seed: int = 0, lr: float = 2e-3
) -> tuple[Judge, dict]:
    """Train a judge on fresh renders; returns it and a record (settings, held-back accuracies)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    x, yo, ys = _renders(per_pair, seed)
    xt, yot, yst = _renders(2, seed + 1)  # held back: other poses and style randomness
    log.info("judge: %d training renders, %d held back (%.0fs)", len(x), len(xt), time.time() - t0)
    net = Judge()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    from tqdm.auto import tqdm

    for _step in tqdm(range(steps), desc="judge", unit="step", leave=False):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        clean = _mild(x[idx], g)
        bad = degrade(x[torch.randint(0, len(x), (batch // 4,), generator=g)], g)
        out = net(torch.cat([clean, bad]))
        n = clean.shape[0]
        loss = (
            F.cross_entropy(out["object"][:n], yo[idx])
            + F.cross_entropy(out["style"][:n], ys[idx])
            + F.binary_cross_entropy_with_logits(out["quality"], torch.cat([torch.ones(n), torch.zeros(len(bad))]))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        o = net(xt)
        bad = net(degrade(xt, torch.Generator().manual_seed(seed + 2)))
    record = {
        "steps": steps,
        "batch": batch,
        "renders_per_style_object": per_pair,
        "seed": seed,
        "lr": lr,
        "train_seconds": round(time.time() - t0, 1),
        "objects": OBJECT_NAMES,
        "styles": STYLE_NAMES,
        "heldback_object_accuracy": float((o["object"].argmax(1) == yot).float().mean()),
        "heldback_style_accuracy": float((o["style"].argmax(1) == yst).float().mean()),
        "heldback_quality_clean": float(torch.sigmoid(o["quality"]).mean()),
        "heldback_quality_degraded": float(torch.sigmoid(bad["quality"]).mean()),
    }
    return net, record


def save_judge(net: Judge, record: dict, folder: Path) -> Path:
    from safetensors.torch import save

    from ..store import atomic_write_bytes, atomic_write_json

    data = save({k: v.contiguous() for k, v in net.state_dict().items()}, metadata={"format": "pt"})
    path = atomic_write_bytes(Path(folder) / "judge.safetensors", data)
    atomic_write_json(Path(folder) / "judge.json", {**record, "sha256": hashlib.sha256(data).hexdigest()})
    atomic_write_json(
        Path(folder) / FOLDER_MANIFEST,
        {n: file_digest(Path(folder) / n, 64) for n in ("judge.json", "judge.safetensors")},
    )
    return path


def judge_record(folder: Path = ASSETS) -> dict:
    """The record of the judge in ``folder``, once its weights' sha256 matches it (ModelNotFoundError if not)."""
    from ..errors import ModelNotFoundError

    path, rec_path = Path(folder) / "judge.safetensors", Path(folder) / "judge.json"
    if not path.is_file() or not rec_path.is_file():
        raise ModelNotFoundError(
            f"{folder}: no pocket judge (judge.safetensors + judge.json); "
            "make one with python -m stylexfer.world judge --out DIR"
        )
    if Path(folder) == ASSETS or (Path(folder) / FOLDER_MANIFEST).exists():  # the record checked, not only the weights
        why = damage(folder, FOLDER_MANIFEST, extra_ok=Path(folder) != ASSETS)
        if why:
            raise ModelNotFoundError(f"pocket judge: {folder}/{why} (a damaged install? reinstall stylexfer)")
    record = json.loads(rec_path.read_text())
    digest = file_digest(path, 64)
    if digest != record.get("sha256"):
        raise ModelNotFoundError(
            f"{path}: sha256 {digest[:12]}… does not match judge.json ({str(record.get('sha256'))[:12]}…): "
            "damaged or replaced"
        )
    return record


def load_judge(folder: Path = ASSETS, device: str = "cpu") -> tuple[Judge, dict]:
    """The judge whose weights and record are in ``folder`` (the shipped one by default), its sha256 checked."""
    from safetensors.torch import load_file

    record = judge_record(folder)
    net = Judge(n_objects=len(record["objects"]), n_styles=len(record["styles"]))
    net.load_state_dict(load_file(str(Path(folder) / "judge.safetensors")))
    return net.to(device).eval().requires_grad_(False), record
