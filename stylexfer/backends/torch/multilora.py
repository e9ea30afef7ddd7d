"""Many styles' LoRA adapters in one model, selected per sample.

:func:`inject` replaces each targeted ``nn.Linear`` with a :class:`MultiLoraLinear` that holds one
low-rank pair per style, stacked (``A: (S, r, in)``, ``B: (S, out, r)``). Before a forward pass the
caller sets ``router.index`` to the style slot of every sample in the batch; each sample then goes
through its own style's adapter with two batched matmuls (a gather of the stacked weights, no Python
loop over styles). Styles' parameters are disjoint slices, so the gradient of the sum of per-style
losses with respect to a style's slice is exactly that style's own gradient.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Router:
    """Which style slot each sample of the current batch uses (shared by every MultiLoraLinear).

    ``index``: the slot of every sample (any order). ``groups``: when the batch is made of equal,
    contiguous runs of samples per style (the training batch), the slot of each run: then each layer
    does one grouped matmul over ``(styles, samples × tokens, features)`` with no gather of weights.
    """

    index: Optional[torch.Tensor] = None
    groups: Optional[torch.Tensor] = None
    all_slots: bool = False  # groups == every slot in order: use the stacked weights as they are


class MultiLoraLinear(nn.Module):
    """``base(x) + scale · B_s A_s dropout(x)`` with ``s`` the style slot of each sample.

    The LoRA weights are float32 parameters (the optimizer's master copy); ``compute_dtype`` is the dtype
    their matmuls run in: float32 (peft's numerics), or the frozen model's dtype (bf16 on CUDA: what
    diffusers' DreamBooth example does under bf16 mixed precision, with no float32 copies of the
    activations). Under autocast the autocast dtype is used. When the branch runs in the base output's
    dtype, the add and the scale are folded into the second matmul (``baddbmm``)."""

    def __init__(
        self,
        base: nn.Linear,
        slots: int,
        rank: int,
        scale: float,
        router: Router,
        compute_dtype: torch.dtype = torch.float32,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.base = base
        self.scale = scale
        self.router = router
        self.compute_dtype = compute_dtype
        self.dropout = dropout
        dev = base.weight.device
        self.A = nn.Parameter(torch.zeros(slots, rank, base.in_features, device=dev, dtype=torch.float32))
        self.B = nn.Parameter(torch.zeros(slots, base.out_features, rank, device=dev, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        r = self.router
        if r.groups is not None:  # contiguous equal runs per style: (styles, run × tokens, features)
            A = self.A if r.all_slots else self.A[r.groups]
            B = self.B if r.all_slots else self.B[r.groups]
        elif r.index is not None:
            idx = r.index
            if idx.shape[0] != x.shape[0]:  # classifier-free guidance stacks [uncond; cond]
                idx = idx.repeat(x.shape[0] // idx.shape[0])
            A, B = self.A[idx], self.B[idx]
        else:
            return y
        flat = x.reshape(A.shape[0], -1, x.shape[-1])
        if self.dropout and self.training:
            flat = F.dropout(flat, self.dropout)
        autocast = x.is_cuda and torch.is_autocast_enabled("cuda")
        dt = torch.get_autocast_dtype("cuda") if autocast else self.compute_dtype
        with torch.autocast("cuda", enabled=False) if autocast else contextlib.nullcontext():
            h = torch.bmm(flat.to(dt), A.transpose(1, 2).to(dt))
            Bt = B.transpose(1, 2).to(dt)
            if y.dtype == dt:  # y + scale · (h @ Bᵀ) in one matmul, rounded once
                return torch.baddbmm(y.reshape(A.shape[0], -1, y.shape[-1]), h, Bt, alpha=self.scale).view(y.shape)
            d = torch.bmm(h, Bt) * self.scale
        return y + d.reshape(*x.shape[:-1], -1).to(y.dtype)


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def inject(
    model: nn.Module,
    targets,
    slots: int,
    rank: int,
    alpha: float,
    router: Router,
    compute_dtype: torch.dtype = torch.float32,
    dropout: float = 0.0,
) -> dict[str, MultiLoraLinear]:
    """Replace every ``nn.Linear`` whose name ends with a target (``to_q``, ``to_out.0`` ...)."""
    layers = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and _matches(name, targets):
            layer = MultiLoraLinear(module, slots, rank, alpha / rank, router, compute_dtype, dropout)
            model.set_submodule(name, layer)
            layers[name] = layer
    if not layers:
        raise ValueError(f"no nn.Linear in {type(model).__name__} matches {list(targets)}")
    return layers


def restore(model: nn.Module, layers: dict[str, MultiLoraLinear]) -> None:
    """Put the base ``nn.Linear`` modules back."""
    for name, layer in layers.items():
        model.set_submodule(name, layer.base)


def reinstate(model: nn.Module, layers: dict[str, MultiLoraLinear]) -> None:
    """Put injected layers taken out by :func:`restore` back in (to use trained weights in place)."""
    for name, layer in layers.items():
        model.set_submodule(name, layer)


@dataclass
class MultiAdapters:
    """The injected layers of the UNet and (optionally) the text encoder."""

    router: Router
    unet: dict = field(default_factory=dict)
    text_encoder: dict = field(default_factory=dict)

    def groups(self, lr: float, te_lr: float) -> list[dict]:
        g = [{"params": [p for l in self.unet.values() for p in (l.A, l.B)], "lr": lr, "name": "unet"}]
        if self.text_encoder:
            g.append(
                {
                    "params": [p for l in self.text_encoder.values() for p in (l.A, l.B)],
                    "lr": te_lr,
                    "name": "text_encoder",
                }
            )
        return g

    def all_layers(self):
        return list(self.unet.values()) + list(self.text_encoder.values())

    @torch.no_grad()
    def clip_per_slot(self, max_norm: float, active: torch.Tensor) -> torch.Tensor:
        """Clip each style's gradient to ``max_norm`` on its own (as ``clip_grad_norm_`` does per model)."""
        sq = None
        for l in self.all_layers():
            s = l.A.grad.float().pow(2).sum(dim=(1, 2)) + l.B.grad.float().pow(2).sum(dim=(1, 2))
            sq = s if sq is None else sq + s
        norm = sq.sqrt()
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0) * active
        for l in self.all_layers():
            l.A.grad.mul_(coef[:, None, None].to(l.A.grad.dtype))
            l.B.grad.mul_(coef[:, None, None].to(l.B.grad.dtype))
        return norm
