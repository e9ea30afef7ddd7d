"""Training the pocket ControlNet: ``diffusers.ControlNetModel.from_unet`` of the shipped pocket UNet,
conditioned on Canny edge maps, trained on *base*-style renders only (the held-out styles stay unseen).

    python -m stylexfer.world controlnet --out DIR [--device cuda] [--steps N] ...

1. renders base-style pictures with their prompts (:func:`stylexfer.world.pretrain.render_set`) and their edge
   maps (:func:`stylexfer.control.canny`, the thresholds sampling uses);
2. encodes every picture once with the pocket VAE; the UNet, VAE and text encoder stay frozen;
3. trains the ControlNet on the UNet's epsilon loss (half of the prompts empty, as the ControlNet paper does,
   so that structure is learned from the edges and not the words), AdamW, constant rate after a warm-up;
4. saves the diffusers folder (safetensors, float16) with ``controlnet.json`` beside it (config, the data's
   hash, the loss curve, the seconds, each file's sha256), ``loss.png``, and ``samples.png``: per object its
   edges, the base model without control and with it (same seed), with each row's edge agreement.

The pocket VAE downsamples by 4, not SD's 8, so the conditioning embedding has two stride-2 stages
(``conditioning_embedding_out_channels=(16, 32, 64)``): a 64-px edge map meets the 16 × 16 latent.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EMBEDDING_CHANNELS = (16, 32, 64)  # two stride-2 stages: the pocket VAE's factor of 4


@dataclass
class ControlNetTrainConfig:
    images: int = 20_000  # base-style renders
    steps: int = 4000
    batch: int = 256
    lr: float = 2e-4
    warmup: int = 100
    uncond: float = 0.5  # share of empty prompts
    low_threshold: int = 100
    high_threshold: int = 200
    seed: int = 1  # not the base model's render seed (0): other pictures than it was pretrained on
    workers: int = 8


def edge_maps(images: np.ndarray, low: int, high: int) -> np.ndarray:
    """Canny edges of uint8 pictures (N×H×W×3) as uint8 N×H×W×3 white-on-black maps."""
    from PIL import Image

    from ..control import canny

    return np.stack([np.asarray(canny(Image.fromarray(a), low, high)) for a in images])


def train_controlnet(model_dir: Path, out: Path, cfg: ControlNetTrainConfig, device: str = "cuda") -> dict:
    """Everything above; returns the record written to ``out/controlnet.json``."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..store import FOLDER_MANIFEST, atomic_write_json, file_digest, seal
    from .pretrain import pixels_to_tensor, prompt_ids, render_set

    t0 = time.time()
    dev = torch.device(device)
    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", use_safetensors=True).to(dev).float()
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", use_safetensors=True).to(dev).float()
    te = CLIPTextModel.from_pretrained(model_dir / "text_encoder", use_safetensors=True).to(dev).float()
    tok = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    for m in (unet, vae, te):
        m.requires_grad_(False).eval()
    sched = DDPMScheduler.from_pretrained(model_dir / "scheduler")
    res = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    images, prompts = render_set(cfg.images, cfg.seed, res, cfg.workers)
    edges = edge_maps(images, cfg.low_threshold, cfg.high_threshold)
    data_hash = hashlib.sha256(images.tobytes() + "\n".join(prompts).encode()).hexdigest()
    t_render = time.time() - t0
    log.info(
        "rendered %d base-style pictures and their edges in %.0fs (data %s)", len(images), t_render, data_hash[:12]
    )

    torch.manual_seed(cfg.seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING_CHANNELS).to(dev).float()
    with torch.no_grad():
        lat = (
            torch.cat(
                [
                    vae.encode(pixels_to_tensor(images[i : i + 512], dev)).latent_dist.mode()
                    for i in range(0, len(images), 512)
                ]
            )
            * vae.config.scaling_factor
        )
        ids = torch.cat(prompt_ids(tok, prompts, dev))  # the empty prompt last, encoded with the rest
        emb = torch.cat([te(ids[i : i + 1024])[0] for i in range(0, len(ids), 1024)])
    empty, emb = emb[-1:], emb[:-1]
    cond_all = torch.from_numpy(edges).to(dev).permute(0, 3, 1, 2).float() / 255.0  # ControlNet input in [0, 1]
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-2)
    lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    g = torch.Generator(dev).manual_seed(cfg.seed)
    net.train()
    losses = []
    for step in range(cfg.steps):
        idx = torch.randint(0, len(lat), (cfg.batch,), device=dev, generator=g)
        x0, cond = lat[idx], cond_all[idx]
        flip = torch.rand(len(idx), device=dev, generator=g) < 0.5  # a mirrored picture has mirrored edges
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        cond = torch.where(flip[:, None, None, None], cond.flip(3), cond)
        text = torch.where(
            (torch.rand(len(idx), device=dev, generator=g) < cfg.uncond)[:, None, None], empty, emb[idx]
        )
        noise = torch.randn(x0.shape, device=dev, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), device=dev, generator=g)
        zt = sched.add_noise(x0, noise, t)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            down, mid = net(zt, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            pred = unet(zt, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        lr.step()
        losses.append(loss.detach())
        if step % 500 == 0:
            log.info("controlnet step %d: loss %.4f", step, float(torch.stack(losses[-100:]).mean()))
    losses = [float(x) for x in torch.stack(losses).cpu()]
    t_train = time.time() - t0 - t_render
    net.eval().half().save_pretrained(out, safe_serialization=True)
    weights = {p.name: file_digest(p, 64) for p in sorted(out.glob("*.safetensors"))}
    record = {
        "base_model": str(model_dir),
        "config": asdict(cfg),
        "conditioning_embedding_out_channels": list(EMBEDDING_CHANNELS),
        "device": str(dev),
        "data_sha256": data_hash,
        "seconds": {"render": round(t_render, 1), "train": round(t_train, 1)},
        "losses": [round(x, 5) for x in losses[:: max(1, len(losses) // 300)]],
        "final_loss": round(float(np.mean(losses[-100:])), 5),
        "weights_sha256": weights,
        "random_weights": False,
        "size_mib": {k: round((out / k).stat().st_size / 2**20, 2) for k in weights},
    }
    check, grid = sample_check(model_dir, out, device, cfg)
    record["check"] = check
    atomic_write_json(out / "controlnet.json", record)
    seal(out, FOLDER_MANIFEST)
    (out / "loss.png").write_bytes(loss_plot(record))
    grid.save(out / "samples.png")
    return record


def sample_check(model_dir: Path, folder: Path, device: str, cfg: ControlNetTrainConfig, steps: int = 30):
    """Every object drawn by the base model from an edge map of a held-back base-style render (seed 99), without
    and with the ControlNet (same seed): the mean edge agreement of each, and a grid (rows: edges, without, with)."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    from ..control import canny, edge_agreement
    from .scene import OBJECTS, Pose
    from .styles import BASE_STYLES, render

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    net = ControlNetModel.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        model_dir, controlnet=net, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    names = sorted(OBJECTS)
    rng = np.random.default_rng(99)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    edges = [
        canny(
            render(o, BASE_STYLES[i % len(BASE_STYLES)], Pose.random(rng), size, seed=99 + i),
            cfg.low_threshold,
            cfg.high_threshold,
        )
        for i, o in enumerate(names)
    ]
    prompts = [f"an image of {o}" for o in names]
    rows, agree = [], {}
    for scale in (0.0, 1.0):
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(len(names))]
        ims = pipe(
            prompts,
            image=edges,
            num_inference_steps=steps,
            guidance_scale=5.0,
            generator=gens,
            controlnet_conditioning_scale=scale,
            height=size,
            width=size,
        ).images
        agree["without" if scale == 0 else "with"] = float(
            np.mean([edge_agreement(a, e, cfg.low_threshold, cfg.high_threshold) for a, e in zip(ims, edges)])
        )
        rows.append(np.concatenate([np.asarray(i) for i in ims], 1))
    rows.insert(0, np.concatenate([np.asarray(e) for e in edges], 1))
    return {"edge_agreement": agree, "objects": names, "steps": steps}, Image.fromarray(np.concatenate(rows, 0))


def loss_plot(record: dict) -> bytes:
    from ..report import axes_png, new_axes

    fig, ax = new_axes(7, 3.6)
    ys = record["losses"]
    steps = record["config"]["steps"]
    ax.plot([i * steps / len(ys) for i in range(len(ys))], ys, label="ControlNet (epsilon MSE, frozen UNet)")
    ax.set_yscale("log")
    return axes_png(
        fig, ax, "step", "loss", f"pocket ControlNet training ({record['device']}, data {record['data_sha256'][:12]})"
    )
