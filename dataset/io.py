"""Image reading and atomic writing: the one place that touches image files."""
from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from errors import InputError

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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot decode image {path} ({err}); replace or remove the file") from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file beside ``path`` to write; it replaces ``path`` only if the block succeeds.

    The file gets the usual umask permissions (mkstemp's are owner-only); on any error or Ctrl-C
    the temp file is removed, so no half-written output is ever left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
