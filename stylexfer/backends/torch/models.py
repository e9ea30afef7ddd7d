"""The PyTorch backend's model: the diffusers components of a resolved model folder on a device.

Every component is read with ``from_pretrained(..., use_safetensors=True)``: no pickle, no remote code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ...embedded import RANDOM_WEIGHTS_NOTICE
from ...errors import ModelNotFoundError
from ...models import ResolvedModel

log = logging.getLogger(__name__)


@dataclass
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any  # DDPM training scheduler with the base model's noise schedule
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype  # of the frozen UNet and text encoder
    vae_dtype: torch.dtype
    model: ResolvedModel
    extra: dict = field(default_factory=dict)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent along each side (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_components(resolved: ResolvedModel, model_cfg) -> Components:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = resolve_device(model_cfg.device)
    dtype = resolve_dtype(model_cfg.dtype, device)
    folder = str(resolved.folder)
    kw = dict(variant=model_cfg.variant, use_safetensors=True)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
        noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"model.path={resolved.source}: cannot load ({str(e).splitlines()[0]})") from None
    for m in (text_encoder, vae, unet):
        m.requires_grad_(False)
        m.eval()
        m.to(device=device, dtype=dtype)
    if device.type == "cuda":  # autotuned kernels; the UNet stays NCHW: on an H100 (torch 2.11) channels-last
        # made a 28-sample training step 0.300 s instead of 0.255 s and a 50-sample forward 0.159 s instead of
        # 0.135 s (GroupNorm and the attention reshapes copy NHWC tensors), README: Speed
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    # The VAE decodes in float32 on fp16 (SD's VAE overflows in half precision).
    if dtype == torch.float16:
        vae.to(dtype=torch.float32)
    if resolved.random_weights:
        log.warning(RANDOM_WEIGHTS_NOTICE)
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        scheduler_config=dict(noise_scheduler.config),
        device=device,
        dtype=dtype,
        vae_dtype=vae.dtype,
        model=resolved,
    )


def tokenize(components: Components, prompts: list[str]) -> torch.Tensor:
    """The prompts' token ids (padded to the tokenizer's length) on the model's device."""
    tok = components.tokenizer
    return tok(
        prompts, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt"
    ).input_ids.to(components.device)


def encode_prompts(components: Components, prompts: list[str], grad: bool = False) -> torch.Tensor:
    ids = tokenize(components, prompts)
    with torch.set_grad_enabled(grad):
        return components.text_encoder(ids)[0]
