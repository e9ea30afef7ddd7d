"""The PyTorch backend (``backend=torch``, the default): diffusers' Stable Diffusion components, LoRA
layers that carry one slot per style so that several styles train in one pass (:mod:`.multilora`,
:mod:`.trainer`), peft for the LoRA init and the saved file, diffusers' pipelines for sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ...errors import DeviceOutOfMemory
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
        spec,
        ckpt_dir: Optional[Path],
        export_dirs: list[Path],
        clock: Optional[list] = None,
        snapshots: Optional[dict[int, list[Path]]] = None,
        state_to: Optional[Path] = None,
    ) -> TrainOutcome:
        from .trainer import train_styles

        c = self.components
        use_store_cache(self.cache_dir, c.device)
        try:
            done = train_styles(c, styles, pools, spec, ckpt_dir, export_dirs, clock, snapshots, state_to)
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(f"{len(styles)} style(s) in one pass: {str(e).splitlines()[0]}") from None
        return TrainOutcome(losses=done.losses, failed=done.failed, seconds=done.seconds)
