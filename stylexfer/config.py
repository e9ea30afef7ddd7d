"""Structured config schema (dataclasses registered in Hydra's ConfigStore).

The primary config ``conf/config.yaml`` starts from ``stylexfer_schema``, so every group option is
merged into a typed node: an unknown key, a wrong type or an unknown enum value fails at compose time
with the key named. Ranges that a type cannot express are checked by :func:`validate`, before any
output is written.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import ConfigError
from .scoring import FID_BLOCKS, METRIC_NAMES, prompt_list_file
from .specs import POOLED_PRIORS


class PriorMode(str, Enum):
    none = "none"
    shared = "shared"  # one class-image pool for all styles (the reference run's accidental setting)
    per_style = "per_style"  # a pool per style, of that style's own objects
    # no class pool: the style's own images under the class prompt, the target the base model's own prediction
    # (the adapters off) at the same noisy latent (SimpleTuner's and OneTrainer's prior preservation)
    self = "self"


class InitMode(str, Enum):
    noise = "noise"  # text-to-image from Gaussian noise
    avg_image = "avg_image"  # img2img from the pixel-average of the style's training images


class SamplerName(str, Enum):
    ddim = "ddim"
    dpmpp = "dpmpp"  # DPM-Solver++ 2M
    euler_a = "euler_a"  # Euler ancestral
    pndm = "pndm"
    euler = "euler"
    unipc = "unipc"


class LrSchedule(str, Enum):
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    linear = "linear"
    cosine = "cosine"


# schedules under which step k of a longer run is step k of a k-step run (train.keep_steps)
TOTAL_FREE_SCHEDULES = (LrSchedule.constant.value, LrSchedule.constant_with_warmup.value)


class TimestepBias(str, Enum):
    none = "none"
    style = "style"
    content = "content"


class Precision(str, Enum):
    no = "no"  # no autocast: the frozen model computes in model.dtype (bf16 on CUDA), the LoRA weights in float32
    fp16 = "fp16"
    bf16 = "bf16"


class LoraKind(str, Enum):
    lora = "lora"  # LoRA (the report's); several styles train in one batched pass
    dora = "dora"  # DoRA: LoRA plus a learned magnitude per output (peft; one style at a time)
    loha = "loha"  # LoHa: Hadamard product of two low-rank pairs (peft; one style at a time)
    lokr = "lokr"  # LoKr: Kronecker product (peft; one style at a time)


class EvalSuite(str, Enum):
    reference = "reference"  # the competition checker's models (DINOv2, CLIP, LPIPS, Inception): eval.models
    world = "world"  # the pocket world's judge (stylexfer/world/metrics.py): scores that mean something there


class LoraCompute(str, Enum):
    model = "model"  # LoRA matmuls in the frozen model's dtype (bf16 on CUDA), as diffusers' example under bf16
    float32 = "float32"  # LoRA matmuls in float32 (peft's numerics when the LoRA weights are float32)


@dataclass
class BackendConfig:
    # the framework that trains and samples: stylexfer/backends/<name>/ (torch | jittor; see stylexfer.backends)
    name: str = "torch"


@dataclass
class ModelConfig:
    name: str = "tiny"
    # A hub id ("stabilityai/stable-diffusion-2-1") or a local diffusers folder; null = the embedded
    # tiny model, built on first use under paths.cache_dir.
    path: Optional[str] = None
    revision: Optional[str] = None
    variant: Optional[str] = None  # e.g. "fp16" for a hub repo's half-precision files
    local_files_only: bool = False  # also forced by HF_HUB_OFFLINE=1
    resolution: int = 64  # training and sampling resolution in pixels
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # worker processes of one run (stylexfer/shard.py): 0 = one per visible GPU in a single run on a
    # multi-GPU host (a sweep job keeps one GPU), 1 = compute in the run's own process, N = N workers
    # (N GPUs; N CPU processes with device=cpu). Styles are dealt to the workers; results do not depend on it.
    shards: int = 0
    # dtype of the frozen weights (VAE, UNet, text encoder); LoRA weights always train in float32.
    # "auto" = bfloat16 on CUDA, float32 on CPU.
    dtype: str = "auto"


@dataclass
class LoraConfig:
    kind: LoraKind = LoraKind.lora
    unet_lora_rank: int = 32
    unet_alpha: Optional[float] = None  # null = rank (scale 1)
    unet_target_modules: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    dropout: float = 0.0
    text_encoder_lora_rank: int = 0  # 0 = text encoder frozen
    text_encoder_alpha: Optional[float] = None
    text_encoder_target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    text_encoder_lr_scale: float = 0.1  # text-encoder LR = train.lr × this


@dataclass
class PriorConfig:
    mode: PriorMode = PriorMode.shared
    weight: float = 1.0
    num_class_images: int = 200  # pool size (shared: all styles; per_style: each style)
    class_prompt: str = "an image of {object}"
    # generation of the class images with the base model (no LoRA)
    sampler: SamplerName = SamplerName.ddim
    steps: int = 25
    guidance_scale: float = 7.5
    batch_size: int = 8
    seed: int = 0
    # compile the UNet for the class images' pipeline calls (CUDA): null = when the compile cache holds it
    # (stylexfer/backends/torch/compiled.py), true = compile (and warm the cache), false = never
    compile: Optional[bool] = None


@dataclass
class AugmentationConfig:
    name: str = "crop"
    scale: float = 1.04  # resize the shorter side to scale × resolution, then crop to resolution
    random_crop: bool = True  # False = centre crop
    hflip: bool = False  # random horizontal flip (p = 0.5)
    rotation: float = 0.0  # random rotation in degrees, uniform in [-rotation, rotation]
    # random crops drawn on the VAE's 8-px latent grid, each (image, offset, flip) encoded once and its
    # posterior cached: no VAE in the training step. false = any 1-px offset, encoded every step (exact
    # per-step encoding; what a run with rotation always does)
    cached_crops: bool = True


@dataclass
class InitConfig:
    mode: InitMode = InitMode.avg_image
    strength: float = 0.9  # img2img strength for avg_image: 1.0 = pure noise


@dataclass
class SchedulerConfig:
    name: SamplerName = SamplerName.ddim
    steps: int = 40
    guidance_scale: float = 7.5


class InjectMode(str, Enum):
    none = "none"  # the sampler as it is
    # StyleID (Chung et al., CVPR 2024): the style image's keys and values in the decoder's self-attention
    styleid = "styleid"


class InjectReference(str, Enum):
    cycle = "cycle"  # generated image j takes the style's image j mod R (StyleID: one style image per output)
    average = "average"  # the style's pixel-average image (the img2img start) for every image
    all = "all"  # every reference image's keys and values, concatenated along the token axis


@dataclass
class InjectConfig:
    """Training-free style injection (stylexfer/inject.py, stylexfer/backends/torch/inject.py): in the chosen
    decoder self-attention layers a generated image keeps its queries and takes keys and values from its
    reference image at the same timestep (DDIM inversion of that image)."""

    mode: InjectMode = InjectMode.none
    # query preservation: q = gamma·q_content + (1 − gamma)·q_generated, q_content from a twin sampled in the
    # same batch from the same start without injection (0 = no twin: half the batch)
    gamma: float = 0.75
    temperature: float = 1.5  # attention temperature: the injected layers' logits × T
    # diffusers module paths of the injected self-attention layers; empty = the decoder's two highest-resolution
    # levels with attention (SD: up_blocks.2 and up_blocks.3, StyleID's layers 6-11)
    layers: List[str] = field(default_factory=list)
    share: float = 1.0  # the share of the sampling steps injected, noisiest first
    adain_init: bool = True  # the start latent's per-channel mean/std matched to the reference's inverted latent
    reference: InjectReference = InjectReference.cycle
    reference_images: Optional[int] = None  # how many of a style's images serve as references (null = all)


class ControlMode(str, Enum):
    none = "none"  # the sampler as it is
    canny = "canny"  # a ControlNet on OpenCV's Canny edges of the structure image


@dataclass
class ControlConfig:
    """Structure control (stylexfer/control.py): a ControlNet holds each object's structure (the edges of a
    content image) while the style's adapter paints it."""

    mode: ControlMode = ControlMode.none
    # base = a first pass draws each object with the base model (no adapter, control.base_prompt, the object's
    # own seed) and its edges condition the second; a folder = content images named by object
    source: str = "base"
    base_prompt: str = "an image of {object}"  # the first pass's prompt: the training prompt without the style
    # a local diffusers ControlNet folder for the base model; null = the shipped pocket ControlNet (model=pocket)
    model: Optional[str] = None
    scale: float = 1.0  # the ControlNet residuals' weight (controlnet_conditioning_scale)
    start: float = 0.0  # the share of the sampling steps before it acts
    end: float = 1.0  # ... and after which it stops
    low_threshold: int = 100  # Canny's hysteresis thresholds
    high_threshold: int = 200
    # Gaussian blur (sigma, px at the sampling resolution) of the structure image before Canny: 0 = none; more
    # keeps the outlines and drops the edges of the first pass's own textures (stripes, checks, grids)
    blur: float = 0.0


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    steps: int = 800
    lr: float = 1e-4
    lr_scheduler: LrSchedule = LrSchedule.constant
    lr_warmup_steps: int = 0
    batch_size: int = 1  # instance images per step (as many class images join them under prior)
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    mixed_precision: Precision = Precision.no
    # dtype of the LoRA branch's matmuls (its weights and optimizer state are float32 either way): "model" =
    # the frozen model's dtype (bf16 on CUDA; what diffusers' DreamBooth example computes under bf16 mixed
    # precision), "float32" = peft's numerics. On an H100 (SD 2.1 shape, 14 styles, 28 samples per step):
    # 0.324 s per step and 24.8 GiB peak with "model", 0.363 s and 31.2 GiB with "float32" (no float32 copies
    # of the activations; the add folded into the matmul). Identical on CPU, where the model is float32.
    lora_compute: LoraCompute = LoraCompute.model
    seed: int = 0
    # min-SNR-γ weighting of the instance loss (Hang et al. 2023; 5.0 is the usual value); null = off
    snr_gamma: Optional[float] = None
    # offset noise: noise_offset × N(0,1) per sample and channel added to the noise (0.05-0.1 usual); 0 = off
    noise_offset: float = 0.0
    # which timesteps the training draws: none = uniform; style = favouring high noise, content = low noise (cubic
    # sampling, T2I-Adapter §3.4, as ai-toolkit's content_or_style does: stylexfer/streams.py biased_timesteps)
    timestep_bias: TimestepBias = TimestepBias.none
    checkpoint_every: int = 100  # steps between resumable training checkpoints; 0 = none
    # steps after which the adapter is also stored under the key a train.steps=k run computes, so that run finds it
    # (where the learning rate does not depend on the total: constant, constant_with_warmup). null (auto) = in a
    # -m sweep of train.steps, the sweep's shorter values (the sweep trains once); [] = none
    keep_steps: Optional[list[int]] = None
    # scores during training: every N steps each style's adapter is kept, and after training sampled with the run's
    # settings and scored by its eval suite (validation.json, validation.png, the best step per style); 0 = off
    validate_every: int = 0
    # styles trained together in one batched pass (each sample through its own style's LoRA);
    # 0 = as many as fit (all; halved on a CUDA out-of-memory), 1 = one style at a time
    styles_per_batch: int = 0
    # torch.compile the UNet for the batched pass on CUDA. null (auto) = only when the cache in the stage store
    # already holds this pass's compiled graph; true = compile (and warm the cache); false = never. H100, full
    # reference workload: eager 396 s, compiled with an empty cache 464 s, with a warm cache 374 s
    # (stylexfer/backends/torch/compiled.py, docs/performance.md)
    compile: Optional[bool] = None
    # torch.compile's mode for the UNet when it is compiled: default | reduce-overhead (CUDA graphs of the
    # forward and backward: fewer kernel launches per step) | max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # record the batched training step (forward, backward, clipping, optimizer) as one CUDA graph after its
    # first steps and replay it (backends/torch/graphed.py): same kernels, one launch per step. null (auto) = on
    # CUDA; false = launch every kernel from Python. Not with a compile_mode that makes CUDA graphs itself
    cuda_graphs: Optional[bool] = None
    # torch.compile the VAE encoder for batched training on CUDA: always where random crops are encoded every
    # step (on an H100, 28 crops at 512 px in 0.095 s instead of 0.169 s, for 22-26 s of compiling once per run);
    # for the grid crops encoded up front, when the pass compiles its UNet (64 crops in 0.219 s, not 0.382 s)
    compile_vae: bool = True
    # fp8 (e4m3) forward products for the UNet's frozen linear layers in the batched pass, on GPUs with fp8
    # units (Ada, Hopper); convolutions and the LoRA branches stay bf16 (backends/torch/fp8.py). Off: its
    # effect on quality cannot be measured here; speed and loss curve in docs/performance.md
    fp8: bool = False


