"""The Jittor backend's training: DreamBooth-LoRA for one style, the same recipe and the same random draws as the
PyTorch backend's trainer (:mod:`stylexfer.backends.torch.trainer`), drawn through the same data feed
(:mod:`stylexfer.feed`), so that a style's adapter matches
across the two backends within float32 rounding.

Per step: ``train.batch_size`` instance samples (and as many class samples under prior preservation),
augmented as configured — with grid-cached crops (the default) each crop's VAE posterior is encoded once up
front; the VAE posterior sample's noise, the diffusion noise and the timesteps from the style's torch CPU
stream (:mod:`stylexfer.streams`), in the PyTorch backend's order; the UNet's epsilon or velocity
prediction; loss = MSE(instance) (min-SNR-weighted if asked) + ``prior.weight`` × MSE(class); gradients of the
LoRA weights (``jt.grad``), clipped to ``train.max_grad_norm`` by their global norm, and AdamW with torch's
arithmetic (decoupled weight decay, bias-corrected moments) under the configured learning-rate schedule.
Checkpoints (LoRA weights, optimizer moments, both random streams, the data order, the losses) are written
every ``train.checkpoint_every`` steps, and a killed run resumes from the latest one bit for bit.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ... import faults
from ...config import value
from ...data import Style
from ...errors import ConfigError, TrainingDiverged
from ...feed import GRID, PER_STEP, DataFeed
from ...prior import ClassPool
from ...store import latest_checkpoint, write_checkpoint
from . import lora
from .layers import jt
from .models import Components, encode_prompts, token_ids

log = logging.getLogger(__name__)


def _pixels(img) -> np.ndarray:
    return np.asarray(img, np.float32).transpose(2, 0, 1) / 127.5 - 1.0


class Feed:
    """One style's training data on this backend: :class:`stylexfer.feed.DataFeed` (the draws of the PyTorch
    backend, in its order) and the posteriors it keeps. ``next()`` gives the step's posterior means and standard
    deviations (numpy) and prompts."""

    def __init__(self, c: Components, style: Style, pool: Optional[ClassPool], spec):
        self.c, self.style, self.pool = c, style, pool
        self.data = DataFeed.of(style, pool, spec)
        self.stream = self.data.stream
        self.cache: dict = {}  # the style's grid crops and cached images: key → (mean, std)
        # grid crops of a class pool are the same for every style that shares it: encoded once per model
        # (the PyTorch backend's batched pass shares them the same way)
        self.shared = (
            c.crop_cache.setdefault((pool.key, spec.resolution, spec.augmentation.scale), {})
            if pool is not None
            else {}
        )

    def _encode(self, images: list) -> list:
        out = []
        for k in range(0, len(images), 16):
            with jt.no_grad():
                mean, std = self.c.vae.encode(jt.array(np.stack([_pixels(im) for im in images[k : k + 16]])))
                mean, std = mean.numpy(), std.numpy()
            out += [(mean[j : j + 1], std[j : j + 1]) for j in range(mean.shape[0])]
        return out

    def prepare(self) -> int:
        """Encode every grid crop of the style's images and its class pool up front; how many it encoded."""
        done = 0
        # the style's crops, then the pool's in their own batches: a crop's posterior does not depend on which
        # style encoded the shared pool first (batch composition can change float results)
        for which, cache in (("style", self.cache), ("pool", self.shared)):
            keys = self.data.grid_todo(cache, which=(which,))
            cache.update(zip(keys, self._encode([self.data.crop(k) for k in keys])))
            done += len(keys)
        return done

    def cycles(self):
        return self.data.cycles()

    def _get(self, key):
        return self.shared[key] if key[0][0] == "pool" and self.data.policy == GRID else self.cache[key]

    def next(self):
        d = self.data.next(self.cache)
        if self.data.policy == GRID:
            if any(x.key not in (self.shared if x.key[0][0] == "pool" else self.cache) for x in d.samples):
                self.prepare()
            dists = [self._get(x.key) for x in d.samples]
        elif self.data.policy == PER_STEP:  # the random crop/flip/rotation is encoded every step
            dists = self._encode([x.image for x in d.samples])
        else:
            new = [x for x in d.samples if x.image is not None]
            for x, post in zip(new, self._encode([x.image for x in new])):
                self.cache[x.key] = post
            dists = [self.cache[x.key] for x in d.samples]
        return np.concatenate([m for m, _ in dists]), np.concatenate([s for _, s in dists]), d.prompts


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """diffusers' ``get_scheduler`` multipliers (constant, constant_with_warmup, linear, cosine) at ``step``."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    raise ConfigError(f"train.lr_scheduler={schedule}: not carried by the jittor backend")


class AdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments), on Jittor variables."""

    def __init__(self, groups: list[dict], betas, eps: float, weight_decay: float):
        self.groups, self.b1, self.b2, self.eps, self.wd = groups, betas[0], betas[1], eps, weight_decay
        self.params = [p for g in groups for p in g["params"]]
        self.m = [jt.zeros(p.shape) for p in self.params]
        self.v = [jt.zeros(p.shape) for p in self.params]
        self.t = 0

    def step(self, grads: list, factor: float) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        k = 0
        for g in self.groups:
            lr = g["lr"] * factor
            for p in g["params"]:
                grad = grads[k]
                m = self.m[k] * self.b1 + grad * (1 - self.b1)
                v = self.v[k] * self.b2 + grad * grad * (1 - self.b2)
                p.update(p * (1 - lr * self.wd) - (lr / c1) * m / (jt.sqrt(v) / math.sqrt(c2) + self.eps))
                self.m[k].update(m)
                self.v[k].update(v)
                k += 1
        jt.sync(self.params + self.m + self.v)


