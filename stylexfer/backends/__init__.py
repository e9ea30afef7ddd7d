"""The boundary between the framework-free pipeline and the code that does the arithmetic.

Everything outside ``stylexfer.backends`` (config, data, the stage store, the stage orchestration in
``stylexfer.run``, evaluation, compare, reports) talks to a :class:`Backend` through three calls:

- :meth:`Backend.generate` — images from prompts with the base model or one style's adapter (class
  images for prior preservation and the samples of a style);
- :meth:`Backend.train` — train one or more styles' adapters in one pass and write each as a diffusers
  LoRA file (``pytorch_lora_weights.safetensors``) into the folder it is given;
- the constructor — load the model folder that :func:`stylexfer.models.resolve_model` found.

Which images, which adapters, where they are stored, resuming, locking and reuse are decided outside.
A backend is chosen with the ``backend`` config group (``backend=torch``, the default); its code is a
subpackage here and is imported only when chosen.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from PIL import Image

from ..errors import ConfigError
from ..specs import TrainSpec

# name → (module, class, the pip extra that brings its framework)
BACKENDS = {
    "torch": ("stylexfer.backends.torch", "TorchBackend", None),
    "jittor": ("stylexfer.backends.jittor", "JittorBackend", "jittor"),
}

ADAPTER_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class TrainOutcome:
    """What one training pass returns: per-style losses, the styles that diverged (id → one line) and the
    pass's seconds."""

    losses: dict[str, list[float]]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


# make(prompts, seeds[, refs]) → images: one batched call of the generator a :meth:`Backend.generate` context opened
MakeImages = Callable[[Sequence[str], Sequence[int]], list[Image.Image]]


class Backend(ABC):
    """A loaded base model on a device, and what the pipeline asks of it."""

    name: str = "?"
    # whether :meth:`train` trains several styles in one pass (else the framework hands it one style at a time)
    trains_together: bool = True
    # whether :meth:`train` writes the adapters of earlier steps (``snapshots``: ``train.keep_steps``)
    keeps_snapshots: bool = False

    @property
    @abstractmethod
    def device(self) -> str:
        """Where it computes (``cpu``, ``cuda:0``)."""

    @property
    @abstractmethod
    def dtype(self) -> str:
        """The frozen weights' dtype (``float32``, ``bfloat16``)."""

    @abstractmethod
    def generate(
        self,
        *,
        sampler: str,
        steps: int,
        guidance_scale: float,
        resolution: int,
        adapter_dir: Optional[Path] = None,
        fuse_lora: bool = True,
        init_image: Optional[Image.Image] = None,
        strength: float = 1.0,
        compile: Optional[bool] = None,
    ) -> AbstractContextManager[MakeImages]:
        """A context in which ``make(prompts, seeds)`` draws one image per prompt, each from its own seed
        (independent of batch mates), with the base model or the adapter in ``adapter_dir`` loaded; from
        noise, or img2img from ``init_image`` at ``strength``. ``compile``: whether the backend compiles its
        denoiser for the context (null = its own choice; scheduling only, the images are the same up to
        float rounding). The model is as it was after the context. A backend that supports style injection
        also takes ``inject`` (:func:`stylexfer.sample.injection_request`); its ``make`` then takes each
        prompt's reference index as ``refs=`` (the PyTorch backend; the stages pass neither otherwise). Likewise
        ``control`` (structure control, :func:`stylexfer.sample.control_request`): ``make`` then takes each
        prompt's control image as ``controls=``."""

    @abstractmethod
    def train(
        self,
        styles: list,
        pools: list,
        spec: TrainSpec,
        ckpt_dir: Optional[Path],
        export_dirs: list[Path],
        clock: Optional[list] = None,
        snapshots: Optional[dict[int, list[Path]]] = None,
        state_to: Optional[Path] = None,
    ) -> TrainOutcome:
        """Train ``styles`` (with their class pools, None without prior) as ``spec`` says (all the training
        reads: :class:`stylexfer.specs.TrainSpec`) in one pass, resuming from and
        checkpointing into ``ckpt_dir``; write each style that did not diverge to its ``export_dirs``
        entry. ``clock``, if given, gets the time each step's losses reached the host. For a backend that
        ``keeps_snapshots``: ``snapshots`` ({step: one folder per style}) also gets each live style's adapter
        as it is after that step, and ``state_to`` the pass's state after its last step, as a checkpoint a
        longer run resumes from. Raises :class:`stylexfer.errors.DeviceOutOfMemory` when the pass does not
        fit."""


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def load_backend(name: str, resolved, model_cfg, cache_dir: Path) -> Backend:
    """The backend ``name`` with the resolved model loaded; one line if it is unknown or not installed."""
    if name not in BACKENDS:
        raise ConfigError(f"backend.name={name}: unknown backend; known: {', '.join(backend_names())}")
    module, cls, extra = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        hint = f'pip install -e ".[{extra}]"' if extra else "pip install -e ."
        raise ConfigError(f"backend.name={name}: its framework is not installed ({e.name or e}); {hint}") from None
    return getattr(mod, cls)(resolved, model_cfg, Path(cache_dir))


@dataclass
class BackendFactory:
    """Loads backend ``name`` with a resolved model on a given device: picklable, so that the worker
    processes of a multi-GPU run (:mod:`stylexfer.shard`) each load their own."""

    name: str
    resolved: object
    model_cfg: dict
    cache_dir: str

    def __call__(self, device: Optional[str] = None) -> Backend:
        from omegaconf import OmegaConf

        model_conf = OmegaConf.create(self.model_cfg)
        if device is not None:
            model_conf.device = device
        return load_backend(self.name, self.resolved, model_conf, Path(self.cache_dir))


class LazyBackend(Backend):
    """A backend loaded on first use: a run whose worker processes made everything never loads the model
    in its own process."""

    def __init__(self, load: Callable[[], Backend], name: str, device: str):
        self._load, self.name, self._device, self._loaded = load, name, device, None

    @property
    def loaded(self) -> Backend:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    @property
    def device(self) -> str:
        return self._loaded.device if self._loaded is not None else self._device

    @property
    def trains_together(self) -> bool:
        return self.loaded.trains_together

    @property
    def keeps_snapshots(self) -> bool:
        return self.loaded.keeps_snapshots

    @property
    def dtype(self) -> str:
        return self.loaded.dtype

    def generate(self, **kw):
        return self.loaded.generate(**kw)

    def train(self, *args, **kw) -> TrainOutcome:
        return self.loaded.train(*args, **kw)