@dataclass
class DataConfig:
    # Folder of styles: <root>/<id>/images/*.png + <root>/<id>/prompt.json (competition layout) or
    # <root>/<id>/*.png with data.objects as the prompts (plain layout). null = embedded demo set.
    root: Optional[str] = None
    styles: Optional[List[str]] = None  # subset of style ids; null = all
    objects: List[str] = field(default_factory=list)  # objects to generate in the plain layout
    max_objects: Optional[int] = None  # cap on objects generated per style (quick looks)
    # prompt templates; fields: {object} (from the file name / prompt.json) and {style} (the folder id)
    instance_prompt: str = "an image of {object} in style_{style}"
    prompt: str = "an image of {object} in style_{style}"  # inference template


@dataclass
class SampleConfig:
    seed: int = 0
    images_per_prompt: int = 1
    batch_size: int = 8
    # fold each style's LoRA into the weights while sampling it (faster; base weights restored exactly after)
    fuse_lora: bool = True
    # compile the UNet for the pipeline calls (CUDA, fused LoRA): null = when the compile cache holds its graph
    # for this batch shape (stylexfer/backends/torch/compiled.py), true = compile (and warm the cache), false = never
    compile: Optional[bool] = None


@dataclass
class MetricModels:
    """Where each model-backed metric's weights come from: a hub id or a local path (README: metric table)."""

    dino: str = "facebook/dinov2-base"  # transformers Dinov2Model (the checker's)
    lpips: str = (
        "${paths.cache_dir}/metric-weights/lpips-squeeze-v0.1.safetensors"  # stylexfer.tools.convert_weights lpips
    )
    clip_r: str = "openai/clip-vit-large-patch14"  # transformers CLIPModel (the checker's)
    fid: str = (
        "${paths.cache_dir}/metric-weights/fid-inception-2015-12-05.safetensors"  # stylexfer.tools.convert_weights fid
    )
    clip_iqa: str = "openai/clip-vit-base-patch16"  # transformers CLIPModel


