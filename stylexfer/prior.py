"""Prior-preservation class images: the base model's own pictures of the same objects, no style token.

``prior.mode=shared`` makes one pool from every style's objects (the reference run's setting, which
worked as well as per-style pools); ``per_style`` makes one pool per style. A pool is generated once
and stored under a key of everything that determines it (model, prompts, count, sampler, seed,
resolution), so other runs and other styles reuse it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image

from .config import PriorMode, value
from .data import Style, load_image
from .sample import image_seed, make_in_chunks
from .specs import PoolSpec
from .store import atomic_write_json, build_once, reusable

log = logging.getLogger(__name__)


@dataclass
class ClassPool:
    key: str
    dir: Path
    prompts: list[str]
    images: list[Image.Image]


def pool_objects(styles: list[Style], style: Style, mode: PriorMode) -> list[str]:
    """Objects a style's class pool shows: every style's (shared) or its own (per_style)."""
    source = styles if PriorMode(mode) == PriorMode.shared else [style]
    return sorted({o for s in source for o in s.image_objects})


def pool_spec(objects: list[str], prior_cfg, model_identity: str, resolution: int, backend: str) -> PoolSpec:
    """The pool of ``num_class_images`` class prompts over ``objects`` (cycled), as ``prior`` configures it."""
    prompts = tuple(
        prior_cfg.class_prompt.format(object=objects[i % len(objects)]) for i in range(prior_cfg.num_class_images)
    )
    return PoolSpec(
        backend=backend,
        model=model_identity,
        prompts=prompts,
        sampler=value(prior_cfg.sampler),
        steps=prior_cfg.steps,
        guidance_scale=prior_cfg.guidance_scale,
        seed=prior_cfg.seed,
        resolution=resolution,
        batch_size=prior_cfg.batch_size,
        compile=prior_cfg.compile,
    )


def pool_key(spec: PoolSpec) -> str:
    return spec.key


def _generate(backend, spec: PoolSpec, partial: Path, share: Optional[tuple[int, int]] = None) -> list[str]:
    """Make the pool's images into ``partial`` (one file per image, fixed chunks, resumable); ``share``
    = (k, n) makes only chunks k, k+n, k+2n, ... (one of n processes). Returns the file names."""
    prompts = list(spec.prompts)
    names = [f"{i:05d}.png" for i in range(len(prompts))]
    with backend.generate(
        sampler=spec.sampler,
        steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        resolution=spec.resolution,
        compile=spec.compile,
    ) as make:
        make_in_chunks(
            partial,
            names,
            spec.batch_size,
            lambda i, j: make(prompts[i:j], [image_seed(spec.seed, "class", k) for k in range(i, j)]),
            lambda n: f"class:{n}",
            "class images",
            share=share,
        )
    return names


def make_pool_share(backend, spec: PoolSpec, cache_dir: Path, share: tuple[int, int]) -> None:
    """One process's share of a pool's images, into the pool's partial folder (where :func:`ensure_pool`
    finds them and makes only what is missing): the shards of a multi-GPU run split the pool this way."""
    key = pool_key(spec)
    if reusable(Path(cache_dir) / "class_images" / key):
        return
    partial = Path(cache_dir) / "class_images" / ".partial" / key
    log.info("generating class images %d of every %d chunks of pool %s", share[0] + 1, share[1], key)
    _generate(backend, spec, partial, share)


def ensure_pool(backend, spec: PoolSpec, cache_dir: Path) -> ClassPool:
    key = pool_key(spec)
    target = Path(cache_dir) / "class_images" / key

    partial = target.parent / ".partial" / key  # survives a kill: generation resumes batch by batch

    def build(tmp: Path) -> None:
        prompts = list(spec.prompts)
        have = sum((partial / f"{i:05d}.png").exists() for i in range(len(prompts)))
        log.info(
            "generating %d class images with the base model (pool %s)%s",
            len(prompts),
            key,
            f", {have} already made" if have else "",
        )
        names = _generate(backend, spec, partial)
        for n in names:
            os.replace(partial / n, tmp / n)
        atomic_write_json(
            tmp / "manifest.json",
            {"spec": spec.store_spec(), "images": [{"file": n, "prompt": p} for n, p in zip(names, prompts)]},
        )

    path, built = build_once(target, build)
    shutil.rmtree(partial, ignore_errors=True)
    if not built:
        log.info("class images: reusing pool %s (%d images)", key, len(spec.prompts))
    manifest = json.loads((path / "manifest.json").read_text())
    return ClassPool(
        key=key,
        dir=path,
        prompts=[r["prompt"] for r in manifest["images"]],
        images=[load_image(path / r["file"]) for r in manifest["images"]],
    )
