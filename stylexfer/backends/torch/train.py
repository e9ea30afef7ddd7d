"""The PyTorch backend's training recipe as pieces (the diffusers DreamBooth-LoRA recipe, as modules); the loop that
runs them, for one style or many in one pass, is :mod:`.trainer`.

Per step: ``train.batch_size`` instance images of the style (augmented) with their prompts
(``data.instance_prompt``), plus as many class images with their class prompts when prior
preservation is on; VAE latents, noise and a random timestep per sample; the UNet (with LoRA, and the
text encoder with LoRA when ``lora.text_encoder_lora_rank > 0``) predicts the noise or the velocity, as the
base model's scheduler config says; loss = MSE(instance) + ``prior.weight`` × MSE(class). The text
encoder's LoRA sits in its own optimizer group at ``train.lr × lora.text_encoder_lr_scale``.

The LoRA layers are :mod:`stylexfer.multilora`'s (one slot per style of a pass), initialised as peft initialises
them, with matmuls in ``train.lora_compute``'s dtype.
All randomness (image order, crops, flips, VAE sampling, noise, timesteps, LoRA init) comes from
streams seeded by ``(train.seed, style id)``, so a style's adapter does not depend on other styles.
The adapter is written through peft's layers with ``StableDiffusionPipeline.save_lora_weights`` (safetensors, diffusers
format, with the LoRA config as metadata), so stock ``load_lora_weights`` reads it back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ...config import LoraCompute, Precision, value
from ...data import Style
from ...feed import GRID, PER_STEP, DataFeed
from ...prior import ClassPool
from ...store import latest_checkpoint, write_checkpoint
from ...streams import Stream, draw_noise
from .models import Components, encode_prompts, tokenize
from .multilora import MultiAdapters, Router, inject, reinstate, restore
from .tensors import to_tensor, to_uint8_tensor, uint8_to_model

log = logging.getLogger(__name__)


def _lora_config(rank: int, alpha: Optional[float], targets, dropout: float, kind: str = "lora"):
    """peft's config of the adapter variant ``lora.kind``: LoRA, DoRA (LoRA with a learned magnitude per
    output), LoHa (Hadamard product of two low-rank pairs) or LoKr (Kronecker product)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    alpha = alpha if alpha is not None else rank
    if kind in ("lora", "dora"):
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            init_lora_weights="gaussian",
            target_modules=list(targets),
            use_dora=kind == "dora",
        )
    cls = LoHaConfig if kind == "loha" else LoKrConfig
    return cls(r=rank, alpha=alpha, module_dropout=dropout, target_modules=list(targets), init_weights=True)


def autocast_for(components: Components, precision: Precision):
    if components.device.type == "cuda" and precision != Precision.no:
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == Precision.bf16 else torch.float16)
    return contextlib.nullcontext()


def add_adapters(components: Components, spec, seed: int) -> list[dict]:
    """Inject fresh LoRA layers (seeded init) into the UNet and, if asked, the text encoder;
    return optimizer parameter groups (LoRA weights in float32)."""
    lo = spec.lora
    kind = value(lo.kind)
    torch.manual_seed(seed)
    components.unet.add_adapter(
        _lora_config(lo.unet_lora_rank, lo.unet_alpha, lo.unet_target_modules, lo.dropout, kind)
    )
    groups = [
        {"params": [p for p in components.unet.parameters() if p.requires_grad], "lr": spec.train.lr, "name": "unet"}
    ]
    if lo.text_encoder_lora_rank > 0:
        components.text_encoder.add_adapter(
            _lora_config(
                lo.text_encoder_lora_rank, lo.text_encoder_alpha, lo.text_encoder_target_modules, lo.dropout, kind
            )
        )
        groups.append(
            {
                "params": [p for p in components.text_encoder.parameters() if p.requires_grad],
                "lr": spec.train.lr * lo.text_encoder_lr_scale,
                "name": "text_encoder",
            }
        )
    for g in groups:
        for p in g["params"]:
            p.data = p.data.float()
    return groups


