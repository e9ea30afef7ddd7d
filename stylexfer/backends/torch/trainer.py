"""The PyTorch backend's trainer, the only training loop it has: one pass trains any number of styles, one style
being a pass of one slot. One UNet carries every style's LoRA (:mod:`.multilora`); each step's batch holds every
style's instance (and class) samples, each going through its own adapter.

Style by style it is the recipe of :mod:`.train`: per-style random streams (image order, crops, VAE sampling,
noise, timesteps) drawn in a fixed order, peft's LoRA initialisation, the per-style mean losses (the batch loss is
their sum, and styles' parameters are disjoint, so each style gets its own gradient), per-style gradient clipping,
and one LR schedule (all styles are at the same step). A style's adapter therefore does not depend on which styles
shared its pass; ``tests/test_batched.py`` checks a pass of several styles against passes of one. A style whose
loss turns NaN/inf stops at once (its slot is masked) while the others go on. Under ``prior=self`` a style's prior
rows are its own images under the class prompt, their target the base model's prediction (:meth:`Pass.base_targets`).

The pieces: :class:`Pass` (set-up: feeds, grid crops, adapters, optimizer, schedule; :meth:`Pass.step`;
:meth:`Pass.checkpoint`; :meth:`Pass.export`) and :func:`train_styles`, the loop over them. What trains is a small
strategy: :class:`SlotLayers` (stylexfer's LoRA layers, a slot per style, ``lora.kind=lora``) or
:class:`PeftLayers` (peft's own DoRA, LoHa and LoKr layers, one style per pass).
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
from ...config import Precision, value
from ...data import Style
from ...prior import ClassPool
from .. import TrainOutcome
from . import compiled, fp8, graphed
from .models import Components
from .multilora import MultiAdapters, restore
from .tensors import uint8_to_model
from .train import (
    Dist,
    Feed,
    TextCache,
    add_adapters,
    autocast_for,
    encode_crops,
    export_adapters,
    inject_adapters,
    load_checkpoint,
    make_optimizer,
    noisy_from,
    remove_adapters,
    replay_schedule,
    save_checkpoint,
    save_peft_kind,
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
    """Everything a step takes from the styles' random streams, style by style, each in its own fixed order."""
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
        e, z, t = feeds[s].data.noise(shape, steps)
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
    """Seconds per step from a pass's ``clock`` ticks (see :func:`train_styles`), leaving out the first
    ``skip`` steps; None when fewer than two steps are left to time."""
    if len(ticks) - skip < 2:
        return None
    return (ticks[-1] - ticks[skip]) / (len(ticks) - 1 - skip)


class SlotLayers:
    """What trains under ``lora.kind=lora``: stylexfer's LoRA layers with one slot per style (:mod:`.multilora`),
    each slot starting as peft would initialise it from the style's seed."""

    fp8_ok = True  # the frozen base layers may compute in float8 around these layers
    graphs_ok = True  # the step may be recorded as a CUDA graph, the UNet compiled

    def __init__(self, c: Components, spec, seeds: list[int]):
        self.c, self.spec = c, spec
        self.ad = inject_adapters(c, spec, seeds)
        self.groups = self.ad.groups(spec.train.lr, spec.train.lr * spec.lora.text_encoder_lr_scale)
        self.train_te = bool(self.ad.text_encoder)

    def route(self, index: torch.Tensor, everyone: bool) -> None:
        """Which slot each style's rows of the step go through (``index``: the live styles' slots)."""
        self.ad.router.groups, self.ad.router.all_slots = index, everyone

    @contextlib.contextmanager
    def off(self):
        """Every row through the base model only (the router cleared), as routed again afterwards."""
        r = self.ad.router
        saved = (r.index, r.groups, r.all_slots)
        r.index = r.groups = None
        try:
            yield
        finally:
            r.index, r.groups, r.all_slots = saved

    def clip(self, max_norm: float, active: torch.Tensor) -> None:
        """Each slot's gradient clipped on its own; inactive slots' gradients zeroed."""
        self.ad.clip_per_slot(max_norm, active)

    def snapshot(self, folders: dict[int, Path]) -> None:
        write_snapshot(self.c, self.spec, self.ad, folders, "lora", self.train_te)

    def export(self, folders: dict[int, Path]) -> None:
        self.take_out()
        export_adapters(self.c, self.spec, self.ad, folders)

    def take_out(self) -> None:
        """The model back as loaded (the layers kept, with their trained weights, in :attr:`trained`)."""
        self.ad.router.index = self.ad.router.groups = None
        restore(self.c.unet, self.ad.unet)
        restore(self.c.text_encoder, self.ad.text_encoder)

    @property
    def trained(self) -> Optional[MultiAdapters]:
        return self.ad


