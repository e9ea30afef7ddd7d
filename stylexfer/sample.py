"""Sampling stage: the configured sampler, text-to-image or img2img from the style's average image.

Each image has its own seeded generator (derived from ``sample.seed``, the style and the object), so
an image does not depend on batch size or on which other prompts share its batch; a re-run with the
same config gives the same files. The style's adapter is loaded with diffusers' stock
``load_lora_weights`` — the same call a user makes — so what is evaluated is what was saved.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import faults
from .config import InitMode, SamplerName, value
from .data import Style, average_image
from .models import Components
from .store import atomic_save_image, build_once, stable_hash

log = logging.getLogger(__name__)


def make_scheduler(name: SamplerName | str, base_config: dict):
    """An inference scheduler with the base model's noise schedule and prediction type."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler)

    name = SamplerName(name)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    if name == SamplerName.ddim:
        return DDIMScheduler.from_config(config)
    if name == SamplerName.dpmpp:
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == SamplerName.euler_a:
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == SamplerName.euler:
        return EulerDiscreteScheduler.from_config(config)
    if name == SamplerName.unipc:
        return UniPCMultistepScheduler.from_config(config)
    return PNDMScheduler.from_config(config, skip_prk_steps=True)


def make_pipeline(components: Components, sampler: SamplerName | str, img2img: bool = False):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls(vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
               unet=components.unet, scheduler=make_scheduler(sampler, components.scheduler_config),
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_seed(*parts) -> int:
    return int(stable_hash(parts, 8), 16) % (2**31)


def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance_scale: float,
             resolution: int, init_image: Optional[Image.Image] = None, strength: float = 1.0) -> list[Image.Image]:
    """One batched pipeline call; each image has its own CPU generator (device-independent noise)."""
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    kwargs = dict(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale,
                  generator=generators, output_type="pil")
    with torch.inference_mode():
        if init_image is None:
            return pipe(height=resolution, width=resolution, **kwargs).images
        return pipe(image=[init_image] * len(prompts), strength=strength, **kwargs).images


def make_in_chunks(partial: Path, names: Sequence[str], chunk: int, make: Callable[[int, int], list],
                   point: Callable[[int], str], desc: str) -> None:
    """Images ``names`` made ``chunk`` at a time by ``make(i, j)`` (images ``i..j-1``) into ``partial``.

    The chunks are the same fixed slices every time and a chunk whose files all exist is skipped, so a
    killed run resumes where it stopped and ends with the same files. A chunk's PNGs are encoded on worker
    threads (zlib releases the GIL) while the next chunk is generated; ``faults.checkpoint(point(n))``
    runs once image ``n`` is on disk."""
    def written(pending):
        for n, fut in pending:
            fut.result()
            faults.checkpoint(point(n))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="stylexfer-png") as pool:
        pending: list = []
        for i in tqdm(range(0, len(names), chunk), desc=desc, unit="batch", leave=False):
            if all((partial / n).exists() for n in names[i:i + chunk]):
                continue
            images = make(i, min(i + chunk, len(names)))
            written(pending)
            pending = [(i + k, pool.submit(atomic_save_image, img, partial / names[i + k])) for k, img in enumerate(images)]
        written(pending)


def fuse_exactly(pipe, adapter_name: str) -> list:
    """Fold the loaded LoRA into the base weights for sampling (diffusers' ``fuse_lora``: no LoRA matmuls
    per layer; a style's 25 images at 512 px took 5.95 s fused vs 6.66 s unfused on an H100) and return the
    base weights it changes, so that :func:`unfuse_exactly` restores them bit for bit (``unfuse_lora``
    alone subtracts the delta again, which in bfloat16 does not give the same weights back)."""
    base = [(m.base_layer, m.base_layer.weight.detach().clone())
            for part in (pipe.unet, pipe.text_encoder) for m in part.modules()
            if hasattr(getattr(m, "base_layer", None), "weight")]
    pipe.fuse_lora(adapter_names=[adapter_name], lora_scale=1.0)
    return base


