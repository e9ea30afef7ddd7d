"""Style injection (StyleID, Chung et al., CVPR 2024) as the sampling stage sees it: which layers of a model
can be injected, which reference image each generated image takes, and what of it goes into the samples'
store key. No framework code: the arithmetic is the backend's (:mod:`stylexfer.backends.torch.inject`).

StyleID keeps the generated image's queries in the decoder's self-attention and takes keys and values from
the style image at the same timestep, found by DDIM inversion of that image. Its layers 6-11 are SD's
``up_blocks.2`` and ``up_blocks.3``: the decoder's two highest-resolution levels, the default here for any
UNet (the pocket model's are ``up_blocks.1`` and ``up_blocks.2``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .config import InjectMode, InjectReference, value
from .errors import ConfigError


def _per_block(v, n: int) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


def self_attention_layers(unet_config: dict) -> list[list[str]]:
    """The decoder's self-attention modules (diffusers paths), one list per up block, lowest resolution first."""
    ups = unet_config["up_block_types"]
    layers = [x + 1 for x in reversed(_per_block(unet_config.get("layers_per_block", 2), len(ups)))]
    depth = unet_config.get("reverse_transformer_layers_per_block") or list(
        reversed(_per_block(unet_config.get("transformer_layers_per_block", 1), len(ups)))
    )
    out = []
    for b, kind in enumerate(ups):
        names = []
        if "CrossAttn" in kind:
            for a in range(layers[b]):
                d = depth[b][a] if isinstance(depth[b], (list, tuple)) else depth[b]
                names += [f"up_blocks.{b}.attentions.{a}.transformer_blocks.{t}.attn1" for t in range(d)]
        out.append(names)
    return out


def default_layers(unet_config: dict) -> list[str]:
    """The two highest-resolution decoder levels that have attention."""
    levels = [names for names in self_attention_layers(unet_config) if names]
    return [n for names in levels[-2:] for n in names]


def unet_config_of(model_folder: Path) -> dict:
    return json.loads((Path(model_folder) / "unet" / "config.json").read_text())


def chosen_layers(layers: Sequence[str], unet_config: dict) -> list[str]:
    """``inject.layers`` (every name checked against the model), or the default when empty; one line naming
    the key."""
    valid = [n for names in self_attention_layers(unet_config) for n in names]
    if not layers:
        return default_layers(unet_config)
    bad = [n for n in layers if n not in valid]
    if bad:
        raise ConfigError(
            f"inject.layers={list(layers)}: not decoder self-attention layers of this model: {bad}; "
            f"valid: {', '.join(valid)}"
        )
    return list(layers)


def on(inj) -> bool:
    return InjectMode(value(inj.mode)) != InjectMode.none


def check(inj, model_folder: Path, image_counts: dict[str, int]) -> None:
    """Everything about ``inject`` that needs the model (its folder) and the data, before any stage runs."""
    if not on(inj):
        return
    chosen_layers(inj.layers, unet_config_of(model_folder))
    if inj.reference_images is not None:
        short = {sid: n for sid, n in image_counts.items() if n < inj.reference_images}
        if short:
            raise ConfigError(
                f"inject.reference_images={inj.reference_images}: more than these styles have: "
                + ", ".join(f"{sid} ({n} images)" for sid, n in short.items())
            )


def reference_count(inj, n_images: int) -> int:
    """How many reference images a style's bank holds."""
    if InjectReference(value(inj.reference)) == InjectReference.average:
        return 1
    return n_images if inj.reference_images is None else min(n_images, inj.reference_images)


def job_references(inj, n_jobs: int, n_refs: int) -> list[int]:
    """The reference each generated image takes (its index in the bank; ``all``: every one, so 0)."""
    if InjectReference(value(inj.reference)) == InjectReference.cycle:
        return [j % n_refs for j in range(n_jobs)]
    return [0] * n_jobs


def spec(inj) -> Optional[dict]:
    """What of ``inject`` determines the images (None when off, so the samples' store keys stay as they were).
    ``layers`` as configured: empty means the model's default (the model's identity is in the key too)."""
    if not on(inj):
        return None
    return {
        "mode": value(inj.mode),
        "gamma": float(inj.gamma),
        "temperature": float(inj.temperature),
        "layers": list(inj.layers),
        "share": float(inj.share),
        "adain_init": bool(inj.adain_init),
        "reference": value(inj.reference),
        "reference_images": inj.reference_images,
    }


def bank_spec(sample_inject: dict, reference_fingerprints: Sequence[str], common: dict) -> dict:
    """The store key's content of a style's bank of keys and values: the model, adapter and sampling schedule
    (``common``), the reference images and the layers; not gamma, T, the share or AdaIN (a sweep over those
    inverts once)."""
    return {
        "version": 1,
        "references": list(reference_fingerprints),
        "layers": sample_inject["layers"],
        "concat": sample_inject["reference"] == InjectReference.all.value,
        **common,
    }
