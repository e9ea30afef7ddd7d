"""What a base model draws, as the pocket judge sees it: ``python -m stylexfer.world check [--model DIR]``.

Samples ``an image of {object}`` for every object of the world (text-to-image, DDIM, classifier-free
guidance) from a diffusers folder — the shipped pocket model by default — and reports the judge's object
accuracy on them, per object and overall, with the judge's style attributions (a base model should draw
base styles only: none of its samples should be attributed to a held-out style).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np


def base_model_check(
    folder: Optional[Path] = None,
    per_object: int = 4,
    steps: int = 30,
    guidance: float = 5.0,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[dict, list]:
    """({"object_accuracy", "per_object", "held_out_attribution", ...}, images) for the model in ``folder``."""
    import torch
    from diffusers import StableDiffusionPipeline

    from ..embedded import pocket_model_dir
    from .judge import STYLE_NAMES
    from .metrics import WorldJudge
    from .styles import STYLES

    folder = Path(folder) if folder else pocket_model_dir()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    judge = WorldJudge(device)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    objects = list(judge.objects)
    prompts = [f"an image of {o}" for o in objects for _ in range(per_object)]
    wanted = [o for o in objects for _ in range(per_object)]
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
    images = []
    for i in range(0, len(prompts), 16):
        images += pipe(
            prompts[i : i + 16],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens[i : i + 16],
            height=size,
            width=size,
        ).images
    out = judge(images)
    got = [objects[k] for k in out["object"].argmax(-1).tolist()]
    styles = [STYLE_NAMES[k] for k in out["style"].argmax(-1).tolist()]
    per = {o: float(np.mean([g == o for g, w in zip(got, wanted) if w == o])) for o in objects}
    held_out = [s for s in styles if STYLES[s].held_out]
    return {
        "model": str(folder),
        "samples": len(images),
        "per_object": per_object,
        "steps": steps,
        "guidance_scale": guidance,
        "seed": seed,
        "judge": judge.label,
        "object_accuracy": float(np.mean([g == w for g, w in zip(got, wanted)])),
        "per_object_accuracy": per,
        "held_out_attribution": len(held_out) / len(images),
        "styles_attributed": dict(Counter(styles)),
    }, images


def check_grid(images: list, per_object: int):
    """The samples as one picture: a column per object, a row per sample."""
    from PIL import Image

    cols = [
        np.concatenate([np.asarray(im) for im in images[i : i + per_object]], 0)
        for i in range(0, len(images), per_object)
    ]
    return Image.fromarray(np.concatenate(cols, 1))


def vae_ceiling(root: Optional[Path] = None, folder: Optional[Path] = None, device: str = "cpu") -> dict:
    """The attribution no sampler can beat: the judge's attribution of each style's own images, as they are and
    after a round trip through the model's VAE (encode, decode), against the images as they are; per style and
    per object. A style that fails after the round trip is lost in the codec, not in training or sampling.

    ``root``: a data folder in the competition layout (default: the embedded demo's styles); ``folder``: a
    diffusers model folder (default: the shipped pocket model)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    from ..data import discover_styles, fit_square
    from ..embedded import DEMO_IDS, pocket_model_dir
    from .dataset import write_demo
    from .metrics import WorldJudge, attribution_per_object, style_attribution
    from .pretrain import pixels_to_tensor

    folder = Path(folder) if folder else pocket_model_dir()
    vae = AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=True).to(device).eval()
    judge = WorldJudge(device)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    size = unet["sample_size"] * 2 ** (len(vae.config.block_out_channels) - 1)
    data = str(root) if root is not None else "the embedded demo's styles"
    with tempfile.TemporaryDirectory() as tmp:
        if root is None:
            root = Path(tmp) / "demo"
            write_demo(root, DEMO_IDS)
        styles = discover_styles(Path(root), None)
        out = {}
        for s in styles:
            shown = [fit_square(i, size) for i in s.images]
            x = pixels_to_tensor(np.stack([np.asarray(i, np.uint8) for i in shown]), device)
            with torch.no_grad():
                y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            arr = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            trip = [Image.fromarray(a) for a in arr]
            out[s.id] = {
                "raw": style_attribution(judge, shown, shown),
                "vae": style_attribution(judge, trip, shown),
                "vae_per_object": attribution_per_object(judge, trip, shown, objects=s.image_objects),
            }
    return {
        "model": str(folder),
        "data": data,
        "judge": judge.label,
        "styles": out,
        "mean": {k: float(np.mean([v[k] for v in out.values()])) for k in ("raw", "vae")},
    }
