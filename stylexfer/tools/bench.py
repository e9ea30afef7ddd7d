"""Speed benchmark on an SD 2.1-shaped model with RANDOM weights (no download): the reference workload
(14 styles × 10 images at 512 px, 800 steps/style with prior preservation, 25 images/style at
strength 0.9 and 40 steps) through (a) the naive per-style loop and (b) the stylexfer path.

    python -m stylexfer.tools.bench --arch ../shared/reference/sd21_architecture.json [--part naive|stylexfer|both]

(a) is the usual loop, diffusers' DreamBooth-LoRA example per style, timed over ``--naive-images``
class images, ``--naive-steps`` training steps and ``--naive-images`` sampled images and extrapolated
to the workload (class images and samples one per pipeline call; VAE + text encoder every step, batch
2; peft LoRA under bf16 autocast; the LoRA loaded unfused for sampling). (b) runs the whole workload: the class
pool, all styles in
batched training passes (text embeddings cached, random crops encoded by a compiled VAE encoder, bf16
frozen weights, SDPA attention, fused AdamW), then batched sampling with fused LoRA. ``--part naive``
also counts the workload's FLOPs and prints the time they take at this device's matrix-product rate.
Random weights: the numbers are speed, never quality. Prints a table and writes ``bench.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from ..specs import TrainSpec
from ..store import atomic_write_json, stable_hash


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": _version("diffusers")}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, n: int = 1):
    """Mean seconds per call of ``fn`` over ``n`` calls, its device work included, and the last call's result."""
    _sync()
    t0 = time.time()
    for _ in range(n):
        result = fn()
    _sync()
    return (time.time() - t0) / n, result


