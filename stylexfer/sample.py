"""Sampling stage: which images a style gets, their seeds and their key in the stage store; the images
themselves come from the backend (:meth:`stylexfer.backends.Backend.generate`), with the configured
sampler, text-to-image or img2img from the style's average image.

Each image has its own seed (derived from ``sample.seed``, the style and the object), so an image does
not depend on batch size or on which other prompts share its batch; a re-run with the same config
gives the same files. The style's adapter is the file the training stage stored, loaded as a user
would load it, so what is evaluated is what was saved.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm.auto import tqdm

from . import control, faults, inject
from .config import InjectReference, value
from .data import Style, average_image, fit_square, load_image
from .specs import SampleSpec
from .store import atomic_save_image, build_once, file_digest, stable_hash

log = logging.getLogger(__name__)


def image_seed(*parts) -> int:
    return int(stable_hash(parts, 8), 16) % (2**31)


def make_in_chunks(
    partial: Path,
    names: Sequence[str],
    chunk: int,
    make: Callable[[int, int], list],
    point: Callable[[int], str],
    desc: str,
    share: Optional[tuple[int, int]] = None,
) -> None:
    """Images ``names`` made ``chunk`` at a time by ``make(i, j)`` (images ``i..j-1``) into ``partial``.

    The chunks are the same fixed slices every time and a chunk whose files all exist is skipped, so a
    killed run resumes where it stopped and ends with the same files. A chunk's PNGs are encoded on worker
    threads (zlib releases the GIL) while the next chunk is generated; ``faults.checkpoint(point(n))``
    runs once image ``n`` is on disk. ``share`` = (k, n): only chunks k, k+n, ... (one of n processes)."""

    def written(pending):
        for n, fut in pending:
            fut.result()
            faults.checkpoint(point(n))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="stylexfer-png") as pool:
        pending: list = []
        starts = list(range(0, len(names), chunk))
        if share is not None:
            starts = starts[share[0] :: share[1]]
        for i in tqdm(starts, desc=desc, unit="batch", leave=False):
            if all((partial / n).exists() for n in names[i : i + chunk]):
                continue
            images = make(i, min(i + chunk, len(names)))
            written(pending)
            pending = [
                (i + k, pool.submit(atomic_save_image, img, partial / names[i + k])) for k, img in enumerate(images)
            ]
        written(pending)


@dataclass
class SampleRecord:
    style: str
    object: str
    prompt: str
    file: str  # relative to the run folder
    seed: int


def sample_jobs(style: Style, sp: SampleSpec) -> list[SampleRecord]:
    """The images a style gets: every requested object × ``sample.images_per_prompt``, each with its seed."""
    jobs = []
    for obj, stem in zip(style.objects, style.object_files):
        for k in range(sp.images_per_prompt):
            name = f"{stem}.png" if k == 0 else f"{stem}_{k}.png"
            jobs.append(
                SampleRecord(
                    style=style.id,
                    object=obj,
                    prompt=sp.prompt.format(object=obj, style=style.id),
                    file=f"images/{style.id}/{name}",
                    seed=image_seed(sp.seed, style.id, obj, k),
                )
            )
    return jobs


def samples_store_spec(style: Style, sp: SampleSpec, adapter_key: Optional[str], model_identity: str) -> dict:
    """Everything that determines a style's images: ``sp``, the style, its adapter and the model (the hash is the
    images' key in the stage store)."""
    return {
        "version": 3 if sp.fuse_lora else 1,
        "backend": sp.backend,
        "model": model_identity,
        "adapter": adapter_key,
        "style": style.fingerprint(),
        "jobs": [[j.prompt, j.file, j.seed] for j in sample_jobs(style, sp)],
        "sampler": sp.sampler,
        "steps": sp.steps,
        "guidance_scale": sp.guidance_scale,
        "init": sp.init,
        "strength": sp.strength if sp.img2img else None,
        "resolution": sp.resolution,
        "batch_size": sp.batch_size,
        "dtype": sp.dtype,
        # style injection: present only when on, so the keys of every run without it stay as they were
        **({"inject": inject.spec(sp.inject)} if sp.inject is not None else {}),
        # structure control: likewise
        **({"control": control_spec(style, sp, model_identity)} if sp.control is not None else {}),
    }


def structure_jobs(style: Style, sp: SampleSpec) -> list[list]:
    """The first pass's ``[prompt, seed]`` for each of the style's images (``control.source=base``), in the order
    of :func:`sample_jobs`: the object's base prompt and a seed of the object's own, not the style's, so that
    every style (and run) that asks for an object shares its drawing."""
    return [
        [sp.control.base_prompt.format(object=obj), image_seed(sp.seed, "structure", obj, k)]
        for obj in style.objects
        for k in range(sp.images_per_prompt)
    ]


def control_spec(style: Style, sp: SampleSpec, model_identity: str) -> dict:
    """The samples key's ``control`` part: the ControlNet, the settings and where the structure comes from."""
    ctl = sp.control
    if ctl.source == "base":
        structure = {"key": stable_hash(sp.structure_settings(model_identity)), "jobs": structure_jobs(style, sp)}
    else:
        files = control.content_files(Path(ctl.source), style.objects, style.object_files)
        structure = {
            "dir": str(Path(ctl.source).expanduser().resolve()),
            "digests": [file_digest(files[o]) for o in style.objects],
        }
    return control.spec(ctl, control.identity(control.model_folder(ctl, sp.model_name)), structure)


