"""The PyTorch backend (``backend=torch``, the default): diffusers' Stable Diffusion components, LoRA
layers that carry one slot per style so that several styles train in one pass (:mod:`.multilora`,
:mod:`.batched`), peft for the LoRA init and the saved file, diffusers' pipelines for sampling."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from ...errors import DeviceOutOfMemory, TrainingDiverged
from .. import Backend, TrainOutcome
from .compiled import use_store_cache
from .models import Components, load_components
from .sample import sampling


class TorchBackend(Backend):
    name = "torch"
    keeps_snapshots = True

    def __init__(self, resolved, model_cfg, cache_dir: Path):
        self.components: Components = load_components(resolved, model_cfg)
        self.cache_dir = Path(cache_dir)

    @classmethod
    def from_components(cls, components: Components, cache_dir: Path) -> "TorchBackend":
        """Around components already in memory (the speed benchmark builds SD 2.1-shaped ones)."""
        self = cls.__new__(cls)
        self.components, self.cache_dir = components, Path(cache_dir)
        return self

    @property
    def device(self) -> str:
        return str(self.components.device)

    @property
    def dtype(self) -> str:
        return str(self.components.dtype).split(".")[-1]

    def generate(self, **kw):
        use_store_cache(self.cache_dir, self.components.device)
        return sampling(self.components, **kw)

    def train(
        self,
        styles,
        pools,
        cfg,
        ckpt_dir: Optional[Path],
        export_dirs: list[Path],
        clock: Optional[list] = None,
        snapshots: Optional[dict[int, list[Path]]] = None,
        state_to: Optional[Path] = None,
    ) -> TrainOutcome:
        from .batched import train_together
        from .train import train_loop

        c = self.components
        use_store_cache(self.cache_dir, c.device)
        t0 = time.time()
        try:
            if len(styles) > 1:
                losses, failed, seconds = train_together(
                    c, styles, pools, cfg, ckpt_dir, export_dirs, clock, snapshots=snapshots, state_to=state_to
                )
                return TrainOutcome(losses=losses, failed=failed, seconds=seconds)
            (style,) = styles
            try:
                snaps = {k: v[0] for k, v in (snapshots or {}).items()}
                losses, _ = train_loop(
                    c, style, pools[0], cfg, ckpt_dir, export_to=export_dirs[0], snapshots=snaps, state_to=state_to
                )
            except TrainingDiverged as e:
                return TrainOutcome(losses={style.id: []}, failed={style.id: str(e)}, seconds=time.time() - t0)
            return TrainOutcome(losses={style.id: losses}, seconds=time.time() - t0)
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(f"{len(styles)} style(s) in one pass: {str(e).splitlines()[0]}") from None
