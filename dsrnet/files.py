"""Atomic file writes: a file is either whole under its final name or absent, and a write that cannot
happen fails before the long work that would produce it. The one place that writes files; torch-free."""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from dsrnet.errors import DISK_FULL, InputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file beside ``path`` to write; it replaces ``path`` only if the block succeeds.

    The file gets the usual umask permissions (mkstemp's are owner-only); on any error or Ctrl-C
    the temp file is removed, so no half-written output is ever left behind. The data is fsynced
    before the rename and the folder after it, so a power loss cannot leave an empty file under
    the final name. A full disk (or quota) ends as an InputError, whether the block or the sync hit it.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        yield tmp
        _fsync(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise _unwritable(path, err) from None
        _fsync_folder(path.parent)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise _unwritable(path, err) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def ensure_writable(path: str | os.PathLike) -> None:
    """Fail now, not after a long run, when ``path`` cannot be written (a folder, under a file, read-only).

    Creates nothing: missing folders are made when the file is written, and the probe is a temp file in
    the nearest folder that exists, gone at once (asking the OS for permissions would pass /proc as root).
    """
    path = Path(path)
    check_replaceable(path)
    try:
        if path.is_dir():
            raise InputError(f"cannot write {path}: it is a folder; name a file")
        _probe_folder(path.parent)
    except OSError as err:
        raise _unwritable(path, err) from None


def _probe_folder(folder: Path) -> None:
    """Raise OSError unless files can be made in ``folder``, or in the nearest folder above it that exists (where
    the missing ones would be made); a probe file, gone at once, is all it creates."""
    nearest = folder
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    with tempfile.TemporaryFile(dir=nearest):
        pass


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to replace an existing file its owner made read-only: the atomic rename would go through, since it
    needs only the folder's permission (and root passes every permission check, so the mode bits are read)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) and (not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
                               or not os.access(path, os.W_OK)):
        raise InputError(f"{path} exists and is read-only: pass another output, or make it writable "
                         f"(chmod u+w) to replace it")


def overwritten_input(outputs: Iterable[Path], inputs: Iterable[Path]) -> tuple[Path, Path] | None:
    """An (output, input) pair naming one file, by its path, a symlink or a hard link: writing that output would
    replace the input. None when no output is an input (outputs that do not exist yet cost one stat each)."""
    existing = {}
    for out in outputs:
        try:
            st = os.stat(out)
        except OSError:  # not there yet (or unreachable: ensure_writable says so)
            continue
        existing.setdefault((st.st_dev, st.st_ino), Path(out))
    if existing:
        for src in inputs:
            st = os.stat(src)
            if (st.st_dev, st.st_ino) in existing:
                return existing[st.st_dev, st.st_ino], Path(src)
    return None


def ensure_writable_folder(folder: str | os.PathLike, what: str, flag: str) -> None:
    """Fail now, naming ``flag``, when ``what`` (e.g. checkpoints) cannot be written in ``folder``. Creates nothing:
    a run refused later (for its data, say) leaves no empty folder behind."""
    folder = Path(folder)
    try:
        _probe_folder(folder)
    except OSError as err:
        raise InputError(f"cannot write {what} to {folder} ({err.strerror or err}): "
                         f"pass a writable {flag}") from None


def _temp_beside(path: Path) -> Path:
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _unwritable(path, err) from None
    os.close(fd)
    return Path(tmp)


def _unwritable(path: Path, err: OSError) -> InputError:
    if err.errno in DISK_FULL:  # the OS's words: HDF5's own message runs over several lines
        return InputError(f"cannot write {path}: the disk is full ({os.strerror(err.errno)}); free space there "
                          "or choose another location")
    return InputError(f"cannot write {path} ({' '.join(str(err.strerror or err).split())}): choose a writable "
                      "location")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)  # Windows syncs only a writable handle
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable. Skipped where a folder cannot be opened (Windows) or synced
    (some network and FUSE file systems refuse it): the file's own data is synced already."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def stale_temps(folder: str | os.PathLike, name_pattern: str) -> list[Path]:
    """Temp files :func:`atomic_path` left in ``folder`` when its process was killed mid-write, for final
    names matching the regex ``name_pattern``. Remove them only while no other process can be writing
    such a name (a training run holds its folder's lock)."""
    found = re.compile(rf"\.(?:{name_pattern})\.[a-z0-9_]{{8}}\.tmp")
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if found.fullmatch(p.name) and p.is_file()) if folder.is_dir() else []


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