def clip_by_norm(grads: list, max_norm: float) -> list:
    """torch's ``clip_grad_norm_``: scale every gradient by min(1, max_norm / (total norm + 1e-6))."""
    total = jt.sqrt(sum((g * g).sum() for g in grads))
    coef = jt.minimum(max_norm / (total + 1e-6), 1.0)
    return [g * coef for g in grads]


class Trainable:
    """The LoRA layers of one style in the UNet (and the text encoder), and their optimizer groups."""

    def __init__(self, c: Components, spec, seed: int, init: Optional[Path] = None):
        lo = spec.lora
        if value(lo.kind) != "lora":
            raise ConfigError(f"lora.kind={value(lo.kind)}: the jittor backend trains LoRA only (lora.kind=lora)")
        if lo.dropout:
            raise ConfigError("lora.dropout: the jittor backend trains without LoRA dropout (lora.dropout=0)")
        rng = np.random.default_rng(seed)
        self.unet = lora.inject(c.unet, lo.unet_target_modules, lo.unet_lora_rank, lo.unet_alpha)
        lora.init_gaussian(self.unet, rng)
        self.text_encoder = {}
        if lo.text_encoder_lora_rank > 0:
            self.text_encoder = lora.inject(
                c.text_encoder, lo.text_encoder_target_modules, lo.text_encoder_lora_rank, lo.text_encoder_alpha
            )
            lora.init_gaussian(self.text_encoder, rng)
        self.targets = {"unet": list(lo.unet_target_modules), "text_encoder": list(lo.text_encoder_target_modules)}
        self.groups = [
            {
                "params": [w for layer in self.unet.values() for w in (layer.lora_A, layer.lora_B)],
                "lr": spec.train.lr,
                "name": "unet",
            }
        ]
        if self.text_encoder:
            self.groups.append(
                {
                    "params": [w for layer in self.text_encoder.values() for w in (layer.lora_A, layer.lora_B)],
                    "lr": spec.train.lr * lo.text_encoder_lr_scale,
                    "name": "text_encoder",
                }
            )
        self.params = [p for g in self.groups for p in g["params"]]
        if init is not None:  # start from an adapter file's weights instead of the seeded init
            for part, weights in lora.read(Path(init)).items():
                layers = self.unet if part == "unet" else self.text_encoder
                if set(weights) != set(layers):
                    raise ConfigError(f"{init}: its {part} modules are not the configured LoRA targets")
                for name, (a, b, _) in weights.items():
                    layers[name].lora_A.update(jt.array(a))
                    layers[name].lora_B.update(jt.array(b))

    def save(self, folder: Path) -> None:
        parts = {"unet": (self.unet, self.targets["unet"])}
        if self.text_encoder:
            parts["text_encoder"] = (self.text_encoder, self.targets["text_encoder"])
        lora.save(folder, parts)


def save_checkpoint(folder: Path, step: int, tr: Trainable, opt: AdamW, feed: Feed, losses: list) -> None:
    from safetensors.numpy import save_file

    tensors = {f"param.{i}": p.numpy() for i, p in enumerate(tr.params)}
    tensors.update({f"opt.m.{i}": m.numpy() for i, m in enumerate(opt.m)})
    tensors.update({f"opt.v.{i}": v.numpy() for i, v in enumerate(opt.v)})
    tensors["rng.torch"] = feed.stream.torch.get_state().numpy()
    meta = {
        "step": step,
        "adam_t": opt.t,
        "np_state": feed.stream.np.bit_generator.state,
        "orders": [None if cy is None else [int(i) for i in cy.order] for cy in feed.cycles()],
        "losses": losses,
    }
    write_checkpoint(folder, step, lambda file: save_file(tensors, str(file)), meta)


