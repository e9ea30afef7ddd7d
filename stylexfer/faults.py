"""Fault injection for the resume tests: ``STYLEXFER_KILL_AT=<point>`` makes the process SIGKILL itself
when it reaches that point (a real kill: no cleanup, no ``finally``). Points are named where they are
checked: ``train:<style>:<step>`` (after that step's checkpoint, if one falls there), ``class:<index>``
(after that class image is written), ``sample:<style>:<n>`` (after n images of the style are written),
``style:<style>`` (after the style is fully done). Unset in normal use; checking costs nothing."""

from __future__ import annotations

import os
import signal


def checkpoint(point: str) -> None:
    if os.environ.get("STYLEXFER_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
