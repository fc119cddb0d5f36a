"""What the entry points share: help that shows defaults, the device, the seed range, and the edge
(:func:`run_cli`) that turns a user's error into one line and an exit code."""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

import torch

from dsrnet.errors import DISK_FULL, InputError
from dsrnet.stopping import passes_through, sigterm_unwinds
from model import CheckpointError

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range (non-negative half)

# Everything a user can fix: printed as one line by run_cli.
USER_ERRORS = (InputError, CheckpointError)


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


def _own_words(message: str) -> str:
    """The error's own line: a DataLoader worker's InputError arrives wrapped with the worker's traceback."""
    if "Original Traceback" not in message:
        return message
    return message.rstrip().splitlines()[-1].split("InputError: ", 1)[-1]


def _worker_death(err: BaseException) -> str | None:
    """The one line for a DataLoader worker that died, else None. PyTorch raises a RuntimeError naming its pid;
    a worker killed while handing over a batch leaves an OSError or EOFError raised in multiprocessing's
    reductions instead (the batch's shared memory could no longer be fetched from it).

    A worker killed from outside is almost always the out-of-memory killer's doing: say how to need less.
    """
    what = str(err).strip()
    if isinstance(err, RuntimeError) and what.startswith("DataLoader worker (pid"):
        detail = what.splitlines()[0].rstrip(". ")
    elif isinstance(err, (OSError, EOFError)) and passes_through(err.__traceback__, "multiprocessing/reductions.py"):
        detail = f"a batch was lost in transit: {type(err).__name__}"
    else:
        return None
    return (f"a data-loading worker died ({detail}), most likely killed for want of memory: use fewer "
            "--num_workers (0 loads in the main process) or drop --in_memory; a training run continues from its "
            "last checkpoint with --resume")


@contextmanager
def _worker_deaths_left_to_the_loader() -> Iterator[None]:
    """Drop the report of a worker death raised inside a finalizer.

    PyTorch's SIGCHLD handler raises the worker's death wherever the main thread happens to be. Inside a
    ``__del__`` (a progress bar collected mid-step), Python cannot propagate it and prints "Exception ignored
    in ..." with a traceback above the one line. Nothing is lost by dropping it: the DataLoader checks its
    workers again on the next batch and raises the death where :func:`run_cli` turns it into that line.
    """
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if unraisable.exc_value is None or _worker_death(unraisable.exc_value) is None:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _error_line(main: Callable[[], object]) -> tuple[str, int] | None:
    """Run ``main``: None when it returns, else the one line and exit code of an error a user can act on;
    any other error propagates."""
    try:
        with sigterm_unwinds(), _worker_deaths_left_to_the_loader():
            main()
        return None
    except USER_ERRORS as err:
        return f"error: {_own_words(str(err))}", 2
    except (RuntimeError, OSError, EOFError) as err:
        line = _worker_death(err)
        if line is not None:
            return f"error: {line}", 2
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return (f"error: the disk is full{f' writing {err.filename}' if err.filename else ''} ({err.strerror}): "
                    "free space and run again; a training run continues from its last checkpoint with --resume", 2)
        raise
    except KeyboardInterrupt:
        return "interrupted", 130


def _kill_workers() -> bool:
    """Kill the child processes left (DataLoader workers: nobody will read their batches); whether there were."""
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.kill()
    return bool(workers)


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main`` and turn an InputError, a full disk or a dead DataLoader worker into one line on stderr
    and exit code 2. (Writes through dsrnet/files.py's atomic helpers already say which file; this catches
    the rest, such as a log row appended to log.csv.)

    A failure inside training can leave DataLoader workers running. They ignore SIGTERM (see
    dsrnet.stopping.ignore_stop_signals), so multiprocessing's exit handler would wait for them forever; and a
    worker that outlives its parent can still print a broken-pipe traceback from its queue's feeder thread
    into the same stderr, after the one line. So such children are killed (nobody will read their batches)
    and the process ends at once; after an unexpected error too, whose traceback then ends the output.
    """
    try:
        failed = _error_line(main)
    except BaseException:
        _kill_workers()
        raise
    if failed is None:
        return
    line, code = failed
    print(line, file=sys.stderr)
    if _kill_workers():  # a worker left to notice its parent's end could still print into our stderr
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
