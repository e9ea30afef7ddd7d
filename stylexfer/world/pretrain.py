"""Pretraining the pocket base model: an SD-shaped model (diffusers ``AutoencoderKL``, ``UNet2DConditionModel``,
``CLIPTextModel`` + a character-level CLIP tokenizer, SD's noise schedule) trained from scratch on the pocket
world's *base* styles, so that it draws every object but knows none of the held-out styles.

    python -m stylexfer.world pretrain --out DIR [--device cuda] [--unet-steps N] ...

1. renders a fixed set of base-style pictures with their prompts (``an image of {object}`` or
   ``an image of {object}, {style words}``; worker processes, deterministic per chunk);
2. fits the VAE (reconstruction + a small KL) on them, on generic shapes and on pictures of every style (the
   VAE is a codec, as SD's is: it must reconstruct the held-out styles; the UNet and text encoder never see
   them), and sets its latent scale;
3. encodes every picture once and trains the UNet and the text encoder together on the latents
   (epsilon prediction, 10% empty prompts for classifier-free guidance, AdamW, cosine schedule, EMA);
4. saves the diffusers folder (safetensors, float16 weights) with ``pocket.json`` beside it: the spec, the
   data's hash, both loss curves, the seconds, and each weight file's sha256; ``loss.png``; and ``samples.png``,
   a grid of every object drawn from the saved folder.

The folder loads through the same ``from_pretrained`` path as SD 2.1 (``model.path=DIR``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPEC = {
    "resolution": 64,
    "unet": {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [64, 128, 128],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 128,
        "attention_head_dim": [4, 8, 8],
        "norm_num_groups": 16,
        "use_linear_projection": True,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "sample_size": 64,
        "act_fn": "silu",
    },
    "text_encoder": {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 128,
        "hidden_act": "gelu",
    },
    "scheduler": {
        "_class_name": "DDIMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "steps_offset": 1,
    },
}


@dataclass
class PretrainConfig:
    images: int = 40_000  # base-style renders (poses, objects, styles drawn at random)
    vae_steps: int = 5000
    # the VAE is a codec, as SD's is (trained on broad data): it also sees this many pictures of *every* style,
    # held-out ones included, so that it can reconstruct them; the UNet and the text encoder never see those
    vae_every_style_images: int = 12_000
    vae_batch: int = 64
    vae_lr: float = 1e-3
    unet_steps: int = 8000
    unet_batch: int = 256
    unet_lr: float = 4e-4
    uncond: float = 0.1  # share of empty prompts (classifier-free guidance)
    ema: float = 0.999
    seed: int = 0
    workers: int = 8
    max_minutes: float = 0.0  # stop the UNet's training at this wall-clock budget (0 = none); the record says where


def _render_chunk(args) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    from .dataset import pretraining_example

    seed, start, n, size, every_style = args
    rng = np.random.default_rng([seed, start] if not every_style else [seed, start, 1])
    imgs, prompts, objs, styles = [], [], [], []
    for _ in range(n):
        img, prompt, obj, st = pretraining_example(rng, size, every_style=every_style)
        imgs.append(np.asarray(img, np.uint8))
        prompts.append(prompt)
        objs.append(obj)
        styles.append(st)
    return np.stack(imgs), prompts, objs, styles


def render_set(n: int, seed: int, size: int, workers: int, every_style: bool = False) -> tuple[np.ndarray, list[str]]:
    """n base-style pictures (of any style with ``every_style``; uint8, N×H×W×3) and their prompts, the same
    for any number of workers."""
    chunk = 500
    jobs = [(seed, s, min(chunk, n - s), size, every_style) for s in range(0, n, chunk)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            parts = list(ex.map(_render_chunk, jobs))
    else:
        parts = [_render_chunk(j) for j in jobs]
    return np.concatenate([p[0] for p in parts]), [q for p in parts for q in p[1]]


def pixels_to_tensor(arr: np.ndarray, device):
    """uint8 pictures (N×H×W×3) as a float tensor in [-1, 1] (N×3×H×W) on ``device``."""
    import torch

    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def prompt_ids(tokenizer, prompts: list[str], device):
    """The prompts' token ids (padded to the tokenizer's length) and the empty prompt's, on ``device``."""
    ids = tokenizer(
        list(prompts) + [""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return ids[:-1], ids[-1:]


def train_vae(
    vae, images: np.ndarray, cfg: PretrainConfig, device, every_style: np.ndarray | None = None
) -> tuple[list[float], float]:
    import torch

    from ..embedded import random_shapes_image

    g = np.random.default_rng([cfg.seed, 1])
    generic = np.stack(
        [np.asarray(random_shapes_image(g, images.shape[1]), np.uint8) for _ in range(max(64, len(images) // 10))]
    )
    data = np.concatenate([images, generic] + ([every_style] if every_style is not None and len(every_style) else []))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.vae_steps)
    vae.train()
    losses = []
    for _step in range(cfg.vae_steps):
        x = pixels_to_tensor(data[g.integers(0, len(data), cfg.vae_batch)], device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    losses = [float(x) for x in torch.stack(losses).cpu()]  # one transfer, not a sync per step
    vae.eval()
    with torch.no_grad():
        std = vae.encode(pixels_to_tensor(images[:256], device)).latent_dist.mode().std().item()
    return losses, 1.0 / std


def reconstruction_check(vae, size: int, seed: int, device, per_style: int = 32) -> dict:
    """The VAE's reconstruction MSE (pixels in [-1, 1]) on fresh pictures of base and of held-out styles."""
    import torch

    from .scene import OBJECTS, Pose
    from .styles import STYLES, render

    names = sorted(OBJECTS)
    rng = np.random.default_rng([seed, 99])
    err = {"base": [], "held_out": []}
    with torch.no_grad():
        for st in STYLES.values():
            imgs = np.stack(
                [
                    np.asarray(
                        render(names[i % len(names)], st, Pose.random(rng), size, int(rng.integers(2**31))), np.uint8
                    )
                    for i in range(per_style)
                ]
            )
            x = pixels_to_tensor(imgs, device)
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            err["held_out" if st.held_out else "base"].append(float(((rec - x) ** 2).mean()))
    return {k: round(float(np.mean(v)), 5) for k, v in err.items()}


def train_unet(
    unet,
    text_encoder,
    tokenizer,
    vae,
    images: np.ndarray,
    prompts: list[str],
    cfg: PretrainConfig,
    device,
    scheduler_config: dict,
) -> list[float]:
    import copy

    import torch
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(scheduler_config)
    scale = vae.config.scaling_factor
    with torch.no_grad():  # every picture encoded once (posterior mean and std kept)
        means, stds = [], []
        for i in range(0, len(images), 256):
            d = vae.encode(pixels_to_tensor(images[i : i + 256], device)).latent_dist
            means.append(d.mean)
            stds.append(d.std)
        mean, std = torch.cat(means), torch.cat(stds)
        ids, empty = prompt_ids(tokenizer, prompts, device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    total = [cfg.unet_steps]  # shortened once the first steps' speed shows max_minutes cannot fit them all
    warm = max(1, cfg.unet_steps // 20)

    def factor(step: int) -> float:  # linear warm-up, then cosine to zero at the (possibly shortened) last step
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total[0] - warm))))

    lr = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    ema = copy.deepcopy(unet).requires_grad_(False)
    ema_te = copy.deepcopy(text_encoder).requires_grad_(False)
    unet.train()
    text_encoder.train()
    g = torch.Generator(device).manual_seed(cfg.seed)
    losses = []
    t0 = time.time()
    ema_params = list(ema.parameters()) + list(ema_te.parameters())
    for step in range(cfg.unet_steps):
        if step >= total[0] or (cfg.max_minutes and time.time() - t0 > 66 * cfg.max_minutes):  # 10% past: a hard stop
            log.warning("unet: stopped at step %d of %d (max_minutes=%s)", step, cfg.unet_steps, cfg.max_minutes)
            break
        if cfg.max_minutes and step == 200:  # the speed is known: fit the schedule into the budget
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_step = (time.time() - t0) / step
            total[0] = min(cfg.unet_steps, max(warm + 1, int(60 * cfg.max_minutes / per_step)))
            log.info("unet: %.1f ms/step; %d steps fit max_minutes=%s", 1000 * per_step, total[0], cfg.max_minutes)
        idx = torch.randint(0, len(mean), (cfg.unet_batch,), device=device, generator=g)
        lat = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, device=device, generator=g)) * scale
        flip = (
            torch.rand(len(idx), device=device, generator=g) < 0.5
        )  # mirrored pictures are pictures of the same things
        lat = torch.where(flip[:, None, None, None], lat.flip(3), lat)
        tok = ids[idx]
        drop = torch.rand(len(idx), device=device, generator=g) < cfg.uncond
        tok = torch.where(drop[:, None], empty.expand_as(tok), tok)
        noise = torch.randn(lat.shape, device=device, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), device=device, generator=g)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            cond = text_encoder(tok)[0]
            pred = unet(sched.add_noise(lat, noise, t), t, cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - cfg.ema)
        losses.append(loss.detach())
        if step % 1000 == 0:
            log.info("unet step %d: loss %.4f", step, float(torch.stack(losses[-200:]).mean()))
    losses = [float(x) for x in torch.stack(losses).float().cpu()]
    unet.load_state_dict(ema.state_dict())
    text_encoder.load_state_dict(ema_te.state_dict())
    unet.eval()
    text_encoder.eval()
    return losses


