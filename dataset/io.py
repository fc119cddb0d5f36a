"""Image reading and atomic writing: the one place that touches image files."""
from __future__ import annotations

import errno
import io
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from dsrnet.errors import DISK_FULL, InputError

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def images_in(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Image files directly in ``folder`` matching ``pattern``, sorted; dotfiles (macOS ``._x.png``) skipped."""
    return sorted(p for p in Path(folder).glob(pattern)
                  if p.is_file() and is_image(p) and not p.name.startswith("."))


@dataclass(frozen=True)
class Planes:
    """A decoded image: RGB for the network, plus what ``sample.py --input`` gives back (gray, alpha)."""

    rgb: np.ndarray            # uint8 HxWx3; a grayscale image is replicated into the three channels
    alpha: np.ndarray | None   # uint8 HxW, or None when the file has no transparency
    gray: bool                 # the file holds one colour channel (1, L, LA, I;16*, I, F)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header only: checks up front cost no decoding."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path} ({err}); replace or remove the file") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as an RGB uint8 HxWx3 array (grayscale is replicated, as the authors do; alpha is dropped)."""
    return read_planes(path).rgb


def read_planes(path: str | os.PathLike) -> Planes:
    """Decode any image PIL opens into 8-bit planes: the one place where files become pixels.

    16-bit samples become ``round(v / 257)`` and floats in [0, 1] ``round(v * 255)``, as MATLAB's
    ``im2uint8`` does; a float outside [0, 1] or a negative integer is refused (no silent clamping).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA") and any(";16" in str(t.args) for t in im.tile):
                return _wide_colour(path)  # PIL keeps only the high byte of 16-bit colour samples
            if im.mode.startswith("I") or im.mode == "F":
                gray = _wide_to_uint8(np.asarray(im), im.mode, path)
                return Planes(np.repeat(gray[..., None], 3, axis=2), None, gray=True)
            has_alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8)
            return Planes(arr[..., :3].copy(), arr[..., 3].copy() if has_alpha else None,
                          gray=im.mode in ("1", "L", "LA", "La"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot decode image {path} ({err}); replace or remove the file") from None


def _wide_colour(path: Path) -> Planes:
    """16-bit RGB(A) PNG/TIFF at full depth, through OpenCV (which returns BGR(A) uint16)."""
    import cv2

    data = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.ndim != 3 or data.shape[2] not in (3, 4) or data.dtype != np.uint16:
        raise InputError(f"cannot decode the 16-bit colour image {path}; save it as 8-bit or 16-bit PNG")
    rgb = _wide_to_uint8(data[..., 2::-1], "RGB;16", path)
    alpha = _wide_to_uint8(data[..., 3], "RGBA;16", path) if data.shape[2] == 4 else None
    return Planes(np.ascontiguousarray(rgb), alpha, gray=False)


def _wide_to_uint8(a: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """16-bit (I;16*, and I, which PIL uses for 16-bit sources) and float (F) samples -> uint8, or refuse."""
    if mode == "F":
        if not np.isfinite(a).all() or a.min() < -0.5 / 255 or a.max() > 1 + 0.5 / 255:
            raise InputError(f"{path} is a float image with values in [{a.min():g}, {a.max():g}]; only [0, 1] "
                             "is understood: rescale it to [0, 1] or save it as an 8- or 16-bit integer image")
        return np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
    if a.min() < 0 or a.max() > 65535:
        raise InputError(f"{path} holds integer samples in [{a.min()}, {a.max()}] (PIL mode {mode}); only 0..65535 "
                         "(16-bit) is understood: save it as an 8- or 16-bit unsigned image")
    return np.rint(a.astype(np.float32) / 257).astype(np.uint8)


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
    if err.errno in DISK_FULL:
        return InputError(f"cannot write {path}: the disk is full ({err.strerror or err}); free space there "
                          "or choose another location")
    return InputError(f"cannot write {path} ({err.strerror or err}): choose a writable location")


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


_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _format(path: Path) -> str:
    return _FORMATS.get(path.suffix.lower(), "PNG")


def check_savable(path: str | os.PathLike, channels: int) -> None:
    """Refuse, before the work, an image kind the file's format cannot hold (alpha in a JPEG, gray+alpha in a BMP)."""
    path = Path(path)
    try:
        Image.new(_MODES[channels], (1, 1)).save(io.BytesIO(), format=_format(path))
    except (OSError, KeyError, ValueError):
        raise InputError(f"{path.suffix} files cannot hold {_MODES[channels]} images (the input's kind): "
                         f"name a .png file instead of {path}") from None


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Save a uint8 HxW (L), HxWx2 (LA), HxWx3 (RGB) or HxWx4 (RGBA) array atomically; the format follows the
    extension."""
    path = Path(path)
    buf = io.BytesIO()
    fmt = _format(path)
    options = {"compress_level": 1} if fmt == "PNG" else {}  # fast PNG: SR dumps are large
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format=fmt, **options)
    atomic_write_bytes(path, buf.getvalue())
