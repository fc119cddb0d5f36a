"""One exception type for problems a user can fix, and the CLI edge that prints them.

``model/`` raises its own :class:`model.CheckpointError` (it depends on torch alone); the CLI edge
treats both alike.
"""
from __future__ import annotations

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


def _own_words(message: str) -> str:
    """The error's own line: a DataLoader worker's InputError arrives wrapped with the worker's traceback."""
    if "Original Traceback" not in message:
        return message
    return message.rstrip().splitlines()[-1].split("InputError: ", 1)[-1]


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main`` and turn an InputError into one line on stderr and exit code 2.

    A failure inside training can leave DataLoader workers running. They ignore SIGTERM (see
    dsrnet.stopping.ignore_stop_signals), so multiprocessing's exit handler would wait for them forever;
    with such children alive the process ends at once instead, and they follow it within seconds
    (each worker watches its parent).
    """
    try:
        main()
        return
    except USER_ERRORS as err:
        print(f"error: {_own_words(str(err))}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if multiprocessing.active_children():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
