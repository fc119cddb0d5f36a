"""Where the HR/LR pairs of a test set live: the one place that knows benchmark folder layouts.

Super-resolution test sets circulate in several incompatible folder layouts (SelfExSR's
``image_SRF_2``, the authors'/CARN ``x2`` folders, EDSR's ``LR_bicubic/X2``, BasicSR's
``LRbicx2``, DIV2K's ``DIV2K_valid_LR_bicubic/X2``, or just a folder of HR images).
Evaluation code should not care which one it was handed, and a wrong or half-copied
folder must fail loudly *before* hours of inference, naming the file at fault: a missing
partner or an LR of the wrong size would otherwise silently skew PSNR/SSIM.

``find_test_set`` detects the layout and pairs HR with LR by name; ``load_pair`` reads a
pair, checks that HR is exactly ``scale`` times LR, and for HR-only folders makes the LR
with MATLAB-style bicubic (the way published numbers were made), caching it outside the
dataset folder, which may be read-only.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsrnet.data import imresize as _resize  # attribute access at call time: tests may patch it
from dsrnet.data.images import IMAGE_EXTENSIONS, images_in, is_image, read_image, write_image
from dsrnet.errors import InputError

__all__ = [
    "ImagePair", "TestSet", "find_test_set", "load_pair", "list_input_images",
    "default_cache_dir", "cached_lr_path",
]

# Bump when the way cached LR images are made changes, so stale caches are not reused (2: HR read with its
# EXIF orientation applied).
_CACHE_VERSION = 2

# Folder names that say nothing about the dataset: the set is named after their parent.
_GENERIC_DIR = re.compile(
    r"^(hr|lr|gt|gtmod\d+|x\d+|image_srf_\d+|bicubic_x\d+|lr_bicubic|lrbicx\d+|images?|img)$",
    re.IGNORECASE)
# Folders that hold LR images (at some scale): their presence means "not an HR-only set".
_LR_DIR = re.compile(r"^(x\d+|image_srf_\d+|bicubic_x\d+|lr_bicubic|lrbicx\d+|lr\w*"
                     r"|div2k_\w+_lr_bicubic)$", re.IGNORECASE)
# "_HR" / "-LR" / ".hr" at the end of a file stem marks its role in a mixed folder.
_ROLE = re.compile(r"[_\-.](HR|LR)$", re.IGNORECASE)
_SRF = re.compile(r"_SRF_(\d+)$", re.IGNORECASE)
# One set under two names: the paper says "B100", the SelfExSR download names its folder "BSD100".
_OTHER_NAME = {"b100": "BSD100", "bsd100": "B100"}


@dataclass(frozen=True)
class ImagePair:
    """One test image: its undecorated name and where its HR and LR files are."""

    name: str            # without HR/LR/scale decorations, e.g. "img_001", "baby", "0801"
    hr: Path | None      # None for input-only images (no ground truth)
    lr: Path | None      # None when the LR is generated from HR (HR-only layout)


@dataclass(frozen=True)
class TestSet:
    """A detected test set at one scale; ``pairs`` are sorted by name."""

    __test__ = False  # not a pytest test class despite the name

    name: str            # "Set5", "BSD100", ...: the folder, or its parent for generic folders
    scale: int
    layout: str          # "selfexsr", "x2-folder", "hr+bicubic_x2", "edsr", "basicsr", "div2k", "hr-only"
    root: Path
    pairs: tuple[ImagePair, ...]

    def __len__(self) -> int:
        return len(self.pairs)


# --------------------------------------------------------------------------- helpers

def _check_scale(scale: object) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise InputError(f"scale must be an integer >= 2 (e.g. 2, 3 or 4), got {scale!r}")
    return int(scale)


def _child_dir(parent: Path, name: str) -> Path | None:
    """``parent/name`` as a directory, matching the name case-insensitively (X2 vs x2)."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    for child in sorted(parent.iterdir()):
        if child.name.lower() == name.lower() and child.is_dir():
            return child
    return None