class PeftLayers:
    """What trains under ``lora.kind=dora|loha|lokr``: peft's own layers (float32 weights), one style per pass."""

    fp8_ok = False
    graphs_ok = False

    def __init__(self, c: Components, spec, seeds: list[int]):
        if len(seeds) != 1:
            raise ValueError(f"lora.kind={value(spec.lora.kind)}: peft's layers carry one style; train one at a time")
        self.c, self.kind = c, value(spec.lora.kind)
        self.groups = add_adapters(c, spec, seeds[0])
        self.params = [p for g in self.groups for p in g["params"]]
        self.train_te = any(g["name"] == "text_encoder" for g in self.groups)

    def route(self, index: torch.Tensor, everyone: bool) -> None:
        pass  # one style: every row is its

    @contextlib.contextmanager
    def off(self):
        """The base model only: peft's adapters disabled, and enabled again afterwards."""
        models = [self.c.unet] + ([self.c.text_encoder] if self.train_te else [])
        for m in models:
            m.disable_adapters()
        try:
            yield
        finally:
            for m in models:
                m.enable_adapters()

    def clip(self, max_norm: float, active: torch.Tensor) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, max_norm)

    def snapshot(self, folders: dict[int, Path]) -> None:
        for folder in folders.values():
            save_peft_kind(self.c, folder, self.kind, self.train_te)

    def export(self, folders: dict[int, Path]) -> None:
        self.snapshot(folders)
        self.take_out()

    def take_out(self) -> None:
        remove_adapters(self.c)

    @property
    def trained(self) -> Optional[MultiAdapters]:
        return None  # the adapter is in its file only


@dataclass
class Trained(TrainOutcome):
    """A pass's outcome and, under ``lora.kind=lora``, the trained layers (out of the model;
    :func:`stylexfer.backends.torch.multilora.reinstate` puts them back)."""

    layers: Optional[MultiAdapters] = None