def load_checkpoint(folder: Path, tr: Trainable, opt: AdamW, feed: Feed):
    from safetensors.numpy import load_file

    latest = latest_checkpoint(folder)
    if latest is None:
        return 0, []
    tensors, meta = load_file(str(latest[0])), latest[1]
    for i, p in enumerate(tr.params):
        p.update(jt.array(tensors[f"param.{i}"]))
        opt.m[i].update(jt.array(tensors[f"opt.m.{i}"]))
        opt.v[i].update(jt.array(tensors[f"opt.v.{i}"]))
    opt.t = int(meta["adam_t"])
    feed.stream.torch.set_state(torch.from_numpy(tensors["rng.torch"]))
    feed.stream.np.bit_generator.state = meta["np_state"]
    for cy, order in zip(feed.cycles(), meta["orders"]):
        if cy is not None:
            cy.order = list(order)
    return int(meta["step"]), list(meta["losses"])


def snr_weights(ac: np.ndarray, t: np.ndarray, gamma: float, prediction_type: str) -> np.ndarray:
    a = ac[t].astype(np.float32)
    snr = a / (1 - a)
    w = np.minimum(snr, gamma)
    return (w / (snr + 1) if prediction_type == "v_prediction" else w / snr).astype(np.float32)


def train_style(
    c: Components,
    style: Style,
    pool: Optional[ClassPool],
    spec,
    ckpt_dir: Optional[Path] = None,
    export_to: Optional[Path] = None,
    init: Optional[Path] = None,
) -> list[float]:
    """Train one style's LoRA and write it to ``export_to``; the model is left as it was. The losses.
    ``init``: an adapter file to start from instead of the seeded init (the parity tests start both
    backends from the same weights)."""
    ts = spec.train
    use_prior = pool is not None and spec.prior.on
    feed = Feed(c, style, pool if use_prior else None, spec)
    feed.prepare()
    tr = Trainable(c, spec, feed.stream.lora_seed, init)
    try:
        opt = AdamW(tr.groups, (ts.adam_beta1, ts.adam_beta2), ts.adam_epsilon, ts.adam_weight_decay)
        start, losses = (0, [])
        if ckpt_dir is not None:
            start, losses = load_checkpoint(Path(ckpt_dir), tr, opt, feed)
            if start:
                log.info("style %s: resuming training from its checkpoint at step %d", style.id, start)
        te_trained = bool(tr.text_encoder)
        cache: dict = {}
        ac = c.alphas_cumprod
        n_t = int(c.scheduler_config.get("num_train_timesteps", 1000))
        b, every = ts.batch_size, (ts.checkpoint_every if ckpt_dir is not None else 0)
        schedule = value(ts.lr_scheduler)
        bar = tqdm(
            range(start, ts.steps),
            desc=f"train {style.id} (jittor)",
            unit="step",
            leave=False,
            initial=start,
            total=ts.steps,
        )
        for step in bar:
            mean, std, prompts = feed.next()
            draws = feed.data.noise(mean.shape, n_t)
            eps, noise, t = (x.numpy() for x in draws)
            latents = (mean + std * eps) * c.scaling_factor
            a = ac[t].reshape(-1, 1, 1, 1)
            noisy = np.sqrt(a) * latents + np.sqrt(1 - a) * noise
            if c.prediction_type == "epsilon":
                target = noise
            elif c.prediction_type == "v_prediction":
                target = np.sqrt(a) * noise - np.sqrt(1 - a) * latents
            else:
                raise ConfigError(
                    f"scheduler config prediction_type={c.prediction_type}: not trained by the jittor backend"
                )
            if te_trained:
                cond = c.text_encoder(token_ids(c, prompts))
            else:
                for p in dict.fromkeys(prompts):
                    if p not in cache:
                        with jt.no_grad():
                            cache[p] = encode_prompts(c, [p]).numpy()
                cond = jt.array(np.concatenate([cache[p] for p in prompts]))
            pred = c.unet(jt.array(noisy.astype(np.float32)), jt.array(t.astype(np.int32)), cond)
            per_sample = ((pred - jt.array(target.astype(np.float32))) ** 2).mean(dims=(1, 2, 3))
            inst = per_sample[:b]
            if ts.snr_gamma:
                inst = inst * jt.array(snr_weights(ac, t[:b], ts.snr_gamma, c.prediction_type))
            loss = inst.mean()
            if use_prior:
                loss = loss + spec.prior.weight * per_sample[b:].mean()
            grads = jt.grad(loss, tr.params)
            jt.sync([loss] + grads)
            value_ = float(loss.item())
            if not math.isfinite(value_):
                raise TrainingDiverged(f"style {style.id}: loss is {value_} at step {step + 1}")
            grads = clip_by_norm(grads, ts.max_grad_norm)
            opt.step(grads, lr_factor(schedule, step, ts.lr_warmup_steps, ts.steps))
            losses.append(value_)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if every and (step + 1) % every == 0 and step + 1 < ts.steps:
                save_checkpoint(Path(ckpt_dir), step + 1, tr, opt, feed, losses)
                faults.checkpoint(f"train:{style.id}:{step + 1}")
        if export_to is not None:
            tr.save(Path(export_to))
    finally:
        lora.remove(c.unet)
        lora.remove(c.text_encoder)
    return losses
