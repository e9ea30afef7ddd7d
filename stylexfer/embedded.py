"""The embedded models and the demo data set, all usable with no network.

- **The pocket model** (``model=pocket``, the default): an SD-shaped model pretrained on the pocket world's
  base styles (``stylexfer.world``), shipped in the package as a diffusers folder (safetensors), its
  files' sha256 (every file: weights, configs, tokenizer) checked against ``sha256.json`` every time it is used.
- **The tiny model** (``model=tiny``): built on first use under ``paths.cache_dir``. Its UNet and text
  encoder have **random weights** (the VAE is fitted for a few hundred steps on procedural shapes so that
  decoded images keep their colours): it exists to test the machinery quickly; its images mean nothing.
- **The demo data**: three of the pocket world's held-out styles (``00`` dots, ``01`` mosaic, ``02``
  neon), 10 images each in the competition layout, written on first use under ``paths.cache_dir``.

All load exactly like real ones: the models through the same ``from_pretrained`` calls as SD 2.1, the
data through the same competition-layout reader. Point ``model=sd21`` at real weights for real images.
"""

from __future__ import annotations

import json
import logging
import math
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import registry
from .store import FOLDER_MANIFEST, atomic_write_json, atomic_write_text, build_once, damage, stable_hash

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTICE = (
    "the embedded tiny model has RANDOM weights: it shows the machinery, its images mean nothing; "
    "run with model=sd21 (optionally model.path=/path/to/diffusers/folder) for real images"
)
POCKET_NOTICE = (
    "the pocket model draws the pocket world's procedural objects (stylexfer.world), not photographs: its "
    "scores (eval.suite=world, the pocket judge) do not compare with the reference report's"
)
MODEL_VERSION = 1
DEMO_VERSION = 2
DEMO_IDS = ("00", "01", "02")  # the demo's styles as the competition names them: the pocket world's dots, mosaic, neon


TINY_SD_DIR = Path(str(resources.files("stylexfer").joinpath("assets", "tiny_sd")))
_checked: set[str] = set()  # shipped folders already checked by this process


def check_shipped(folder: Path, what: str, extra_ok: bool = False) -> Path:
    """``folder`` after checking every file of it against its ``sha256.json`` (configs and tokenizer files
    too, not only weights); one ModelNotFoundError line naming the damaged file otherwise."""
    from .errors import ModelNotFoundError

    folder = Path(folder)
    if str(folder) not in _checked:
        why = damage(folder, FOLDER_MANIFEST, extra_ok=extra_ok)
        if why:
            raise ModelNotFoundError(f"{what}: {folder}/{why} (a damaged install? reinstall stylexfer)")
        _checked.add(str(folder))
    return folder


def _asset(name: str) -> dict:
    text = (check_shipped(TINY_SD_DIR, "model=tiny") / name).read_text()
    cfg = json.loads(text)
    return {k: v for k, v in cfg.items() if not k.startswith("_about")}


def tiny_model_spec() -> dict:
    return {n: _asset(f"{n}.json") for n in ("unet", "vae", "text_encoder", "scheduler", "build")}


# ------------------------------------------------------------------------------------------ tokenizer


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte → printable-unicode table (same construction as the CLIP tokenizer)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer (no merges): 256 byte symbols, their end-of-word forms, BOS, EOS."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    src = folder / "_src"
    src.mkdir(parents=True)
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(
        str(src / "vocab.json"), str(src / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77
    )
    for p in src.iterdir():
        p.unlink()
    src.rmdir()
    return tok


# ------------------------------------------------------------------------------------- procedural art


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng(int(stable_hash(parts, 8), 16))


def _shape(draw: ImageDraw.ImageDraw, kind: int, box: tuple, fill, outline=None, width: int = 1) -> None:
    x0, y0, x1, y1 = box
    if kind == 0:
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif kind == 1:
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    elif kind == 2:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline)
    else:
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        pts = [
            (
                cx + (r if i % 2 == 0 else r / 2.2) * math.cos(math.pi * i / 5 - math.pi / 2),
                cy + (r if i % 2 == 0 else r / 2.2) * math.sin(math.pi * i / 5 - math.pi / 2),
            )
            for i in range(10)
        ]
        draw.polygon(pts, fill=fill, outline=outline)