class Pass:
    """One training pass over ``styles`` (their class pools: None without prior), built ready to step."""

    def __init__(self, c: Components, styles: list[Style], pools: list[Optional[ClassPool]], spec):
        from diffusers.optimization import get_scheduler

        if spec.lora.dropout > 0 and len(styles) > 1:
            raise ValueError(
                "lora.dropout > 0: dropout masks come from the device's global random stream, so in a "
                "batched pass a style's adapter would depend on its batch mates; train one style at a time"
            )
        self.c, self.spec, self.tr = c, spec, spec.train
        self.ids = [s.id for s in styles]
        self.n = len(styles)
        # prior=self: no pools; each style's prior rows are its own images, the target the base model's prediction
        self.from_base = spec.prior.from_base
        self.use_prior = spec.prior.on and (self.from_base or all(p is not None for p in pools))
        self.precision = Precision(value(self.tr.mixed_precision))
        resized: dict = {}  # shared: a shared class pool is resized once, not once per style
        crops: dict = {}  # shared likewise: a shared class pool's grid crops are encoded once
        self.feeds = [
            Feed(c, s, p if self.use_prior and spec.prior.pooled else None, spec, resized, raw=True, crops=crops)
            for s, p in zip(styles, pools)
        ]
        kind = SlotLayers if value(spec.lora.kind) == "lora" else PeftLayers
        self.compile_now = kind.graphs_ok and compiled.decide(c, spec, self.n)
        self.encode_crops(crops)
        self.layers = kind(c, spec, [f.stream.lora_seed for f in self.feeds])
        try:
            groups = self.layers.groups
            self.params = [p for g in groups for p in g["params"]]
            self.train_te = self.layers.train_te
            self.text = TextCache(c, self.train_te)
            # the step as a CUDA graph: the LR a tensor, the optimizer capturable
            self.record = kind.graphs_ok and graphed.wanted(spec, c.device)
            tr = self.tr
            self.opt = make_optimizer(
                c, graphed.tensor_lr(groups, c.device) if self.record else groups, tr, capturable=self.record
            )
            self.sched = get_scheduler(
                value(tr.lr_scheduler), self.opt, num_warmup_steps=tr.lr_warmup_steps, num_training_steps=tr.steps
            )
        except BaseException:
            self.layers.take_out()
            raise
        self.active = torch.ones(self.n, device=c.device)  # read by the step on the device
        self.alive = [True] * self.n  # the host's copy of `active` (reading that one waits for the GPU)
        self.failed: dict[str, str] = {}
        self.losses: dict[str, list] = {sid: [] for sid in self.ids}
        self.unet = c.unet
        self.indices: dict = {}  # live styles → their slots, on the device
        self._index, self._rows = None, 0  # the step's live slots and how many
        self._prior_rows: dict = {}  # how many live styles → their prior rows (prior=self), on the device

    def encode_crops(self, crops: dict) -> None:
        """Every style's grid crops and the class pool's, in one stream of full batches, before the first step (the
        feeds share ``crops``); through the compiled VAE encoder when this pass compiles (its graph is cached)."""
        t_enc = time.time()
        with compiled_vae_encoder(self.c, self.compile_now and self.tr.compile_vae, batch=CROP_BATCH):
            seen: set = set()
            todo = [t for f in self.feeds for t in f.crop_todo(seen)]
            encoded = encode_crops(self.c, todo, crops, CROP_BATCH)
        if encoded:
            log.info(
                "encoded %d grid crops (%d styles and their class images) in %.1fs: no VAE in the training steps",
                encoded,
                self.n,
                time.time() - t_enc,
            )

    # ------------------------------------------------------------------ state
    def _state(self):
        return [f.stream for f in self.feeds], [cy for f in self.feeds for cy in f.cycles()]

    def resume(self, ckpt_dir: Optional[Path]) -> int:
        """The step the pass starts at: its latest checkpoint's, or 0."""
        start = 0
        if ckpt_dir is not None:
            start, saved = load_checkpoint(ckpt_dir, self.params, self.opt, *self._state())
            if start:
                self.losses, self.failed = saved["losses"], saved["failed"]
                for s, sid in enumerate(self.ids):
                    if sid in self.failed:
                        self.active[s], self.alive[s] = 0, False
                log.info("styles %s: resuming training from their checkpoint at step %d", ", ".join(self.ids), start)
            replay_schedule(self.sched, start)
        return start

    def checkpoint(self, folder: Path, step: int) -> None:
        """The pass's state after ``step`` steps, from which a resumed or a longer run continues bit for bit."""
        save_checkpoint(
            folder, step, self.params, self.opt, *self._state(), {"losses": self.losses, "failed": self.failed}
        )

    def live(self) -> list[int]:
        return [s for s in range(self.n) if self.alive[s]]

    # ------------------------------------------------------------------ the step
    def base_targets(self, noisy, ts, targets, text):
        """``targets`` with each live style's prior rows (the second half of its rows) replaced by the base model's
        own prediction for them, the adapters off (``prior=self``)."""
        c, b = self.c, self.tr.batch_size
        if self._rows not in self._prior_rows:
            rows = [s * 2 * b + b + j for s in range(self._rows) for j in range(b)]
            self._prior_rows[self._rows] = torch.tensor(rows, device=c.device)
        rows = self._prior_rows[self._rows]
        with torch.no_grad(), self.layers.off():
            cond = c.text_encoder(text[rows])[0] if self.train_te else text[rows]
            with autocast_for(c, self.precision):
                base = self.unet(noisy[rows], ts[rows], cond.to(c.dtype)).sample
        return targets.index_copy(0, rows, base.to(targets.dtype))

    def forward_loss(self, noisy, ts, targets, text):
        """Each live style's loss (prompt embeddings, or token ids when the text encoder trains)."""
        c = self.c
        if self.from_base:
            targets = self.base_targets(noisy, ts, targets, text)
        cond = c.text_encoder(text)[0] if self.train_te else text
        with autocast_for(c, self.precision):
            pred = self.unet(noisy, ts, cond.to(c.dtype)).sample
        per_sample = F.mse_loss(pred.float(), targets.float(), reduction="none").mean(dim=(1, 2, 3))
        return style_losses(c, per_sample, ts, self.spec, self._rows, self.use_prior)

    def update(self, style_loss) -> None:
        """Backward, per-style clipping and the optimizer step; a style whose loss is not finite gets no update."""
        finite = torch.isfinite(style_loss)
        total = torch.where(finite, style_loss, torch.zeros_like(style_loss)).sum()
        total.backward()
        step_active = self.active.clone()
        step_active[self._index] *= finite.to(self.active.dtype)
        self.layers.clip(self.tr.max_grad_norm, step_active)
        self.opt.step()
        self.opt.zero_grad(set_to_none=False)

    def whole_step(self, **inputs):
        style_loss = self.forward_loss(**inputs)
        self.update(style_loss)
        return style_loss.detach()  # the recorded autograd graph is not kept alive by the output

    def inputs(self, d: StepDraw) -> dict:
        """A step's device inputs from its draw, the adapters routed to its live styles."""
        c = self.c
        noisy, ts, targets = noisy_from(c, posterior_of(c, d), d.eps, d.noise, d.t)
        key = tuple(d.live)
        if key not in self.indices:
            self.indices[key] = torch.tensor(d.live, device=c.device)
        self._index, self._rows = self.indices[key], len(d.live)
        self.layers.route(self._index, len(d.live) == self.n)
        return dict(noisy=noisy.to(c.dtype), ts=ts, targets=targets, text=self.text.inputs(d.prompts))

    def record_losses(self, live: list[int], values: list[float], step: int) -> None:
        for k, s in enumerate(live):
            sid = self.ids[s]
            if not math.isfinite(values[k]):
                self.failed[sid] = f"style {sid}: loss is {values[k]} at step {step + 1}"
                self.active[s], self.alive[s] = 0, False
                log.error(self.failed[sid])
            else:
                self.losses[sid].append(values[k])

    # ------------------------------------------------------------------ the end
    def export(self, folders: list[Path]) -> None:
        """Each style that did not diverge to its folder (the model is back as loaded afterwards)."""
        self.c.unet.eval()
        self.c.text_encoder.eval()
        self.layers.export(
            {s: folders[s] for s, sid in enumerate(self.ids) if sid not in self.failed and folders[s] is not None}
        )

    def close(self) -> None:
        self.layers.take_out()
        self.c.unet.eval()
        self.c.text_encoder.eval()
        for p in self.params:
            p.grad = None


