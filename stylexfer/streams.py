"""A style's random streams, shared by every backend so that a style draws the same numbers on each.

Seeded by ``(train.seed, style id)``: numpy's generator for the data order and the augmentation, and torch's
CPU generator for the latent sample, the noise and the timesteps (used as a random source only: the Jittor
backend draws from it too, in the same order, which is what makes its adapters match the PyTorch backend's),
and the seed of the LoRA init. A style's adapter therefore does not depend on which other styles train beside
it, on the device, or on the backend.
"""

from __future__ import annotations

import numpy as np
import torch

from .store import stable_hash


class Stream:
    """Per-style random streams: numpy for data order and augmentation, torch for latents/noise/timesteps."""

    def __init__(self, seed: int, style_id: str):
        base = int(stable_hash([seed, style_id], 12), 16)
        self.np = np.random.default_rng(base)
        self.torch = torch.Generator("cpu").manual_seed(base % (2**63))
        self.lora_seed = base % (2**31)


class Cycler:
    """Epoch-wise shuffled indices over ``n`` items (like a shuffling DataLoader)."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.n, self.rng, self.order = n, rng, []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.order:
                self.order = list(self.rng.permutation(self.n))
            out.append(int(self.order.pop()))
        return out


def biased_timesteps(u: torch.Tensor, num_train_timesteps: int, bias: str) -> torch.Tensor:
    """Timesteps from uniform draws ``u`` in [0, 1) favouring high noise (``style``: ``(1 − u³)·T``) or low noise
    (``content``: ``u³·T``): the cubic sampling of T2I-Adapter (Mou et al. 2023, §3.4) that ai-toolkit's
    ``content_or_style`` uses. With ``style`` half the draws land above 0.875·T (uniform: above 0.5·T)."""
    x = u**3 if bias == "content" else 1 - u**3
    return (x * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


def draw_noise(
    gen: torch.Generator,
    shape: tuple,
    num_train_timesteps: int,
    noise_offset: float = 0.0,
    timestep_bias: str = "none",
):
    """One step's random draws for one style, from its CPU generator (device-independent), in this order:
    the VAE posterior sample's noise, the diffusion noise, the timesteps, and with ``train.noise_offset``
    > 0 a per-channel offset added to the noise (as diffusers' examples do: ``noise_offset × N(0, 1)`` per
    sample and channel). Without the offset nothing more is drawn, so the streams stay as they were. The timesteps
    are uniform integers, or with ``train.timestep_bias`` (style | content) :func:`biased_timesteps` of uniform
    floats (one draw per sample either way)."""
    eps = torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=gen)
    if timestep_bias in ("style", "content"):
        t = biased_timesteps(torch.rand((shape[0],), generator=gen), num_train_timesteps, timestep_bias)
    else:
        t = torch.randint(0, num_train_timesteps, (shape[0],), generator=gen)
    if noise_offset > 0:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=gen)
    return eps, noise, t
