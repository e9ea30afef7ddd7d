"""Typed stage specs: what a stage's work reads, built once from the composed config and handed down instead of it.

:class:`PoolSpec` is a class-image pool: what its images depend on (its store key hashes exactly that) and, outside
the key, how they are made (batch size, compiling).

:class:`TrainSpec` is everything a backend's training reads (the LoRA, the training settings, the prior loss, the
augmentation, the resolution and the instance prompt) and nothing else of the config. The adapter's store key is
made from the same object (:meth:`TrainSpec.adapter_key`: the spec less the keys that only schedule the work, plus
the style's images, the model and the class pool), so what determines an adapter and what its key hashes cannot
drift apart. Its parts are read-only copies: a backend cannot change the run's config, nor the config the spec.

:class:`SampleSpec` is what the sampling stage reads: the prompts and seeds, the sampler, the img2img start, and
the style-injection and structure-control groups when they are on. The samples' store key is made from it
(:func:`stylexfer.sample.samples_store_spec`) and the backend's :meth:`~stylexfer.backends.Backend.generate` gets
its arguments from it (:meth:`SampleSpec.generate_settings`).

It imports only the store's hash (the backend interface, below the config's schema, uses it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from .store import stable_hash

# training settings that change how the work is scheduled, not what it computes (left out of the adapter's key)
SCHEDULING_KEYS = (
    "checkpoint_every",
    "styles_per_batch",
    "compile",
    "compile_mode",
    "compile_vae",
    "cuda_graphs",
    "keep_steps",
    "validate_every",
)

# training settings added after adapters were stored: at their default they are left out of the key, so those
# adapters keep their keys
DEFAULT_OFF = {"timestep_bias": "none"}

POOLED_PRIORS = ("shared", "per_style")  # the prior modes whose samples are a pool's class images


def _name(choice) -> str:
    """An enum member's value, or the string itself."""
    return str(getattr(choice, "value", choice))


def _frozen(node) -> DictConfig:
    """A read-only copy of a config node (its schema kept: a typo reads as an error, not as None)."""
    out = copy.deepcopy(node)
    OmegaConf.resolve(out)
    OmegaConf.set_readonly(out, True)
    return out


@dataclass(frozen=True)
class PriorLoss:
    """The prior-preservation term of the loss: ``mode`` none | shared | per_style | self, its weight and (under
    ``self``, where it is the prior samples' prompt) the class prompt."""

    mode: str
    weight: float
    class_prompt: str = ""

    @property
    def on(self) -> bool:
        return self.mode != "none"

    @property
    def pooled(self) -> bool:
        """Whether the prior samples are a pool's class images (shared, per_style)."""
        return self.mode in POOLED_PRIORS

    @property
    def from_base(self) -> bool:
        """Whether the prior samples are the style's own images under the class prompt, their target the base
        model's own prediction (``self``)."""
        return self.mode == "self"


