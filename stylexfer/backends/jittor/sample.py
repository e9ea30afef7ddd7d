"""The Jittor backend's image generation: DDIM (η = 0) with classifier-free guidance, from noise or img2img from
an init image, computed as diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline`` with a
``DDIMScheduler`` compute it — including the random draws: each image's noise (and, img2img, its VAE
posterior sample) comes from a torch CPU generator seeded by the caller, drawn in the pipeline's order, so a
prompt and seed give the same image on both backends up to float32 rounding.

A style's adapter is read from its diffusers LoRA file and fused into the base weights while the context
is open (``fuse_lora=false``: attached as LoRA layers); the base weights are restored exactly afterwards.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ...errors import ConfigError
from . import lora
from .layers import jt
from .models import Components, encode_prompts


def ddim_timesteps(sched: dict, steps: int) -> np.ndarray:
    """``DDIMScheduler.set_timesteps``'s timesteps for the config's ``timestep_spacing``."""
    n = int(sched.get("num_train_timesteps", 1000))
    spacing = sched.get("timestep_spacing", "leading")
    if spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + int(sched.get("steps_offset", 0))
    elif spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ConfigError(f"scheduler config timestep_spacing={spacing}: not carried by the jittor backend")
    return ts.copy()


class DDIM:
    def __init__(self, c: Components, steps: int):
        self.c, self.steps = c, steps
        self.ac = c.alphas_cumprod
        self.final = 1.0 if c.scheduler_config.get("set_alpha_to_one", True) else float(self.ac[0])
        self.n = int(c.scheduler_config.get("num_train_timesteps", 1000))
        self.timesteps = ddim_timesteps(c.scheduler_config, steps)
        self.clip = c.scheduler_config.get("clip_sample", False)
        self.clip_range = float(c.scheduler_config.get("clip_sample_range", 1.0))
        if c.scheduler_config.get("thresholding"):
            raise ConfigError("scheduler config thresholding=true: not carried by the jittor backend")

    def step(self, out, t: int, x):
        a = float(self.ac[t])
        prev = t - self.n // self.steps
        a_prev = float(self.ac[prev]) if prev >= 0 else self.final
        b = 1.0 - a
        pt = self.c.prediction_type
        if pt == "epsilon":
            x0, eps = (x - b**0.5 * out) / a**0.5, out
        elif pt == "v_prediction":
            x0, eps = a**0.5 * x - b**0.5 * out, a**0.5 * out + b**0.5 * x
        elif pt == "sample":
            x0 = out
            eps = (x - a**0.5 * x0) / b**0.5
        else:
            raise ConfigError(f"scheduler config prediction_type={pt}: not carried by the jittor backend")
        if self.clip:
            x0 = jt.clamp(x0, -self.clip_range, self.clip_range)
        return a_prev**0.5 * x0 + (1.0 - a_prev) ** 0.5 * eps


def _to_pixels(img: Image.Image) -> np.ndarray:
    return (np.asarray(img.convert("RGB"), np.float32) / 255.0 * 2.0 - 1.0).transpose(2, 0, 1)[None]


def _to_images(x: np.ndarray) -> list[Image.Image]:
    x = np.clip(x / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return [Image.fromarray((im * 255).round().astype(np.uint8)) for im in x]


def generate(
    c: Components,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float,
    resolution: int,
    init_image: Optional[Image.Image] = None,
    strength: float = 1.0,
) -> list[Image.Image]:
    """One batched call; image ``i`` draws from ``torch.Generator().manual_seed(seeds[i])`` as diffusers does."""
    with jt.no_grad():
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        sched = DDIM(c, steps)
        timesteps = sched.timesteps
        n, ch = len(prompts), c.latent_channels
        if init_image is None:
            h = resolution // c.vae_scale
            lat = np.concatenate([torch.randn((1, ch, h, h), generator=g).numpy() for g in gens])
            x = jt.array(lat)
        else:
            init = min(int(steps * strength), steps)
            timesteps = timesteps[max(steps - init, 0) :]
            mean, std = c.vae.encode(jt.array(_to_pixels(init_image)))
            mean, std = mean.numpy(), std.numpy()
            lat = np.concatenate([mean + std * torch.randn(mean.shape, generator=g).numpy() for g in gens])
            lat = lat * c.scaling_factor
            noise = np.concatenate([torch.randn(mean.shape, generator=g).numpy() for g in gens])
            t0 = int(timesteps[0])
            a = np.float32(c.alphas_cumprod[t0])
            x = jt.array((a**0.5 * lat + (1 - a) ** 0.5 * noise).astype(np.float32))
        guided = guidance_scale > 1.0
        cond = encode_prompts(c, list(prompts))
        if guided:
            cond = jt.concat([encode_prompts(c, [""] * n), cond])
        for t in timesteps:
            xin = jt.concat([x, x]) if guided else x
            out = c.unet(xin, jt.array(np.full((xin.shape[0],), int(t), np.int32)), cond)
            if guided:
                u, tx = out[:n], out[n:]
                out = u + guidance_scale * (tx - u)
            x = sched.step(out, int(t), x)
            x.sync()
        img = c.vae.decode(x / c.scaling_factor).numpy()
    return _to_images(img)


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
):
    """:meth:`stylexfer.backends.Backend.generate` on the Jittor backend (``compile`` does not apply: Jittor
    compiles its kernels just in time anyway)."""
    from .. import ADAPTER_FILE

    if str(sampler) not in ("ddim", "SamplerName.ddim"):
        raise ConfigError(f"scheduler.name={sampler}: the jittor backend samples with ddim only (scheduler=ddim)")
    weights = lora.read(Path(adapter_dir) / ADAPTER_FILE) if adapter_dir is not None else {}
    saved: list = []
    try:
        for part, w in weights.items():
            model = c.unet if part == "unet" else c.text_encoder
            if fuse_lora:
                saved += lora.fuse(model, w)
            else:
                lora.attach(model, w)
        yield lambda prompts, seeds: generate(
            c, prompts, seeds, steps, guidance_scale, resolution, init_image, strength
        )
    finally:
        lora.unfuse(saved)
        lora.remove(c.unet)
        lora.remove(c.text_encoder)
