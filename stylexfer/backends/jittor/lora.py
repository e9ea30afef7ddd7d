"""LoRA for the Jittor modules, and the adapter file they share with the PyTorch backend and diffusers.

A :class:`LoRALinear` wraps a frozen ``nn.Linear`` ``W`` as ``W x + (α/r) · B A x`` with ``A`` (r × in) drawn
as peft's ``gaussian`` init does (N(0, 1/r)) and ``B`` (out × r) zero. Targets are matched as peft matches
them (the module's name is the target or ends in ``.<target>``).

The file is what the PyTorch backend writes through diffusers' ``save_lora_weights``: one
``pytorch_lora_weights.safetensors`` with ``unet.<module>.lora.down.weight`` / ``.lora.up.weight`` and
``text_encoder.<module>.lora_linear_layer.down.weight`` / ``.up.weight``, and the LoRA config of each part
(rank, alpha, targets) under the ``lora_adapter_metadata`` key, so stock ``load_lora_weights`` reads it
and so does the PyTorch backend. Reading also takes peft's ``lora_A``/``lora_B`` names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import ConfigError
from .layers import jt, nn

METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
PARTS = ("unet", "text_encoder")
PEFT_KIND_KEY = "stylexfer_peft_kind"  # the metadata key of the PyTorch backend's LoHa/LoKr files
_DOWN_UP = {"unet": ("lora.down", "lora.up"), "text_encoder": ("lora_linear_layer.down", "lora_linear_layer.up")}


class LoRALinear(nn.Module):
    def __init__(self, base, rank: int, alpha: float):
        super().__init__()
        self.base = base
        out_f, in_f = base.weight.shape
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.lora_A = jt.zeros((rank, in_f))
        self.lora_B = jt.zeros((out_f, rank))

    def execute(self, x):
        return self.base(x) + nn.matmul_transpose(nn.matmul_transpose(x, self.lora_A), self.lora_B) * self.scale


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _children(module):
    if isinstance(module, nn.Sequential):
        return list(module.layers.items())
    return [(k, v) for k, v in module.__dict__.items() if isinstance(v, nn.Module) and not k.startswith("_")]


def linear_modules(model, prefix: str = "") -> dict:
    """{dotted name: (parent, attribute, module)} of every ``nn.Linear`` in ``model``, in definition order."""
    out = {}
    for k, child in _children(model):
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(child, nn.Linear):
            out[name] = (model, k, child)
        elif isinstance(child, LoRALinear):
            out[name] = (model, k, child)
        else:
            out.update(linear_modules(child, name))
    return out


def _set(parent, attr: str, module) -> None:
    if isinstance(parent, nn.Sequential):
        parent.layers[attr] = module
    else:
        setattr(parent, attr, module)


def inject(model, targets, rank: int, alpha: Optional[float]) -> dict:
    """Wrap every target linear layer of ``model`` in a :class:`LoRALinear`; {name: layer}, sorted by name."""
    layers = {}
    for name, (parent, attr, module) in linear_modules(model).items():
        if _matches(name, targets) and isinstance(module, nn.Linear):
            layer = LoRALinear(module, rank, float(alpha if alpha else rank))
            _set(parent, attr, layer)
            layers[name] = layer
    if not layers:
        raise ConfigError(f"lora targets {list(targets)}: no linear layer of the model matches")
    return dict(sorted(layers.items()))


def remove(model) -> None:
    """Put every wrapped layer's base layer back."""
    for _name, (parent, attr, module) in linear_modules(model).items():
        if isinstance(module, LoRALinear):
            _set(parent, attr, module.base)


def init_gaussian(layers: dict, rng: np.random.Generator) -> None:
    """peft's ``init_lora_weights="gaussian"``: A ~ N(0, 1/r), B = 0, layer by layer in name order."""
    for layer in layers.values():
        layer.lora_A.update(jt.array(rng.normal(0.0, 1.0 / layer.rank, tuple(layer.lora_A.shape)).astype(np.float32)))
        layer.lora_B.update(jt.zeros(tuple(layer.lora_B.shape)))


