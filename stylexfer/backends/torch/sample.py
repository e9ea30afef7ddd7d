"""The PyTorch backend's image generation: diffusers' Stable Diffusion pipelines (text-to-image and img2img)
with the configured sampler, the style's LoRA loaded by diffusers' stock ``load_lora_weights`` (the same
call a user makes) and, by default, fused into the weights while it samples.

Each image has its own CPU generator seeded by the caller, so its noise does not depend on the device or
on its batch mates.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image

from ...config import SamplerName
from ...store import stable_hash
from .models import Components

log = logging.getLogger(__name__)


def make_scheduler(name: SamplerName | str, base_config: dict):
    """An inference scheduler with the base model's noise schedule and prediction type."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )

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


def make_pipeline(components: Components, sampler: SamplerName | str, img2img: bool = False, controlnet=None):
    from diffusers import (
        StableDiffusionControlNetImg2ImgPipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
    )

    if controlnet is not None:
        cls = StableDiffusionControlNetImg2ImgPipeline if img2img else StableDiffusionControlNetPipeline
        extra = {"controlnet": controlnet}
    else:
        cls, extra = (StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline), {}
    pipe = cls(
        **extra,
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=make_scheduler(sampler, components.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float,
    resolution: int,
    init_image: Optional[Image.Image] = None,
    strength: float = 1.0,
    control: Optional[dict] = None,
    control_images: Optional[Sequence[Image.Image]] = None,
) -> list[Image.Image]:
    """One batched pipeline call; each image has its own CPU generator (device-independent noise). With a
    ControlNet pipeline, ``control_images`` (one per prompt) and ``control``'s ``scale``/``start``/``end``."""
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    kwargs = dict(
        prompt=list(prompts),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generators,
        output_type="pil",
    )
    if control_images is not None:
        kwargs.update(
            controlnet_conditioning_scale=float(control["scale"]),
            control_guidance_start=float(control["start"]),
            control_guidance_end=float(control["end"]),
        )
    with torch.inference_mode():
        if control_images is not None and init_image is None:
            return pipe(image=list(control_images), height=resolution, width=resolution, **kwargs).images
        if control_images is not None:
            return pipe(
                image=[init_image] * len(prompts), control_image=list(control_images), strength=strength, **kwargs
            ).images
        if init_image is None:
            return pipe(height=resolution, width=resolution, **kwargs).images
        return pipe(image=[init_image] * len(prompts), strength=strength, **kwargs).images


def load_controlnet(c: Components, folder: Path):
    """The ControlNet in ``folder`` (diffusers layout, safetensors only) on the components' device and dtype,
    loaded once per folder."""
    from diffusers import ControlNetModel

    key = ("controlnet", str(Path(folder).resolve()))
    if key not in c.extra:
        net = ControlNetModel.from_pretrained(str(folder), torch_dtype=c.dtype, use_safetensors=True)
        c.extra[key] = net.to(c.device).eval().requires_grad_(False)
    return c.extra[key]


def fuse_exactly(pipe, adapter_name: str) -> list:
    """Fold the loaded LoRA into the base weights for sampling (diffusers' ``fuse_lora``: no LoRA matmuls
    per layer; a style's 25 images at 512 px took 5.95 s fused vs 6.66 s unfused on an H100) and return the
    base weights it changes, so that :func:`unfuse_exactly` restores them bit for bit (``unfuse_lora``
    alone subtracts the delta again, which in bfloat16 does not give the same weights back)."""
    base = [
        (m.base_layer, m.base_layer.weight.detach().clone())
        for part in (pipe.unet, pipe.text_encoder)
        for m in part.modules()
        if hasattr(getattr(m, "base_layer", None), "weight")
    ]
    pipe.fuse_lora(adapter_names=[adapter_name], lora_scale=1.0)
    return base


def unfuse_exactly(pipe, base: list) -> None:
    pipe.unfuse_lora()
    with torch.no_grad():
        for layer, weight in base:
            layer.weight.copy_(weight)


@contextlib.contextmanager
def plain_layers(pipe):
    """peft's LoRA wrappers whose adapter is merged (fused) swapped for their base layers for the context:
    a merged wrapper computes exactly its base layer (peft's forward), and a UNet of plain layers is the same
    module tree for every style, which a compiled UNet needs to be traced once. Yields how many it swapped."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    swapped = []
    for part in (pipe.unet, pipe.text_encoder):
        for name, m in list(part.named_modules()):
            if isinstance(m, BaseTunerLayer) and m.merged:
                part.set_submodule(name, m.get_base_layer())
                swapped.append((part, name, m))
    try:
        yield len(swapped)
    finally:
        for part, name, m in swapped:
            part.set_submodule(name, m)


def merge_exactly(c: Components) -> list:
    """Merge every peft adapter layer's delta into its base weight (as :func:`fuse_exactly` does for
    diffusers' LoRA) and return the base weights, so :func:`unmerge_exactly` restores them bit for bit."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for part in (c.unet, c.text_encoder) for m in part.modules() if isinstance(m, BaseTunerLayer)]
    base = [(m, m.get_base_layer().weight.detach().clone()) for m in layers]
    for m in layers:
        m.merge()
    return base


def unmerge_exactly(c: Components, base: list) -> None:
    with torch.no_grad():
        for m, weight in base:
            m.merged_adapters = []
            m.get_base_layer().weight.copy_(weight)


@contextlib.contextmanager
def sampling(
    c: Components,
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
    inject: Optional[dict] = None,
    control: Optional[dict] = None,
):
    """:meth:`stylexfer.backends.Backend.generate` on the PyTorch backend: one pipeline, the adapter loaded
    (and fused) for the context's duration; the base weights are exactly as before afterwards. With the
    adapter fused (or none), peft's wrappers are swapped for their base layers and the UNet may run compiled
    for the first call's batch shape (``compile``: null = when the compile cache holds it, :mod:`.compiled`).
    ``inject``: style injection (:func:`.inject.injecting`), compiled as plain sampling is (its own graph).
    ``control``: structure control (``model``: a ControlNet folder, ``scale``, ``start``, ``end``); ``make`` then
    takes each prompt's control image (``controls=``), and samples eagerly."""
    from ...backends import ADAPTER_FILE
    from . import compiled
    from .train import load_peft_adapter, remove_adapters

    net = load_controlnet(c, control["model"]) if control is not None else None
    pipe = make_pipeline(c, sampler, img2img=init_image is not None, controlnet=net)
    name = "stylexfer"
    base = None
    # LoHa/LoKr files go through peft (diffusers' LoRA loader does not read them); LoRA and DoRA through
    # diffusers' stock load_lora_weights
    peft_file = adapter_dir is not None and load_peft_adapter(c, Path(adapter_dir) / ADAPTER_FILE)
    if adapter_dir is not None and not peft_file:
        pipe.load_lora_weights(str(adapter_dir), adapter_name=name)
    stack = contextlib.ExitStack()
    try:
        if peft_file and fuse_lora:
            base = merge_exactly(c)
        elif adapter_dir is not None and fuse_lora:
            base = fuse_exactly(pipe, name)
        plain = adapter_dir is None or fuse_lora  # no unmerged LoRA branch: plain layers, compilable
        if plain:
            stack.enter_context(plain_layers(pipe))

        def run(prompts, seeds, controls=None):  # one pipeline call with the context's settings
            return generate(
                pipe, prompts, seeds, steps, guidance_scale, resolution, init_image, strength, control, controls
            )

        chosen: dict = {}

        def run_compiled(prompts, seeds, **kw):
            """One call, with the UNet compiled for the context's first batch shape where that is chosen."""
            if plain and "batch" not in chosen:
                chosen["batch"] = len(prompts)
                chosen["on"] = compiled.decide_sampling(c, compile, resolution, len(prompts), variant)
            use = plain and chosen["on"] and len(prompts) == chosen["batch"]
            pipe.unet = compiled.sampling_unet(c) if use else c.unet
            try:
                images = run(prompts, seeds, **kw)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - compiling failed (no compiler, say): the same call eagerly
                if not use:
                    raise
                log.warning(
                    "the compiled sampling UNet failed (%s: %s); sampling without compiling",
                    type(e).__name__,
                    (str(e).splitlines() or [""])[0],
                )
                chosen["on"] = use = False
                pipe.unet = c.unet
                images = run(prompts, seeds, **kw)
            finally:
                pipe.unet = c.unet
            if use and not chosen.get("marked"):
                compiled.mark_sampling_warm(c, resolution, len(prompts), variant)
                chosen["marked"] = True
            return images

        # the compiled graph's variant: injection's processors are traced with the UNet (their own graph)
        variant = "" if inject is None else "inject:" + stable_hash(inject["spec"])
        if compile and control is not None:
            log.info("structure control samples with the eager UNet")
        if inject is not None:
            from .inject import injecting

            yield stack.enter_context(
                injecting(
                    pipe,
                    c,
                    inject,
                    steps=steps,
                    strength=strength,
                    img2img=init_image is not None,
                    run=run if control is not None else run_compiled,
                )
            )
            return
        if control is not None:
            yield run
            return
        yield run_compiled
    finally:
        stack.close()
        if peft_file:
            if base is not None:
                unmerge_exactly(c, base)
            remove_adapters(c)
        else:
            if base is not None:
                unfuse_exactly(pipe, base)
            if adapter_dir is not None:
                pipe.delete_adapters(name)
                remove_adapters(c)  # diffusers leaves emptied peft wrappers behind: put the plain layers back
