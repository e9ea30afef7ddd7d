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
