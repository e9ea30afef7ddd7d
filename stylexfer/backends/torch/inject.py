"""Style injection (StyleID) in the PyTorch backend's sampler.

Three pieces, each usable alone:

- :class:`Injection`, the state the attention processors share: the banks of keys and values (per layer, a
  tensor ``(steps, references, tokens, channels)``), the current step (set by a forward pre-hook on the UNet
  from the timestep it is called with, as a number and as a tensor on the device), and what the processors do
  now: ``record`` (store every row's keys and values at this step), ``inject`` or nothing;
- :class:`InjectingProcessor`, installed through ``unet.set_attn_processor`` on the chosen decoder
  self-attention layers. While injecting, a batch is laid out per classifier-free-guidance half as
  ``[twin rows; injected rows]``: the twins sample the same prompts from the same starts without injection
  and give the content queries; an injected row's query is ``gamma·q_twin + (1 − gamma)·q_own``, scaled by
  the temperature, against its reference's keys and values (with ``gamma = 0`` there are no twins);
- :func:`invert`: DDIM inversion of the reference images over the sampling timesteps (unconditional, as
  StyleID), recording the banks on the way; epsilon and v prediction.

The queries and keys go through the layer's own ``to_q``/``to_k``/``to_v``/``to_out`` modules, so a fused or
unfused LoRA (peft's wrappers) acts on them as it does without injection.

Under the compiled sampling UNet (``sample.compile``) the processors are traced with it. What changes from step
to step reaches them as tensors, never as Python numbers (a number would be a guard, and every step a new graph):
the banks are gathered with the step's index tensor, and where only a share of the steps is injected the choice
between the injected and the plain attention is a ``torch.where`` on it. The hook that sets the step runs eagerly,
outside the graph. So one graph serves every step (measured: docs/performance.md).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


class Injection:
    """What the injecting processors share during one sampling context."""

    def __init__(
        self,
        layers: Sequence[str],
        timesteps: Sequence[int],
        gamma: float = 0.75,
        temperature: float = 1.5,
        share: float = 1.0,
        concat: bool = False,
    ):
        self.layers = list(layers)
        self.timesteps = torch.tensor([float(t) for t in timesteps])  # sampling order: index 0 is the noisiest
        self.gamma, self.temperature, self.concat = float(gamma), float(temperature), concat
        self.injected_steps = max(1, math.ceil(share * len(timesteps)))
        self.mode: Optional[str] = None  # None | "record" | "inject"
        self.step = 0
        self.step_index = torch.zeros((), dtype=torch.long)  # the step as a tensor on the device (the banks' index)
        self.k: dict[str, list] = {n: [None] * len(timesteps) for n in self.layers}
        self.v: dict[str, list] = {n: [None] * len(timesteps) for n in self.layers}
        self._stacked: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the banks as tensors, while injecting
        self.refs: Optional[torch.Tensor] = None  # each injected row's reference (index into the banks)

    @property
    def twin(self) -> bool:
        return self.gamma > 0

    def at(self, timestep) -> None:
        """The step of ``timestep``: the nearest sampling timestep (Euler-type samplers use float timesteps)."""
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        self.step = int(torch.argmin((self.timesteps - t).abs()))

    def prepare(self, timestep, device: torch.device) -> None:
        """Before each UNet call (eagerly, outside any compiled graph): the step of ``timestep``, its index tensor
        on ``device`` updated in place, and, while injecting, the banks stacked there and the rows' references."""
        self.at(timestep)
        if self.mode == "record":
            self._stacked.clear()  # the lists change: stacked again when injecting
        if self.mode != "inject":
            return
        if self.step_index.device != device:
            self.step_index = self.step_index.to(device)
        self.step_index.fill_(self.step)
        if self.refs is not None and self.refs.device != device:
            self.refs = self.refs.to(device)
        self.stacked(device)

    def stacked(self, device: torch.device) -> None:
        """The banks as one tensor per layer on ``device`` (made once; the sampler makes them before its first
        call, outside the pipeline's no-grad context, so that the compiled graph's guards see the same kind of
        tensor whether the bank was just recorded or read from the store)."""
        for n in self.layers:
            if n not in self._stacked:
                self._stack(n, torch.stack(self.k[n]).to(device), torch.stack(self.v[n]).to(device))

    def _stack(self, layer: str, k: torch.Tensor, v: torch.Tensor) -> None:
        """``layer``'s banks as the tensors ``k``, ``v`` (``(steps, rows, tokens, channels)``); the per-step lists
        become views of them (the bank is held once)."""
        self._stacked[layer] = (k, v)
        self.k[layer], self.v[layer] = list(k.unbind(0)), list(v.unbind(0))

    @property
    def all_steps(self) -> bool:
        return self.injected_steps >= len(self.timesteps)

    def banks(self) -> dict[str, torch.Tensor]:
        """The recorded banks as tensors ``(steps, rows, tokens, channels)``, keyed ``<layer>.k`` / ``<layer>.v``."""
        out = {}
        for n in self.layers:
            if any(x is None for x in self.k[n]):
                raise RuntimeError(f"layer {n}: the bank misses steps (was every sampling timestep recorded?)")
            out[f"{n}.k"], out[f"{n}.v"] = torch.stack(self.k[n]), torch.stack(self.v[n])
        return out

    def load(self, banks: dict[str, torch.Tensor]) -> None:
        for n in self.layers:
            self._stack(n, banks[f"{n}.k"], banks[f"{n}.v"])

    def kv(self, layer: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference keys and values of ``rows`` injected rows at the current step."""
        k_all, v_all = self._stacked[layer]
        k, v = k_all[self.step_index], v_all[self.step_index]
        if self.concat:  # every reference's tokens, one sequence shared by every row
            return (
                k.reshape(1, -1, k.shape[-1]).expand(rows, -1, -1),
                v.reshape(1, -1, v.shape[-1]).expand(rows, -1, -1),
            )
        idx = self.refs.to(k.device)
        return k[idx], v[idx]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _attend(attn, q, k, v) -> torch.Tensor:
    """Multi-head attention of projected ``q, k, v`` (``(batch, tokens, channels)``), merged heads."""
    out = F.scaled_dot_product_attention(_heads(q, attn.heads), _heads(k, attn.heads), _heads(v, attn.heads))
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d).to(q.dtype)


class InjectingProcessor:
    """A self-attention processor for the SD transformer block's ``attn1`` that records or injects (see the
    module's docstring); anything else it leaves to the processor it replaced."""

    def __init__(self, state: Injection, layer: str, fallback):
        self.state, self.layer, self.fallback = state, layer, fallback

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        s = self.state
        plain = (
            encoder_hidden_states is None
            and attention_mask is None
            and hidden_states.ndim == 3
            and attn.spatial_norm is None
            and attn.group_norm is None
            and not attn.residual_connection
            and attn.rescale_output_factor == 1.0
        )
        if s.mode is None or not plain:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if s.mode == "record":
            s.k[self.layer][s.step], s.v[self.layer][s.step] = k.detach(), v.detach()
        if s.mode != "inject":
            out = _attend(attn, q, k, v)
        elif s.all_steps:
            out = self._inject(attn, q, k, v)
        elif torch.compiler.is_compiling():  # the step is a tensor in the graph: both, and the step's choice
            out = torch.where(s.step_index < s.injected_steps, self._inject(attn, q, k, v), _attend(attn, q, k, v))
        else:
            out = self._inject(attn, q, k, v) if s.step < s.injected_steps else _attend(attn, q, k, v)
        return attn.to_out[1](attn.to_out[0](out))

    def _inject(self, attn, q, k, v) -> torch.Tensor:
        s = self.state
        n = s.refs.shape[0]
        groups = 2 if s.twin else 1
        halves = q.shape[0] // (groups * n)  # classifier-free guidance: [uncond; cond]
        shape = (halves, groups, n) + q.shape[1:]
        q, k, v = q.view(shape), k.view(shape), v.view(shape)
        qi = q[:, -1] if not s.twin else s.gamma * q[:, 0] + (1.0 - s.gamma) * q[:, 1]
        ks, vs = s.kv(self.layer, n)
        ks, vs = ks.to(qi.dtype), vs.to(qi.dtype)
        qi = (qi * s.temperature).reshape(halves * n, *q.shape[3:])
        inj = _attend(attn, qi, ks.repeat(halves, 1, 1), vs.repeat(halves, 1, 1)).view(halves, n, -1, q.shape[-1])
        if not s.twin:
            return inj.reshape(halves * n, *inj.shape[2:])
        twin = _attend(
            attn,
            q[:, 0].reshape(halves * n, *q.shape[3:]),
            k[:, 0].reshape(halves * n, *k.shape[3:]),
            v[:, 0].reshape(halves * n, *v.shape[3:]),
        ).view(halves, n, -1, q.shape[-1])
        return torch.stack([twin, inj], dim=1).reshape(halves * 2 * n, *inj.shape[2:])


@contextlib.contextmanager
def installed(unet, state: Injection):
    """The injecting processors on ``state.layers`` and the timestep hook, for the context."""
    before = dict(unet.attn_processors)
    wanted = {f"{n}.processor" for n in state.layers}
    missing = wanted - set(before)
    if missing:
        raise ValueError(f"not attention processors of this UNet: {sorted(missing)}")
    unet.set_attn_processor(
        {
            name: InjectingProcessor(state, name[: -len(".processor")], p) if name in wanted else p
            for name, p in before.items()
        }
    )

    @torch.compiler.disable
    def hook(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        state.prepare(args[1] if len(args) > 1 else kwargs["timestep"], sample.device)

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()
        unet.set_attn_processor(before)


def predicted_x0_eps(model_out: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, prediction_type: str):
    """(x0, eps) from the UNet's output at a latent with cumulative alpha ``alpha``."""
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "v_prediction":
        return a * z - s * model_out, s * z + a * model_out
    if prediction_type == "epsilon":
        return (z - s * model_out) / a, model_out
    raise ValueError(f"prediction type {prediction_type}: inversion supports epsilon and v_prediction")


@torch.no_grad()
def invert(
    unet,
    latents: torch.Tensor,
    uncond: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    state: Optional[Injection] = None,
) -> torch.Tensor:
    """DDIM inversion of ``latents`` (scaled VAE latents) up the sampling ``timesteps`` (given noisiest first),
    unconditionally (``uncond``: the empty prompt's embeddings, one row per latent), as StyleID inverts: at
    each timestep t the UNet sees the latent of the step below at t, and the latent moves up to t. With
    ``state``, every injected layer's keys and values are recorded at each step. Returns the latent at the
    noisiest timestep."""
    order = sorted(range(len(timesteps)), key=lambda i: float(timesteps[i]))  # lowest noise first
    z = latents
    if state is not None:
        state.mode = "record"
    try:
        for pos, i in enumerate(order):
            t = timesteps[i]
            below = timesteps[order[pos - 1]] if pos else None
            a_now = alphas_cumprod[int(below)] if below is not None else torch.tensor(1.0)
            a_next = alphas_cumprod[int(t)]
            out = unet(z, t, encoder_hidden_states=uncond).sample
            x0, eps = predicted_x0_eps(out.float(), z.float(), a_now.float().to(z.device), prediction_type)
            z = (a_next.sqrt().to(z.device) * x0 + (1 - a_next).sqrt().to(z.device) * eps).to(latents.dtype)
    finally:
        if state is not None:
            state.mode = None
    return z


def adain(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``x`` (``(rows, C, H, W)``) with each channel's mean and std those of ``ref`` (broadcast rows)."""
    mu, sd = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
    return (x - mu) / (sd + eps) * ref.std(dim=(2, 3), keepdim=True) + ref.mean(dim=(2, 3), keepdim=True)


def reference_latents(c, references) -> torch.Tensor:
    """The reference images (PIL, at the sampling resolution) as scaled VAE latents in the UNet's dtype."""
    from .tensors import to_tensor

    x = torch.stack([to_tensor(img) for img in references]).to(c.device, c.vae_dtype)
    with torch.no_grad():
        z = c.vae.encode(x).latent_dist.mode() * c.vae.config.scaling_factor
    return z.to(c.dtype)


def fill_banks(c, state: Injection, references, timesteps, alphas_cumprod, bank_dir=None) -> torch.Tensor:
    """``state``'s banks for ``references``: read from ``bank_dir`` (a stage of the store) when it holds them,
    else made by inversion (and written there). Returns the references' inverted latents at the noisiest step."""
    from safetensors.torch import load_file, save_file

    from ...store import build_once
    from .models import encode_prompts

    made: dict = {}

    def build(folder=None):
        uncond = encode_prompts(c, [""] * len(references)).to(c.dtype)
        pred = c.scheduler_config.get("prediction_type", "epsilon")
        made["top"] = invert(c.unet, reference_latents(c, references), uncond, timesteps, alphas_cumprod, pred, state)
        if folder is not None:
            tensors = {k: v.contiguous().cpu() for k, v in {**state.banks(), "top": made["top"]}.items()}
            save_file(tensors, str(folder / "bank.safetensors"), metadata={"layers": ",".join(state.layers)})

    if bank_dir is None:
        build()
        return made["top"]
    path, built = build_once(bank_dir, build)
    if built:
        return made["top"]
    banks = load_file(str(path / "bank.safetensors"), device=str(c.device))
    state.load(banks)
    return banks["top"]


@contextlib.contextmanager
def start_matched(pipe, state: Injection, top: torch.Tensor, rows: slice):
    """The pipeline's start latents of ``rows`` AdaIN-matched to their references' inverted latents ``top``
    (StyleID's initial-latent AdaIN) for the context; ``all``: the references' statistics together."""
    prepare = pipe.prepare_latents

    def matched(*args, **kwargs):
        latents = prepare(*args, **kwargs)
        ref = top.transpose(0, 1).reshape(1, top.shape[1], -1, top.shape[3]) if state.concat else top[state.refs]
        latents = latents.clone()
        latents[rows] = adain(latents[rows].float(), ref.to(latents.device).float()).to(latents.dtype)
        return latents

    pipe.prepare_latents = matched
    try:
        yield
    finally:
        del pipe.prepare_latents  # the class's method again


@contextlib.contextmanager
def injecting(pipe, c, request: dict, *, steps: int, strength: float, img2img: bool, run):
    """A ``make(prompts, seeds, refs)`` for :func:`stylexfer.backends.torch.sample.sampling` that samples with
    style injection. ``request``: ``spec`` (:func:`stylexfer.inject.spec`), ``references`` (PIL images at the
    sampling resolution), ``bank_dir`` (where the store keeps their banks, or None); ``run(prompts, seeds)``:
    one pipeline call (``controls=``: its control images, with structure control)."""
    from ...inject import chosen_layers

    spec = request["spec"]
    pipe.scheduler.set_timesteps(steps, device=c.device)
    ts = pipe.get_timesteps(steps, strength, c.device)[0] if img2img else pipe.scheduler.timesteps
    state = Injection(
        chosen_layers(spec["layers"], dict(c.unet.config)),
        [t.item() for t in ts],
        gamma=spec["gamma"],
        temperature=spec["temperature"],
        share=spec["share"],
        concat=spec["reference"] == "all",
    )
    with installed(c.unet, state):
        top = fill_banks(c, state, request["references"], list(ts), pipe.scheduler.alphas_cumprod, request["bank_dir"])
        state.stacked(c.device)

        def make(prompts, seeds, refs=None, controls=None):
            n = len(prompts)
            state.refs = torch.tensor(list(refs) if refs is not None else [0] * n)
            twin = 2 if state.twin else 1
            rows = slice(n, 2 * n) if state.twin else slice(0, n)
            match = start_matched(pipe, state, top, rows) if spec["adain_init"] else contextlib.nullcontext()
            with match:
                state.mode = "inject"
                try:
                    more = {"controls": list(controls) * twin} if controls is not None else {}
                    images = run(list(prompts) * twin, list(seeds) * twin, **more)
                finally:
                    state.mode = None
            return images[rows]

        yield make
