"""PIL images ↔ torch tensors, as the PyTorch backend feeds them to the VAE."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB → float tensor (3, H, W) in [-1, 1]."""
    return uint8_to_model(to_uint8_tensor(img))


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB → uint8 tensor (3, H, W); the batched path ships these and converts on the device."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def uint8_to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 (…, 3, H, W) → float32 in [-1, 1] (:func:`to_tensor` is this on the host)."""
    return x.float() / 127.5 - 1.0
