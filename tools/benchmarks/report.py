"""Benchmarks print markdown; ``--report PATH`` also keeps exactly what was printed, written atomically.

Their integer flags are checked before any timing (:func:`require_at_least`)."""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import Iterator, TextIO

import torch

from dsrnet import AUTHORS_WEIGHTS, ROOT
from dsrnet.errors import InputError
from dsrnet.files import atomic_write_bytes
from dsrnet.provenance import git_description

# The authors' x2 file where users put it, then where CI keeps it (../shared, outside the repository).
WEIGHTS_CANDIDATES = (AUTHORS_WEIGHTS, ROOT.parent / "shared" / "weights" / AUTHORS_WEIGHTS.name)
# The instruction sets that decide a CPU's float32 and bfloat16 speed (docs/speed.md, "The machines").
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


class _Tee(io.TextIOBase):
    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, s: str) -> int:
        for stream in self.streams:
            stream.write(s)
        return len(s)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def printed_to(path: str | None) -> Iterator[None]:
    """Copy stdout into ``path`` (if given) once the block finishes without error."""
    if path is None:
        yield
        return
    kept = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, kept)):
        yield
    atomic_write_bytes(Path(path), kept.getvalue().encode())


def require_at_least(cfg: argparse.Namespace, **minimums: int) -> None:
    """Refuse, before any timing, an integer flag below its minimum (flags left unset pass)."""
    for flag, minimum in minimums.items():
        value = getattr(cfg, flag)
        if value is not None and value < minimum:
            raise InputError(f"--{flag} must be an integer >= {minimum}, got {value}")


def provenance(env: dict, threads: int) -> str:
    """The two comment lines every speed report starts with: the command, then where it ran."""
    return (f"# {env['command']}\n# torch {env['torch']}, {env['device_name'] or env['platform']}, "
            f"{threads} threads, git {git_description(env)}")


def cpu_flags_line(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The comment line naming what a CPU timing ran with: the instruction set torch's kernels dispatch to
    (ATEN_CPU_CAPABILITY can lower it) and which of :data:`SPEED_FLAGS` the CPU has."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        has = f"unknown ({cpuinfo} unreadable)"
    else:
        present = " ".join(f for f in SPEED_FLAGS if f in flags)
        has = ", ".join([present] * bool(present) + [f"no {f}" for f in SPEED_FLAGS if f not in flags])
    return f"# CPU kernels {torch.backends.cpu.get_cpu_capability()}; CPU flags {has}"