def remove_adapters(components: Components) -> None:
    """Take the LoRA layers out again, leaving the base model exactly as loaded (plain modules)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in (components.unet, components.text_encoder):
        if "default" in (getattr(model, "peft_config", None) or {}):
            if hasattr(model, "delete_adapters"):
                model.delete_adapters("default")
            else:
                model.delete_adapter("default")
        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):  # an emptied wrapper: put the wrapped layer back
                model.set_submodule(name, module.get_base_layer())
        model.requires_grad_(False)


def save_adapter(components: Components, folder: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(components.unet))
    te = components.text_encoder
    te_layers = None
    te_meta = None
    if getattr(te, "peft_config", None):
        te_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(te))
        te_meta = te.peft_config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers={k: v.detach().float().cpu() for k, v in unet_layers.items()},
        text_encoder_lora_layers=None
        if te_layers is None
        else {k: v.detach().float().cpu() for k, v in te_layers.items()},
        unet_lora_adapter_metadata=components.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=te_meta,
        safe_serialization=True,
    )


# LoHa and LoKr adapters, which diffusers' LoRA loader does not read, are stored in the same file name with
# peft's own keys under "unet." / "text_encoder." and their peft configs in the file's metadata
PEFT_KIND_KEY = "stylexfer_peft_kind"


def save_peft_adapter(components: Components, folder: Path, kind: str) -> None:
    """Write a LoHa/LoKr adapter (peft's state dict and config of each trained part) as one safetensors file."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from ...backends import ADAPTER_FILE

    tensors, meta = {}, {PEFT_KIND_KEY: kind}
    for part, model in (("unet", components.unet), ("text_encoder", components.text_encoder)):
        if "default" in (getattr(model, "peft_config", None) or {}):
            for k, v in get_peft_model_state_dict(model).items():
                tensors[f"{part}.{k}"] = v.detach().float().cpu().contiguous()
            meta[f"{part}_config"] = json.dumps(model.peft_config["default"].to_dict(), default=list)
    save_file(tensors, str(Path(folder) / ADAPTER_FILE), metadata=meta)


def load_peft_adapter(components: Components, file: Path) -> bool:
    """Put a LoHa/LoKr file's adapters into the model as peft adapter "default"; False if it is a diffusers
    LoRA file (which diffusers' own loader reads)."""
    from peft import PeftConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        meta = f.metadata() or {}
        if PEFT_KIND_KEY not in meta:
            return False
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for part, model in (("unet", components.unet), ("text_encoder", components.text_encoder)):
        if f"{part}_config" not in meta:
            continue
        config = PeftConfig.from_peft_type(**json.loads(meta[f"{part}_config"]))
        model.add_adapter(config)
        sd = {k[len(part) + 1 :]: v for k, v in tensors.items() if k.startswith(part + ".")}
        set_peft_model_state_dict(model, sd, adapter_name="default")
        model.to(components.device)
    return True


def _peft_lora_weights(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (lora_A weight (r, in), lora_B weight (out, r))} of the model's peft adapter."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            out[name] = (
                module.lora_A["default"].weight.detach().clone(),
                module.lora_B["default"].weight.detach().clone(),
            )
    return out