def ensure_structure(backend, sp: SampleSpec, structure: dict, cache_dir: Path) -> list:
    """The first pass (``control.source=base``): each job's drawing by the base model, from the store's
    ``structure/<key>/`` where it is there (one file per prompt and seed, written atomically, shared by every
    style and run), made in batches where it is not."""
    folder = Path(cache_dir) / "structure" / structure["key"]
    names = [stable_hash(job, 16) + ".png" for job in structure["jobs"]]
    todo = sorted({n: job for n, job in zip(names, structure["jobs"]) if not (folder / n).exists()}.items())
    if todo:
        log.info("structure: drawing %d object(s) with the base model (first pass, %s)", len(todo), structure["key"])
        with backend.generate(**sp.generate_settings(), adapter_dir=None) as make:
            make_in_chunks(
                folder,
                [n for n, _ in todo],
                sp.batch_size,
                lambda i, j: make([job[0] for _, job in todo[i:j]], [job[1] for _, job in todo[i:j]]),
                lambda n: f"structure:{n + 1}",
                "structure",
            )
    return [load_image(folder / n) for n in names]


def control_request(backend, style: Style, sp: SampleSpec, spec: dict, cache_dir: Path) -> tuple[dict, list, list]:
    """What the backend needs to hold ``style``'s structure (the ControlNet and its settings), each job's
    control image (the edges of its first-pass drawing, or of its object's content image) and each job's
    drawing or content image itself (for the stage's record)."""
    ctl, res = sp.control, sp.resolution
    st = spec["control"]["structure"]
    if "key" in st:
        content = ensure_structure(backend, sp, st, cache_dir)
    else:
        files = control.content_files(Path(ctl.source), style.objects, style.object_files)
        content = [load_image(files[o]) for o in style.objects for _ in range(sp.images_per_prompt)]
    controls = [control.control_image(img, ctl, res) for img in content]
    request = {
        "model": control.model_folder(ctl, sp.model_name),
        "scale": ctl.scale,
        "start": ctl.start,
        "end": ctl.end,
    }
    return request, controls, [fit_square(img, res) for img in content]


def injection_request(style: Style, sp: SampleSpec, spec: dict, cache_dir: Path, init) -> tuple[dict, list[int]]:
    """What the backend needs to inject ``style`` (its reference images, where the store keeps their banks of
    keys and values) and each job's reference."""
    inj, res = sp.inject, sp.resolution
    n_refs = inject.reference_count(inj, len(style.images))
    if InjectReference(value(inj.reference)) == InjectReference.average:
        refs = [init if init is not None else average_image(style.images, res)]
        prints = ["average:" + style.fingerprint()]
    else:
        refs, prints = [fit_square(img, res) for img in style.images[:n_refs]], style.digests[:n_refs]
    common = {
        k: spec[k]
        for k in ("backend", "model", "adapter", "sampler", "steps", "init", "strength", "resolution", "dtype")
    }
    bank = stable_hash(inject.bank_spec(spec["inject"], prints, common))
    request = {"spec": spec["inject"], "references": refs, "bank_dir": Path(cache_dir) / "banks" / bank}
    return request, inject.job_references(inj, len(spec["jobs"]), len(refs))


def ensure_samples(
    backend, style: Style, adapter_dir: Optional[Path], sp: SampleSpec, spec: dict, cache_dir: Path
) -> tuple[Path, list[SampleRecord], bool]:
    """Generate (or reuse) the style's images under ``<cache>/samples/<key>/`` with the style's adapter; ``spec`` is
    their :func:`samples_store_spec` (the key hashes it).

    Batches are fixed chunks of the job list and each finished image is kept in a partial folder, so a
    killed run resumes where it stopped and produces the same files as an uninterrupted one. The init
    image (img2img) is stored beside them as ``init/average.png``, outside the images' own folder."""
    key = stable_hash(spec)
    target = Path(cache_dir) / "samples" / key
    partial = target.parent / ".partial" / key
    jobs = sample_jobs(style, sp)
    names = [j.file.split("/", 2)[-1] for j in jobs]

    def build(tmp: Path) -> None:
        init = average_image(style.images, sp.resolution) if sp.img2img else None
        extra, refs, controls, content = {}, None, None, []
        if "inject" in spec:
            extra["inject"], refs = injection_request(style, sp, spec, cache_dir, init)
        if "control" in spec:
            extra["control"], controls, content = control_request(backend, style, sp, spec, cache_dir)

        def chunk(i: int, j: int):
            prompts, seeds = [b.prompt for b in jobs[i:j]], [b.seed for b in jobs[i:j]]
            kw = {"refs": refs[i:j]} if refs is not None else {}
            if controls is not None:
                kw["controls"] = controls[i:j]
            return make(prompts, seeds, **kw)

        with backend.generate(
            **sp.generate_settings(), adapter_dir=adapter_dir, init_image=init, strength=sp.strength, **extra
        ) as make:
            make_in_chunks(
                partial,
                names,
                sp.batch_size,
                chunk,
                lambda n: f"sample:{style.id}:{n + 1}",
                f"sample {style.id}",
            )
        (tmp / "images").mkdir()
        for n in names:
            os.replace(partial / n, tmp / "images" / n)
        if init is not None:
            atomic_save_image(init, tmp / "init" / "average.png")
        for n, img, drawn in zip(names, controls or [], content):
            atomic_save_image(img, tmp / "control" / n)  # what held each image's structure: the edges
            atomic_save_image(drawn, tmp / "content" / n)  # ... of this (the first pass's drawing, or the content)

    path, built = build_once(target, build)
    shutil.rmtree(partial, ignore_errors=True)
    return path, jobs, not built