def random_shapes_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Generic training picture for the tiny VAE: a gradient with random coloured shapes."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    grad = (c0 * (1 - t) + c1 * t).repeat(size, axis=1)
    img = Image.fromarray(grad.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        _shape(
            draw,
            int(rng.integers(0, 4)),
            (int(x0), int(y0), int(x0 + w), int(y0 + h)),
            tuple(int(v) for v in rng.integers(0, 256, 3)),
        )
    return img


def ensure_demo_data(cache_dir: str | Path) -> Path:
    """The embedded demo's styles, written once into the store by the demo data source (:mod:`stylexfer.registry`)."""
    write_demo = registry.load(registry.DEMO_DATA)
    path, built = build_once(
        Path(cache_dir) / "data" / f"demo-v{DEMO_VERSION}", lambda folder: write_demo(folder, DEMO_IDS)
    )
    if built:
        log.info("built the embedded demo data set at %s", path)
    return path


# ---------------------------------------------------------------------------------------- tiny model


def _fit_vae(vae, spec: dict, resolution: int, seed: int) -> float:
    """A short reconstruction fit (MSE + tiny KL) on procedural shapes; returns the latent scaling factor."""
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=spec["vae_fit_lr"])
    vae.train()
    for _step in range(spec["vae_fit_steps"]):
        batch = torch.stack(
            [
                torch.from_numpy(
                    np.asarray(random_shapes_image(rng, resolution), dtype=np.float32) / 127.5 - 1
                ).permute(2, 0, 1)
                for _ in range(spec["vae_fit_batch"])
            ]
        )
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(recon, batch) + spec["vae_kl_weight"] * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():
        batch = torch.stack(
            [
                torch.from_numpy(
                    np.asarray(random_shapes_image(rng, resolution), dtype=np.float32) / 127.5 - 1
                ).permute(2, 0, 1)
                for _ in range(64)
            ]
        )
        std = vae.encode(batch).latent_dist.mode().std().item()
    log.info("tiny VAE fitted: reconstruction MSE %.4f, latent std %.3f", loss.item(), std)
    return 1.0 / std


def _build_tiny_model(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = tiny_model_spec()
    seed = spec["build"]["seed"]
    tokenizer = build_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **spec["text_encoder"],
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**spec["unet"])
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**spec["vae"])
    scaling = _fit_vae(vae, spec["build"], spec["build"]["vae_fit_resolution"], seed + 3)
    vae.register_to_config(scaling_factor=round(scaling, 5))
    scheduler = DDIMScheduler.from_config(spec["scheduler"])
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    atomic_write_text(
        folder / "README.md",
        (
            "# stylexfer embedded tiny model\n\n" + RANDOM_WEIGHTS_NOTICE + ".\n\n"
            "Built by `stylexfer.embedded` from the configs in `stylexfer/assets/tiny_sd/` and saved in the "
            "diffusers folder layout (safetensors), so it loads through the same `from_pretrained` path as "
            "Stable Diffusion 2.1. The VAE was fitted briefly on procedural shapes so decoded colours survive.\n"
        ),
    )
    atomic_write_json(
        folder / "stylexfer_model.json", {"random_weights": True, "notice": RANDOM_WEIGHTS_NOTICE, "spec": spec}
    )


def tiny_model_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "models" / f"tiny-sd-v{MODEL_VERSION}-{stable_hash(tiny_model_spec(), 10)}"


def ensure_tiny_model(cache_dir: str | Path) -> Path:
    target = tiny_model_dir(cache_dir)
    if not target.is_dir():
        log.info("building the embedded tiny model (random weights, one-time, ~1 min on 2 CPUs) at %s", target)
    path, built = build_once(target, _build_tiny_model)
    return path


# -------------------------------------------------------------------------------------- pocket model

POCKET_DIR = Path(str(resources.files("stylexfer").joinpath("assets", "pocket")))


def pocket_model_dir(folder: Path = POCKET_DIR) -> Path:
    """The pocket model's diffusers folder (the shipped one by default), after checking every file of it
    (weights, configs, tokenizer) against its ``sha256.json`` (written by ``python -m stylexfer.world
    pretrain``; the previews beside it are not part of the model)."""
    return check_shipped(folder, "model=pocket", extra_ok=True)
