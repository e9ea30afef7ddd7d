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
import itertools
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
FOLDER_MANIFEST = "sha256.json"  # the same record for a shipped model, the judge and a run folder's copies
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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Any]:
    """Open ``path`` for writing under a temporary name next to it; on a clean exit the file is flushed,
    fsync'ed and renamed into place with the mode the umask gives a new file. On any error (a full disk, an
    interrupt) the temporary file is removed and nothing appears under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable as main.log
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file written by a library (safetensors writes 0600) the mode the umask gives a new file."""
    os.chmod(path, 0o666 & ~_umask())


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


def _files(folder: Path, manifest: str = MANIFEST) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != manifest)


def digests(folder: str | os.PathLike, manifest: str = MANIFEST) -> dict[str, str]:
    """The sha256 of every file under ``folder`` (but the manifest), by path relative to it."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_digest(p, 64) for p in _files(folder, manifest)}


def seal(folder: str | os.PathLike, manifest: str = MANIFEST) -> None:
    """Record the sha256 of every file of a folder being built (call it last, before the rename). Files a
    library wrote with its own mode (safetensors: 0600) are given the umask's first."""
    folder = Path(folder)
    for p in _files(folder, manifest):
        if not p.is_symlink():
            follow_umask(p)
    atomic_write_json(folder / manifest, digests(folder, manifest))


def recorded_digests(folder: str | os.PathLike, manifest: str = MANIFEST) -> Optional[dict[str, str]]:
    """The manifest of ``folder`` (relative path → sha256), or None when it is missing or unreadable."""
    try:
        recorded = json.loads((Path(folder) / manifest).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def damage(folder: str | os.PathLike, manifest: str = MANIFEST, extra_ok: bool = False) -> Optional[str]:
    """Why a sealed folder is not what was written (None when every file is as its manifest records).
    ``extra_ok``: files the manifest does not list are allowed (a run folder's logs)."""
    folder = Path(folder)
    recorded = recorded_digests(folder, manifest)
    if recorded is None:
        return f"{manifest} missing or unreadable"
    for name, digest in recorded.items():
        if not (folder / name).is_file():
            return f"{name} is missing"
        if file_digest(folder / name, 64) != digest:
            return f"{name}: sha256 differs from {manifest}"
    if extra_ok:
        return None
    present = {p.relative_to(folder).as_posix() for p in _files(folder, manifest)}
    extra = sorted(present - set(recorded))
    return f"{extra[0]} is not in {manifest}" if extra else None


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
    if str(final) in _verified and final.is_dir():  # checked before in this process, and not removed since
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


def claim_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` exclusively and return it, or, when it exists already (another run started in
    the same second, by the same or another config), the first of ``path-1``, ``path-2``… that this call
    creates. Two processes never get the same folder: ``mkdir`` succeeds for one of them only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        candidate = path if n == 0 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (Btrfs, XFS); an independent copy


def _reflink(src, dst) -> bool:
    try:
        fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
    except OSError:
        return False
    return True


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (:func:`atomic_file`): a reflink where the filesystem offers one,
    else the bytes. Never a hard link: the copy stays whole whatever later happens to ``src``."""
    with open(src, "rb") as inp, atomic_file(dst) as out:
        if not _reflink(inp, out):
            shutil.copyfileobj(inp, out, 1 << 20)
    return Path(dst)


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, str]:
    """Materialise the store entry ``src`` at ``dst`` as independent files, each written atomically
    (:func:`copy_file`). A file already at ``dst`` is kept only when its sha256 is the one the entry recorded
    (and it is no hard link into the store); a truncated or edited one is copied again. Returns the sha256 of
    every file, by path relative to ``dst``."""
    src, dst = Path(src), Path(dst)
    recorded = recorded_digests(src) or {}
    out = {}
    for f in _files(src):
        rel = f.relative_to(src).as_posix()
        want = recorded.get(rel) or file_digest(f, 64)
        target = dst / rel
        keep = (
            target.is_file()
            and not target.is_symlink()
            and target.stat().st_nlink == 1
            and file_digest(target, 64) == want
        )
        if not keep:
            copy_file(f, target)
        out[rel] = want
    return out


# ------------------------------------------------------------------------------ training checkpoints
# A training checkpoint is a folder ``step-NNNNNNN/`` holding ``state.safetensors`` (tensors) and ``state.json``
# (the rest), written under a temporary name and renamed into place when complete; older ones are removed.


def write_checkpoint(folder: Path, step: int, write_tensors: Callable[[Path], None], meta: dict) -> Path:
    """Write checkpoint ``step`` into ``folder``: ``write_tensors(path)`` writes the safetensors file."""
    tmp = Path(folder) / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_tensors(tmp / "state.safetensors")
    with open(tmp / "state.safetensors", "rb+") as f:  # on disk before the rename makes it the checkpoint
        os.fsync(f.fileno())
    follow_umask(tmp / "state.safetensors")
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
