"""The Jittor backend (``backend=jittor``): Stable Diffusion's UNet, VAE and CLIP text encoder as Jittor modules
that load the same diffusers safetensors folders (:mod:`.unet`, :mod:`.vae`, :mod:`.text_encoder`), LoRA on
the configured projections written in diffusers' LoRA file format (:mod:`.lora`), the DreamBooth-LoRA
training step (:mod:`.train`) and DDIM sampling (:mod:`.sample`). jittor from PyPI (``pip install -e
".[jittor]"``); no JDiffusion, jtorch or forked diffusers.

What differs from the PyTorch backend: styles train one at a time (no batched pass), in float32, with plain
LoRA only; sampling is DDIM only. The random draws are the PyTorch backend's (:mod:`stylexfer.streams`), so
the two backends give the same adapters and images up to float32 rounding (tests/test_jittor.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ...errors import ConfigError, TrainingDiverged
from .. import Backend, TrainOutcome
from . import runtime


class JittorBackend(Backend):
    name = "jittor"
    trains_together = False  # one style per pass (the framework trains them one after another)

    def __init__(self, resolved, model_cfg, cache_dir: Path):
        device = runtime.pick_device(str(model_cfg.device))
        if str(model_cfg.dtype) not in ("auto", "float32"):
            raise ConfigError(
                f"model.dtype={model_cfg.dtype}: the jittor backend computes in float32 (model.dtype=auto)"
            )
        runtime.jittor(Path(cache_dir), device)
        from .models import load_components

        self._device = device
        self.components = load_components(resolved.folder, device, model_cfg.variant, resolved)
        self.cache_dir = Path(cache_dir)

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> str:
        return "float32"

    def generate(self, **kw):
        from .sample import sampling

        return sampling(self.components, **kw)

    def train(
        self,
        styles,
        pools,
        spec,
        ckpt_dir: Optional[Path],
        export_dirs: list[Path],
        clock: Optional[list] = None,
        snapshots=None,  # neither kept here (keeps_snapshots is False): the stages pass none
        state_to=None,
    ) -> TrainOutcome:
        from .train import train_style

        t0 = time.time()
        losses, failed = {}, {}
        for style, pool, out in zip(styles, pools, export_dirs):
            ckpt = None if ckpt_dir is None else (Path(ckpt_dir) if len(styles) == 1 else Path(ckpt_dir) / style.id)
            try:
                losses[style.id] = train_style(self.components, style, pool, spec, ckpt, export_to=out)
            except TrainingDiverged as e:
                losses[style.id], failed[style.id] = [], str(e)
        return TrainOutcome(losses=losses, failed=failed, seconds=time.time() - t0)
