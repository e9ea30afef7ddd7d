"""Data stage: discover styles, read their images and prompts, augment, average.

Layouts under ``data.root``:
- competition: ``<root>/<id>/images/*.png`` and ``<root>/<id>/prompt.json`` (objects to generate;
  a JSON object ``{"0": "Bamboo", ...}`` or a list of names);
- plain: ``<root>/<id>/*.png``, objects to generate from ``data.objects``.

An image's object name comes from its file name (``Aquarium.png`` → ``aquarium``). Every image is
read once, up front, so a corrupt file fails the run before anything is trained.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError, first_line
from .store import file_digest, stable_hash

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MAX_STEM = 64


@dataclass
class Style:
    id: str
    dir: Path
    image_paths: list[Path]
    images: list[Image.Image]  # RGB, EXIF orientation applied
    image_objects: list[str]  # object name of each training image
    objects: list[str]  # objects to generate (names as written in prompts)
    object_files: list[str] = field(default_factory=list)  # safe, unique file stems for `objects`
    digests: list[str] = field(default_factory=list)  # content hash of each training image

    def fingerprint(self) -> str:
        """Hash of the training data (image bytes and their object names)."""
        return stable_hash([self.id, sorted(zip(self.digests, self.image_objects))])


def object_name_from_file(path: str | Path) -> str:
    """``Aquarium.png`` → ``aquarium``; ``sea_turtle.jpg`` → ``sea turtle``."""
    stem = Path(path).stem
    name = re.sub(r"[_\-]+", " ", stem).strip().lower()
    return re.sub(r"\s+", " ", name)


def safe_filename(name: str, taken: set[str]) -> str:
    """A file-name stem for ``name``: ASCII, no separators or dots, at most 64 chars, unique in ``taken``.

    The prompt keeps the original name; only the file name is made safe. ``taken`` is updated.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9]+", "_", ascii_name).strip("_").lower()[:MAX_STEM].strip("_")
    if not stem:  # nothing ASCII survives ("猫", "../"): keep names apart by a hash of the original
        stem = f"object_{stable_hash(name, 8)}" if name.strip() else "object"
    candidate, n = stem, 2
    while candidate in taken:
        suffix = f"-{n}"
        candidate = stem[: MAX_STEM - len(suffix)] + suffix
        n += 1
    taken.add(candidate)
    return candidate


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: transparency onto white, 16-bit scaled to 8-bit, CMYK/palette/gray converted."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if (img.mode.startswith("I;16") or arr.max() > 255) else 255.0
        arr = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "F":
        arr = np.asarray(img)
        arr = np.clip(np.round(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(path: str | Path) -> Image.Image:
    """Read an image as RGB with its EXIF orientation applied; DataError naming the path if unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = _to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read image ({first_line(e)})") from None
    if min(rgb.size) < 1:
        raise DataError(f"{path}: empty image")
    return rgb


def read_prompt_file(path: Path) -> list[str]:
    """Objects to generate from ``prompt.json``: ``{"0": "Bamboo", ...}`` (ordered by key) or a list."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if isinstance(raw, dict):

        def order(k: str):
            return (0, int(k), "") if str(k).isdigit() else (1, 0, str(k))

        values = [raw[k] for k in sorted(raw, key=order)]
    elif isinstance(raw, list):
        values = raw
    else:
        raise DataError(f'{path}: expected a JSON object {{"0": "name", ...}} or a list of names')
    if not values:
        raise DataError(f"{path}: lists no objects to generate")
    names = []
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"{path}: every object must be a non-empty string (got {v!r})")
        names.append(v.strip())
    return names


def _image_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        elif p.name != "prompt.json":
            log.warning("%s: not an image file (suffix %r), skipped", p, p.suffix)
    return files


def load_style(style_dir: Path, objects: Sequence[str] = (), max_objects: Optional[int] = None) -> Style:
    """Read one style folder in either layout."""
    images_dir = style_dir / "images"
    layout_dir = images_dir if images_dir.is_dir() else style_dir
    files = _image_files(layout_dir)
    if not files:
        raise DataError(f"{layout_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = [load_image(p) for p in files]
    prompt_file = style_dir / "prompt.json"
    if prompt_file.exists():
        to_generate = read_prompt_file(prompt_file)
    elif objects:
        to_generate = [str(o) for o in objects]
    else:
        raise DataError(f"{prompt_file}: missing; add it or set data.objects=[...] for the plain layout")
    if max_objects is not None:
        to_generate = to_generate[:max_objects]
    taken: set[str] = set()
    return Style(
        id=style_dir.name,
        dir=style_dir,
        image_paths=files,
        images=images,
        image_objects=[object_name_from_file(p) for p in files],
        objects=to_generate,
        object_files=[safe_filename(o, taken) for o in to_generate],
        digests=[file_digest(p) for p in files],
    )


def discover_styles(
    root: str | Path,
    styles: Optional[Iterable[str]] = None,
    objects: Sequence[str] = (),
    max_objects: Optional[int] = None,
    collect_errors: bool = False,
):
    """Read every style under ``root``. A bad style raises DataError; with ``collect_errors`` it is left
    out and reported instead (``(styles, {id: error})``), unless every style is bad."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={root}: no such folder")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not available:
        raise DataError(f"data.root={root}: no style folders in it")
    if styles is not None:
        wanted = [str(s) for s in styles]
        missing = [s for s in wanted if s not in available]
        if missing:
            raise DataError(f"data.styles: {', '.join(missing)} not found under {root}")
        available = wanted
    loaded, errors = [], {}
    for s in available:
        try:
            loaded.append(load_style(root / s, objects, max_objects))
        except DataError as e:
            if not collect_errors:
                raise
            errors[s] = str(e)
    if collect_errors and not loaded:
        raise DataError(
            next(iter(errors.values())) + (f" (and {len(errors) - 1} more style(s) failed)" if len(errors) > 1 else "")
        )
    return (loaded, errors) if collect_errors else loaded


# ---------------------------------------------------------------------------------------- transforms


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img if new == (w, h) else img.resize(new, Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def resized_side(resolution: int, aug) -> int:
    """The shorter side :func:`augment_resize` gives an image: ``aug.scale × resolution``, never below it."""
    return max(resolution, round(resolution * aug.scale))


def augment_resize(img: Image.Image, resolution: int, aug) -> Image.Image:
    """The deterministic part of :func:`augment` (resize the shorter side to ``aug.scale × resolution``):
    the same for every step, so a training loop computes it once per image."""
    return resize_shorter(img, resized_side(resolution, aug))


def augment_random(img: Image.Image, resolution: int, aug, rng: np.random.Generator) -> Image.Image:
    """The random part of :func:`augment`, on an image already through :func:`augment_resize`."""
    w, h = img.size
    if aug.random_crop:
        left = int(rng.integers(0, w - resolution + 1))
        top = int(rng.integers(0, h - resolution + 1))
        img = img.crop((left, top, left + resolution, top + resolution))
    else:
        img = center_crop(img, resolution)
    if aug.hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if aug.rotation > 0:
        angle = float(rng.uniform(-aug.rotation, aug.rotation))
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC)
    return img


def augment(img: Image.Image, resolution: int, aug, rng: np.random.Generator) -> Image.Image:
    """Resize the shorter side to ``aug.scale × resolution``, crop to ``resolution`` (random or centre),
    then optional horizontal flip and rotation. All randomness comes from ``rng`` (one stream per style)."""
    return augment_random(augment_resize(img, resolution, aug), resolution, aug, rng)


def crop_grid(size: tuple[int, int], resolution: int, step: int = 8) -> tuple[list[int], list[int]]:
    """The crop offsets (left, top) a grid-cached random crop draws from: every ``step`` pixels (the VAE's
    latent grid), centred in the room the resize leaves (e.g. 20 px of room at 512 px → 2, 10, 18)."""

    def axis(room: int) -> list[int]:
        first = (room // 2) % step
        return list(range(first, room + 1, step))

    w, h = size
    return axis(w - resolution), axis(h - resolution)


def grid_cached_crops(aug) -> bool:
    """Whether the random crop is drawn on the latent grid and its VAE posterior cached (no VAE in the
    training step): random crops with ``augmentation.cached_crops`` on and no rotation."""
    return bool(aug.cached_crops) and aug.random_crop and aug.scale > 1.0 and aug.rotation == 0


def draw_grid_crop(size: tuple[int, int], resolution: int, aug, rng: np.random.Generator) -> tuple[int, int, bool]:
    """One (left, top, flip) of a grid-cached crop, from the style's stream (uniform over the grid)."""
    lefts, tops = crop_grid(size, resolution)
    left = lefts[int(rng.integers(0, len(lefts)))]
    top = tops[int(rng.integers(0, len(tops)))]
    return left, top, bool(aug.hflip and rng.random() < 0.5)


def crop_at(img: Image.Image, resolution: int, left: int, top: int, flip: bool) -> Image.Image:
    img = img.crop((left, top, left + resolution, top + resolution))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img


def can_cache_latents(aug) -> bool:
    """Whether an image's augmented pixels are the same at every step (so its VAE latents can be cached)."""
    return not aug.hflip and aug.rotation == 0 and not (aug.random_crop and aug.scale > 1.0)


def fit_square(img: Image.Image, resolution: int) -> Image.Image:
    return center_crop(resize_shorter(img, resolution), resolution)


def average_image(images: Sequence[Image.Image], resolution: int) -> Image.Image:
    """Pixel-average of the images, each resized (shorter side) and centre-cropped to ``resolution``."""
    if not images:
        raise ValueError("average_image needs at least one image")
    acc = np.zeros((resolution, resolution, 3), dtype=np.float64)
    for img in images:
        acc += np.asarray(fit_square(img, resolution), dtype=np.float64)
    return Image.fromarray(np.clip(np.round(acc / len(images)), 0, 255).astype(np.uint8), mode="RGB")


def generated_images(folder: Path, style: Style) -> tuple[list, list[str]]:
    """(images, object names) of one style's folder; files starting with "_" are not outputs."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("_"))
    by_stem = dict(zip(style.object_files, style.objects))
    images, objects = [], []
    for p in files:
        images.append(load_image(p))
        stem = p.stem
        base = stem.rsplit("_", 1)[0] if stem not in by_stem and stem.rsplit("_", 1)[-1].isdigit() else stem
        objects.append(by_stem.get(base, object_name_from_file(base)))
    return images, objects