@dataclass(frozen=True)
class TrainSpec:
    """What a backend's :meth:`~stylexfer.backends.Backend.train` reads, from :meth:`from_config`."""

    backend: str
    dtype: str  # the model's dtype (part of the key: an adapter trained in bf16 is not the float32 one)
    resolution: int
    instance_prompt: str
    lora: DictConfig  # the ``lora`` group
    train: DictConfig  # the ``train`` group, scheduling keys included (how the pass runs)
    augmentation: DictConfig  # the ``augmentation`` group
    prior: PriorLoss

    @classmethod
    def from_config(cls, cfg) -> "TrainSpec":
        return cls(
            backend=str(cfg.backend.name),
            dtype=str(cfg.model.dtype),
            resolution=int(cfg.model.resolution),
            instance_prompt=str(cfg.data.instance_prompt),
            lora=_frozen(cfg.lora),
            train=_frozen(cfg.train),
            augmentation=_frozen(cfg.augmentation),
            prior=PriorLoss(
                mode=_name(cfg.prior.mode), weight=float(cfg.prior.weight), class_prompt=str(cfg.prior.class_prompt)
            ),
        )

    def adapter_key(self, style_fingerprint: str, model_identity: str, pool_key: Optional[str]) -> dict:
        """The store spec of one style's adapter (its hash is the key): this spec without its scheduling keys, the
        style's images and object names, the model and the class pool."""
        prior = {"mode": "none"} if not self.prior.on else {"mode": self.prior.mode, "weight": self.prior.weight}
        if self.prior.pooled:
            prior["pool"] = pool_key
        elif self.prior.from_base:
            prior["class_prompt"] = self.prior.class_prompt
        train = OmegaConf.to_container(self.train, resolve=True, enum_to_str=True)
        return {
            "version": 2,
            "backend": self.backend,
            "model": model_identity,
            "style": style_fingerprint,
            "instance_prompt": self.instance_prompt,
            "resolution": self.resolution,
            "lora": OmegaConf.to_container(self.lora, resolve=True, enum_to_str=True),
            "prior": prior,
            "augmentation": {
                k: v for k, v in OmegaConf.to_container(self.augmentation, resolve=True).items() if k != "name"
            },
            "train": {
                k: v
                for k, v in train.items()
                if k not in SCHEDULING_KEYS and not (k in DEFAULT_OFF and v == DEFAULT_OFF[k])
            },
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class PoolSpec:
    """A class-image pool (:mod:`stylexfer.prior`): ``prompts`` drawn by the base model with this sampler."""

    backend: str
    model: str
    prompts: tuple[str, ...]
    sampler: str
    steps: int
    guidance_scale: float
    seed: int
    resolution: int
    # how the images are made, not what they are: outside the key
    batch_size: int = field(default=8, compare=False)
    compile: Optional[bool] = field(default=None, compare=False)

    def store_spec(self) -> dict:
        """What the pool's key hashes (and its manifest records)."""
        return {
            "backend": self.backend,
            "model": self.model,
            "prompts": list(self.prompts),
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
            "resolution": self.resolution,
        }

    @property
    def key(self) -> str:
        return stable_hash(self.store_spec())


@dataclass(frozen=True)
class SampleSpec:
    """What the sampling stage reads, from :meth:`from_config`; ``inject`` and ``control`` are read-only copies of
    their groups when on, else None."""

    backend: str
    dtype: str
    resolution: int
    model_name: str  # the base model as configured (a structure-control model may be looked up beside it)
    prompt: str  # the template, with ``{object}`` and ``{style}``
    images_per_prompt: int
    seed: int
    sampler: str
    steps: int
    guidance_scale: float
    init: str  # noise | avg_image
    strength: float  # img2img strength (avg_image)
    batch_size: int  # in the key: a chunk's images share the pipeline's batch
    fuse_lora: bool
    inject: Optional[DictConfig] = None
    control: Optional[DictConfig] = None
    # whether to compile the sampling UNet: how the images are made, outside the key
    compile: Optional[bool] = field(default=None, compare=False)

    @classmethod
    def from_config(cls, cfg) -> "SampleSpec":
        return cls(
            backend=str(cfg.backend.name),
            dtype=str(cfg.model.dtype),
            resolution=int(cfg.model.resolution),
            model_name=str(cfg.model.name),
            prompt=str(cfg.data.prompt),
            images_per_prompt=int(cfg.sample.images_per_prompt),
            seed=int(cfg.sample.seed),
            sampler=_name(cfg.scheduler.name),
            steps=int(cfg.scheduler.steps),
            guidance_scale=float(cfg.scheduler.guidance_scale),
            init=_name(cfg.init.mode),
            strength=float(cfg.init.strength),
            batch_size=int(cfg.sample.batch_size),
            fuse_lora=bool(cfg.sample.fuse_lora),
            inject=_frozen(cfg.inject) if _name(cfg.inject.mode) != "none" else None,
            control=_frozen(cfg.control) if _name(cfg.control.mode) != "none" else None,
            compile=cfg.sample.compile,
        )

    @property
    def img2img(self) -> bool:
        return self.init == "avg_image"

    def generate_settings(self) -> dict:
        """The arguments of :meth:`~stylexfer.backends.Backend.generate` that come from the spec alone."""
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "resolution": self.resolution,
            "fuse_lora": self.fuse_lora,
            "compile": self.compile,
        }

    def structure_settings(self, model_identity: str) -> dict:
        """What determines a structure-control first-pass drawing beside its prompt and seed (its stage's key)."""
        return {
            "backend": self.backend,
            "model": model_identity,
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "resolution": self.resolution,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
        }
