"""The PyTorch backend's batched pass: one UNet carries every style's LoRA (:mod:`.multilora`); each
step's batch holds every style's instance (and class) samples, each going through its own adapter.

It is the recipe of the one-style loop (:mod:`.train`) exactly, style by style: the same per-style random streams
(image order, crops, VAE sampling, noise, timesteps) drawn in the same order, the same LoRA
initialisation, the per-style mean losses (the batch loss is their sum, and styles' parameters are
disjoint, so each style gets its own gradient), per-style gradient clipping, and one LR schedule (all
styles are at the same step). A style's adapter therefore does not depend on which styles shared its
batches; ``tests/test_batched.py`` checks it against the one-style-at-a-time path. A style whose loss
turns NaN/inf stops at once (its slot is masked) while the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ... import faults
from ...config import Precision, PriorMode, value
from ...data import Style
from ...prior import ClassPool
from . import compiled, fp8, graphed
from .models import Components
from .multilora import restore
from .tensors import uint8_to_model
from .train import (
    Dist,
    Feed,
    TextCache,
    autocast_for,
    draw_noise,
    encode_crops,
    export_adapters,
    inject_adapters,
    load_checkpoint,
    make_optimizer,
    noisy_from,
    replay_schedule,
    save_checkpoint,
    style_losses,
    write_snapshot,
)

log = logging.getLogger(__name__)


@dataclass
class StepDraw:
    """One step's host-side data for the live styles, drawn ahead on a worker thread: the styles in it,
    pixels (uint8, pinned) or cached posteriors, prompts, and each style's noise/timestep draws."""

    live: list
    pixels: Optional[torch.Tensor]
    dists: Optional[list]
    prompts: list
    rows: list  # samples per style
    eps: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor


def draw_step(c: Components, feeds: list[Feed], live: list[int]) -> StepDraw:
    """Everything a step takes from the styles' random streams, in the order the one-style path takes it."""
    pixels, dists, prompts, rows, eps, noise, ts = [], [], [], [], [], [], []
    steps = c.noise_scheduler.config.num_train_timesteps
    for s in live:
        px, dist, pr = feeds[s].next()
        n = len(pr)
        shape = (
            tuple(dist.mean.shape)
            if dist is not None
            else (n, c.latent_channels, px.shape[-2] // c.vae_scale, px.shape[-1] // c.vae_scale)
        )
        tr = feeds[s].cfg.train
        e, z, t = draw_noise(feeds[s].stream.torch, shape, steps, tr.noise_offset, value(tr.timestep_bias))
        pixels.append(px), dists.append(dist), prompts.extend(pr), rows.append(n)
        eps.append(e), noise.append(z), ts.append(t)
    pin = (lambda x: x.pin_memory()) if c.device.type == "cuda" else (lambda x: x)
    cached = dists[0] is not None
    return StepDraw(
        live=list(live),
        pixels=None if cached else pin(torch.cat(pixels)),
        dists=dists if cached else None,
        prompts=prompts,
        rows=rows,
        eps=pin(torch.cat(eps)),
        noise=pin(torch.cat(noise)),
        t=pin(torch.cat(ts)),
    )


def keep_live(d: StepDraw, live: list[int]) -> StepDraw:
    """The draw without the styles that stopped since it was made (their rows dropped)."""
    if d.live == live:
        return d
    starts = np.cumsum([0] + d.rows)
    idx = torch.cat([torch.arange(starts[k], starts[k + 1]) for k, s in enumerate(d.live) if s in live])
    keep = [k for k, s in enumerate(d.live) if s in live]
    return StepDraw(
        live=list(live),
        pixels=None if d.pixels is None else d.pixels[idx],
        dists=None if d.dists is None else [d.dists[k] for k in keep],
        prompts=[d.prompts[i] for i in idx.tolist()],
        rows=[d.rows[k] for k in keep],
        eps=d.eps[idx],
        noise=d.noise[idx],
        t=d.t[idx],
    )


def posterior_of(c: Components, d: StepDraw) -> Dist:
    """The VAE posterior of every sample of the step: one VAE call over all styles (or the cached ones)."""
    if d.dists is not None:
        return Dist(torch.cat([x.mean for x in d.dists]), torch.cat([x.std for x in d.dists]))
    with torch.no_grad():
        px = uint8_to_model(d.pixels.to(c.device, non_blocking=c.device.type == "cuda")).to(c.vae_dtype)
        post = c.vae.encode(px).latent_dist
    return Dist(post.mean, post.std)


class CompiledOrPlain(torch.nn.Module):
    """A module's ``torch.compile`` version that falls back to the module itself, with one warning, if
    compiling fails (no C compiler or Triton on the machine, say): the run goes on at eager speed."""

    def __init__(self, plain: torch.nn.Module, compiled, batch: Optional[int] = None):
        super().__init__()
        self.plain, self.compiled, self.batch = plain, compiled, batch

    def forward(self, *args, **kwargs):
        if self.compiled is not None and (self.batch is None or args[0].shape[0] == self.batch):
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a real error (out of memory ...) raises again below
                log.warning(
                    "torch.compile of the VAE encoder failed (%s: %s); encoding without it",
                    type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "",
                )
                self.compiled = None
        return self.plain(*args, **kwargs)


@contextlib.contextmanager
def compiled_vae_encoder(c: Components, on: bool, batch: Optional[int] = None):
    """``c.vae.encoder`` replaced by its ``torch.compile`` version on CUDA while training (put back after):
    for per-step encoding of random crops, or, with ``batch``, for the grid crops' batches of that size
    (one static graph; a smaller last batch is encoded plain)."""
    if not (on and c.device.type == "cuda"):
        yield
        return
    plain = c.vae.encoder
    c.vae.encoder = CompiledOrPlain(
        plain, torch.compile(plain, dynamic=False) if batch else torch.compile(plain), batch
    )
    try:
        yield
    finally:
        c.vae.encoder = plain


CROP_BATCH = 64  # grid crops per VAE call while preparing a pass (one compiled shape)


def steady_step_s(ticks: list, skip: int) -> Optional[float]:
    """Seconds per step from a pass's ``clock`` ticks (see :func:`train_together`), leaving out the first
    ``skip`` steps; None when fewer than two steps are left to time."""
    if len(ticks) - skip < 2:
        return None
    return (ticks[-1] - ticks[skip]) / (len(ticks) - 1 - skip)


def train_together(
    c: Components,
    styles: list[Style],
    pools: list[Optional[ClassPool]],
    cfg,
    ckpt_dir: Optional[Path],
    export_dirs: list[Path],
    clock: Optional[list] = None,
    snapshots: Optional[dict[int, list[Path]]] = None,
    state_to: Optional[Path] = None,
) -> tuple[dict, dict, float]:
    """Train every style in one pass; write each finished style's adapter to its ``export_dirs`` entry, each
    live style's adapter as it is after step ``k`` to its ``snapshots[k]`` entry, and the pass's state after its
    last step as a checkpoint in ``state_to``.
    Returns ({style id: losses}, {style id: error line of a style that diverged}, seconds). ``clock``, if
    given, gets the time at which each step's losses reached the host (the loop is then at most one step
    ahead of the device), for steady-state step times free of the set-up and export."""
    from diffusers.optimization import get_scheduler

    if cfg.lora.dropout > 0 and len(styles) > 1:
        raise ValueError(
            "lora.dropout > 0: dropout masks come from the device's global random stream, so in a "
            "batched pass a style's adapter would depend on its batch mates; train one style at a time"
        )
    t0 = time.time()
    tr = cfg.train
    use_prior = value(cfg.prior.mode) != PriorMode.none.value and all(p is not None for p in pools)
    precision = Precision(value(tr.mixed_precision))
    resized: dict = {}  # shared: a shared class pool is resized once, not once per style
    crops: dict = {}  # shared likewise: a shared class pool's grid crops are encoded once
    feeds = [Feed(c, s, p if use_prior else None, cfg, resized, raw=True, crops=crops) for s, p in zip(styles, pools)]
    n = len(feeds)
    compile_now = compiled.decide(c, cfg, n)
    t_enc = time.time()
    # the grid crops go through the compiled VAE encoder when this pass compiles (its graph is in the same cache)
    with compiled_vae_encoder(c, compile_now and tr.compile_vae, batch=CROP_BATCH):
        # every style's crops and the class pool's in one stream of full batches (the feeds share ``crops``)
        seen: set = set()
        encoded = encode_crops(
            c, [t for f in feeds for t in f.crop_todo(seen)], crops, cfg.model.resolution, CROP_BATCH
        )
    if encoded:
        log.info(
            "encoded %d grid crops (%d styles and their class images) in %.1fs: no VAE in the training steps",
            encoded,
            len(feeds),
            time.time() - t_enc,
        )
    ad = inject_adapters(c, cfg, [f.stream.lora_seed for f in feeds])
    groups = ad.groups(tr.lr, tr.lr * cfg.lora.text_encoder_lr_scale)
    params = [p for g in groups for p in g["params"]]
    train_te = bool(ad.text_encoder)
    text = TextCache(c, train_te)
    record = graphed.wanted(cfg, c.device)  # the step as a CUDA graph: the LR a tensor, the optimizer capturable
    opt = make_optimizer(c, graphed.tensor_lr(groups, c.device) if record else groups, tr, capturable=record)
    sched = get_scheduler(
        value(tr.lr_scheduler), opt, num_warmup_steps=tr.lr_warmup_steps, num_training_steps=tr.steps
    )
    active = torch.ones(n, device=c.device)  # read by the step on the device
    failed: dict[str, str] = {}
    losses: dict[str, list] = {s.id: [] for s in styles}
    ids = [s.id for s in styles]
    start = 0
    try:
        if ckpt_dir is not None:
            start, saved = load_checkpoint(
                ckpt_dir, params, opt, [f.stream for f in feeds], [cy for f in feeds for cy in f.cycles()]
            )
            if start:
                losses, failed = saved["losses"], saved["failed"]
                for s, sid in enumerate(ids):
                    if sid in failed:
                        active[s] = 0
                log.info("styles %s: resuming training from their checkpoint at step %d", ", ".join(ids), start)
            replay_schedule(sched, start)
        c.unet.train()
        c.text_encoder.train(train_te)
        every = tr.checkpoint_every if ckpt_dir is not None else 0
        bar = tqdm(
            range(start, tr.steps),
            desc=f"train {len(ids)} styles",
            unit="step",
            leave=False,
            initial=start,
            total=tr.steps,
        )
        ticks = clock if clock is not None else []
        unet = c.unet
        graphs = compile_now and tr.compile_mode in ("reduce-overhead", "max-autotune")  # modes with CUDA graphs
        if compile_now:
            unet = torch.compile(c.unet, mode=None if tr.compile_mode == "default" else tr.compile_mode)
        alive = [sid not in failed for sid in ids]  # the host's copy of `active` (reading that one waits for the GPU)
        indices: dict = {}

        def live_index(live: list[int]) -> torch.Tensor:
            if tuple(live) not in indices:
                indices[tuple(live)] = torch.tensor(live, device=c.device)
            return indices[tuple(live)]

        def forward_loss(noisy, ts, targets, text):
            """Each live style's loss (prompt embeddings, or token ids when the text encoder trains)."""
            cond = c.text_encoder(text)[0] if train_te else text
            with autocast_for(c, precision):
                pred = unet(noisy, ts, cond.to(c.dtype)).sample
            per_sample = F.mse_loss(pred.float(), targets.float(), reduction="none").mean(dim=(1, 2, 3))
            return style_losses(c, per_sample, ts, cfg, len(ad.router.groups), use_prior)

        def update(style_loss):
            """Backward, per-slot clipping and the optimizer step; a style whose loss is not finite gets no update."""
            finite = torch.isfinite(style_loss)
            total = torch.where(finite, style_loss, torch.zeros_like(style_loss)).sum()
            total.backward()
            step_active = active.clone()
            step_active[ad.router.groups] *= finite.to(active.dtype)
            ad.clip_per_slot(tr.max_grad_norm, step_active)
            opt.step()
            opt.zero_grad(set_to_none=False)

        def whole_step(**inputs):
            style_loss = forward_loss(**inputs)
            update(style_loss)
            return style_loss.detach()  # the recorded autograd graph is not kept alive by the output

        graph = graphed.StepGraph(whole_step) if record else None
        # the next step's data is drawn on the worker while the GPU runs this step; leaving the block
        # waits for a draw still under way
        fp8_on = bool(tr.fp8) and fp8.supported(c.device)
        if tr.fp8 and not fp8_on:
            log.warning("train.fp8=true: %s has no fp8 matrix units; training in %s", c.device, c.dtype)
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="stylexfer-draw") as ahead,
            compiled_vae_encoder(c, tr.compile_vae and feeds[0].encodes_per_step),
            fp8.fp8_linears(c.unet, fp8_on) as n_fp8,
        ):
            if fp8_on:
                log.info("train.fp8: %d frozen linear layers of the UNet compute in float8 e4m3", n_fp8)
            pending = None

            def live_now():
                return [s for s in range(n) if alive[s]]

            for step in bar:
                live = live_now()
                if not live:
                    break
                d = keep_live(pending.result() if pending is not None else draw_step(c, feeds, live), live)
                checkpoint_now = every and (step + 1) % every == 0 and step + 1 < tr.steps
                pending = None
                if step + 1 < tr.steps and not checkpoint_now:  # a checkpoint saves the streams first
                    pending = ahead.submit(draw_step, c, feeds, live)
                noisy, ts, targets = noisy_from(c, posterior_of(c, d), d.eps, d.noise, d.t)
                ad.router.groups = live_index(live)
                ad.router.all_slots = len(live) == n
                inputs = dict(noisy=noisy.to(c.dtype), ts=ts, targets=targets, text=text.inputs(d.prompts))
                if graphs:  # CUDA graphs: a new training step begins (the last step's graph outputs may be reused)
                    torch.compiler.cudagraph_mark_step_begin()
                if graph is not None and len(live) < n:
                    log.info("a style stopped: the remaining steps run without the CUDA graph (the batch changed)")
                    graph = None
                replayed = False
                if graph is not None and step - start >= graphed.WARMUP_STEPS:
                    try:
                        style_loss, replayed = graph(**inputs), True
                    except Exception as e:  # noqa: BLE001 - a failed capture ran nothing: the step goes on eagerly
                        if graph.recorded:
                            raise
                        log.warning(
                            "recording the training step as a CUDA graph failed (%s: %s); training without it",
                            type(e).__name__,
                            (str(e).splitlines() or [""])[0],
                        )
                        graph = None
                if not replayed:
                    style_loss = forward_loss(**inputs)
                # copy the losses to the host without waiting: the backward and the optimizer step are queued
                # first, and the host reads the values (ready since the forward) while the GPU works on them
                host = style_loss.detach().to("cpu", non_blocking=c.device.type == "cuda")
                ready = torch.cuda.Event() if c.device.type == "cuda" else None
                if ready is not None:
                    ready.record()
                if not replayed:
                    update(style_loss)
                sched.step()
                if ready is not None:
                    ready.synchronize()
                values = host.tolist()
                del style_loss  # its autograd graph too (a CUDA graph is recorded with none alive)
                ticks.append(time.perf_counter())
                for k, s in enumerate(live):
                    if not math.isfinite(values[k]):
                        failed[ids[s]] = f"style {ids[s]}: loss is {values[k]} at step {step + 1}"
                        active[s] = 0
                        alive[s] = False
                        log.error(failed[ids[s]])
                    else:
                        losses[ids[s]].append(values[k])
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{np.mean(values):.4f}")
                if snapshots and step + 1 in snapshots:
                    folders = {s: snapshots[step + 1][s] for s in range(n) if alive[s]}
                    write_snapshot(c, cfg, ad, folders, "lora", train_te)
                if checkpoint_now:
                    save_checkpoint(
                        ckpt_dir,
                        step + 1,
                        params,
                        opt,
                        [f.stream for f in feeds],
                        [cy for f in feeds for cy in f.cycles()],
                        {"losses": losses, "failed": failed},
                    )
                    for sid in ids:
                        faults.checkpoint(f"train:{sid}:{step + 1}")
                    if step + 1 < tr.steps and live_now():
                        pending = ahead.submit(draw_step, c, feeds, live_now())
        if state_to is not None and any(alive):
            save_checkpoint(
                state_to,
                tr.steps,
                params,
                opt,
                [f.stream for f in feeds],
                [cy for f in feeds for cy in f.cycles()],
                {"losses": losses, "failed": failed},
            )
        ad.router.groups = None
        if compile_now:
            compiled.mark_warm(c, cfg, n)
        skip = min(10, len(ticks) // 2)  # the first steps compile and autotune
        per_step = steady_step_s(ticks, skip)
        if per_step is not None:
            log.info(
                "%d styles: %.3f s per step over steps %d-%d (%.1f samples/s)",
                len(ids),
                per_step,
                start + skip + 2,
                start + len(ticks),
                len(d.t) / per_step,
            )
        c.unet.eval()
        c.text_encoder.eval()
        restore(c.unet, ad.unet)
        restore(c.text_encoder, ad.text_encoder)
        export_adapters(c, cfg, ad, {s: export_dirs[s] for s, sid in enumerate(ids) if sid not in failed})
    finally:
        ad.router.index = ad.router.groups = None
        restore(c.unet, ad.unet)
        restore(c.text_encoder, ad.text_encoder)
        for p in params:
            p.grad = None
    return losses, failed, time.time() - t0