def unfuse_exactly(pipe, base: list) -> None:
    pipe.unfuse_lora()
    with torch.no_grad():
        for layer, weight in base:
            layer.weight.copy_(weight)


@dataclass
class SampleRecord:
    style: str
    object: str
    prompt: str
    file: str  # relative to the run folder
    seed: int


def sample_jobs(style: Style, cfg) -> list[SampleRecord]:
    """The images a style gets: every requested object × ``sample.images_per_prompt``, each with its seed."""
    jobs = []
    for obj, stem in zip(style.objects, style.object_files):
        for k in range(cfg.sample.images_per_prompt):
            name = f"{stem}.png" if k == 0 else f"{stem}_{k}.png"
            jobs.append(SampleRecord(style=style.id, object=obj, prompt=cfg.data.prompt.format(object=obj, style=style.id),
                                     file=f"images/{style.id}/{name}", seed=image_seed(cfg.sample.seed, style.id, obj, k)))
    return jobs


def sample_spec(style: Style, cfg, adapter_key: Optional[str], model_identity: str) -> dict:
    """Everything that determines a style's images (their key in the stage store)."""
    img2img = InitMode(value(cfg.init.mode)) == InitMode.avg_image
    return {"version": 2 if cfg.sample.fuse_lora else 1, "model": model_identity, "adapter": adapter_key, "style": style.fingerprint(),
            "jobs": [[j.prompt, j.file, j.seed] for j in sample_jobs(style, cfg)],
            "sampler": value(cfg.scheduler.name), "steps": cfg.scheduler.steps,
            "guidance_scale": cfg.scheduler.guidance_scale, "init": value(cfg.init.mode),
            "strength": cfg.init.strength if img2img else None, "resolution": cfg.model.resolution,
            "batch_size": cfg.sample.batch_size, "dtype": str(cfg.model.dtype)}


def ensure_samples(components: Components, style: Style, adapter_dir: Optional[Path], cfg, spec: dict,
                   cache_dir: Path) -> tuple[Path, list[SampleRecord], bool]:
    """Generate (or reuse) the style's images under ``<cache>/samples/<key>/`` with the stock LoRA loader.

    Batches are fixed chunks of the job list and each finished image is kept in a partial folder, so a
    killed run resumes where it stopped and produces the same files as an uninterrupted one."""
    key = stable_hash(spec)
    target = Path(cache_dir) / "samples" / key
    partial = target.parent / ".partial" / key
    jobs = sample_jobs(style, cfg)
    names = [j.file.split("/", 2)[-1] for j in jobs]
    res = cfg.model.resolution
    img2img = InitMode(value(cfg.init.mode)) == InitMode.avg_image

    def build(tmp: Path) -> None:
        init = average_image(style.images, res) if img2img else None
        pipe = make_pipeline(components, value(cfg.scheduler.name), img2img=img2img)
        adapter_name = f"style_{style.id}"
        base = None
        if adapter_dir is not None:
            pipe.load_lora_weights(str(adapter_dir), adapter_name=adapter_name)
            if cfg.sample.fuse_lora:
                base = fuse_exactly(pipe, adapter_name)

        def make(i: int, j: int) -> list:
            return generate(pipe, [b.prompt for b in jobs[i:j]], [b.seed for b in jobs[i:j]], cfg.scheduler.steps,
                            cfg.scheduler.guidance_scale, res, init, cfg.init.strength)

        try:
            make_in_chunks(partial, names, cfg.sample.batch_size, make, lambda n: f"sample:{style.id}:{n + 1}",
                           f"sample {style.id}")
        finally:
            if base is not None:
                unfuse_exactly(pipe, base)
            if adapter_dir is not None:
                pipe.delete_adapters(adapter_name)
        for n in names:
            os.replace(partial / n, tmp / n)
        if init is not None:
            atomic_save_image(init, tmp / "_average.png")

    path, built = build_once(target, build)
    shutil.rmtree(partial, ignore_errors=True)
    return path, jobs, not built