@dataclass
class EvalConfig:
    # which models compute the metrics: reference = the checker's (eval.models); world = the pocket judge
    # (stylexfer/world; its scores do not compare with the report's)
    suite: EvalSuite = EvalSuite.reference
    judge: Optional[str] = (
        None  # eval.suite=world: a folder with judge.safetensors + judge.json; null = the shipped one
    )
    # any of dino, hist, lpips, clip_r, fid, clip_iqa; the final score needs all six
    metrics: List[str] = field(default_factory=lambda: ["dino", "hist", "lpips", "clip_r", "fid", "clip_iqa"])
    # Missing metric weights: false = fail before training, naming every missing model; true = compute
    # what can be computed and mark the rest (and the final score) unavailable. null = true for the
    # embedded demo model (no real weights exist for it anyway), false for a real model.
    skip_missing: Optional[bool] = None
    models: MetricModels = field(default_factory=MetricModels)
    fid_dims: int = 64  # Inception feature size: 64 (the checker's) | 192 | 768 | 2048 (the usual FID)
    clip_r_top_k: int = 5  # an image is retrieved when its prompt is among the k best matches
    # CLIP-R's candidate prompts: null = every object of the data set; a text file (one per line); or a named
    # list, read from prompt_lists_dir/<name>.txt: "checker" = the competition checker's clip_r_prompts.txt
    clip_r_prompts: Optional[str] = None
    prompt_lists_dir: str = "${paths.cache_dir}/clip_r_prompts"