def _dataset_name(root: Path) -> str:
    if _GENERIC_DIR.match(root.name) and root.parent.name:
        return root.parent.name
    return root.name


def _strip_role(stem: str) -> tuple[str, str | None]:
    """``"baby_HR"`` -> ``("baby", "HR")``; no marker -> ``(stem, None)``."""
    m = _ROLE.search(stem)
    if m and m.start() > 0:
        return stem[:m.start()], m.group(1).upper()
    return stem, None


def _strip_srf(stem: str, scale: int) -> str:
    m = _SRF.search(stem)
    if m and int(m.group(1)) == scale and m.start() > 0:
        return stem[:m.start()]
    return stem


def _strip_x(stem: str, scale: int) -> str:
    m = re.search(rf"[_\-]?x{scale}$", stem, re.IGNORECASE)
    if m and m.start() > 0:
        return stem[:m.start()]
    return stem


def _hr_key(path: Path, scale: int) -> str:
    return _strip_srf(_strip_role(path.stem)[0], scale)


def _lr_keys(path: Path, scale: int) -> list[str]:
    """Names an LR file may pair under: as is, then without an ``x{s}`` suffix (``babyx2``).

    Trying the undecorated name first keeps an HR called ``box2`` from losing its ``x2``.
    """
    base = _strip_srf(_strip_role(path.stem)[0], scale)
    keys = [base]
    stripped = _strip_srf(_strip_x(base, scale), scale)
    if stripped != base:
        keys.append(stripped)
    return keys


def _pair_up(hr_files: list[Path], lr_files: list[Path], scale: int,
             hr_where: Path, lr_where: Path) -> tuple[ImagePair, ...]:
    """Match HR and LR files by undecorated name; any file without a partner is an error."""
    if not hr_files:
        raise InputError(f"no HR images in {hr_where}; copy the HR images there or point at another folder")
    if not lr_files:
        raise InputError(f"no LR images in {lr_where}; copy the x{scale} LR images there or point at another folder")
    hr_by_name: dict[str, Path] = {}
    for hr in hr_files:
        key = _hr_key(hr, scale)
        if key in hr_by_name:
            raise InputError(f"two HR images share the name {key!r}: {hr_by_name[key]} and {hr}; remove one")
        hr_by_name[key] = hr
    lr_by_name: dict[str, Path] = {}
    for lr in lr_files:
        keys = _lr_keys(lr, scale)
        key = next((k for k in keys if k in hr_by_name), None)
        if key is None:
            raise InputError(f"LR image {lr} has no HR partner (looked for {' or '.join(keys)} in {hr_where}); "
                             f"add the HR image or remove the LR one")
        if key in lr_by_name:
            raise InputError(f"two LR images pair with HR {hr_by_name[key]}: {lr_by_name[key]} and {lr}; remove one")
        lr_by_name[key] = lr
    for key, hr in hr_by_name.items():
        if key not in lr_by_name:
            raise InputError(f"HR image {hr} has no x{scale} LR partner in {lr_where} "
                             f"(looked for {key}, {key}x{scale} or {key}_LR); add the LR image or remove the HR one")
    return tuple(ImagePair(name=k, hr=hr_by_name[k], lr=lr_by_name[k]) for k in sorted(hr_by_name))


def _pair_mixed_folder(folder: Path, scale: int) -> tuple[ImagePair, ...]:
    """HR and LR side by side in one folder, told apart by an ``_HR``/``_LR`` name suffix."""
    images = images_in(folder)
    if not images:
        raise InputError(f"no images in {folder}; expected NAME_HR.png + NAME_LR.png pairs for x{scale}")
    hr_files, lr_files = [], []
    for img in images:
        role = _strip_role(img.stem)[1]
        if role is None:
            raise InputError(f"{img} is neither HR nor LR: files in {folder} must end in _HR or _LR "
                             f"(e.g. baby_HR.png, baby_LR.png); rename or remove it")
        m = _SRF.search(_strip_role(img.stem)[0])
        if m and int(m.group(1)) != scale:
            raise InputError(f"{img} is for scale {m.group(1)}, not x{scale}; "
                             f"remove it or ask for scale {m.group(1)}")
        (hr_files if role == "HR" else lr_files).append(img)
    return _pair_up(hr_files, lr_files, scale, folder, folder)


