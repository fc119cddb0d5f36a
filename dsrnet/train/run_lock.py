"""One training run per checkpoint folder: an exclusive lock that dies with the process holding it.

Two runs writing one folder would interleave their checkpoints and log.csv without a word. The lock is
a POSIX record lock (``lockf``) on ``FOLDER/.train.lock``, which holds the owner's ``pid host``. The kernel
drops it when the process ends, however it ends (kill -9, the OOM killer), so it is never stale; unlike
``flock`` it is not inherited by forked DataLoader workers, which may outlive a killed trainer by
seconds, and it works across hosts on NFS. The file is removed on release; one left by a killed run is
free and harmless. As with any POSIX lock, closing any descriptor of the lock file in the holding process
drops the lock: nothing but this module opens it.
"""
from __future__ import annotations

import errno
import os
import socket
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dsrnet.errors import InputError

try:
    import fcntl
except ImportError:  # Windows has no lockf: runs there are not guarded
    fcntl = None

LOCK_NAME = ".train.lock"
# File systems without locks (some network mounts): the run goes on unguarded rather than not at all.
NO_LOCKS = (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL)

# Resolved folder -> [descriptor or None, holders, pid]: one process takes a folder's lock once, and every
# RunLock of that process on the folder shares it (Solvers built one after another in one program).
_held: dict[Path, list] = {}


class RunLock:
    """Hold ``folder``'s training lock until :meth:`release`, garbage collection or the end of the process.

    Raises InputError naming the other run's pid and host when another process holds it. ``guarded``
    is False where the file system has no locks, and with ``take=False``: a lock holding nothing, for
    the DDP ranks that leave the folder to rank 0.
    """

    def __init__(self, folder: str | os.PathLike, take: bool = True):
        self.folder = Path(folder).resolve()
        self.guarded = False
        self._release: Callable[[], object] = lambda: None
        if not take:
            return
        hold = _held.get(self.folder)
        if hold is None or hold[2] != os.getpid():  # a forked child holds nothing of its parent's
            hold = _held[self.folder] = [_take(self.folder / LOCK_NAME), 0, os.getpid()]
        hold[1] += 1
        self.guarded = hold[0] is not None
        self._release = weakref.finalize(self, _drop, self.folder)

    def release(self) -> None:
        """Give the lock up (idempotent); the last holder in this process removes the lock file."""
        self._release()

    @contextmanager
    def released_on_error(self) -> Iterator[None]:
        """Release if the block fails: a run that never starts leaves its folder free (and as it was)."""
        try:
            yield
        except BaseException:
            self.release()
            raise


def _take(path: Path) -> int | None:
    """The locked descriptor of ``path``, with this process's ``pid host`` written in it."""
    if fcntl is None:
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:  # a link: writing the pid would truncate whatever it points at
                raise InputError(f"the run lock {path} is a symbolic link, which a run never makes: remove it "
                                 "(its target is left alone) and start again") from None
            raise InputError(f"cannot write the run lock {path} ({err.strerror or err}): "
                             "pass a writable --ckpt_dir") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another process
            owner = _owner(fd)
            os.close(fd)
            raise InputError(f"--ckpt_dir {path.parent} is in use by another training run ({owner}): wait for it "
                             "to end or stop it, or pass another --ckpt_dir") from None
        except OSError as err:
            os.close(fd)
            if err.errno in NO_LOCKS:
                return None
            raise
        # The owner we raced may have removed the file between our open and our lock: lock the new one.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _owner(fd: int) -> str:
    """'pid N on HOST' from a held lock file; its owner writes it just after locking, so look twice."""
    for _ in range(2):
        os.lseek(fd, 0, os.SEEK_SET)
        words = os.read(fd, 512).decode(errors="replace").split()
        if len(words) == 2:
            return f"pid {words[0]} on {words[1]}"
        time.sleep(0.2)
    return "pid and host not yet written"


def _drop(folder: Path) -> None:
    hold = _held.get(folder)
    if hold is None or hold[2] != os.getpid():  # a forked child's copy: the lock is its parent's
        return
    hold[1] -= 1
    if hold[1] or hold[0] is None:
        if not hold[1]:
            del _held[folder]
        return
    del _held[folder]
    try:
        (folder / LOCK_NAME).unlink()  # while still locked: see the race check in _take
    except FileNotFoundError:
        pass
    fcntl.lockf(hold[0], fcntl.LOCK_UN)
    os.close(hold[0])
