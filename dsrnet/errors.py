"""The error concepts every layer shares, torch-free: the one exception type for problems a user can fix,
and the errno values of a full disk. The CLI edge that prints them is :func:`dsrnet.cli.run_cli`.

``model/`` raises its own :class:`model.CheckpointError` (it depends on torch alone); the CLI edge
treats both alike.
"""
from __future__ import annotations

import errno


class InputError(Exception):
    """Bad input the user can fix (missing path, wrong scale, corrupt file).

    The message names the culprit and the fix; CLIs print it as a single line.
    """


# A write that failed for want of space (or quota): the user frees some, nothing else is wrong.
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
