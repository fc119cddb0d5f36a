"""Image reading and writing: the one place that touches image files (written atomically by dsrnet.files)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dsrnet.errors import InputError
from dsrnet.files import atomic_write_bytes

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def images_in(folder: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Image files directly in ``folder`` matching ``pattern``, sorted; dotfiles (macOS ``._x.png``) skipped."""
    return sorted(p for p in Path(folder).glob(pattern)
                  if p.is_file() and is_image(p) and not p.name.startswith("."))


@dataclass(frozen=True)
class Planes:
    """A decoded image: RGB for the network, plus what ``sample.py --input`` gives back (gray, alpha).

    Samples are uint8, or uint16 when :func:`read_planes` was asked to keep the depth of a 16-bit or float file.
    """

    rgb: np.ndarray            # HxWx3; a grayscale image is replicated into the three channels
    alpha: np.ndarray | None   # HxW, or None when the file has no transparency
    gray: bool                 # the file holds one colour channel (1, L, LA, I;16*, I, F), or is a gray WebP


# The EXIF tag that says how the stored pixels turn to stand upright (values 1-8; 1: as stored).
ORIENTATION = 0x0112


def _check_still(im: Image.Image, path: Path) -> None:
    """Refuse an animation (APNG, GIF, WebP) or a multi-page TIFF rather than silently using its first frame.

    A phone's JPEG may be an MPO: its first picture is the photo, the others previews or depth maps, so it is read.
    """
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and im.format != "MPO":
        raise InputError(f"{path} holds {frames} frames (an animation or a multi-page file) and only still images "
                         "are read: save the one frame you want as a PNG")


def _orientation(im: Image.Image) -> int:
    """The file's EXIF orientation, 1 when absent or invalid. A PNG's EXIF is read only once known (Pillow finds
    an eXIf chunk before the pixels while opening, one after them while decoding), so no pixels are decoded here."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    value = im.getexif().get(ORIENTATION, 1)
    return value if value in range(1, 9) else 1


def upright(a: np.ndarray, orientation: int) -> np.ndarray:
    """An HxW[xC] array as viewers show it, for EXIF ``orientation`` 1-8 (what ``ImageOps.exif_transpose`` does,
    for arrays of any depth)."""
    turned = {1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1], 5: a.swapaxes(0, 1),
              6: np.rot90(a, -1), 7: a.swapaxes(0, 1)[::-1, ::-1], 8: np.rot90(a)}[orientation]
    return np.ascontiguousarray(turned)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as decoded (EXIF orientation applied) from the file header only: checks up front cost no
    decoding. An animation is refused here already."""
    try:
        with Image.open(path) as im:
            _check_still(im, Path(path))
            w, h = im.size
            return (h, w) if _orientation(im) >= 5 else (w, h)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path} ({err}); replace or remove the file") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as an RGB uint8 HxWx3 array (grayscale is replicated, as the authors do; alpha is dropped)."""
    return read_planes(path).rgb


