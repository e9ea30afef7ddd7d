"""When the batched training pass compiles the UNet (``train.compile``), and where torch keeps what it compiled.

torch's compile caches (Inductor's FX-graph and autograd caches, Triton's kernels) live in the stage
store, one folder per torch version and GPU model (:func:`cache_dir`), so that every later run on the
machine — a sweep's next job, tomorrow's run — starts warm. Measured on an H100 (SD 2.1 shape, 14
styles, the full reference workload; docs/performance.md): eager 396 s; compiling with an empty cache
464 s (the compile costs more than the 800 steps win back); with a warm cache 374 s. Hence
``train.compile=null`` (auto, the default) compiles on CUDA only when this pass's graph was compiled
before on this machine (a marker written after every compiled pass, keyed by what shapes the graph:
model, resolution, styles per pass, samples per step, LoRA settings, dtype, torch version, GPU);
``train.compile=true`` compiles anyway (the way to warm the cache, e.g. in the first job of a long
sweep), ``false`` never.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ...store import atomic_write_json, stable_hash

log = logging.getLogger(__name__)


def _gpu(device: torch.device) -> str:
    return (
        re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-")
        if device.type == "cuda"
        else "cpu"
    )


def cache_dir(store: Path, device: torch.device) -> Path:
    """torch's compile cache for this machine's torch and GPU, inside the stage store."""
    return Path(store) / "torch-compile" / f"torch-{torch.__version__}-{_gpu(device)}"


def _inductor_dir() -> Path:
    return Path(
        os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    )


def graph_key(c, spec, n_styles: int) -> str:
    """What determines the compiled training graph's shapes and code."""
    return stable_hash(
        {
            "model": c.model.identity,
            "resolution": spec.resolution,
            "styles": n_styles,
            "batch": spec.train.batch_size,
            "prior": spec.prior.mode,
            "lora": OmegaConf.to_container(spec.lora, resolve=True, enum_to_str=True),
            "lora_compute": str(spec.train.lora_compute),
            "fp8": bool(spec.train.fp8),
            "precision": str(spec.train.mixed_precision),
            "dtype": str(c.dtype),
            "mode": spec.train.compile_mode,
            "torch": torch.__version__,
            "gpu": _gpu(c.device),
        }
    )


def _warm_marker(key: str) -> Path:
    """The file that says the compiled graph ``key`` (training or sampling) is in the cache."""
    return _inductor_dir() / "stylexfer-warm" / f"{key}.json"


def _marker(c, spec, n_styles: int) -> Path:
    return _warm_marker(graph_key(c, spec, n_styles))


def decide(c, spec, n_styles: int) -> bool:
    """Whether this pass compiles the UNet (see the module's docstring); says why in the log."""
    want = spec.train.compile
    if c.device.type != "cuda":
        return False
    if want is not None:
        return bool(want)
    if _marker(c, spec, n_styles).exists():
        log.info("compiling the UNet: its compiled graph is in the cache (%s)", _inductor_dir())
        return True
    log.info(
        "not compiling the UNet: nothing compiled for this shape in %s yet (a cold compile costs more than "
        "one run wins back; train.compile=true compiles and warms the cache for later runs)",
        _inductor_dir(),
    )
    return False


def mark_warm(c, spec, n_styles: int) -> None:
    """Record that this pass's graph is compiled in the cache (after a compiled pass finished)."""
    atomic_write_json(
        _marker(c, spec, n_styles),
        {"model": c.model.identity, "styles": n_styles, "torch": torch.__version__, "gpu": _gpu(c.device)},
    )


# ------------------------------------------------------------------------------------------ sampling
# The pipelines' UNet (samples and class images), compiled for one batch shape per pipeline context: the
# chunk size (prompts per call × 2 for guidance); a smaller last chunk runs eagerly. With the LoRA fused and
# peft's wrappers swapped for their base layers (sample.plain_layers) every style sees the same module tree,
# so one compiled graph serves the class pool and every style. Measured on an H100 (SD 2.1 shape, 25 images
# of 36 img2img steps at 512 px): 5.82 s eager, 4.58 s compiled, after 43.5 s of compiling with an empty
# cache: the same policy as training (auto = compile when the cache holds the graph).


def sampling_key(c, resolution: int, batch: int, variant: str = "") -> str:
    """The sampling graph's key; ``variant``: what else is traced with the UNet (style injection's processors)."""
    return stable_hash(
        {
            "what": "sampling",
            "model": c.model.identity,
            "resolution": resolution,
            "batch": batch,
            "dtype": str(c.dtype),
            "torch": torch.__version__,
            "gpu": _gpu(c.device),
            **({"variant": variant} if variant else {}),
        }
    )


def decide_sampling(c, want, resolution: int, batch: int, variant: str = "") -> bool:
    """Whether a pipeline context compiles its UNet (``sample.compile`` / ``prior.compile``; null = auto)."""
    if c.device.type != "cuda":
        return False
    if want is not None:
        return bool(want)
    if _warm_marker(sampling_key(c, resolution, batch, variant)).exists():
        log.info("compiling the sampling UNet (%d prompts per call): its compiled graph is in the cache", batch)
        return True
    log.info(
        "not compiling the sampling UNet: nothing compiled for %d prompts per call at %d px in %s yet "
        "(sample.compile=true compiles and warms the cache)",
        batch,
        resolution,
        _inductor_dir(),
    )
    return False


def mark_sampling_warm(c, resolution: int, batch: int, variant: str = "") -> None:
    atomic_write_json(
        _warm_marker(sampling_key(c, resolution, batch, variant)),
        {
            "model": c.model.identity,
            "what": "sampling",
            "batch": batch,
            "torch": torch.__version__,
            "gpu": _gpu(c.device),
        },
    )


def sampling_unet(c) -> torch.nn.Module:
    """The UNet compiled for sampling (one per loaded model; graphs per batch shape, no dynamic shapes)."""
    if "sampling_unet" not in c.extra:
        c.extra["sampling_unet"] = torch.compile(c.unet, dynamic=False)
    return c.extra["sampling_unet"]


def use_store_cache(store: Path, device: torch.device) -> None:
    """torch's compile cache in the store, where later runs on this machine reuse compiled kernels (unless
    the environment already names one)."""
    if device.type == "cuda":
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir(store, device)))
