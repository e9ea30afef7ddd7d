"""Where a run is, and fault injection for the resume tests.

Points are named where they are passed: ``train:<style>:<step>`` (after that step's checkpoint was saved),
``class:<index>`` (after that class image is written), ``sample:<style>:<n>`` (after n images of the style
are written), ``style:<style>`` (after the style is fully done). :func:`last_point` is the latest one
reached, which the entrypoint names when a run is interrupted.

``STYLEXFER_KILL_AT=<point>`` makes the process signal itself when it reaches that point: SIGKILL by default
(a real kill: no cleanup, no ``finally``), or the signal ``STYLEXFER_KILL_SIGNAL`` names (``INT`` as Ctrl-C
sends, ``TERM`` as a scheduler does). Unset in normal use; checking costs nothing.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

_last: list[str] = []


def checkpoint(point: str) -> None:
    _last[:] = [point]
    if os.environ.get("STYLEXFER_KILL_AT") == point:
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get('STYLEXFER_KILL_SIGNAL', 'KILL').upper()}"))


def last_point() -> Optional[str]:
    """The latest point this process reached (None before the first)."""
    return _last[0] if _last else None


def describe(point: Optional[str]) -> str:
    """A point in words: ``train:00:20`` → ``style 00's training, checkpoint of step 20 saved``."""
    if point is None:
        return "before its first checkpoint"
    kind, _, rest = point.partition(":")
    if kind == "train":
        sid, _, step = rest.partition(":")
        return f"in style {sid}'s training, its checkpoint of step {step} saved"
    if kind == "class":
        return f"in the class images, {int(rest) + 1} of them written"
    if kind == "sample":
        sid, _, n = rest.partition(":")
        return f"in style {sid}'s sampling, {n} image(s) written"
    if kind == "style":
        return f"after style {rest} was finished"
    return f"after {point}"