def _hr_only_pairs(folder: Path, scale: int) -> tuple[ImagePair, ...]:
    pairs: dict[str, ImagePair] = {}
    for img in images_in(folder):
        key = _hr_key(img, scale)
        if key in pairs:
            raise InputError(f"two HR images share the name {key!r}: {pairs[key].hr} and {img}; remove one")
        pairs[key] = ImagePair(name=key, hr=img, lr=None)
    return tuple(pairs[k] for k in sorted(pairs))


def _lr_dirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that look like they hold LR images at some scale."""
    return sorted(p for p in root.iterdir() if p.is_dir() and _LR_DIR.match(p.name))


def _describe_lr_dirs(dirs: list[Path]) -> str:
    parts = []
    for d in dirs:
        subs = sorted(p.name for p in d.iterdir() if p.is_dir())
        parts.append(f"{d.name}/" + (f" (with {', '.join(subs)})" if subs else ""))
    return ", ".join(parts)


_LOOKED_FOR = ("image_SRF_{s}/ (*_HR + *_LR), x{s}/ (*_HR + *_LR), HR/ + bicubic_x{s}/, "
               "HR/ + LR_bicubic/X{s}/, GTmod12/ + LRbicx{s}/, DIV2K_valid_HR/ + DIV2K_valid_LR_bicubic/X{s}/, "
               "or HR images alone (HR/ or directly in the folder)")


_ANNOUNCED: set[Path] = set()


def _existing_set_folder(root: Path) -> Path:
    """``root``, or its other name beside it (B100 <-> BSD100) when only that exists, said once on stderr.

    The README and the paper say B100 while the usual download unpacks as BSD100; either path should work.
    """
    if root.exists():
        return root
    other = _OTHER_NAME.get(root.name.lower())
    if other is None:
        raise InputError(f"test set folder {root} does not exist; check the path (e.g. .../benchmark/Set5)")
    alias = _child_dir(root.parent, other)
    if alias is None:
        raise InputError(f"test set folder {root} does not exist, nor {root.parent / other}: put the set there "
                         f"(the SelfExSR download names it BSD100; see dataset/README.md)")
    if root not in _ANNOUNCED:
        _ANNOUNCED.add(root)
        print(f"note: {root} does not exist; using {alias} (the same set under its other name)", file=sys.stderr)
    return alias


# --------------------------------------------------------------------------- public API

def find_test_set(root: str | os.PathLike, scale: int) -> TestSet:
    """Detect the layout of the test set in ``root`` and pair its HR and LR images for ``scale``.

    Detection happens up front, so a half-copied or mislabelled dataset fails here with the
    offending file named, not halfway through an evaluation.
    """
    scale = _check_scale(scale)
    root = Path(os.path.abspath(os.fspath(root)))
    root = _existing_set_folder(root)
    if not root.is_dir():
        raise InputError(f"{root} is a file, not a test set folder; pass the dataset folder "
                         f"(e.g. .../benchmark/Set5), or use it as an input image")
    name = _dataset_name(root)
    s = scale

    def found(layout: str, pairs: tuple[ImagePair, ...]) -> TestSet:
        return TestSet(name=name, scale=s, layout=layout, root=root, pairs=pairs)

    # 1. SelfExSR: image_SRF_{s}/ with *_SRF_{s}_HR.png + *_SRF_{s}_LR.png.
    if (d := _child_dir(root, f"image_SRF_{s}")) is not None:
        return found("selfexsr", _pair_mixed_folder(d, s))
    # 2. Authors'/CARN: x{s}/ with *_HR + *_LR side by side.
    if (d := _child_dir(root, f"x{s}")) is not None:
        return found(f"x{s}-folder", _pair_mixed_folder(d, s))
    hr_dir = _child_dir(root, "HR")
    if hr_dir is not None:
        # 3. EDSR: HR/ + LR_bicubic/X{s}/NAMEx{s}.png.
        lr_root = _child_dir(root, "LR_bicubic")
        if lr_root is not None and (d := _child_dir(lr_root, f"X{s}")) is not None:
            return found("edsr", _pair_up(images_in(hr_dir), images_in(d), s, hr_dir, d))
        # 4. CARN-style: HR/ + bicubic_x{s}/.
        if (d := _child_dir(root, f"bicubic_x{s}")) is not None:
            return found(f"hr+bicubic_x{s}", _pair_up(images_in(hr_dir), images_in(d), s, hr_dir, d))
    # 5. BasicSR: GTmod12/ + LRbicx{s}/.
    gt_dir = _child_dir(root, "GTmod12")
    if gt_dir is not None and (d := _child_dir(root, f"LRbicx{s}")) is not None:
        return found("basicsr", _pair_up(images_in(gt_dir), images_in(d), s, gt_dir, d))
    # 6. DIV2K: DIV2K_{valid,train}_HR/ + DIV2K_{valid,train}_LR_bicubic/X{s}/.
    for split in ("valid", "train"):
        div_hr = _child_dir(root, f"DIV2K_{split}_HR")
        div_lr = _child_dir(root, f"DIV2K_{split}_LR_bicubic")
        if div_hr is not None and div_lr is not None and (d := _child_dir(div_lr, f"X{s}")) is not None:
            return found("div2k", _pair_up(images_in(div_hr), images_in(d), s, div_hr, d))

    # LR exists, just not for this scale: say which scales there are, never fall back silently.
    lr_dirs = _lr_dirs(root)
    if lr_dirs:
        hr_hint = next((h for h in (hr_dir, gt_dir, _child_dir(root, "DIV2K_valid_HR")) if h is not None), None)
        hint = (f"; or pass {hr_hint} to evaluate on x{s} LR generated from HR" if hr_hint is not None else "")
        raise InputError(f"no x{s} LR images in {root}: found {_describe_lr_dirs(lr_dirs)}; "
                         f"add x{s} LR images in the same layout or ask for a scale that is there{hint}")

    # 7a. Root is itself an image_SRF_{s} / x{s} folder: HR and LR side by side in it.
    images = images_in(root)
    if any(_strip_role(p.stem)[1] == "LR" for p in images):
        m = re.fullmatch(r"(?:image_SRF_|x|bicubic_x)(\d+)", root.name, re.IGNORECASE)
        if m and int(m.group(1)) != s:
            raise InputError(f"{root} holds x{m.group(1)} images, not x{s}; "
                             f"ask for scale {m.group(1)} or point at the x{s} folder")
        pairs = _pair_mixed_folder(root, s)
        srf = root.name.lower().startswith("image_srf_") or any(_SRF.search(_strip_role(p.stem)[0]) for p in images)
        return found("selfexsr" if srf else f"x{s}-folder", pairs)
    # 7b. HR images alone: in HR/ (or GTmod12/, DIV2K_valid_HR/), else directly in root.
    for hr_only in (hr_dir, gt_dir, _child_dir(root, "DIV2K_valid_HR")):
        if hr_only is not None:
            pairs = _hr_only_pairs(hr_only, s)
            if not pairs:
                raise InputError(f"no images in {hr_only}; copy the HR images there or point at another folder")
            return found("hr-only", pairs)
    if images:
        return found("hr-only", _hr_only_pairs(root, s))

    what = "is empty" if not any(root.iterdir()) else "has no recognisable test-set layout"
    raise InputError(f"{root} {what} for x{s}; looked for {_LOOKED_FOR.format(s=s)}")


def default_cache_dir() -> Path:
    """Where generated LR images go: ``$DSRNET_CACHE`` or ``~/.cache/dsrnet``, never the dataset."""
    env = os.environ.get("DSRNET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dsrnet"


def cached_lr_path(hr_path: str | os.PathLike, scale: int, cache_dir: str | os.PathLike | None = None,
                   name: str | None = None) -> Path:
    """The cache file for the LR made from ``hr_path``.

    Keyed by the HR's absolute path, size and mtime (an edited HR gets a fresh LR), the
    scale and the cache version, so different datasets with the same image names never collide.
    """
    hr_path = Path(os.path.abspath(os.fspath(hr_path)))
    st = hr_path.stat()
    key = f"v{_CACHE_VERSION}|{hr_path}|{st.st_size}|{st.st_mtime_ns}|x{scale}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = name if name is not None else hr_path.stem
    return base / "lr_bicubic" / digest / f"{stem}x{scale}.png"


def _check_big_enough(img: np.ndarray, path: Path, scale: int) -> None:
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise InputError(f"{path} is {w}x{h}, smaller than the scale x{scale}: its LR would be empty; "
                         f"remove it or use a smaller scale")


def load_pair(test_set: TestSet, pair: ImagePair,
              cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(hr, lr)`` as uint8 RGB arrays with ``hr.shape[:2] == scale * lr.shape[:2]``.

    HR is modcropped to the scale first (EDSR's Set14 ships un-cropped HR). For HR-only
    sets the LR is MATLAB-bicubic ``imresize(hr, 1/scale)``, cached under ``cache_dir``
    (default ``default_cache_dir()``) because making it is slow for big images.
    """
    s = test_set.scale
    if pair.hr is None:
        raise ValueError(f"pair {pair.name!r} has no HR image; use list_input_images for HR-less inference")
    hr_full = read_image(pair.hr)
    _check_big_enough(hr_full, pair.hr, s)
    hr = np.ascontiguousarray(_resize.modcrop(hr_full, s))
    want = (hr.shape[0] // s, hr.shape[1] // s)

    if pair.lr is not None:
        lr = read_image(pair.lr)
        if lr.shape[:2] != want:
            (hh, hw), (lh, lw) = hr_full.shape[:2], lr.shape[:2]
            raise InputError(f"size mismatch at x{s}: HR {pair.hr} is {hw}x{hh} but LR {pair.lr} is {lw}x{lh} "
                             f"(expected {want[1]}x{want[0]}); replace one of them or check the scale")
        return hr, lr

    path = cached_lr_path(pair.hr, s, cache_dir, name=pair.name)
    if path.is_file():
        try:
            lr = read_image(path)
        except InputError:
            lr = None  # corrupt cache file: make it again below
        if lr is not None and lr.shape[:2] == want:
            return hr, lr
    lr = _resize.imresize(hr, 1.0 / s)
    if lr.shape[:2] != want:  # imresize's ceil() must give exactly h/s for a modcropped image
        lr = _resize.imresize(hr, output_shape=want)
    try:
        write_image(path, lr)
    except (OSError, InputError) as err:  # the atomic writer reports an unwritable place as an InputError
        _warn_uncached(path.parents[2], err)
    return hr, lr


_UNCACHED: set[Path] = set()


def _warn_uncached(cache_root: Path, err: Exception) -> None:
    """Say once per cache folder that generated LR images are kept in memory only (slower on the next run)."""
    if cache_root not in _UNCACHED:
        _UNCACHED.add(cache_root)
        warnings.warn(f"generated LR images are not cached ({err}); they are made again on every run: "
                      "set DSRNET_CACHE to a writable folder", stacklevel=3)


def list_input_images(path: str | os.PathLike) -> list[Path]:
    """The images to super-resolve when there is no HR: ``path`` itself, or the images in it."""
    path = Path(os.path.abspath(os.fspath(path)))
    if not path.exists():
        raise InputError(f"input {path} does not exist; pass an image file or a folder of images")
    if path.is_file():
        if not is_image(path):
            raise InputError(f"{path} is not an image (expected one of {', '.join(IMAGE_EXTENSIONS)})")
        return [path]
    images = images_in(path)
    if not images:
        raise InputError(f"no images in {path}; expected {', '.join(IMAGE_EXTENSIONS)} files directly in it")
    return images
