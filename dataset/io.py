"""Image reading and atomic writing: the one place that touches image files."""
from __future__ import annotations

import errno
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from dsrnet.errors import InputError

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def images_in(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Image files directly in ``folder`` matching ``pattern``, sorted; dotfiles (macOS ``._x.png``) skipped."""
    return sorted(p for p in Path(folder).glob(pattern)
                  if p.is_file() and is_image(p) and not p.name.startswith("."))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as an RGB uint8 HxWx3 array (grayscale is replicated, as the authors do)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot decode image {path} ({err}); replace or remove the file") from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file beside ``path`` to write; it replaces ``path`` only if the block succeeds.

    The file gets the usual umask permissions (mkstemp's are owner-only); on any error or Ctrl-C
    the temp file is removed, so no half-written output is ever left behind.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            os.replace(tmp, path)
        except OSError as err:
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
    try:
        if path.is_dir():
            raise InputError(f"cannot write {path}: it is a folder; name a file")
        nearest = path.parent
        while not nearest.exists() and nearest != nearest.parent:
            nearest = nearest.parent
        if not nearest.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as err:
        raise _unwritable(path, err) from None


def ensure_writable_folder(folder: str | os.PathLike, what: str, flag: str) -> None:
    """Create ``folder`` and fail now, naming ``flag``, when ``what`` (e.g. checkpoints) cannot be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
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
    return InputError(f"cannot write {path} ({err.strerror or err}): choose a writable location")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Save a uint8 HxWx3 (or HxW) array atomically; the format follows the extension."""
    path = Path(path)
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
           ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    options = {"compress_level": 1} if fmt == "PNG" else {}  # fast PNG: SR dumps are large
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format=fmt, **options)
    atomic_write_bytes(path, buf.getvalue())
