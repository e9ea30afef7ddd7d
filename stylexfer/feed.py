"""A style's training data without a framework, the one data feed of both backends: the random streams, the image
order, the augmentation, the crop keys and the cache policy. A backend only encodes (pixels → VAE posterior) and
steps; what a step draws, and in which order it draws it, is decided here, so a style draws the same numbers on
either backend (the Jittor parity test checks the adapters it leads to).

Per step, :meth:`DataFeed.next` takes ``batch_size`` instance images (epoch-wise shuffled) and, under prior
preservation, as many class images (``prior=self``: the same instance images again, drawn on their own and prompted
with the class prompt, no pool), and says for each sample how its posterior is had, by the cache policy
(:func:`cache_policy`); then :meth:`DataFeed.noise` draws the step's noise and timesteps:

- ``grid`` (random crops on the latent grid, the default): the sample is a crop key; every crop of every image is
  encoded once, up front (:meth:`DataFeed.grid_todo`), and no step runs the VAE;
- ``cached`` (deterministic augmentation): the sample is an image key; the first step that draws an image encodes
  it (:meth:`Draw.image` holds its pixels then), later steps reuse it;
- ``per_step`` (1-px crops, rotation): the sample is a freshly augmented image, encoded in the step.

Keys are ``(owner, index)`` or ``(owner, index, left, top, flip)``; the owner is ``("style", id)`` for a style's
images and ``("pool", key)`` for a class pool's, so a cache shared by the styles of a pass (or kept by a backend
across passes, keyed by resolution and scale) encodes a shared class pool once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Container, Optional

from PIL import Image

from .data import (
    Style,
    augment,
    augment_random,
    augment_resize,
    can_cache_latents,
    crop_at,
    crop_grid,
    draw_grid_crop,
    grid_cached_crops,
)
from .prior import ClassPool
from .specs import TrainSpec
from .streams import Cycler, Stream, draw_noise

GRID, CACHED, PER_STEP = "grid", "cached", "per_step"


def cache_policy(aug) -> str:
    """How a training step has its samples' VAE posteriors under augmentation ``aug`` (see the module)."""
    if grid_cached_crops(aug):
        return GRID
    return CACHED if can_cache_latents(aug) else PER_STEP


@dataclass
class Sample:
    """One sample of a step: its cache key (None: encode ``image`` in the step, keep nothing) and, when the backend
    must encode it now, its augmented pixels."""

    key: Optional[tuple]
    image: Optional[Image.Image] = None


@dataclass
class Draw:
    """A step's samples (instance samples first, then the prior samples: class images, or under ``prior=self`` the
    same instance images again under the class prompt) and their prompts."""

    samples: list[Sample]
    prompts: list[str]


