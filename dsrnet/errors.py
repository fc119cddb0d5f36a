"""One exception type for problems a user can fix, and the CLI edge that prints them.

``model/`` raises its own :class:`model.CheckpointError` (it depends on torch alone); the CLI edge
treats both alike.
"""
from __future__ import annotations

import errno
import multiprocessing
import os
import sys
from typing import Callable

from model import CheckpointError


class InputError(Exception):
    """Bad input the user can fix (missing path, wrong scale, corrupt file).

    The message names the culprit and the fix; CLIs print it as a single line.
    """


# Everything a user can fix: printed as one line by run_cli.
USER_ERRORS = (InputError, CheckpointError)
# A write that failed for want of space (or quota): the user frees some, nothing else is wrong.
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _own_words(message: str) -> str:
    """The error's own line: a DataLoader worker's InputError arrives wrapped with the worker's traceback."""
    if "Original Traceback" not in message:
        return message
    return message.rstrip().splitlines()[-1].split("InputError: ", 1)[-1]


def _worker_death(err: RuntimeError) -> str | None:
    """The one line for a DataLoader worker that died (PyTorch raises a RuntimeError naming its pid), else None.

    A worker killed from outside is almost always the out-of-memory killer's doing: say how to need less.
    """
    what = str(err).strip()
    if not what.startswith("DataLoader worker (pid"):
        return None
    return (f"a data-loading worker died ({what.splitlines()[0].rstrip('. ')}), most likely killed for want of "
            "memory: use fewer --num_workers (0 loads in the main process) or drop --in_memory; a training run "
            "continues from its last checkpoint with --resume")


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main`` and turn an InputError, a full disk or a dead DataLoader worker into one line on stderr
    and exit code 2. (Writes through dataset/io.py's atomic helpers already say which file; this catches
    the rest, such as a log row appended to log.csv.)

    A failure inside training can leave DataLoader workers running. They ignore SIGTERM (see
    dsrnet.stopping.ignore_stop_signals), so multiprocessing's exit handler would wait for them forever; and a
    worker that outlives its parent can still print a broken-pipe traceback from its queue's feeder thread
    into the same stderr, after the one line. So such children are killed (nobody will read their batches)
    and the process ends at once.
    """
    try:
        main()
        return
    except USER_ERRORS as err:
        print(f"error: {_own_words(str(err))}", file=sys.stderr)
        code = 2
    except RuntimeError as err:
        line = _worker_death(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        code = 2
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        print(f"error: the disk is full{f' writing {err.filename}' if err.filename else ''} ({err.strerror}): free "
              "space and run again; a training run continues from its last checkpoint with --resume", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    workers = multiprocessing.active_children()
    if workers:
        for worker in workers:  # a worker left to notice its parent's end could still print into our stderr
            worker.kill()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
