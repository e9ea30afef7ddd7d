"""Errors a user can act on: each message is one line naming the config key or path at fault."""

import errno


def first_line(e: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line reports."""
    text = str(e).splitlines()[0] if str(e) else ""
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if with_type else text


def os_error_line(e: OSError) -> str:
    """An operating-system error as one line naming the path and the errno (``/store/x: Permission denied
    (errno 13, EACCES)``)."""
    name = errno.errorcode.get(e.errno, "?") if e.errno is not None else "?"
    where = f"{e.filename}: " if e.filename else ""
    if e.filename2:
        where = f"{e.filename} -> {e.filename2}: "
    return f"{where}{e.strerror or e} (errno {e.errno}, {name})"


class StylexferError(Exception):
    """Base class; the entrypoint prints ``error: <message>`` and exits non-zero."""

    exit_code = 2


class ConfigError(StylexferError):
    """A config value is out of range or inconsistent (the message names the key)."""


class DataError(StylexferError):
    """A data folder, image or prompt file is missing or unreadable (the message names the path)."""


class ModelNotFoundError(StylexferError):
    """Model weights are missing or cannot be fetched (the message names the path and the key to set)."""


class TrainingDiverged(StylexferError):
    """The loss became NaN or infinite (the message names the style and step)."""

    exit_code = 3


class PartialFailure(StylexferError):
    """Styles failed (each recorded in the summary with its error): some, the others finished; or all of them."""

    exit_code = 1


class DeviceOutOfMemory(StylexferError):
    """A backend's training pass did not fit on its device (the caller may retry with fewer styles)."""

    exit_code = 4


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) reached a single run: raised where the process was, like Ctrl-C, so that every
    ``finally`` and temporary-file cleanup runs; the entrypoint reports it in one line (exit 128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# a file the run had to write or create could not be: the disk or the folder is at fault, not the config
STORAGE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST, errno.EIO}
)
