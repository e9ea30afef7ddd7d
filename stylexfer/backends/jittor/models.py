"""The Jittor backend's model: the UNet, VAE and text encoder of a diffusers folder as Jittor modules, loaded
from the folder's safetensors files by name (numpy arrays; no pickle, no torch), the CLIP tokenizer, and
the base model's noise schedule.

Every parameter the module has must be in the file and every tensor of the file must be a parameter (a
file's ``text_model.`` prefix and ``position_ids`` buffer excepted): a mismatch names the file and the key.
Computation is float32 (the backend's only dtype).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...embedded import RANDOM_WEIGHTS_NOTICE
from ...errors import ConfigError, ModelNotFoundError
from ...models import ResolvedModel
from .layers import jt
from .text_encoder import CLIPTextModel
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL

log = logging.getLogger(__name__)

WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


def alphas_cumprod(sched: dict) -> np.ndarray:
    """The cumulative product of 1 − β of the scheduler config (``linear``/``scaled_linear`` betas), float64."""
    n = int(sched.get("num_train_timesteps", 1000))
    b0, b1 = float(sched.get("beta_start", 0.0001)), float(sched.get("beta_end", 0.02))
    kind = sched.get("beta_schedule", "linear")
    if sched.get("trained_betas") is not None:
        betas = np.asarray(sched["trained_betas"], np.float64)
    elif kind == "linear":
        betas = np.linspace(b0, b1, n, dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(b0**0.5, b1**0.5, n, dtype=np.float64) ** 2
    else:
        raise ConfigError(f"scheduler config beta_schedule={kind}: not carried by the jittor backend")
    if sched.get("rescale_betas_zero_snr"):
        raise ConfigError("scheduler config rescale_betas_zero_snr=true: not carried by the jittor backend")
    # diffusers computes the betas in float32 and the cumulative product in float32: so do we
    return np.cumprod(1.0 - betas.astype(np.float32), dtype=np.float32)


@dataclass
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    alphas_cumprod: np.ndarray
    device: str
    model: Optional[ResolvedModel] = None
    # VAE posteriors of grid crops of class pools, {(pool key, resolution, resize scale): {crop: (mean, std)}}
    crop_cache: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.get("scaling_factor", 0.18215))

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config["latent_channels"])


def _weights_file(folder: Path, part: str, variant: Optional[str]) -> Path:
    stem = WEIGHT_FILES[part]
    names = ([f"{stem}.{variant}.safetensors"] if variant else []) + [f"{stem}.safetensors"]
    for name in names:
        if (folder / part / name).is_file():
            return folder / part / name
    raise ModelNotFoundError(f"{folder / part}: no {names[0]} (the jittor backend reads safetensors only)")


def load_weights(module, file: Path, strip: str = "") -> None:
    """Load a safetensors file into ``module`` by name (float32), refusing missing or unexpected keys."""
    from safetensors.numpy import load_file

    tensors = {(k[len(strip) :] if strip and k.startswith(strip) else k): v for k, v in load_file(str(file)).items()}
    tensors = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ModelNotFoundError(f"{file}: {what} ({len(missing)} missing, {len(extra)} unexpected keys)")
    for k, v in tensors.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ModelNotFoundError(
                f"{file}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    module.load_state_dict({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()})
    for p in module.parameters():
        p.stop_grad()


def load_components(
    folder: Path, device: str = "cpu", variant: Optional[str] = None, resolved: Optional[ResolvedModel] = None
) -> Components:
    from transformers import CLIPTokenizer

    folder = Path(folder)

    def config(part, name="config.json"):
        try:
            return json.loads((folder / part / name).read_text())
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"{folder / part / name}: cannot read ({e})") from None

    unet = UNet2DConditionModel(config("unet"))
    vae = AutoencoderKL(config("vae"))
    te = CLIPTextModel(config("text_encoder"))
    load_weights(unet, _weights_file(folder, "unet", variant))
    load_weights(vae, _weights_file(folder, "vae", variant))
    load_weights(te, _weights_file(folder, "text_encoder", variant), strip="text_model.")
    for m in (unet, vae, te):
        m.eval()
    sched = config("scheduler", "scheduler_config.json")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    if resolved is not None and resolved.random_weights:
        log.warning(RANDOM_WEIGHTS_NOTICE)
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=te,
        tokenizer=tokenizer,
        scheduler_config=sched,
        alphas_cumprod=alphas_cumprod(sched),
        device=device,
        model=resolved,
    )


def token_ids(c: Components, prompts: list[str]):
    tok = c.tokenizer
    ids = tok(
        list(prompts), padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="np"
    ).input_ids
    return jt.array(ids.astype(np.int32))


def encode_prompts(c: Components, prompts: list[str]):
    return c.text_encoder(token_ids(c, prompts))