class DataFeed:
    """One style's training data (its class pool: None without prior preservation). ``resized`` may be shared by the
    feeds of a pass (a shared class pool is resized once)."""

    def __init__(
        self,
        style: Style,
        pool: Optional[ClassPool],
        *,
        seed: int,
        instance_prompt: str,
        batch_size: int,
        resolution: int,
        augmentation,
        noise_offset: float = 0.0,
        timestep_bias: str = "none",
        resized: Optional[dict] = None,
        self_prior_prompt: Optional[str] = None,
    ):
        if pool is not None and self_prior_prompt is not None:
            raise ValueError("a feed's prior samples come from a class pool or from its own images, not both")
        self.style, self.pool = style, pool
        self.batch, self.resolution, self.aug = batch_size, resolution, augmentation
        self.noise_offset, self.timestep_bias = noise_offset, timestep_bias
        self.stream = Stream(seed, style.id)
        self.prompts = [instance_prompt.format(object=o, style=style.id) for o in style.image_objects]
        # prior=self: the prompts of the instance images' prior samples (the class prompt, no style token)
        self.self_prompts = (
            None
            if self_prior_prompt is None
            else [self_prior_prompt.format(object=o, style=style.id) for o in style.image_objects]
        )
        self.inst = Cycler(len(style.images), self.stream.np)
        self.cls = Cycler(len(pool.images), self.stream.np) if pool is not None else None
        self.policy = cache_policy(augmentation)
        self.resized: dict = {} if resized is None else resized  # id(source image) → resized image

    @classmethod
    def of(cls, style: Style, pool: Optional[ClassPool], spec: TrainSpec, resized: Optional[dict] = None) -> DataFeed:
        """The feed a training pass of ``spec`` draws ``style``'s data from (both backends build it so)."""
        bias = spec.train.timestep_bias
        return cls(
            style,
            pool,
            seed=spec.train.seed,
            instance_prompt=spec.instance_prompt,
            batch_size=spec.train.batch_size,
            resolution=spec.resolution,
            augmentation=spec.augmentation,
            noise_offset=spec.train.noise_offset,
            timestep_bias=str(getattr(bias, "value", bias)),
            resized=resized,
            self_prior_prompt=spec.prior.class_prompt if spec.prior.from_base else None,
        )

    # ------------------------------------------------------------------ what the feed holds
    def cycles(self) -> tuple:
        """The data orders a checkpoint keeps (the class pool's None without prior)."""
        return (self.inst, self.cls)

    def sources(self, which: tuple = ("style", "pool")) -> list[tuple[tuple, list]]:
        """(owner, images) of the style's images and, under prior, the class pool's."""
        out = []
        if "style" in which:
            out.append((("style", self.style.id), self.style.images))
        if "pool" in which and self.pool is not None:
            out.append((("pool", self.pool.key), self.pool.images))
        return out

    def resized_image(self, images: list, i: int) -> Image.Image:
        """``images[i]`` through the deterministic resize of the augmentation (computed once per image)."""
        key = id(images[i])
        if key not in self.resized:
            self.resized[key] = augment_resize(images[i], self.resolution, self.aug)
        return self.resized[key]

    def resize_all(self, images: list) -> None:
        """The resize of every image not resized yet, on worker threads (PIL's resampling releases the GIL)."""
        todo = list({id(img): img for img in images if id(img) not in self.resized}.values())
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="stylexfer-resize") as pool:
            outs = pool.map(lambda img: augment_resize(img, self.resolution, self.aug), todo)
            for img, out in zip(todo, outs):
                self.resized[id(img)] = out  # set here, on one thread

    def crop(self, key: tuple) -> Image.Image:
        """The pixels of grid crop ``key``."""
        owner, i, left, top, flip = key
        images = self.style.images if owner == ("style", self.style.id) else self.pool.images
        return crop_at(self.resized_image(images, i), self.resolution, left, top, flip)

    def grid_todo(self, have: Container, seen: Optional[set] = None, which: tuple = ("style", "pool")) -> list:
        """The keys of every grid crop of ``which`` images not in ``have`` nor in ``seen`` (which it extends: the feeds
        of a pass listing into one batch of work share a class pool), in a fixed order. Empty unless the policy is
        ``grid``."""
        if self.policy != GRID:
            return []
        seen = set() if seen is None else seen
        flips = (False, True) if self.aug.hflip else (False,)
        todo = []
        for owner, images in self.sources(which):
            self.resize_all(images)
            for i in range(len(images)):
                lefts, tops = crop_grid(self.resized_image(images, i).size, self.resolution)
                for key in ((owner, i, x, y, f) for x in lefts for y in tops for f in flips):
                    if key not in have and key not in seen:
                        seen.add(key)
                        todo.append(key)
        return todo

    # ------------------------------------------------------------------ a step
    def _samples(self, owner: tuple, images: list, ids: list[int], have: Container) -> list[Sample]:
        rng, res = self.stream.np, self.resolution
        if self.policy == GRID:
            sizes = (self.resized_image(images, i).size for i in ids)
            return [Sample((owner, i, *draw_grid_crop(size, res, self.aug, rng))) for i, size in zip(ids, sizes)]
        if self.policy == PER_STEP:  # the resize is cached, the random crop/flip/rotation is drawn every step
            return [Sample(None, augment_random(self.resized_image(images, i), res, self.aug, rng)) for i in ids]
        out = []
        for i in ids:
            key = (owner, i)
            out.append(Sample(key, None if key in have else augment(images[i], res, self.aug, rng)))
        return out

    def noise(self, shape: tuple, num_train_timesteps: int):
        """The step's latent-sample noise, diffusion noise and timesteps, drawn after :meth:`next`
        (:func:`stylexfer.streams.draw_noise`; CPU tensors whichever the backend)."""
        return draw_noise(self.stream.torch, shape, num_train_timesteps, self.noise_offset, self.timestep_bias)

    def next(self, have: Container = ()) -> Draw:
        """The step's samples and prompts; ``have`` is the backend's cache (under ``cached`` an image already in it is
        not augmented again: the stream draws only for new ones)."""
        ids = self.inst.take(self.batch)
        samples = self._samples(("style", self.style.id), self.style.images, ids, have)
        prompts = [self.prompts[i] for i in ids]
        if self.cls is not None:
            cids = self.cls.take(self.batch)
            samples += self._samples(("pool", self.pool.key), self.pool.images, cids, have)
            prompts += [self.pool.prompts[i] for i in cids]
        elif self.self_prompts is not None:  # the same images again, their own crops and noise, the class prompt
            samples += self._samples(("style", self.style.id), self.style.images, ids, have)
            prompts += [self.self_prompts[i] for i in ids]
        return Draw(samples, prompts)
