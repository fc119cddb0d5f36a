"""Stopping cleanly on SIGINT/SIGTERM: every command unwinds, and a training run finishes its step first.

Every command run through ``dsrnet.cli.run_cli`` ends on SIGTERM as on Ctrl-C: its ``finally`` blocks run,
so an atomic write removes its temp file, and the exit status is 143.

Ctrl-C or SIGTERM (torchrun, SLURM) does not kill the run mid-step: the loop finishes the step, saves
a checkpoint and exits with 128 + the signal (130 / 143), so a job script can tell an interrupted run
from a finished one. A second signal aborts at once.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from types import TracebackType
from typing import Iterator

EXIT_ON_SIGNAL = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}


def data_worker_init(_worker: int) -> None:
    """DataLoader ``worker_init_fn``: a worker neither stops on the main process's signals nor speaks
    over the main process's last line."""
    ignore_stop_signals()
    quiet_abandoned_handovers()


def ignore_stop_signals() -> None:
    """Ignore SIGINT/SIGTERM sent to the whole process group, in a DataLoader worker.

    A worker killed mid-step would abort the step the main process wants to finish and save.
    Workers still exit with the main process.
    """
    for s in EXIT_ON_SIGNAL:
        signal.signal(s, signal.SIG_IGN)


def quiet_abandoned_handovers() -> None:
    """Keep a DataLoader worker silent when the main process abandons a batch's handover.

    The main process fetches each batch's shared memory over a connection to the worker's
    multiprocessing resource sharer. When it stops mid-fetch (another worker died, the run failed), the
    sharer's thread reports the dropped connection through ``sys.excepthook``: a traceback in the stderr the
    worker shares with the main process, printed above the main process's one-line error. The worker
    is not at fault, so that report is dropped; any other goes to the previous hook.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, (EOFError, ConnectionError)) and passes_through(tb, "multiprocessing/resource_sharer.py"):
            return
        previous(kind, err, tb)

    sys.excepthook = hook


def passes_through(tb: TracebackType | None, file_suffix: str) -> bool:
    """Whether a traceback has a frame in a file whose path ends with ``file_suffix`` (``/``-separated):
    how an error from multiprocessing's plumbing is told from the same type raised elsewhere."""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.replace(os.sep, "/").endswith(file_suffix):
            return True
        tb = tb.tb_next
    return False


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (a job scheduler, ``kill``) raises SystemExit(143) in the main thread, as Ctrl-C raises
    KeyboardInterrupt; :func:`stop_requests`, entered inside, takes over while a training loop runs."""
    def stop(_signum: int, _frame) -> None:
        raise SystemExit(EXIT_ON_SIGNAL[signal.SIGTERM])

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into an entry in the yielded list; a second signal aborts at once."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in EXIT_ON_SIGNAL}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