def train_styles(
    c: Components,
    styles: list[Style],
    pools: list[Optional[ClassPool]],
    spec,
    ckpt_dir: Optional[Path] = None,
    export_dirs: Optional[list[Path]] = None,
    clock: Optional[list] = None,
    snapshots: Optional[dict[int, list[Path]]] = None,
    state_to: Optional[Path] = None,
) -> Trained:
    """Train ``styles`` in one pass, resuming from and checkpointing into ``ckpt_dir``; write each finished style's
    adapter to its ``export_dirs`` entry, each live style's adapter as it is after step ``k`` to its ``snapshots[k]``
    entry, and the pass's state after its last step as a checkpoint in ``state_to``. The model is left as it was.
    ``clock``, if given, gets the time at which each step's losses reached the host (the loop is then at most one
    step ahead of the device), for steady-state step times free of the set-up and export."""
    t0 = time.time()
    p = Pass(c, styles, pools, spec)
    tr, n = p.tr, p.n
    try:
        start = p.resume(ckpt_dir)
        c.unet.train()
        c.text_encoder.train(p.train_te)
        every = tr.checkpoint_every if ckpt_dir is not None else 0
        desc = f"train {styles[0].id}" if n == 1 else f"train {n} styles"
        bar = tqdm(range(start, tr.steps), desc=desc, unit="step", leave=False, initial=start, total=tr.steps)
        ticks = clock if clock is not None else []
        graphs = p.compile_now and tr.compile_mode in ("reduce-overhead", "max-autotune")  # modes with CUDA graphs
        if p.compile_now:
            p.unet = torch.compile(c.unet, mode=None if tr.compile_mode == "default" else tr.compile_mode)
        graph = graphed.StepGraph(p.whole_step) if p.record else None
        fp8_on = bool(tr.fp8) and p.layers.fp8_ok and fp8.supported(c.device)
        if tr.fp8 and not fp8_on:
            why = "peft's adapter layers" if not p.layers.fp8_ok else f"{c.device} has no fp8 matrix units"
            log.warning("train.fp8=true: not applied here (%s); training in %s", why, c.dtype)
        # the next step's data is drawn on the worker while the device runs this step; leaving the block waits
        # for a draw still under way
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="stylexfer-draw") as ahead,
            compiled_vae_encoder(c, tr.compile_vae and p.feeds[0].encodes_per_step),
            fp8.fp8_linears(c.unet, fp8_on) as n_fp8,
        ):
            if fp8_on:
                log.info("train.fp8: %d frozen linear layers of the UNet compute in float8 e4m3", n_fp8)
            pending = None
            d = None
            for step in bar:
                live = p.live()
                if not live:
                    break
                d = keep_live(pending.result() if pending is not None else draw_step(c, p.feeds, live), live)
                checkpoint_now = every and (step + 1) % every == 0 and step + 1 < tr.steps
                pending = None
                if step + 1 < tr.steps and not checkpoint_now:  # a checkpoint saves the streams first
                    pending = ahead.submit(draw_step, c, p.feeds, live)
                inputs = p.inputs(d)
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
                    style_loss = p.forward_loss(**inputs)
                # copy the losses to the host without waiting: the backward and the optimizer step are queued
                # first, and the host reads the values (ready since the forward) while the device works on them
                host = style_loss.detach().to("cpu", non_blocking=c.device.type == "cuda")
                ready = torch.cuda.Event() if c.device.type == "cuda" else None
                if ready is not None:
                    ready.record()
                if not replayed:
                    p.update(style_loss)
                p.sched.step()
                if ready is not None:
                    ready.synchronize()
                values = host.tolist()
                del style_loss  # its autograd graph too (a CUDA graph is recorded with none alive)
                ticks.append(time.perf_counter())
                p.record_losses(live, values, step)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{np.mean(values):.4f}")
                if snapshots and step + 1 in snapshots:
                    p.layers.snapshot({s: snapshots[step + 1][s] for s in p.live()})
                if checkpoint_now:
                    p.checkpoint(ckpt_dir, step + 1)
                    for sid in p.ids:
                        faults.checkpoint(f"train:{sid}:{step + 1}")
                    if step + 1 < tr.steps and p.live():
                        pending = ahead.submit(draw_step, c, p.feeds, p.live())
        if state_to is not None and p.live():
            p.checkpoint(state_to, tr.steps)
        if p.compile_now:
            compiled.mark_warm(c, spec, n)
        skip = min(10, len(ticks) // 2)  # the first steps compile and autotune
        per_step = steady_step_s(ticks, skip)
        if per_step is not None and d is not None:
            log.info(
                "%d styles: %.3f s per step over steps %d-%d (%.1f samples/s)",
                n,
                per_step,
                start + skip + 2,
                start + len(ticks),
                len(d.t) / per_step,
            )
        p.export(export_dirs or [None] * n)
    finally:
        p.close()
    return Trained(losses=p.losses, failed=p.failed, seconds=time.time() - t0, layers=p.layers.trained)
