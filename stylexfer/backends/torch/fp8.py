"""fp8 matrix products for the frozen base weights while training (``train.fp8=true``; off by default).

Every frozen ``nn.Linear`` of the UNet (the attention projections under the LoRA branches, the
feed-forward and the projections around the transformer blocks; convolutions stay bf16) computes its
forward product in float8 e4m3 through ``torch._scaled_mm``: the weight is quantized once per pass with
one scale per tensor, the input on the fly with one scale per call (its absolute maximum). The
backward to the input (all a frozen layer needs; the LoRA branches and their gradients stay as they
are) uses the layer's bf16 weight. Needs a GPU with fp8 tensor cores (compute capability ≥ 8.9: Ada,
Hopper). Quality of the result cannot be measured on SD 2.1 here, hence off by default; the speed and
the loss curve against bf16 are in docs/performance.md.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

E4M3_MAX = 448.0


def supported(device: torch.device) -> bool:
    return (
        device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9) and hasattr(torch, "_scaled_mm")
    )


def _quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (t.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    return (t / scale.to(t.dtype)).to(torch.float8_e4m3fn), scale


class _Fp8Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w8, w_scale, weight, bias):
        flat = x.reshape(-1, x.shape[-1])
        x8, x_scale = _quantize(flat)
        y = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=x.dtype)
        ctx.save_for_backward(weight)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None, None, None


class Fp8Linear(nn.Module):
    """A frozen ``nn.Linear`` whose forward product runs in fp8 (see the module's docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w8, scale = _quantize(linear.weight.detach())
        self.register_buffer("w8", w8, persistent=False)
        self.register_buffer("w_scale", scale, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self):
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.bfloat16, torch.float16) or x.shape[0] == 0:
            return self.linear(x)
        return _Fp8Product.apply(x, self.w8, self.w_scale, self.linear.weight, self.linear.bias)


def _eligible(m: nn.Module) -> bool:
    # _scaled_mm needs both dimensions divisible by 16; tiny layers (the time embedding) gain nothing
    return (
        type(m) is nn.Linear
        and not m.weight.requires_grad
        and m.in_features % 16 == 0
        and m.out_features % 16 == 0
        and m.in_features * m.out_features >= 256 * 256
    )


@contextlib.contextmanager
def fp8_linears(model: nn.Module, on: bool = True):
    """Swap the model's eligible frozen linears (also those under a LoRA wrapper) for :class:`Fp8Linear`
    for the block's duration; the original modules are put back afterwards, untouched."""
    if not on:
        yield 0
        return
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _eligible(child):
                setattr(parent, name, Fp8Linear(child))
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
