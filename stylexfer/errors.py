"""Errors a user can act on: each message is one line naming the config key or path at fault."""


def first_line(e: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line reports."""
    text = str(e).splitlines()[0] if str(e) else ""
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text}" if with_type else text


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
    """Some styles failed (each recorded in the summary with its error); the others finished."""

    exit_code = 1


class DeviceOutOfMemory(StylexferError):
    """A backend's training pass did not fit on its device (the caller may retry with fewer styles)."""

    exit_code = 4