def inject_adapters(c: Components, spec, seeds: list[int]) -> MultiAdapters:
    """LoRA layers (:mod:`stylexfer.multilora`) with one slot per style in the UNet and, when
    ``lora.text_encoder_lora_rank > 0``, the text encoder; slot ``s`` starts exactly as a peft adapter
    initialised with ``seeds[s]`` would (peft's init, so the saved files are peft's format)."""
    lo = spec.lora
    inits = []
    for seed in seeds:
        add_adapters(c, spec, seed)
        inits.append((_peft_lora_weights(c.unet), _peft_lora_weights(c.text_encoder)))
        remove_adapters(c)
    compute = c.dtype if value(spec.train.lora_compute) == LoraCompute.model.value else torch.float32
    ad = MultiAdapters(router=Router())
    n = len(seeds)
    ad.unet = inject(
        c.unet,
        lo.unet_target_modules,
        n,
        lo.unet_lora_rank,
        lo.unet_alpha or lo.unet_lora_rank,
        ad.router,
        compute,
        lo.dropout,
    )
    if lo.text_encoder_lora_rank > 0:
        ad.text_encoder = inject(
            c.text_encoder,
            lo.text_encoder_target_modules,
            n,
            lo.text_encoder_lora_rank,
            lo.text_encoder_alpha or lo.text_encoder_lora_rank,
            ad.router,
            compute,
            lo.dropout,
        )
    with torch.no_grad():
        for s, (u, t) in enumerate(inits):
            for layers, weights in ((ad.unet, u), (ad.text_encoder, t)):
                for name, layer in layers.items():
                    a, b = weights[name]
                    layer.A[s].copy_(a.float())
                    layer.B[s].copy_(b.float())
    return ad


def export_adapters(c: Components, spec, ad: MultiAdapters, folders: dict[int, Path]) -> None:
    """Write each slot ``s`` of ``folders`` ({slot: folder}) as a stock diffusers LoRA file, through peft's layers
    and ``save_lora_weights``: one peft adapter is added, filled with each slot's weights in turn and saved (not
    one adapter per slot: adding and removing peft's layers on an SD 2.1 UNet takes ~0.3 s each time). The
    injected layers must be taken out first (:func:`stylexfer.multilora.restore`)."""
    if not folders:
        return
    add_adapters(c, spec, 0)
    try:
        pairs = [
            (model.get_submodule(name), layer)
            for model, layers in ((c.unet, ad.unet), (c.text_encoder, ad.text_encoder))
            for name, layer in layers.items()
        ]
        for slot, folder in folders.items():
            with torch.no_grad():
                for m, layer in pairs:
                    m.lora_A["default"].weight.copy_(layer.A[slot])
                    m.lora_B["default"].weight.copy_(layer.B[slot])
            save_adapter(c, folder)
    finally:
        remove_adapters(c)


def export_adapter(c: Components, spec, ad: MultiAdapters, slot: int, folder: Path) -> None:
    """Write slot ``slot`` as a stock diffusers LoRA file (:func:`export_adapters` for one slot)."""
    export_adapters(c, spec, ad, {slot: folder})


def snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights per sample (Hang et al. 2023, as diffusers' examples compute them):
    ``min(SNR(t), γ) / SNR(t)`` for epsilon prediction, ``min(SNR(t), γ) / (SNR(t) + 1)`` for v-prediction."""
    ac = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=gamma)
    return w / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else w / snr


def style_losses(c: Components, per_sample: torch.Tensor, t: torch.Tensor, spec, n_styles: int, use_prior: bool):
    """Each style's loss from the per-sample MSEs of a step (rows grouped by style, instance samples
    first): the instance mean, min-SNR-weighted when ``train.snr_gamma`` is set (the class samples are
    not, as in diffusers' DreamBooth example), plus ``prior.weight`` × the class mean under prior."""
    b = spec.train.batch_size
    per_style = per_sample.view(n_styles, -1)
    inst = per_style[:, :b]
    if spec.train.snr_gamma:
        inst = inst * snr_weights(c.noise_scheduler, t, spec.train.snr_gamma).view(n_styles, -1)[:, :b]
    loss = inst.mean(dim=1)
    if use_prior:
        loss = loss + spec.prior.weight * per_style[:, b:].mean(dim=1)
    return loss


def noisy_from(components: Components, latent_dist, eps: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """The noisy latents, timesteps and target (noise or velocity, as the base model's scheduler says)
    from a VAE posterior and the draws of :func:`draw_noise` (any number of styles' rows at once)."""
    c = components
    nb = c.device.type == "cuda"  # draws come pinned from the batched path's prefetch: copy without a stall
    with torch.no_grad():
        eps = eps.to(c.device, non_blocking=nb).to(latent_dist.mean.dtype)
        latents = (latent_dist.mean + latent_dist.std * eps).float() * c.vae.config.scaling_factor
        noise, t = noise.to(c.device, non_blocking=nb), t.to(c.device, non_blocking=nb)
        noisy = c.noise_scheduler.add_noise(latents, noise, t)
        pt = c.noise_scheduler.config.prediction_type
        if pt == "epsilon":
            target = noise
        elif pt == "v_prediction":
            target = c.noise_scheduler.get_velocity(latents, noise, t)
        else:
            raise ValueError(f"unsupported prediction_type {pt!r} in the model's scheduler config")
    return noisy, t, target


def noisy_inputs(
    components: Components,
    pixels: Optional[torch.Tensor],
    gen: torch.Generator,
    latent_dist=None,
    noise_offset: float = 0.0,
    timestep_bias: str = "none",
):
    """VAE latents (sampled with ``gen``), noise and a timestep per sample from ``gen``: the noisy
    latents, the timesteps and the target."""
    c = components
    if latent_dist is None:
        with torch.no_grad():
            latent_dist = c.vae.encode(pixels.to(c.device, dtype=c.vae_dtype)).latent_dist
    eps, noise, t = draw_noise(
        gen, tuple(latent_dist.mean.shape), c.noise_scheduler.config.num_train_timesteps, noise_offset, timestep_bias
    )
    return noisy_from(c, latent_dist, eps, noise, t)


def denoising_loss(
    components: Components,
    pixels: Optional[torch.Tensor],
    cond: torch.Tensor,
    gen: torch.Generator,
    precision: Precision = Precision.no,
    latent_dist=None,
    noise_offset: float = 0.0,
    with_t: bool = False,
    timestep_bias: str = "none",
):
    """Per-sample MSE of the model's noise/velocity prediction (the training objective); with ``with_t``
    also the timesteps drawn."""
    c = components
    noisy, t, target = noisy_inputs(c, pixels, gen, latent_dist, noise_offset, timestep_bias)
    with autocast_for(c, precision):
        pred = c.unet(noisy.to(c.dtype), t, cond.to(c.dtype)).sample
    mse = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (mse, t) if with_t else mse


# ------------------------------------------------------------------------------------- checkpoints
# A checkpoint is a folder ``step-NNNNNNN/`` (renamed into place when complete) holding the LoRA
# weights, the optimizer state and the torch RNG state as safetensors, and the step, the numpy RNG
# state, the data order and the losses so far as JSON: resuming from it continues bit for bit.


def replay_schedule(sched, steps: int) -> None:
    """Bring a learning-rate schedule to ``steps`` (a resumed run: the schedule is a function of the step).
    PyTorch warns when a scheduler steps before its optimizer, which is what a replay is: not said here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        for _ in range(steps):
            sched.step()


def save_checkpoint(folder: Path, step: int, params, opt, streams: list["Stream"], cycles, losses) -> None:
    from safetensors.torch import save_file

    tensors = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    for k, st in enumerate(streams):
        tensors[f"rng.torch.{k}"] = st.torch.get_state()
    groups = [{k: float(v) if torch.is_tensor(v) else v for k, v in g.items()} for g in osd["param_groups"]]
    meta = {
        "step": step,
        "param_groups": groups,
        "np_state": [st.np.bit_generator.state for st in streams],
        "orders": [None if c is None else c.order for c in cycles],
        "losses": losses,
    }
    write_checkpoint(folder, step, lambda file: save_file(tensors, str(file)), meta)


def load_checkpoint(folder: Path, params, opt, streams: list["Stream"], cycles):
    from safetensors.torch import load_file

    latest = latest_checkpoint(folder)
    if latest is None:
        return 0, None
    tensors, meta = load_file(str(latest[0])), latest[1]
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param.{i}"].to(p.device))
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    tensors_now = [{k: v for k, v in g.items() if torch.is_tensor(v)} for g in opt.param_groups]
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for g, kept in zip(opt.param_groups, tensors_now):  # a tensor LR stays the same tensor (a CUDA graph reads it)
        for k, t in kept.items():
            t.fill_(float(g[k]))
            g[k] = t
    for k, st in enumerate(streams):
        st.torch.set_state(tensors[f"rng.torch.{k}"])
        st.np.bit_generator.state = meta["np_state"][k]
    for c, order in zip(cycles, meta["orders"]):
        if c is not None:
            c.order = list(order)
    return int(meta["step"]), meta["losses"]


class TextCache:
    """Prompt embeddings: computed once per prompt while the text encoder is frozen, every step otherwise."""

    def __init__(self, c: Components, trainable: bool):
        self.c, self.trainable, self.cache = c, trainable, {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        if self.trainable:
            return encode_prompts(self.c, prompts, grad=True)
        return self.inputs(prompts)

    def inputs(self, prompts: list[str]) -> torch.Tensor:
        """What a step's text-encoder input is: the cached embeddings while the encoder is frozen, its token
        ids (the step runs the encoder) while it trains."""
        if self.trainable:
            return tokenize(self.c, prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            for p, e in zip(missing, encode_prompts(self.c, missing)):
                self.cache[p] = e
        return torch.stack([self.cache[p] for p in prompts])


def encode_crops(c: Components, todo: list, crops: dict, batch: int = 64) -> int:
    """Encode the grid crops ``todo`` ((feed, key) pairs: a :class:`stylexfer.feed.DataFeed` and one of its
    :meth:`~stylexfer.feed.DataFeed.grid_todo` keys) with the VAE in batches of ``batch`` into ``crops`` (key →
    posterior mean, std); returns how many. The next batches are cut and
    converted to uint8 tensors on worker threads (a few ahead) while the VAE encodes this one."""
    if not todo:
        return 0
    cuda = c.device.type == "cuda"

    def pixels(chunk):
        px = torch.stack([to_uint8_tensor(feed.crop(key)) for feed, key in chunk])
        return px.pin_memory() if cuda else px

    chunks = [todo[k : k + batch] for k in range(0, len(todo), batch)]
    ahead = 4
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="stylexfer-crops") as pool:
        pending = [pool.submit(pixels, ch) for ch in chunks[:ahead]]
        for k, chunk in enumerate(chunks):
            px = pending[k].result()
            if k + ahead < len(chunks):
                pending.append(pool.submit(pixels, chunks[k + ahead]))
            with torch.no_grad():
                x = uint8_to_model(px.to(c.device, non_blocking=cuda)).to(c.vae_dtype)
                d = c.vae.encode(x).latent_dist
            for j, (_, key) in enumerate(chunk):
                crops[key] = (d.mean[j : j + 1], d.std[j : j + 1])
            pending[k] = None  # the batch's pinned pixels go back to the allocator
    return len(todo)


class Feed:
    """One style's training data on this backend: :class:`stylexfer.feed.DataFeed` (what a step draws) and the
    posteriors it keeps.

    ``next()`` gives a step's ``train.batch_size`` instance samples followed by as many class samples (under prior
    preservation): pixels (uint8 (N, 3, H, W) with ``raw``, converted on the device: 4× less to copy) or cached VAE
    posteriors, and prompts. ``crops`` (grid crop key → posterior) may be shared by the feeds of a pass, so a shared
    class pool is encoded once; ``resized`` likewise.
    """

    def __init__(
        self,
        c: Components,
        style: Style,
        pool: Optional[ClassPool],
        spec,
        resized: Optional[dict] = None,
        raw: bool = False,
        crops: Optional[dict] = None,
    ):
        self.c, self.style, self.pool, self.raw = c, style, pool, raw
        self.resolution = spec.resolution
        self.data = DataFeed.of(style, pool, spec, resized)
        self.stream = self.data.stream
        self.latents: dict = {}  # image key → posterior (the ``cached`` policy)
        self.crops: dict = {} if crops is None else crops  # grid crop key → posterior (the ``grid`` policy)

    @property
    def encodes_per_step(self) -> bool:
        """Whether steps run the VAE (random 1-px crops, flips or rotations encoded every step)."""
        return self.data.policy == PER_STEP

    @property
    def resized(self) -> dict:
        return self.data.resized

    def cycles(self):
        return self.data.cycles()

    def crop_todo(self, seen: Optional[set] = None) -> list:
        """The (feed, key) pairs of grid crops not encoded yet nor in ``seen``."""
        return [(self.data, key) for key in self.data.grid_todo(self.crops, seen)]

    def prepare(self, batch: int = 64) -> int:
        """Encode every grid crop of the style's images and its class pool that is not cached yet (all of them, up
        front, in batches), so that no training step runs the VAE. Returns how many it encoded."""
        return encode_crops(self.c, self.crop_todo(), self.crops, batch)

    def next(self):
        d = self.data.next(self.latents)
        prompts, samples = d.prompts, d.samples
        if self.data.policy == GRID:
            if any(x.key not in self.crops for x in samples):
                self.prepare()
            return None, self._dist([self.crops[x.key] for x in samples]), prompts
        if self.data.policy == PER_STEP:
            convert = to_uint8_tensor if self.raw else to_tensor
            return torch.stack([convert(x.image) for x in samples]), None, prompts
        new = [x for x in samples if x.image is not None]
        if new:
            px = torch.stack([to_tensor(x.image) for x in new])
            with torch.no_grad():
                post = self.c.vae.encode(px.to(self.c.device, dtype=self.c.vae_dtype)).latent_dist
            for j, x in enumerate(new):
                self.latents[x.key] = (post.mean[j : j + 1], post.std[j : j + 1])
        return None, self._dist([self.latents[x.key] for x in samples]), prompts

    @staticmethod
    def _dist(parts: list) -> "Dist":
        return Dist(torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts]))


def make_optimizer(c: Components, groups: list[dict], tr, capturable: bool = False):
    """AdamW, fused on CUDA; ``capturable`` for a step recorded as a CUDA graph (state on the device)."""
    return torch.optim.AdamW(
        groups,
        betas=(tr.adam_beta1, tr.adam_beta2),
        weight_decay=tr.adam_weight_decay,
        eps=tr.adam_epsilon,
        **({"fused": True} if c.device.type == "cuda" else {}),
        **({"capturable": True} if capturable else {}),
    )


def save_peft_kind(c: Components, folder: Path, kind: str, train_te: bool) -> None:
    """Write the peft adapter now in the model (DoRA, LoHa, LoKr) to ``folder``."""
    if kind == "dora" and not train_te:  # diffusers' LoRA format carries the UNet's DoRA magnitudes
        save_adapter(c, folder)  # (transformers' loader drops a text encoder's: stylexfer's format)
    else:
        save_peft_adapter(c, folder, kind)


def write_snapshot(
    c: Components, spec, ad: Optional[MultiAdapters], folders: dict[int, Path], kind: str, train_te: bool
) -> None:
    """Write the adapters of slots ``folders`` ({slot: folder}) as they are now, mid-training, in the files the
    end of training writes; training goes on unchanged (stylexfer's layers are taken out for the export and put
    back, the same objects: the optimizer, a recorded CUDA graph and the streams are untouched)."""
    if ad is None:
        (folder,) = folders.values()
        save_peft_kind(c, folder, kind, train_te)
        return
    router = (ad.router.groups, ad.router.all_slots, ad.router.index)
    restore(c.unet, ad.unet)
    restore(c.text_encoder, ad.text_encoder)
    try:
        with torch.no_grad():
            export_adapters(c, spec, ad, folders)
    finally:
        reinstate(c.unet, ad.unet)
        reinstate(c.text_encoder, ad.text_encoder)
        ad.router.groups, ad.router.all_slots, ad.router.index = router


@dataclass
class Dist:
    mean: torch.Tensor
    std: torch.Tensor
