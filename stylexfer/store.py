"""Content-addressed stage store, atomic writes and inter-process locks.

Every stage output that is expensive to make (the tiny model, class images, trained adapters) lives
under ``<cache_dir>/<kind>/<key>/`` where ``key`` hashes everything that determines it. A directory
only appears under its final name once it is complete (it is built under a temporary name and
renamed), so a reader never sees half of one, and a lock file serialises concurrent builders.

Each entry carries a manifest of its files' sha256 (:data:`MANIFEST`), written when it is sealed and
checked whenever it is reused: an entry damaged outside the writer (a truncated copy, a full disk, an
edited file) is set aside with one warning line and built again, never reused.

Files are written under a temporary name and renamed into place, with the permissions the user's
umask gives a new file (0644 under the usual 022), like any other file the run writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

log = logging.getLogger(__name__)
MANIFEST = ".store-manifest.json"
_verified: set[str] = set()  # entries this process has already checked (a run asks several times)


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


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for every thread at once)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as main.log
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


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(folder: str | os.PathLike) -> None:
    """Record the sha256 of every file of a store entry being built (call it last, before the rename)."""
    folder = Path(folder)
    atomic_write_json(
        folder / MANIFEST, {p.relative_to(folder).as_posix(): file_digest(p, 64) for p in _files(folder)}
    )


def damage(folder: str | os.PathLike) -> Optional[str]:
    """Why a sealed store entry is not what was written (None when every file is as recorded)."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"{MANIFEST} missing or unreadable"
    present = {p.relative_to(folder).as_posix() for p in _files(folder)}
    for name, digest in recorded.items():
        if name not in present:
            return f"{name} is missing"
        if file_digest(folder / name, 64) != digest:
            return f"{name} differs from what was written"
    extra = sorted(present - set(recorded))
    return f"{extra[0]} was not written by the store" if extra else None


def reusable(final: str | os.PathLike) -> bool:
    """Whether the store entry ``final`` exists and is intact. A damaged one is set aside (removed) with
    one warning line, so that the caller builds it again."""
    final = Path(final)
    if not final.is_dir():
        return False
    if str(final) in _verified:
        return True
    why = damage(final)
    if why is None:
        _verified.add(str(final))
        return True
    log.warning("store entry %s is damaged (%s): building it again", final, why)
    aside = final.parent / f".{final.name}.damaged-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(OSError):
        os.rename(final, aside)  # another process may have set it aside already
    shutil.rmtree(aside, ignore_errors=True)
    return False


def publish(tmp: Path, final: Path) -> bool:
    """Seal ``tmp`` and rename it to ``final`` unless an intact ``final`` exists; whether it was published."""
    if reusable(final):
        return False
    seal(tmp)
    os.rename(tmp, final)
    _verified.add(str(final))  # just written and sealed: no need to hash it again in this process
    return True


def build_once(final: str | os.PathLike, builder: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``final``, building it with ``builder(tmp_dir)`` first if it does not exist yet (or was
    damaged: :func:`reusable`).

    The builder writes into a fresh temporary directory next to ``final``; on success the directory is
    sealed (:func:`seal`) and renamed to ``final`` (atomic on one filesystem). Concurrent callers wait on
    a lock instead of building twice. Returns ``(path, built)`` where ``built`` says whether this call
    did the work.
    """
    final = Path(final)
    if str(final) in _verified:
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if reusable(final):
            return final, False
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            builder(tmp)
            seal(tmp)
            os.rename(tmp, final)
            _verified.add(str(final))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, True


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Materialise ``src`` at ``dst`` with hard links where possible (no extra disk), else copies."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name == MANIFEST:  # the store's own bookkeeping
            continue
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


# ------------------------------------------------------------------------------ training checkpoints
# A training checkpoint is a folder ``step-NNNNNNN/`` holding ``state.safetensors`` (tensors) and ``state.json``
# (the rest), written under a temporary name and renamed into place when complete; older ones are removed.


def write_checkpoint(folder: Path, step: int, write_tensors: Callable[[Path], None], meta: dict) -> Path:
    """Write checkpoint ``step`` into ``folder``: ``write_tensors(path)`` writes the safetensors file."""
    tmp = Path(folder) / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_tensors(tmp / "state.safetensors")
    atomic_write_json(tmp / "state.json", meta)
    final = Path(folder) / f"step-{step:07d}"
    os.rename(tmp, final)
    for old in sorted(Path(folder).glob("step-*"))[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Optional[Path]) -> Optional[tuple[Path, dict]]:
    """(the latest checkpoint's safetensors file, its JSON) in ``folder``, or None."""
    done = sorted(Path(folder).glob("step-*")) if folder is not None and Path(folder).is_dir() else []
    if not done:
        return None
    return done[-1] / "state.safetensors", json.loads((done[-1] / "state.json").read_text())