def read_planes(path: str | os.PathLike, keep_depth: bool = False) -> Planes:
    """Decode any still image PIL opens into planes, upright: the one place where files become pixels.

    The EXIF orientation is applied (a phone's portrait JPEG is stored sideways), for every reader alike;
    benchmark and training sets carry none. Animations are refused. 16-bit samples become ``round(v / 257)``
    and floats in [0, 1] ``round(v * 255)``, as MATLAB's ``im2uint8`` does, unless ``keep_depth``: then 16-bit
    files stay uint16 and floats become ``round(v * 65535)``. A float outside [0, 1] or a negative integer is
    refused (no silent clamping). WebP has no gray mode, so a WebP whose three channels agree everywhere (to
    the one level lossy coding moves them) is known as gray.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            _check_still(im, path)
            planes = _decode(im, path, keep_depth)
            turn = _orientation(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot decode image {path} ({err}); replace or remove the file") from None
    if turn == 1:
        return planes
    return Planes(upright(planes.rgb, turn), None if planes.alpha is None else upright(planes.alpha, turn),
                  planes.gray)


def _decode(im: Image.Image, path: Path, keep_depth: bool) -> Planes:
    raw = " ".join(str(t.args) for t in im.tile)
    if im.mode in ("RGB", "RGBA", "LA") and ";16" in raw:  # PIL keeps only the high byte of these
        return _wide_colour(path, "LA;16" in raw, keep_depth)  # PIL calls 16-bit gray+alpha RGBA
    if im.mode.startswith("I") or im.mode == "F":
        gray = _wide_samples(np.asarray(im), im.mode, path, keep_depth)
        return Planes(np.repeat(gray[..., None], 3, axis=2), None, gray=True)
    has_alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8)
    rgb = arr[..., :3].copy()
    gray = im.mode in ("1", "L", "LA", "La") or (im.format == "WEBP" and _channels_agree(rgb))
    return Planes(rgb, arr[..., 3].copy() if has_alpha else None, gray=gray)


def _channels_agree(rgb: np.ndarray) -> bool:
    g = rgb[..., 1].astype(np.int16)
    return bool(np.abs(rgb[..., 0] - g).max() <= 1 and np.abs(rgb[..., 2] - g).max() <= 1)


def _wide_colour(path: Path, gray: bool, keep_depth: bool) -> Planes:
    """16-bit RGB(A) or gray+alpha PNG/TIFF at full depth, through OpenCV (which returns BGR(A) uint16, gray
    replicated)."""
    import cv2

    data = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.ndim != 3 or data.shape[2] not in (3, 4) or data.dtype != np.uint16:
        raise InputError(f"cannot decode the 16-bit image {path}; save it as 8-bit or 16-bit PNG")
    rgb = _wide_samples(data[..., 2::-1], "RGB;16", path, keep_depth)
    alpha = _wide_samples(data[..., 3], "RGBA;16", path, keep_depth) if data.shape[2] == 4 else None
    return Planes(np.ascontiguousarray(rgb), alpha, gray=gray)


def _wide_samples(a: np.ndarray, mode: str, path: Path, keep_depth: bool) -> np.ndarray:
    """16-bit (I;16*, and I, which PIL uses for 16-bit sources) and float (F) samples -> uint8, or uint16 with
    ``keep_depth``; anything out of range is refused."""
    if mode == "F":
        if not np.isfinite(a).all() or a.min() < -0.5 / 255 or a.max() > 1 + 0.5 / 255:
            raise InputError(f"{path} is a float image with values in [{a.min():g}, {a.max():g}]; only [0, 1] "
                             "is understood: rescale it to [0, 1] or save it as an 8- or 16-bit integer image")
        peak, dtype = (65535, np.uint16) if keep_depth else (255, np.uint8)
        return np.rint(np.clip(a, 0, 1) * peak).astype(dtype)
    if a.min() < 0 or a.max() > 65535:
        raise InputError(f"{path} holds integer samples in [{a.min()}, {a.max()}] (PIL mode {mode}); only 0..65535 "
                         "(16-bit) is understood: save it as an 8- or 16-bit unsigned image")
    if keep_depth:
        return a.astype(np.uint16)
    return np.rint(a.astype(np.float32) / 257).astype(np.uint8)


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
    """Save an HxW (L), HxWx2 (LA), HxWx3 (RGB) or HxWx4 (RGBA) array atomically; the format follows the
    extension. uint16 samples are kept in a PNG (16-bit, any of the four kinds); the other formats hold
    8 bits, so they get ``round(v / 257)``."""
    path = Path(path)
    fmt = _format(path)
    if img.dtype == np.uint16 and fmt == "PNG":
        atomic_write_bytes(path, png16(img))
        return
    if img.dtype == np.uint16:
        img = np.rint(img / 257).astype(np.uint8)
    buf = io.BytesIO()
    options = {"compress_level": 1} if fmt == "PNG" else {}  # fast PNG: SR dumps are large
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format=fmt, **options)
    atomic_write_bytes(path, buf.getvalue())


def png16(img: np.ndarray) -> bytes:
    """A 16-bit PNG of a uint16 HxW, HxWx2, HxWx3 or HxWx4 array. Pillow writes 16 bits only for gray, and
    OpenCV not for gray+alpha, so the file is built here: one IDAT of unfiltered big-endian rows."""
    h, w = img.shape[:2]
    channels = 1 if img.ndim == 2 else img.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.ascontiguousarray(img, dtype=">u2").view(np.uint8).reshape(h, w * channels * 2)
    raw = np.hstack([np.zeros((h, 1), np.uint8), rows]).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1))
            + chunk(b"IEND", b""))