def build_components(arch_path: Path, device: str, dtype: torch.dtype):
    """SD 2.1-shaped UNet, VAE, text encoder from the published configs, random weights, in memory."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..backends.torch.models import Components
    from ..embedded import build_tokenizer
    from ..models import ResolvedModel

    arch = json.loads(arch_path.read_text())
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**{**strip(arch["unet"]), "sample_size": 64})
        vae = AutoencoderKL(**strip(arch["vae"]))
        te_cfg = {k: v for k, v in strip(arch["text_encoder"]).items() if k != "architectures"}
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    tok_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    tokenizer = build_tokenizer(tok_dir)
    sched = DDPMScheduler.from_config(strip(arch["scheduler"]))
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval().to(device=device, dtype=dtype)
    if device.startswith("cuda"):  # as load_components does
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    resolved = ResolvedModel(
        folder=tok_dir.parent,
        source="SD 2.1-shaped, random weights",
        identity="bench-random",
        random_weights=True,
        prediction_type=sched.config.prediction_type,
    )
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=sched,
        scheduler_config=dict(strip(arch["scheduler"])),
        device=torch.device(device),
        dtype=dtype,
        vae_dtype=vae.dtype,
        model=resolved,
    )


class BenchBackend:
    """Builds the SD 2.1-shaped random-weight model on a device, as a backend: picklable, so that each
    worker process of the all-GPU path (stylexfer.shard) builds its own."""

    def __init__(self, arch: str, cache: str):
        self.arch, self.cache = arch, cache

    def __call__(self, device: str):
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return _backend(build_components(Path(self.arch), device, dtype), Path(self.cache))


def _backend(c, cache: Path):
    """The PyTorch backend around components built here (the stages take a backend)."""
    from ..backends.torch import TorchBackend

    return TorchBackend.from_components(c, cache)


def _shared_pool(c, styles, cfg):
    """The workload's one shared class pool (made, or found in the store); None where the prior has no pool
    (``prior=none``, ``prior=self``)."""
    from ..config import value
    from ..prior import ensure_pool, pool_objects, pool_spec
    from ..specs import POOLED_PRIORS

    if value(cfg.prior.mode) not in POOLED_PRIORS:
        return None
    cache = Path(cfg.paths.cache_dir)
    spec = pool_spec(
        pool_objects(styles, styles[0], cfg.prior.mode),
        cfg.prior,
        c.model.identity,
        cfg.model.resolution,
        cfg.backend.name,
    )
    return ensure_pool(_backend(c, cache), spec, cache)


def make_dataset(root: Path, styles: int, images: int, prompts: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for s in range(styles):
        d = root / f"{s:02d}" / "images"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, 3)
        for i in range(images):
            arr = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"object{i}.png")
        (root / f"{s:02d}" / "prompt.json").write_text(json.dumps({str(k): f"thing {k}" for k in range(prompts)}))
    return root


def bench_cfg(args, extra=()):
    from hydra import compose, initialize_config_dir

    from ..app import CONFIG_DIR  # schema and resolvers registered

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "+strategy=safe",
                f"model.resolution={args.res}",
                f"lora.unet_lora_rank={args.rank}",
                f"train.steps={args.steps}",
                f"prior.num_class_images={args.class_images}",
                f"sample.batch_size={args.sample_batch}",
                f"prior.batch_size={args.sample_batch}",
                "train.checkpoint_every=0",
                f"paths.cache_dir={args.work / 'store'}",
                f"paths.output_dir={args.work / 'run'}",
                *[
                    f"{k}.compile={str(bool(getattr(args, 'compile', False))).lower()}"
                    for k in ("train", "prior", "sample")
                ],
                *extra,
            ],
        )
    OmegaConf.resolve(cfg)
    return cfg


def naive(args, c, styles, cfg) -> dict:
    """(a): the usual loop — diffusers' DreamBooth-LoRA example per style — timed on a few class images,
    steps and images and extrapolated to the workload: the class pool one image per pipeline call; steps of
    batch 2 (an instance and a class image) that run the VAE and the text encoder every step, with peft's
    LoRA layers (float32 weights) under bf16 autocast, as the example trains with ``--mixed_precision=bf16``;
    then the style's images one per pipeline call with its LoRA loaded by stock ``load_lora_weights``."""
    from ..backends.torch.models import encode_prompts
    from ..backends.torch.sample import generate, make_pipeline
    from ..backends.torch.tensors import to_tensor
    from ..backends.torch.train import Stream, add_adapters, autocast_for, remove_adapters, save_adapter
    from ..config import Precision, value
    from ..data import fit_square

    style = styles[0]
    pipe = make_pipeline(c, value(cfg.prior.sampler))
    prior = cfg.prior

    def class_image(i):
        generate(pipe, [f"an image of thing {i}"], [i], prior.steps, prior.guidance_scale, args.res)

    _timed(lambda: generate(pipe, ["x"], [0], 2, prior.guidance_scale, args.res))  # warm-up
    class_s = sum(_timed(lambda i=i: class_image(i))[0] for i in range(args.naive_images)) / args.naive_images
    groups = add_adapters(c, TrainSpec.from_config(cfg), Stream(0, style.id).lora_seed)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=1e-2)
    px = torch.stack(
        [to_tensor(fit_square(style.images[0], args.res)), to_tensor(fit_square(style.images[1], args.res))]
    )
    prompts = ["an image of a in style_00", "an image of b"]
    autocast = Precision.bf16 if c.dtype == torch.bfloat16 else Precision(value(cfg.train.mixed_precision))
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None

    def step():
        with torch.no_grad():
            lat = c.vae.encode(px.to(c.device, c.vae_dtype)).latent_dist.sample() * c.vae.config.scaling_factor
            cond = encode_prompts(c, prompts)
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (2,), device=c.device)
        noisy = c.noise_scheduler.add_noise(lat.float(), noise.float(), t)
        with autocast_for(c, autocast):
            pred = c.unet(noisy.to(c.dtype), t, cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    adapter = args.work / "naive-lora"
    c.unet.train()
    try:
        _timed(step, 3)  # warm-up
        step_s, _ = _timed(step, args.naive_steps)
        save_adapter(c, adapter)
    finally:
        c.unet.eval()
        remove_adapters(c)
    train_mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    pipe = make_pipeline(c, "ddim", img2img=True)
    pipe.load_lora_weights(str(adapter), adapter_name="naive")
    init = Image.new("RGB", (args.res, args.res), (120, 90, 60))

    def image(i):
        generate(pipe, [f"an image of thing {i} in style_00"], [i], args.sample_steps, 7.5, args.res, init, 0.9)

    try:
        image(-1)  # warm-up
        image_s = sum(_timed(lambda i=i: image(i))[0] for i in range(args.naive_images)) / args.naive_images
    finally:
        pipe.delete_adapters("naive")
    n_steps = args.styles * args.steps
    n_images = args.styles * args.prompts
    pool_s = class_s * args.class_images
    train_s = pool_s + step_s * n_steps
    return {
        "class_image_s": class_s,
        "train_step_s": step_s,
        "samples_per_s": 2 / step_s,
        "image_s": image_s,
        "peak_train_gib": train_mem,
        "class_images_s": pool_s,
        "train_s": train_s,
        "sample_s": image_s * n_images,
        "total_s": train_s + image_s * n_images,
    }


def crop_count(args, cfg) -> int:
    """How many grid crops the workload encodes once (every style image's and class image's offsets on the latent
    grid, flipped and not if flips are on); 0 when crops are encoded every step (random 1-px crops, rotation)."""
    from ..data import crop_grid, grid_cached_crops, resized_side

    if not grid_cached_crops(cfg.augmentation):
        return 0
    side = resized_side(args.res, cfg.augmentation)  # the bench's images are square
    lefts, tops = crop_grid((side, side), args.res)
    return (
        (args.styles * args.images + args.class_images) * len(lefts) * len(tops) * (2 if cfg.augmentation.hflip else 1)
    )


def arithmetic(args, c, cfg) -> dict:
    """The workload's floating-point operations (counted by torch's FlopCounterMode on one sample of each
    model call) and the time they take at this device's measured bf16/fp32 matrix-product rate: the floor
    no implementation beats by much. Frozen weights need no weight gradients, so a training sample costs
    a UNet forward and the backward to its inputs (about one more forward); the VAE encodes each grid crop once
    (:func:`crop_count`), or every sample of every step when crops are not grid-cached."""
    from torch.utils.flop_counter import FlopCounterMode

    r = args.res
    lat = torch.randn(1, c.latent_channels, r // c.vae_scale, r // c.vae_scale, device=c.device, dtype=c.dtype)
    cond = torch.randn(1, 77, c.text_encoder.config.hidden_size, device=c.device, dtype=c.dtype)
    px = torch.randn(1, 3, r, r, device=c.device, dtype=c.vae_dtype)
    gf = {}
    for name, fn in (
        ("unet_forward", lambda: c.unet(lat, torch.tensor([500], device=c.device), cond)),
        ("vae_encode", lambda: c.vae.encode(px)),
        ("vae_decode", lambda: c.vae.decode(lat.to(c.vae_dtype))),
    ):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            fn()
        gf[name] = fc.get_total_flops() / 1e9
    n = 8192 if c.device.type == "cuda" else 512
    a = torch.randn(n, n, device=c.device, dtype=c.dtype)
    _timed(lambda: a @ a, 3)  # warm-up
    tflops = 2 * n**3 / _timed(lambda: a @ a, 10)[0] / 1e12
    steps_per_image = int(args.sample_steps * cfg.init.strength)
    pool = args.class_images * (cfg.prior.steps * 2 * gf["unet_forward"] + gf["vae_decode"])
    crops = crop_count(args, cfg)
    # with grid-cached crops (the default) every crop is encoded once, before the steps; else every step encodes
    train = args.styles * args.steps * 2 * 2 * gf["unet_forward"] + (
        crops * gf["vae_encode"] if crops else args.styles * args.steps * 2 * gf["vae_encode"]
    )
    sample = (
        args.styles * args.prompts * (steps_per_image * 2 * gf["unet_forward"] + gf["vae_encode"] + gf["vae_decode"])
    )
    out = {
        "gflop_per_sample": gf,
        "matmul_tflops": tflops,
        "class_pool_pflop": pool / 1e6,
        "train_pflop": train / 1e6,
        "sample_pflop": sample / 1e6,
        "grid_crops": crops,
    }
    out["floor_s"] = (pool + train + sample) / 1e3 / tflops
    print(
        f"arithmetic: UNet forward {gf['unet_forward']:.0f} GFLOP, VAE encode {gf['vae_encode']:.0f}, decode "
        f"{gf['vae_decode']:.0f} per sample; {crops} grid crops; workload {out['class_pool_pflop']:.1f} (class pool) "
        f"+ "
        f"{out['train_pflop']:.1f} (train) + {out['sample_pflop']:.1f} (sample) PFLOP; matrix products at "
        f"{tflops:.0f} TFLOP/s here -> floor {out['floor_s']:.0f} s",
        flush=True,
    )
    return out


def train_phase(args, c, styles, cfg) -> dict:
    """(b), training: class images, then every style in batched passes (what ``python -m stylexfer`` does)."""
    from ..prior import ensure_pool
    from ..train import ensure_adapter, style_specs, train_in_batches

    cache = Path(cfg.paths.cache_dir)
    backend = _backend(c, cache)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _sync()
    t0 = time.time()
    _shared_pool(c, styles, cfg)
    _sync()
    t_pool = time.time() - t0
    print(f"class images: {t_pool:.1f}s", flush=True)
    todo = [(s, *style_specs(c.model.identity, styles, s, cfg)) for s in styles]
    trained, failed = train_in_batches(backend, todo, cfg, cache, lambda sp: ensure_pool(backend, sp, cache))
    for s, spec_pool, spec in todo:  # what no batched pass trained (one style, say) trains alone, as a run does
        if s.id not in trained and s.id not in failed:
            ensure_adapter(backend, s, spec_pool, spec, cfg, cache)
            trained[s.id] = None
    _sync()
    t_train = time.time() - t0
    steps = args.styles * args.steps
    r = {
        "train_s": t_train,
        "class_images_s": t_pool,
        "failed": failed,
        "trained": len(trained),
        "samples_per_s": 2 * steps / (t_train - t_pool),
        "peak_train_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
    }
    print("train:", json.dumps(r), flush=True)
    return r


def sample_phase(args, c, styles, cfg) -> dict:
    """(b), sampling: every style's images from its stored adapter (needs a train phase in the same --work)."""
    from ..backends import ADAPTER_FILE
    from ..sample import ensure_samples, samples_store_spec
    from ..specs import SampleSpec
    from ..train import style_specs

    cache = Path(cfg.paths.cache_dir)
    backend = _backend(c, cache)
    _sync()
    sp = SampleSpec.from_config(cfg)
    t0 = time.time()
    n_images = 0
    for s in styles:
        key = stable_hash(style_specs(c.model.identity, styles, s, cfg)[1])
        adir = cache / "adapters" / key
        if not (adir / ADAPTER_FILE).exists():
            raise SystemExit(f"error: no trained adapter for style {s.id} under {args.work}: run --part train first")
        _, recs, reused = ensure_samples(backend, s, adir, sp, samples_store_spec(s, sp, key, c.model.identity), cache)
        assert not reused, "samples already in the store: use a fresh --work"
        n_images += len(recs)
    _sync()
    r = {"sample_s": time.time() - t0, "images": n_images}
    print("sample:", json.dumps(r), flush=True)
    return r


def stylexfer_path(args, c, styles, cfg) -> dict:
    """(b): the whole workload through stylexfer's own stages."""
    r = train_phase(args, c, styles, cfg)
    r.update(sample_phase(args, c, styles, cfg))
    r["total_s"] = r["train_s"] + r["sample_s"]
    return r


def shards_phase(args, styles, cfg) -> dict:
    """(b) on every visible GPU: the styles sharded over one worker process per GPU (what a single
    ``python -m stylexfer`` run does on a multi-GPU host), each building the model, making its share of
    the class pool, training its styles in one batched pass and sampling them. A fresh store of its own."""
    from ..shard import ShardJob, run_shards

    if torch.cuda.is_available():
        n = args.gpus or torch.cuda.device_count()
        if not 2 <= n <= torch.cuda.device_count():
            raise SystemExit(
                f"error: --gpus {n}: this machine has {torch.cuda.device_count()} GPU(s); at least 2 needed"
            )
        devices = [f"cuda:{i}" for i in range(n)]
    else:  # the same path on CPU processes (plumbing only)
        n = max(2, args.gpus)
        devices = ["cpu"] * n
    cache = args.work / "store-gpus"
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    c["paths"]["cache_dir"] = str(cache)
    ids = [s.id for s in styles]
    job = ShardJob(
        make_backend=BenchBackend(str(args.arch), str(cache)),
        cfg=c,
        data_root=str(args.work / "data"),
        style_ids=ids,
        work_ids=ids,
        model_identity="bench-random",
        devices=devices,
        log_dir=str(args.work / "logs-gpus"),
    )
    out = run_shards(job)
    if len(out.made) != len(ids):
        raise SystemExit(f"error: the workers made the images of {len(out.made)} of {len(ids)} styles: {out.errors}")
    sec = out.seconds
    r = {
        "gpus": n,
        "start_s": sec["start"],
        "class_images_s": sec["pool"] - sec["start"],
        "train_s": sec["pool"] - sec["start"] + sec["train"],
        "sample_s": sec["sample"],
        "total_s": sec["wall"],
        "samples_per_s": 2 * args.styles * args.steps / sec["train"],
        "peak_train_gib": sec.get("peak_gib", 0.0),
    }
    print("gpus:", json.dumps(r), flush=True)
    return r


# what an op's name says it is, first match wins (the profile's summary by part)
PROFILE_PARTS = (
    ("attention (SDPA)", ("attention",)),
    ("convolutions", ("convolution",)),
    ("batched matmuls (in training: the LoRA branches)", ("bmm",)),
    ("linear layers (mm, addmm)", ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul")),
    ("norms (GroupNorm, LayerNorm)", ("norm",)),
    ("activations (SiLU, GELU)", ("silu", "gelu")),
    ("optimizer (AdamW)", ("adam", "_foreach")),
    ("copies, concatenations", ("copy", "aten::cat", "clone", "contiguous")),
    ("other (elementwise add, mul, ...)", ("aten::",)),
)


def profile_parts(prof, per: int) -> list[tuple[str, float, float]]:
    """(part, milliseconds per ``per``, share) of a profile's device time (CPU time on a CPU), each op's own
    time (its kernels, not its children's) counted once under the first part its name matches."""
    cuda = torch.cuda.is_available()
    totals = {name: 0.0 for name, _ in PROFILE_PARTS}
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        name = next(n for n, keys in PROFILE_PARTS if any(k in e.key for k in keys))
        totals[name] += t / 1000.0 / per  # µs -> ms
    whole = sum(totals.values()) or 1.0
    return [(n, ms, ms / whole) for n, ms in sorted(totals.items(), key=lambda x: -x[1]) if ms > 0]


def _print_parts(title: str, rows: list) -> None:
    print(title)
    w = max(len(n) for n, _, _ in rows)
    for n, ms, share in rows:
        print(f"  {n.ljust(w)}  {ms:9.2f} ms  {share:5.1%}")
    print(f"  {'total'.ljust(w)}  {sum(ms for _, ms, _ in rows):9.2f} ms", flush=True)


def profile(args, c, styles, cfg) -> dict:
    """Where the time goes, under torch.profiler: N eager training steps (no CUDA graph, which the profiler
    sees as one launch) after the set-up (crop encoding, adapters) and 3 steps, then one style's sampling
    (``--prompts`` images, ``--sample-steps`` img2img steps at strength 0.9). Prints the top ops and a summary
    by part (ms per training step, per sampling UNet call), which it returns."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    from ..backends.torch.sample import generate
    from ..backends.torch.trainer import train_styles

    cfg.train.steps, cfg.train.cuda_graphs = 4 + args.profile, False
    pool = _shared_pool(c, styles, cfg)
    pools = [pool] * len(styles)
    train_styles(
        c, styles, pools, TrainSpec.from_config(cfg), None, [args.work / "prof" / s.id for s in styles]
    )  # cudnn autotune
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    with torch_profile(activities=acts, schedule=schedule(wait=3, warmup=1, active=args.profile)) as prof:

        class Clock(list):  # the loop appends a tick after each step: the profiler's step
            def append(self, t):
                super().append(t)
                prof.step()

        done = train_styles(
            c,
            styles,
            pools,
            TrainSpec.from_config(cfg),
            None,
            [args.work / "prof2" / s.id for s in styles],
            clock=Clock(),
        )
        _sync()
    assert not done.failed, done.failed
    print(
        f"eager steps profiled: {args.profile} ({len(styles)} styles, {2 * len(styles) * cfg.train.batch_size} "
        f"samples a step; set-up and the first 4 steps left out)"
    )
    print(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90))
    train = profile_parts(prof, args.profile)
    _print_parts("training step by part (ms per step):", train)

    pipe, init, prompts, seeds = _one_style_sampling(args, c, styles)
    calls = int(args.sample_steps * 0.9)  # img2img at strength 0.9 runs that many of the steps
    with torch_profile(activities=acts) as sprof:
        generate(pipe, prompts, seeds, args.sample_steps, 7.5, args.res, init, 0.9)
        _sync()
    print(
        f"sampling profiled: {len(prompts)} images, {calls} UNet calls of {2 * len(prompts)} samples "
        f"(guidance), text encoding and VAE decoding included"
    )
    print(sprof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=90))
    sample = profile_parts(sprof, calls)
    _print_parts("sampling by part (ms per UNet call, the VAE's and text encoder's share spread over them):", sample)
    return {
        "train_step_ms": {n: round(ms, 3) for n, ms, _ in train},
        "sample_call_ms": {n: round(ms, 3) for n, ms, _ in sample},
    }


def _one_style_sampling(args, c, styles):
    """The first style's img2img sampling as the bench times it: (pipeline, average image, ``--prompts`` prompts,
    their seeds), after one short call at the measured batch shape (cuDNN picks its algorithms there)."""
    from ..backends.torch.sample import generate, make_pipeline
    from ..data import average_image

    pipe = make_pipeline(c, "ddim", img2img=True)
    init = average_image(styles[0].images, args.res)
    prompts = [f"an image of thing {i} in style_{styles[0].id}" for i in range(args.prompts)]
    seeds = list(range(len(prompts)))
    generate(pipe, prompts, seeds, 2, 7.5, args.res, init, 0.9)
    return pipe, init, prompts, seeds


def _sdpa_kernels() -> dict:
    """torch's scaled-dot-product-attention kernels, one at a time (``torch.nn.attention.sdpa_kernel``): flash and
    cuDNN each with the memory-efficient kernel behind it for the shapes they do not take (the VAE's 512-wide head)."""
    from functools import partial

    from torch.nn.attention import SDPBackend, sdpa_kernel

    return {
        "flash": partial(sdpa_kernel, [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]),
        "cudnn": partial(sdpa_kernel, [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]),
        "efficient": partial(sdpa_kernel, [SDPBackend.EFFICIENT_ATTENTION]),
    }


def breakdown(args, c, styles, cfg) -> dict:
    """Where the stylexfer path's time goes: host-side data drawing, the VAE, whole training steps (with
    eager and compiled), and one style's sampling (stock LoRA layers,
    fused LoRA, no LoRA)."""
    from ..backends.torch.sample import fuse_exactly, generate, unfuse_exactly
    from ..backends.torch.tensors import uint8_to_model
    from ..backends.torch.train import Feed
    from ..backends.torch.trainer import compiled_vae_encoder, draw_step, posterior_of, steady_step_s, train_styles

    out = {}
    pool = _shared_pool(c, styles, cfg)
    pools = [pool] * len(styles)
    feeds = [Feed(c, s, pool, TrainSpec.from_config(cfg), {}, raw=True) for s in styles]
    live = list(range(len(styles)))
    draw_step(c, feeds, live)  # fills the resize cache
    out["draw_crops_s"], _ = _timed(lambda: [f.next() for f in feeds], 5)
    out["draw_s"], d = _timed(lambda: draw_step(c, feeds, live), 5)

    def encode():
        return posterior_of(c, d)

    _timed(encode, 2)  # warm-up
    out["vae_encode_s"], _ = _timed(encode, 5)
    if c.device.type == "cuda":
        with compiled_vae_encoder(c, True):
            out["vae_compile_s"], _ = _timed(encode)
            _timed(encode)
            out["vae_encode_compiled_s"], _ = _timed(encode, 5)

    if c.device.type == "cuda":  # the class pool's and styles' grid crops: encoded once per run, in batches of 64
        crops = uint8_to_model(
            torch.randint(0, 256, (64, 3, args.res, args.res), dtype=torch.uint8, device=c.device)
        ).to(c.vae_dtype)

        def encode_crops():
            with torch.no_grad():
                return c.vae.encode(crops).latent_dist.mean

        _timed(encode_crops)
        out["crop_encode_64_s"], _ = _timed(encode_crops, 3)
        with compiled_vae_encoder(c, True):
            out["crop_encode_64_compile_s"], _ = _timed(encode_crops)
            out["crop_encode_64_compiled_s"], _ = _timed(encode_crops, 3)
        del crops

    def run(label, n, subset=None, **over):
        """Seconds of the whole pass, and per step from step 6 on (the loop's own clock: no set-up or export)."""
        sub = styles if subset is None else styles[:subset]
        saved = {k: getattr(cfg.augmentation, k) for k in over if hasattr(cfg.augmentation, k)}
        cfg.train.steps = n
        for k, v in over.items():
            setattr(cfg.augmentation if k in saved else cfg.train, k, v)
        clock: list = []
        _sync()
        t = time.time()
        done = train_styles(
            c,
            sub,
            pools[: len(sub)],
            TrainSpec.from_config(cfg),
            None,
            [args.work / f"bd-{label}-{n}" / s.id for s in sub],
            clock=clock,
        )
        losses, failed = done.losses, done.failed
        _sync()
        for k, v in saved.items():
            setattr(cfg.augmentation, k, v)
        cfg.train.compile = cfg.train.fp8 = False
        cfg.train.cuda_graphs = False
        assert not failed, failed
        run.losses = np.mean([losses[s.id] for s in sub], axis=0)  # mean over styles, per step
        return time.time() - t, steady_step_s(clock, 5)

    cfg.train.cuda_graphs = False  # the eager step is the baseline; --try-graphs adds the recorded one
    run("warm", 3)
    n_loss = args.fp8_steps if args.try_fp8 else 25
    out["step_s"] = run("crop", n_loss)[1]
    bf16_losses = run.losses
    if c.device.type == "cuda" and args.try_graphs:
        out["step_graphs_s"] = run("graphs", n_loss, cuda_graphs=True)[1]
        out["graphs_loss_max_abs_diff"] = float(np.abs(run.losses - bf16_losses).max())
        half = len(styles) // 2
        out[f"step_{half}_styles_s"] = run("half", 25, subset=half)[1]
        out[f"step_{half}_styles_graphs_s"] = run("half-graphs", 25, subset=half, cuda_graphs=True)[1]
    if c.device.type == "cuda" and args.try_attention:  # one SDPA kernel at a time, the step recorded as a graph
        for name, kernel in _sdpa_kernels().items():
            try:
                with kernel():
                    out[f"step_graphs_{name}_s"] = run(f"attn-{name}", 25, cuda_graphs=True)[1]
                out[f"loss_max_abs_diff_{name}"] = float(np.abs(run.losses - bf16_losses[:25]).max())
            except RuntimeError as e:  # a kernel that does not take these shapes
                print(f"attention {name}: {str(e).splitlines()[0]}", flush=True)
    if c.device.type == "cuda" and args.try_fp8:  # the same streams: the loss curves compare step by step
        out["step_fp8_s"] = run("fp8", n_loss, fp8=True)[1]
        d = run.losses - bf16_losses
        out["fp8_loss_mean_bf16"], out["fp8_loss_mean_fp8"] = float(bf16_losses.mean()), float(run.losses.mean())
        out["fp8_loss_max_abs_diff"] = float(np.abs(d).max())
        out["fp8_loss_curves"] = {
            "bf16": [round(float(x), 5) for x in bf16_losses],
            "fp8": [round(float(x), 5) for x in run.losses],
        }
    if c.device.type == "cuda" and args.try_compile:
        first, out["step_compiled_s"] = run("compiled", 25, compile=True)  # the first steps compile
        out["compile_s"] = first - run("compiled", 25, compile=True)[0]
        if args.try_graphs:
            out["step_compiled_graphs_s"] = run("compiled-graphs", 25, compile=True, cuda_graphs=True)[1]
    adapter = args.work / f"bd-crop-{n_loss}" / styles[0].id
    pipe, init, prompts, seeds = _one_style_sampling(args, c, styles)

    def gen_s():
        return _timed(lambda: generate(pipe, prompts, seeds, args.sample_steps, 7.5, args.res, init, 0.9))[0]

    out["generate_style_no_lora_s"] = gen_s()
    out["lora_load_s"], _ = _timed(lambda: pipe.load_lora_weights(str(adapter), adapter_name="bd"))
    out["generate_style_s"] = gen_s()
    out["lora_fuse_s"], base = _timed(lambda: fuse_exactly(pipe, "bd"))
    out["generate_style_fused_s"] = gen_s()
    if c.device.type == "cuda" and args.try_compile:  # the UNet compiled for sampling (plain layers: fused)
        from ..backends.torch.compiled import sampling_unet
        from ..backends.torch.sample import plain_layers

        with plain_layers(pipe):
            pipe.unet = sampling_unet(c)  # what sample.compile runs
            try:
                out["sample_compile_s"] = _timed(lambda: generate(pipe, prompts, seeds, 2, 7.5, args.res, init, 0.9))[
                    0
                ]
                out["generate_style_fused_compiled_s"] = gen_s()
            finally:
                pipe.unet = c.unet
    if c.device.type == "cuda" and args.try_attention:
        for name, kernel in _sdpa_kernels().items():
            try:
                with kernel():
                    generate(pipe, prompts, seeds, 2, 7.5, args.res, init, 0.9)
                    out[f"generate_style_fused_{name}_s"] = gen_s()
            except RuntimeError as e:
                print(f"attention {name}: {str(e).splitlines()[0]}", flush=True)
    unfuse_exactly(pipe, base)
    pipe.delete_adapters("bd")
    n = 2 * len(styles) * cfg.train.batch_size
    print("breakdown (seconds):", json.dumps({k: round(v, 4) for k, v in out.items() if isinstance(v, float)}))
    print(
        f"  per training step of {n} samples: {out['step_s']:.3f}s ({n / out['step_s']:.1f} samples/s); "
        f"host draw {out['draw_s']:.3f}s (crops {out['draw_crops_s']:.3f}s), "
        f"on a worker thread; VAE encode {out['vae_encode_s']:.3f}s"
    )
    return out


# Inductor settings tried for the sampling UNet (``--part inductor``): torch.compile's default; the settings
# PyTorch's "Accelerating Generative AI III: Diffusion, Fast" post used for SDXL (1×1 convolutions as matrix
# products, coordinate-descent tuning of the generated kernels' block sizes, no epilogue fusion); the same with
# autotuned matrix-product and convolution templates (max-autotune, without CUDA graphs: a 50-sample call is
# 130-160 ms of device work).
DIFFUSION_FAST = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "epilogue_fusion": False,
    "coordinate_descent_check_all_directions": True,
}
INDUCTOR_VARIANTS = {
    "default": (None, {}),
    "tuned": (None, DIFFUSION_FAST),
    "max-autotune": ("max-autotune-no-cudagraphs", DIFFUSION_FAST),
}


def inductor_trial(args, c, styles) -> dict:
    """One style's sampling (``--prompts`` images, ``--sample-steps`` img2img steps at strength 0.9, 50-sample UNet
    calls) eager, then with the UNet compiled under each of ``--variants`` (:data:`INDUCTOR_VARIANTS`; the
    settings are part of the compile cache's keys, so each compiles afresh unless --compile-cache already holds
    it): seconds to compile (the first short call), seconds per style, and how far its images are from the eager
    ones (mean absolute difference, 0-255). Written to --out after every variant, so a command that runs out of
    time keeps what it measured."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    from ..backends.torch.sample import generate

    pipe, init, prompts, seeds = _one_style_sampling(args, c, styles)

    def pixels(images):
        return np.stack([np.asarray(im, dtype=np.float32) for im in images])

    def gen():
        return _timed(lambda: generate(pipe, prompts, seeds, args.sample_steps, 7.5, args.res, init, 0.9))

    eager_s, eager = gen()
    out = {
        "device": _device_name(),
        "versions": _versions(),
        "images": len(prompts),
        "steps": args.sample_steps,
        "eager_s": eager_s,
        "variants": {},
    }
    print(f"inductor trial: one style's sampling eager {eager_s:.2f}s", flush=True)
    for name in args.variants.split(","):
        mode, flags = INDUCTOR_VARIANTS[name]
        torch._dynamo.reset()
        with inductor_config.patch(flags):
            pipe.unet = torch.compile(c.unet, dynamic=False, mode=mode)
            try:
                compile_s = _timed(lambda: generate(pipe, prompts, seeds, 2, 7.5, args.res, init, 0.9))[0]
                style_s, images = gen()
            finally:
                pipe.unet = c.unet
        r = {
            "mode": mode or "default",
            "flags": flags,
            "compile_s": compile_s,
            "style_s": style_s,
            "vs_eager": eager_s / style_s,
            "mean_abs_diff_vs_eager": float(np.abs(pixels(images) - pixels(eager)).mean()),
        }
        out["variants"][name] = r
        print(
            f"  {name}: compile {compile_s:.0f}s, {style_s:.2f}s a style ({r['vs_eager']:.2f}x eager), images "
            f"{r['mean_abs_diff_vs_eager']:.2f}/255 from eager",
            flush=True,
        )
        atomic_write_json(args.out, {"inductor": out})
    return out


REMEDIES = {
    "plain": [],
    "inject (StyleID defaults: each image its own reference, twin)": ["inject=styleid"],
    "inject (the average image)": ["inject=styleid", "inject.reference=average"],
    "control (canny; first pass + ControlNet)": ["control=canny"],
}


def remedies_trial(args, c, styles) -> dict:
    """What the remedies cost: one style's sampling (``--prompts`` images from the base weights, img2img at
    strength 0.9, ``--sample-steps`` steps, eager) plain, with style injection (the inversion and its bank
    included: a style's first images pay for them), and with structure control (a ControlNet made by
    ``ControlNetModel.from_unet`` of the same random UNet; the first pass included). Each row runs in a store of
    its own; ``plain`` runs twice and the second is kept (the first warms the device). Seconds per image, the
    added seconds per image, the bank's size on disk. On CUDA also the sampling alone (the bank stored), eager and
    with ``sample.compile=true`` (after a call that compiles), plain and with injection. Written to --out after every
    row."""
    import shutil

    from diffusers import ControlNetModel

    from ..sample import ensure_samples, samples_store_spec
    from ..specs import SampleSpec

    s = styles[0]
    cn_dir = args.work / "controlnet"
    if not cn_dir.exists():
        stages = int(math.log2(c.vae_scale))  # stride-2 stages of the conditioning embedding: pixels to latents
        embedding = (16, 32, 96, 256, 256)[: stages + 1]
        net = ControlNetModel.from_unet(c.unet, conditioning_embedding_out_channels=embedding)
        net.save_pretrained(cn_dir, safe_serialization=True)
    out = {"device": _device_name(), "versions": _versions(), "images": len(s.objects), "rows": {}}

    def timed(extra: list, store: Path) -> tuple[float, int]:
        """Seconds of one style's sampling stage in ``store`` (its samples made again), and its image count."""
        shutil.rmtree(store / "samples", ignore_errors=True)
        cfg = bench_cfg(args, [*args.override, *extra, f"paths.cache_dir={store}"])
        backend = _backend(c, store)
        _sync()
        t0 = time.time()
        sp = SampleSpec.from_config(cfg)
        _, recs, _ = ensure_samples(backend, s, None, sp, samples_store_spec(s, sp, None, c.model.identity), store)
        _sync()
        return time.time() - t0, len(recs)

    for label, extra in [("warm-up", [])] + list(REMEDIES.items()):
        more = [f"control.model={cn_dir}"] if "control=canny" in extra else []
        store = args.work / f"store-{len(out['rows'])}-{label.split()[0]}"
        sec, n = timed([*extra, *more, "sample.compile=false"], store)
        banks = (
            sum(f.stat().st_size for f in (store / "banks").rglob("*.safetensors"))
            if (store / "banks").exists()
            else 0
        )
        shutil.rmtree(store, ignore_errors=True)
        if label == "warm-up":
            continue
        out["rows"][label] = {"style_s": sec, "per_image_s": sec / n, "bank_gib": banks / 2**30}
        atomic_write_json(args.out, {"remedies": out})
    if c.device.type == "cuda":  # the sampling itself, eager against compiled (after a call that compiles)
        for label, extra in {"plain": [], "inject (StyleID defaults), bank stored": ["inject=styleid"]}.items():
            store = args.work / f"store-compiled-{len(out['rows'])}"
            timed([*extra, "sample.compile=false"], store)  # makes the bank
            eager = timed([*extra, "sample.compile=false"], store)
            timed([*extra, "sample.compile=true"], store)  # compiles
            for how, (sec, n) in (("eager", eager), ("compiled", timed([*extra, "sample.compile=true"], store))):
                out["rows"][f"{label}, {how}"] = {"style_s": sec, "per_image_s": sec / n, "bank_gib": 0.0}
            shutil.rmtree(store, ignore_errors=True)
            atomic_write_json(args.out, {"remedies": out})
    plain = out["rows"]["plain"]["per_image_s"]
    print(
        f"one style's sampling, {out['images']} images, {args.sample_steps} steps at {args.res} px ({out['device']})"
    )
    print("| row | s per style | s per image | added s per image | bank GiB |\n|---|---|---|---|---|")
    for label, r in out["rows"].items():
        r["added_per_image_s"] = r["per_image_s"] - plain
        print(
            f"| {label} | {r['style_s']:.1f} | {r['per_image_s']:.2f} | {r['added_per_image_s']:+.2f} | "
            f"{r['bank_gib']:.2f} |"
        )
    atomic_write_json(args.out, {"remedies": out})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylexfer.tools.bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--arch",
        type=Path,
        default=Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "sd21_architecture.json",
    )
    p.add_argument(
        "--part",
        choices=["naive", "stylexfer", "both", "breakdown", "train", "sample", "gpus", "inductor", "remedies"],
        default="both",
        help="breakdown: where the stylexfer path's time goes (a few steps, no full workload); "
        "train, then sample: the stylexfer path in two commands sharing --work and --out "
        "(for machines with a per-command time limit); gpus: the stylexfer path sharded over "
        "every visible GPU, one worker process each; inductor: one style's sampling eager and "
        "compiled under each of --variants (GPU only); remedies: one style's sampling plain, with style "
        "injection and with structure control (their added seconds per image)",
    )
    p.add_argument(
        "--label",
        default="stylexfer",
        help="the row (JSON key) the stylexfer path's result goes to: e.g. cold, warm (same --out)",
    )
    p.add_argument(
        "--compile-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="torch's compile cache (TORCHINDUCTOR_CACHE_DIR): the same DIR in a second run = warm",
    )
    p.add_argument("--gpus", type=int, default=0, help="--part gpus: how many GPUs (0 = every visible one)")
    p.add_argument(
        "--variants",
        default=",".join(INDUCTOR_VARIANTS),
        help=f"--part inductor: which compile settings, comma-separated ({', '.join(INDUCTOR_VARIANTS)})",
    )
    p.add_argument("--try-fp8", action="store_true", help="breakdown: also time training steps with train.fp8=true")
    p.add_argument("--fp8-steps", type=int, default=200, help="--try-fp8: steps of each loss curve (bf16 and fp8)")
    p.add_argument("--styles", type=int, default=14)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--prompts", type=int, default=25)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--class-images", type=int, default=200)
    p.add_argument("--res", type=int, default=512)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--sample-steps", type=int, default=40)
    p.add_argument("--sample-batch", type=int, default=25, help="images per pipeline call (sampling and class images)")
    p.add_argument("--naive-steps", type=int, default=20)
    p.add_argument(
        "--compile",
        action="store_true",
        help="train.compile, prior.compile and sample.compile true for the stylexfer path (else false)",
    )
    p.add_argument(
        "--try-compile",
        action="store_true",
        help="breakdown: also time compiled training steps and a compiled UNet's sampling",
    )
    p.add_argument(
        "--try-graphs",
        action="store_true",
        help="breakdown: also time the training step recorded as a CUDA graph (all and half the styles)",
    )
    p.add_argument(
        "--try-attention",
        action="store_true",
        help="breakdown: also time the (graph-recorded) training step and one style's sampling with each "
        "SDPA kernel (flash, cudnn, efficient)",
    )
    p.add_argument("--naive-images", type=int, default=2)
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for the stylexfer path's config (repeatable), e.g. train.lora_compute=float32",
    )
    p.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="stylexfer-bench-")))
    p.add_argument("--out", type=Path, default=Path("bench.json"))
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="instead: profile N eager training steps and one style's sampling (torch.profiler); print "
        "the top ops and ms by part (attention, convolutions, LoRA, ...), write them to --out",
    )
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")  # the stages' own lines
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.arch.exists():
        raise SystemExit(f"error: --arch {args.arch}: no such file (SD 2.1's published configs, shared/reference/)")
    unknown = sorted(set(args.variants.split(",")) - set(INDUCTOR_VARIANTS))
    if unknown:
        raise SystemExit(f"error: --variants: unknown {', '.join(unknown)} (known: {', '.join(INDUCTOR_VARIANTS)})")
    if args.part == "inductor" and not torch.cuda.is_available():
        raise SystemExit("error: --part inductor: compiles and times the sampling UNet on a GPU; no CUDA device here")
    if args.compile_cache is not None:
        import os

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.compile_cache.resolve())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.time()
    from ..data import discover_styles

    styles = discover_styles(make_dataset(args.work / "data", args.styles, args.images, args.prompts, args.res))
    cfg = bench_cfg(args, args.override)
    c = None
    if args.part != "gpus":  # the all-GPU path's workers build their own
        c = build_components(args.arch, device, dtype)
        print(
            f"built an SD 2.1-shaped model with RANDOM weights on {device} in {time.time() - t0:.0f}s "
            f"({sum(p.numel() for p in c.unet.parameters()) / 1e6:.0f} M UNet parameters)",
            flush=True,
        )
    if args.profile:
        atomic_write_json(
            args.out, {"profile": profile(args, c, styles, cfg), "device": _device_name(), "versions": _versions()}
        )
        return 0
    if args.part == "breakdown":
        atomic_write_json(args.out, {"breakdown": breakdown(args, c, styles, cfg)})
        return 0
    if args.part == "inductor":
        inductor_trial(args, c, styles)
        return 0
    if args.part == "remedies":
        remedies_trial(args, c, styles)
        return 0
    previous = (
        json.loads(args.out.read_text())
        if args.part in ("train", "sample", "naive", "stylexfer", "gpus") and args.out.exists()
        else {}
    )
    results = {
        **previous,
        "device": _device_name(),
        "versions": _versions(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if args.part in ("naive", "both"):
        results["arithmetic"] = arithmetic(args, c, cfg)
        results["naive"] = naive(args, c, styles, cfg)
        print("naive:", json.dumps(results["naive"]), flush=True)
    label = args.label
    if args.part in ("stylexfer", "both"):
        results[label] = {
            **stylexfer_path(args, c, styles, cfg),
            "config": list(args.override),
            "compile": bool(args.compile),
        }
        print(f"{label}:", json.dumps(results[label]), flush=True)
    if args.part in ("train", "sample"):
        part = (train_phase if args.part == "train" else sample_phase)(args, c, styles, cfg)
        sx = {**results.get(label, {}), **part}
        if "train_s" in sx and "sample_s" in sx:
            sx["total_s"] = sx["train_s"] + sx["sample_s"]
        results[label] = sx
    if args.part == "gpus":
        results[label if label != "stylexfer" else "gpus"] = shards_phase(args, styles, cfg)
    atomic_write_json(args.out, results)
    print_table(results)
    atomic_write_json(args.out, results)
    return 0


def print_table(results: dict) -> None:
    """Every row of a bench JSON: each path's parts, rate, memory, speed-up over naive, share of the floor."""
    rows = [
        (
            "path",
            "class pool s",
            "train s",
            "sample s",
            "total s",
            "train samples/s",
            "peak train GiB",
            "speed-up",
            "floor / total",
        )
    ]
    base = results.get("naive", {}).get("total_s")
    floor = results.get("arithmetic", {}).get("floor_s")
    for name, r in results.items():
        if isinstance(r, dict) and "total_s" in r:
            pool = f"{r['class_images_s']:.0f} (in train)" if "class_images_s" in r else "—"
            rows.append(
                (
                    name + (f" ({r['gpus']} GPUs)" if "gpus" in r else ""),
                    pool,
                    f"{r['train_s']:.0f}",
                    f"{r['sample_s']:.0f}",
                    f"{r['total_s']:.0f}",
                    f"{r['samples_per_s']:.1f}",
                    f"{r.get('peak_train_gib', 0):.1f}",
                    f"{base / r['total_s']:.1f}x" if base else "—",
                    f"{floor / r['total_s']:.0%}" if floor else "—",
                )
            )
    if floor:
        rows.append(("arithmetic floor (1 GPU)", "", "", "", f"{floor:.0f}", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(" | ".join(v.rjust(w) for v, w in zip(r, widths)))


if __name__ == "__main__":
    raise SystemExit(main())
