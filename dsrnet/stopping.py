"""Stopping cleanly on SIGINT/SIGTERM: every command unwinds, and a training run finishes its step first.

Every command run through ``dsrnet.cli.run_cli`` ends on SIGTERM as on Ctrl-C: its ``finally`` blocks run,
so an atomic write removes its temp file, and the exit status is 143.

Ctrl-C or SIGTERM (torchrun, SLURM) does not kill the run mid-step: the loop finishes the step, saves
a checkpoint and exits with 128 + the signal (130 / 143), so a job script can tell an interrupted run
from a finished one. A second signal aborts at once.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_ON_SIGNAL = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}


def ignore_stop_signals(_worker: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT/SIGTERM sent to the whole process group.

    A worker killed mid-step would abort the step the main process wants to finish and save.
    Workers still exit with the main process.
    """
    for s in EXIT_ON_SIGNAL:
        signal.signal(s, signal.SIG_IGN)


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