def pretrain(out: Path, cfg: PretrainConfig, device: str = "cpu") -> dict:
    """Everything above; returns the record written to ``out/pocket.json``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..embedded import build_tokenizer
    from ..store import FOLDER_MANIFEST, atomic_write_json, file_digest, seal, stable_hash

    t0 = time.time()
    dev = torch.device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = SPEC["resolution"]
    images, prompts = render_set(cfg.images, cfg.seed, res, cfg.workers)
    data_hash = hashlib.sha256(images.tobytes() + "\n".join(prompts).encode()).hexdigest()
    t_render = time.time() - t0
    log.info("rendered %d base-style pictures in %.0fs (data sha256 %s)", len(images), t_render, data_hash[:12])
    torch.manual_seed(cfg.seed)
    tok_dir = out / ".tok"
    tokenizer = build_tokenizer(tok_dir)
    tok_dir.rmdir()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **SPEC["text_encoder"],
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).to(dev)
    unet = UNet2DConditionModel(**SPEC["unet"]).to(dev)
    vae = AutoencoderKL(**SPEC["vae"]).to(dev)
    codec_images = (
        render_set(cfg.vae_every_style_images, cfg.seed, res, cfg.workers, every_style=True)[0]
        if cfg.vae_every_style_images
        else None
    )
    vae_losses, scaling = train_vae(vae, images, cfg, dev, codec_images)
    vae.register_to_config(scaling_factor=round(scaling, 5))
    vae_check = reconstruction_check(vae, res, cfg.seed, dev)
    log.info("VAE reconstruction MSE on fresh pictures: %s", vae_check)
    t_vae = time.time() - t0 - t_render
    log.info(
        "VAE: %d steps in %.0fs, loss %.4f, latent scale %.3f",
        cfg.vae_steps,
        t_vae,
        np.mean(vae_losses[-50:]),
        scaling,
    )
    vae.requires_grad_(False)
    unet_losses = train_unet(unet, text_encoder, tokenizer, vae, images, prompts, cfg, dev, SPEC["scheduler"])
    t_unet = time.time() - t0 - t_render - t_vae
    pipe = StableDiffusionPipeline(
        vae=vae.half(),
        text_encoder=text_encoder.half(),
        tokenizer=tokenizer,
        unet=unet.half(),
        scheduler=DDIMScheduler.from_config(SPEC["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    weights = {str(p.relative_to(out)): file_digest(p, 64) for p in sorted(out.rglob("*.safetensors"))}
    record = {
        "spec": SPEC,
        "config": asdict(cfg),
        "device": str(dev),
        "data_sha256": data_hash,
        "vae_reconstruction_mse": vae_check,
        "spec_hash": stable_hash(SPEC),
        "seconds": {"render": round(t_render, 1), "vae": round(t_vae, 1), "unet": round(t_unet, 1)},
        "vae_losses": [round(x, 5) for x in vae_losses[:: max(1, len(vae_losses) // 300)]],
        "unet_losses": [round(x, 5) for x in unet_losses[:: max(1, len(unet_losses) // 300)]],
        "unet_steps_done": len(unet_losses),
        "weights_sha256": weights,
        "random_weights": False,
        "sizes_mib": {k: round((out / k).stat().st_size / 2**20, 2) for k in weights},
    }
    atomic_write_json(out / "pocket.json", record)
    seal(out, FOLDER_MANIFEST)  # every file of the model (configs, tokenizer too), checked where it is loaded
    (out / "loss.png").write_bytes(loss_plot(record))
    sample_grid(out, device).save(out / "samples.png")
    return record


def loss_plot(record: dict) -> bytes:
    """PNG: the VAE's and the UNet's training loss from a ``pocket.json`` record (as recorded: every k-th step)."""
    from ..report import axes_png, new_axes

    fig, ax = new_axes(7, 3.6)
    cfg = record["config"]
    for key, steps, label in (
        ("vae_losses", cfg["vae_steps"], "VAE (reconstruction + KL)"),
        ("unet_losses", record["unet_steps_done"], "UNet + text encoder (epsilon MSE)"),
    ):
        ys = record[key]
        ax.plot([i * steps / len(ys) for i in range(len(ys))], ys, label=label)
    ax.set_yscale("log")
    return axes_png(
        fig, ax, "step", "loss", f"pocket model pretraining ({record['device']}, data {record['data_sha256'][:12]})"
    )


def sample_grid(folder: Path, device: str = "cpu", steps: int = 30, seed: int = 0):
    """Every object (columns) from the saved folder: a plain prompt and two named base styles (rows)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from .scene import OBJECTS

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    names = sorted(OBJECTS)
    rows = []
    for suffix in ("", ", flat colors", ", pencil sketch"):
        prompts = [f"an image of {o}{suffix}" for o in names]
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(names))]
        imgs = pipe(
            prompts,
            num_inference_steps=steps,
            guidance_scale=5.0,
            generator=gens,
            height=SPEC["resolution"],
            width=SPEC["resolution"],
        ).images
        rows.append(np.concatenate([np.asarray(i) for i in imgs], 1))
    return Image.fromarray(np.concatenate(rows, 0))
