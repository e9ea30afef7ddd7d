"""Content-addressed stage store, atomic writes and inter-process locks.

Every stage output that is expensive to make (the tiny model, class images, trained adapters) lives
under ``<cache_dir>/<kind>/<key>/`` where ``key`` hashes everything that determines it. A directory
only appears under its final name once it is complete (it is built under a temporary name and
renamed), so a reader never sees half of one, and a lock file serialises concurrent builders.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash a JSON-able object independently of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save_image(image, path: str | os.PathLike) -> Path:
    """Save a PIL image as PNG under a temporary name, then rename it into place."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock (``flock``) on ``path``; released when the holder exits or dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_once(final: str | os.PathLike, builder: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``final``, building it with ``builder(tmp_dir)`` first if it does not exist yet.

    The builder writes into a fresh temporary directory next to ``final``; on success the directory is
    renamed to ``final`` (atomic on one filesystem). Concurrent callers wait on a lock instead of
    building twice. Returns ``(path, built)`` where ``built`` says whether this call did the work.
    """
    final = Path(final)
    if final.is_dir():
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if final.is_dir():
            return final, False
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            builder(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, True


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Materialise ``src`` at ``dst`` with hard links where possible (no extra disk), else copies."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir():
            link_or_copy_tree(item, target)
            continue
        if target.exists():
            continue
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)