def _part_metadata(part: str, layers: dict, targets) -> dict:
    first = next(iter(layers.values()))
    entries = {
        "r": first.rank,
        "lora_alpha": first.alpha,
        "target_modules": list(targets),
        "lora_dropout": 0.0,
        "init_lora_weights": "gaussian",
        "peft_type": "LORA",
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return {f"{part}.{k}": v for k, v in entries.items()}


def save(folder: Path, parts: dict) -> Path:
    """Write the adapter file: ``parts`` = {"unet": (layers, targets), "text_encoder": (layers, targets) or absent}."""
    from safetensors.numpy import save_file

    from .. import ADAPTER_FILE

    tensors, meta = {}, {}
    for part, (layers, targets) in parts.items():
        down, up = _DOWN_UP[part]
        for name, layer in layers.items():
            tensors[f"{part}.{name}.{down}.weight"] = np.ascontiguousarray(layer.lora_A.numpy(), np.float32)
            tensors[f"{part}.{name}.{up}.weight"] = np.ascontiguousarray(layer.lora_B.numpy(), np.float32)
        meta.update(_part_metadata(part, layers, targets))
    file = Path(folder) / ADAPTER_FILE
    save_file(tensors, str(file), metadata={"format": "pt", METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)})
    return file


_KEY = re.compile(
    r"^(unet|text_encoder)\.(.+?)\.(lora\.down|lora\.up|lora_linear_layer\.down|lora_linear_layer\.up|"
    r"lora_A|lora_B)\.weight$"
)


def read(file: Path) -> dict:
    """{part: {module name: (A, B, alpha)}} of a diffusers/peft LoRA file (alpha from its metadata, else the rank)."""
    from safetensors import safe_open

    with safe_open(str(file), "np") as f:
        meta = f.metadata() or {}
        if PEFT_KIND_KEY in meta:
            raise ConfigError(f"{file}: a {meta[PEFT_KIND_KEY]} adapter; the jittor backend reads LoRA adapters only")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    pairs: dict = {}
    for k, v in tensors.items():
        m = _KEY.match(k)
        if m is None:
            raise ConfigError(f"{file}: key {k} is not a LoRA weight the jittor backend reads")
        part, name, which = m.groups()
        if part == "text_encoder" and name.startswith("text_model."):
            name = name[len("text_model.") :]
        slot = 0 if which.endswith(("down", "A")) else 1
        pairs.setdefault(part, {}).setdefault(name, [None, None])[slot] = v.astype(np.float32)
    out = {}
    for part, mods in pairs.items():
        out[part] = {}
        for name, (a, b) in mods.items():
            if a is None or b is None:
                raise ConfigError(f"{file}: {part}.{name} has only one of its two LoRA matrices")
            rank = a.shape[0]
            alpha = config.get(f"{part}.alpha_pattern", {}).get(name) or config.get(f"{part}.lora_alpha", rank)
            out[part][name] = (a, b, float(alpha))
    return out


def fuse(model, weights: dict) -> list:
    """Add each module's ``(α/r) B A`` to its base weight; the original weights, for :func:`unfuse`."""
    mods = linear_modules(model)
    saved = []
    for name, (a, b, alpha) in weights.items():
        if name not in mods:
            raise ConfigError(f"adapter module {name}: not in the model")
        lin = mods[name][2]
        saved.append((lin, lin.weight.numpy().copy()))
        delta = (alpha / a.shape[0]) * (b.astype(np.float64) @ a.astype(np.float64))
        lin.weight.update(jt.array((saved[-1][1] + delta).astype(np.float32)))
    return saved


def unfuse(saved: list) -> None:
    for lin, w in saved:
        lin.weight.update(jt.array(w))


def attach(model, weights: dict) -> dict:
    """Wrap the adapter's modules in :class:`LoRALinear` layers holding its weights (unfused sampling)."""
    mods = linear_modules(model)
    layers = {}
    for name, (a, b, alpha) in weights.items():
        parent, attr, lin = mods[name]
        layer = LoRALinear(lin, a.shape[0], alpha)
        layer.lora_A.update(jt.array(a))
        layer.lora_B.update(jt.array(b))
        _set(parent, attr, layer)
        layers[name] = layer
    return layers
