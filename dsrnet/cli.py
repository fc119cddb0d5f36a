"""What the entry points share when reading flags: help that shows defaults, the device, the seed range."""
from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

import torch

from dsrnet.errors import InputError

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range (non-negative half)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends each option's default, unless it is unset or already said."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if unset or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"{flag} {seed} is out of range: pass an integer from 0 to {MAX_SEED} (2**64 - 1)")
    return seed


def pick_device(spec: str | None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as asked; unset means the GPU when there is one, else the CPU."""
    if not spec:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {spec}: pass cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec} (or --cuda) asks for CUDA but none is available: "
                             "pass --device cpu or drop the flag")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    return device


class _Quietable:
    """A text stream that falls silent instead of raising once nobody reads it (``| head`` exited, a
    closed terminal): its file descriptor is pointed at the null device, so that later writes, and the
    interpreter's own flush at exit, succeed."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._silence()

    def _silence(self) -> None:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def output_never_stops_the_run() -> None:
    """Make stdout and stderr of a long run fall silent instead of raising when their reader is gone: a
    progress line that cannot be written must not cost hours of training."""
    sys.stdout, sys.stderr = _Quietable(sys.stdout), _Quietable(sys.stderr)