@dataclass
class CsvLoggerConfig:
    dir: Optional[str] = None  # under the run folder; null = logs/csv


@dataclass
class TensorboardLoggerConfig:
    dir: Optional[str] = None  # under the run folder; null = logs/tensorboard


@dataclass
class MlflowLoggerConfig:
    dir: Optional[str] = None  # under the run folder; null = logs/mlflow (SQLite store + artifacts)
    tracking_uri: Optional[str] = (
        None  # null = sqlite:///<run>/logs/mlflow/mlflow.db; e.g. a sweep-wide store or a server
    )
    experiment: Optional[str] = None  # null = the run's name


@dataclass
class LoggerConfig:
    """The experiment loggers a run reports to (stylexfer/loggers.py); each is on when its key is set."""

    csv: Optional[CsvLoggerConfig] = None
    tensorboard: Optional[TensorboardLoggerConfig] = None
    mlflow: Optional[MlflowLoggerConfig] = None


@dataclass
class PathsConfig:
    # Stage store (embedded model, demo data, class images, adapters), shared by all runs.
    cache_dir: str = "${oc.env:STYLEXFER_CACHE,${oc.env:HOME}/.cache/stylexfer}"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class StylexferConfig:
    name: str = "default"
    backend: BackendConfig = field(default_factory=BackendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    inject: InjectConfig = field(default_factory=InjectConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def value(x):
    """The plain value of an enum-typed config field (``SamplerName.ddim`` → ``"ddim"``)."""
    return x.value if isinstance(x, Enum) else x


@dataclass
class EvaluateConfig:
    """``python -m stylexfer.evaluate``: score a folder laid out like a run's ``images/``."""

    images: str = MISSING  # <images>/<style id>/<object>.png
    name: str = "evaluate"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="stylexfer_schema", node=StylexferConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)


# keys that were renamed: old override → new key (the old one fails with a line naming the new one)
RENAMED = {"lora.unet_rank": "lora.unet_lora_rank", "lora.text_encoder_rank": "lora.text_encoder_lora_rank"}


def renamed_keys(overrides) -> list[str]:
    """One line per command-line override that uses a renamed key (``lora.unet_rank=4`` → ``lora.unet_lora_rank``)."""
    lines = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in RENAMED:
            lines.append(f"{key} was renamed: use {RENAMED[key]} (as in {RENAMED[key]}={o.split('=', 1)[-1]})")
    return lines


def _config_groups() -> list[str]:
    """The config groups on Hydra's search path (``strategy``, ``ablation``, ``lora``…), when Hydra composed."""
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return []
    return sorted(GlobalHydra.instance().config_loader().list_groups(""))


def check_known_keys(cfg: DictConfig, skip: tuple = ("hydra",)) -> None:
    """Refuse a key that no schema declares (``+stratgy=safe``, ``+lora.unet_lora_rnk=4``: Hydra's ``+`` adds a
    key even to a typed config) in one line naming it and the nearest valid name. Every node typed by a
    dataclass is checked against its fields; the config has no free-form node (its extension points are the
    config groups, composed before this runs)."""
    groups = [g for g in _config_groups() if g not in skip]

    def walk(node, where: str) -> None:
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            return
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            full = f"{where}{key}"
            if not where and key in skip:
                continue
            if key not in known:
                near = difflib.get_close_matches(str(key), known + ([] if where else groups), n=1)
                hint = f" (did you mean {where}{near[0]}?)" if near else f"; known: {', '.join(known)}"
                what = "no such config key or group" if not where else f"no such key in {where.rstrip('.')}"
                raise ConfigError(f"{full}: {what}{hint}")
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                walk(child, f"{full}.")

    walk(cfg, "")


def _check(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value}: {rule}")


def validate_eval(ev) -> None:
    unknown = [m for m in ev.metrics if m not in METRIC_NAMES]
    _check(not unknown, "eval.metrics", list(ev.metrics), f"unknown metric(s) {unknown}; known: {list(METRIC_NAMES)}")
    _check(ev.fid_dims in FID_BLOCKS, "eval.fid_dims", ev.fid_dims, f"must be one of {sorted(FID_BLOCKS)}")
    _check(ev.clip_r_top_k >= 1, "eval.clip_r_top_k", ev.clip_r_top_k, "must be >= 1")
    if ev.clip_r_prompts is not None:
        prompt_list_file(ev)  # a missing file or named list fails here, naming where to put it


def validate_inject(inj, backend: str) -> None:
    """Ranges of the inject group; the layer names are checked against the model by
    :func:`stylexfer.inject.check_layers` once the model folder is known."""
    if inj.mode == InjectMode.none:
        return
    _check(
        backend == "torch",
        "inject.mode",
        value(inj.mode),
        f"style injection runs on the PyTorch backend only (backend={backend}; its attention is diffusers')",
    )
    _check(0.0 <= inj.gamma <= 1.0, "inject.gamma", inj.gamma, "must be in [0, 1]")
    _check(inj.temperature > 0, "inject.temperature", inj.temperature, "must be > 0")
    _check(0.0 < inj.share <= 1.0, "inject.share", inj.share, "must be in (0, 1]")
    _check(
        inj.reference_images is None or inj.reference_images >= 1,
        "inject.reference_images",
        inj.reference_images,
        "must be >= 1 or null (all)",
    )


def validate_control(ctl, backend: str) -> None:
    """Ranges of the control group; the folders (model, source) are checked once the run starts."""
    if ctl.mode == ControlMode.none:
        return
    _check(
        backend == "torch",
        "control.mode",
        value(ctl.mode),
        f"structure control runs on the PyTorch backend only (backend={backend}; the ControlNet is diffusers')",
    )
    _check(ctl.scale >= 0, "control.scale", ctl.scale, "must be >= 0")
    _check(
        0.0 <= ctl.start < ctl.end <= 1.0,
        "control.start",
        f"{ctl.start} (end {ctl.end})",
        "needs 0 <= start < end <= 1",
    )
    _check(
        0 <= ctl.low_threshold <= ctl.high_threshold,
        "control.low_threshold",
        ctl.low_threshold,
        f"needs 0 <= low_threshold <= high_threshold ({ctl.high_threshold})",
    )
    _check(ctl.blur >= 0, "control.blur", ctl.blur, "must be >= 0 (0 = no blur)")
    _check("{object}" in ctl.base_prompt, "control.base_prompt", ctl.base_prompt, "must contain {object}")


def validate(cfg: DictConfig) -> None:
    """Range checks that types cannot express; raises ConfigError naming the first bad key."""
    check_known_keys(cfg)
    from .backends import backend_names

    _check(cfg.backend.name in backend_names(), "backend.name", cfg.backend.name, f"unknown; known: {backend_names()}")
    lo, tr, pr, it, sc, au, da = cfg.lora, cfg.train, cfg.prior, cfg.init, cfg.scheduler, cfg.augmentation, cfg.data
    _check(lo.unet_lora_rank >= 1, "lora.unet_lora_rank", lo.unet_lora_rank, "must be >= 1")
    _check(
        lo.text_encoder_lora_rank >= 0,
        "lora.text_encoder_lora_rank",
        lo.text_encoder_lora_rank,
        "must be >= 0 (0 = frozen)",
    )
    _check(
        len(lo.unet_target_modules) > 0,
        "lora.unet_target_modules",
        list(lo.unet_target_modules),
        "must name at least one module",
    )
    _check(lo.text_encoder_lr_scale > 0, "lora.text_encoder_lr_scale", lo.text_encoder_lr_scale, "must be > 0")
    _check(0.0 <= lo.dropout < 1.0, "lora.dropout", lo.dropout, "must be in [0, 1)")
    for k in ("unet_alpha", "text_encoder_alpha"):
        v = lo[k]
        _check(v is None or v > 0, f"lora.{k}", v, "must be > 0 or null")
    _check(0.0 < it.strength <= 1.0, "init.strength", it.strength, "must be in (0, 1]")
    _check(sc.steps >= 1, "scheduler.steps", sc.steps, "must be >= 1")
    _check(sc.guidance_scale >= 0, "scheduler.guidance_scale", sc.guidance_scale, "must be >= 0")
    _check(
        it.mode == InitMode.noise or int(sc.steps * it.strength) >= 1,
        "init.strength",
        it.strength,
        f"leaves no denoising step at scheduler.steps={sc.steps}",
    )
    _check(
        tr.compile_mode in COMPILE_MODES,
        "train.compile_mode",
        tr.compile_mode,
        f"must be one of {', '.join(COMPILE_MODES)}",
    )
    _check(
        tr.steps >= 0,
        "train.steps",
        tr.steps,
        "must be >= 0 (0 = untrained: the base model behind an all-zero adapter)",
    )
    _check(tr.lr > 0, "train.lr", tr.lr, "must be > 0")
    _check(tr.batch_size >= 1, "train.batch_size", tr.batch_size, "must be >= 1")
    _check(tr.lr_warmup_steps >= 0, "train.lr_warmup_steps", tr.lr_warmup_steps, "must be >= 0")
    _check(tr.checkpoint_every >= 0, "train.checkpoint_every", tr.checkpoint_every, "must be >= 0 (0 = none)")
    _check(tr.validate_every >= 0, "train.validate_every", tr.validate_every, "must be >= 0 (0 = off)")
    _check(
        tr.validate_every <= tr.steps,
        "train.validate_every",
        tr.validate_every,
        f"is beyond train.steps={tr.steps}: no step to score before the last",
    )
    _check(
        not (tr.validate_every and tr.fp8),
        "train.validate_every",
        tr.validate_every,
        "cannot keep adapters mid-training under train.fp8=true (the fp8 layers are swapped in for the pass)",
    )
    _check(
        not (tr.validate_every and cfg.backend.name == "jittor"),
        "train.validate_every",
        tr.validate_every,
        "the jittor backend keeps no adapters mid-training (backend=torch does)",
    )
    keep = list(tr.keep_steps or [])
    _check(all(k >= 1 for k in keep), "train.keep_steps", keep, "every step must be >= 1")
    _check(
        not keep or value(tr.lr_scheduler) in TOTAL_FREE_SCHEDULES,
        "train.keep_steps",
        keep,
        f"needs a learning rate that does not depend on train.steps ({' or '.join(TOTAL_FREE_SCHEDULES)}); "
        f"train.lr_scheduler={value(tr.lr_scheduler)} makes step k of a longer run differ from a k-step run",
    )
    _check(
        cfg.model.shards >= 0,
        "model.shards",
        cfg.model.shards,
        "must be >= 0 (0 = one worker per visible GPU, 1 = none)",
    )
    _check(tr.styles_per_batch >= 0, "train.styles_per_batch", tr.styles_per_batch, "must be >= 0 (0 = auto)")
    _check(tr.max_grad_norm > 0, "train.max_grad_norm", tr.max_grad_norm, "must be > 0")
    _check(tr.snr_gamma is None or tr.snr_gamma > 0, "train.snr_gamma", tr.snr_gamma, "must be > 0 or null (off)")
    _check(tr.noise_offset >= 0, "train.noise_offset", tr.noise_offset, "must be >= 0 (0 = off)")
    _check(pr.weight >= 0, "prior.weight", pr.weight, "must be >= 0")
    _check(
        value(pr.mode) not in POOLED_PRIORS or pr.num_class_images >= 1,
        "prior.num_class_images",
        pr.num_class_images,
        "must be >= 1",
    )
    _check(
        not (value(pr.mode) == PriorMode.self.value and cfg.backend.name == "jittor"),
        "prior.mode",
        value(pr.mode),
        "the jittor backend has no base-model prediction target (backend=torch does); use prior=shared or per_style",
    )
    _check(pr.steps >= 1, "prior.steps", pr.steps, "must be >= 1")
    _check(pr.batch_size >= 1, "prior.batch_size", pr.batch_size, "must be >= 1")
    _check("{object}" in pr.class_prompt, "prior.class_prompt", pr.class_prompt, "must contain {object}")
    _check(au.scale >= 1.0, "augmentation.scale", au.scale, "must be >= 1.0")
    _check(0.0 <= au.rotation <= 180.0, "augmentation.rotation", au.rotation, "must be in [0, 180] degrees")
    res = cfg.model.resolution
    _check(res >= 8 and res % 8 == 0, "model.resolution", res, "must be a positive multiple of 8")
    for k in ("instance_prompt", "prompt"):
        try:
            da[k].format(object="x", style="00")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"data.{k}={da[k]!r}: bad template ({e!r}); fields are {{object}} and {{style}}"
            ) from None
    _check(da.max_objects is None or da.max_objects >= 1, "data.max_objects", da.max_objects, "must be >= 1 or null")
    _check(cfg.sample.images_per_prompt >= 1, "sample.images_per_prompt", cfg.sample.images_per_prompt, "must be >= 1")
    _check(cfg.sample.batch_size >= 1, "sample.batch_size", cfg.sample.batch_size, "must be >= 1")
    validate_eval(cfg.eval)
    validate_inject(cfg.inject, cfg.backend.name)
    validate_control(cfg.control, cfg.backend.name)
    _check(
        cfg.model.dtype in ("auto", "float32", "float16", "bfloat16"),
        "model.dtype",
        cfg.model.dtype,
        "must be one of auto, float32, float16, bfloat16",
    )
