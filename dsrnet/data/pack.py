"""Pack training images into one HDF5 file, in the format of the authors' ``div2h5.py``.

Training reads thousands of random patches per minute; decoding 2K PNGs for each would
starve the GPU, so the images are decoded once and stored raw. The layout is the
authors' (inherited from CARN), so files made by either script work with either reader:

* groups ``HR``, ``X2``, ``X3``, ``X4`` (one per requested scale);
* in each group one uint8 HxWx3 dataset per image, named ``"0"`` ... ``"N-1"`` in
  sorted-filename order of the HR images; dataset ``"i"`` of every group is one image.

h5py lists group members alphabetically (``"0", "1", "10", "100", ...``). The authors'
reader iterates ``.values()`` of HR and LR alike, so it pairs correctly anyway; the
readers in this repository index by the integer name.

Two sources:

* DIV2K (default): ``DIV2K_{type}_HR/*.png`` and ``DIV2K_{type}_LR_bicubic/X{s}/*x{s}.png``.
  Each LR must pair by name with an HR (``0001x2.png`` <-> ``0001.png``) and be
  ``floor(HR / s)`` in size. DIV2K's official LR were made from the HR modcropped to ``s``,
  so HR sides need not be multiples of ``s``; as the authors do, the HR is stored as is and
  the reader's aligned crop (``y*s, x*s``) never reaches the few extra pixels.
* ``--hr_dir``: any folder of HR images (Flickr2K, a handful of photos). Each HR is
  modcropped to a multiple of every requested scale (``lcm``, 12 for 2/3/4) so one HR group
  serves all scales, and each LR is made with MATLAB-style ``imresize(hr, 1/s)``.

``dataset/div2h5.py`` is its command line. The output is written to a temp file next to it
(``.NAME.XXXXXXXX.tmp``) and renamed only when complete, so an error, a full disk, Ctrl-C or
SIGTERM never leaves a half-written file; the temp file a killed run (SIGKILL, power loss)
leaves is removed by the next run for the same output. An output that is one of the inputs
is refused.
"""
from __future__ import annotations

import math
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from dsrnet.data.images import image_size, images_in, read_image
from dsrnet.data.imresize import imresize, modcrop
from dsrnet.errors import InputError
from dsrnet.files import atomic_path, ensure_writable, overwritten_input, stale_temps
from model import SCALES

try:
    import fcntl
except ImportError:  # Windows: a temp file a live run holds open cannot be deleted there anyway
    fcntl = None

__all__ = ["pack_div2k", "pack_hr_folder"]

# One loaded image: the HR to store and its LR per scale.
Loaded = tuple[np.ndarray, dict[int, np.ndarray]]


# --------------------------------------------------------------------------- inputs

def check_scales(scales: Iterable[int]) -> tuple[int, ...]:
    """The scales to pack: integers >= 2, each once; checked before any file is read or written."""
    scales = tuple(scales)
    if not scales:
        raise InputError("no --scales given: pass e.g. --scales 2 3 4")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 2:
            raise InputError(f"scale {s!r} is not an integer >= 2: pass e.g. --scales 2 3 4")
    if len(set(scales)) != len(scales):
        raise InputError(f"--scales {' '.join(map(str, scales))} repeats a scale: give each once")
    return tuple(sorted(int(s) for s in scales))


def _div2k_pairs(dataset_dir: Path, dataset_type: str,
                 scales: Sequence[int]) -> list[tuple[Path, dict[int, Path]]]:
    """HR paths in sorted order (the authors' order), each with its LR path per scale.

    LR are paired by name, not position, and sized from their headers, so a missing,
    extra or wrongly sized file is reported before any decoding starts.
    """
    if not dataset_dir.is_dir():
        raise InputError(f"dataset folder {dataset_dir} not found: download DIV2K there "
                         "or point --dataset_dir at it")
    hr_dir = dataset_dir / f"DIV2K_{dataset_type}_HR"
    if not hr_dir.is_dir():
        raise InputError(f"{hr_dir} not found: unpack DIV2K_{dataset_type}_HR.zip into "
                         f"{dataset_dir} (or use --hr_dir for a plain folder of images)")
    hrs = images_in(hr_dir, "*.png")
    if not hrs:
        raise InputError(f"no .png images in {hr_dir}: unpack DIV2K_{dataset_type}_HR.zip there")
    hr_sizes = {hr: image_size(hr) for hr in hrs}
    lr_paths: list[dict[int, Path]] = [{} for _ in hrs]
    for s in scales:
        lr_dir = dataset_dir / f"DIV2K_{dataset_type}_LR_bicubic" / f"X{s}"
        if not lr_dir.is_dir():
            raise InputError(f"{lr_dir} not found: unpack DIV2K_{dataset_type}_LR_bicubic_X{s}.zip "
                             f"or leave {s} out of --scales")
        expected = {hr: lr_dir / f"{hr.stem}x{s}.png" for hr in hrs}
        extra = sorted(set(images_in(lr_dir, "*.png")) - set(expected.values()))
        if extra:
            raise InputError(f"LR image {extra[0]} has no HR partner in {hr_dir} (expected "
                             f"NAMEx{s}.png for NAME.png); remove it or add its HR image")
        for k, hr in enumerate(hrs):
            lr = expected[hr]
            if not lr.is_file():
                raise InputError(f"HR image {hr} has no x{s} partner: {lr} is missing; "
                                 "add it or remove the HR image")
            (hw, hh), (lw, lh) = hr_sizes[hr], image_size(lr)
            if (hw // s, hh // s) != (lw, lh):
                raise InputError(f"{lr} is {lw}x{lh} but its HR {hr} is {hw}x{hh}: an x{s} LR "
                                 f"should be {hw // s}x{hh // s}; replace the mismatched file")
            lr_paths[k][s] = lr
    return list(zip(hrs, lr_paths))


def _load_div2k(item: tuple[Path, dict[int, Path]]) -> Loaded:
    hr, lrs = item
    return read_image(hr), {s: read_image(p) for s, p in lrs.items()}


def _load_and_downscale(path: Path, scales: Sequence[int]) -> Loaded:
    hr = np.ascontiguousarray(modcrop(read_image(path), math.lcm(*scales)))
    return hr, {s: imresize(hr, 1 / s) for s in scales}


# --------------------------------------------------------------------------- writing

def _ordered_map(fn: Callable, items: Sequence, workers: int) -> Iterator:
    """``map(fn, items)`` on ``workers`` threads, in order, at most 2*workers items ahead.

    Threads suffice: PNG decoding and the numpy/scipy resize release the GIL. The bounded
    look-ahead keeps memory flat however many images there are, and on an error or
    Ctrl-C only the few running loads are waited for.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        ahead: deque = deque()
        try:
            for item in items:
                ahead.append(pool.submit(fn, item))
                if len(ahead) >= 2 * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()


def _prepare_output(output: Path, sources: Iterable[Path]) -> None:
    if output.is_dir():
        raise InputError(f"--output {output} is a folder: give a file name, e.g. {output / 'DIV2K_train.h5'}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {output.parent} ({err.strerror}): "
                         "pick another --output") from None
    clash = overwritten_input([output], sources)  # by its path, a symlink or a hard link
    if clash:
        raise InputError(f"--output {output} is the input image {clash[1]}: the pack would replace it; "
                         "pass another --output")
    ensure_writable(output)


def _remove_stale_temps(output: Path) -> None:
    """Delete the temp files of ``output`` that killed runs left (``.NAME.XXXXXXXX.tmp``), no other file.

    A run writing one holds a lock on it (:func:`_hold`), so a temp file still being written by a live
    run is left alone.
    """
    removed = 0
    for tmp in stale_temps(output.parent, re.escape(output.name)):
        try:
            with open(tmp, "rb+") as f:
                if fcntl is not None:
                    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()
        except OSError:
            continue
        removed += 1
    if removed:
        print(f"removed {removed} temp file(s) of {output.name} that a killed run left in {output.parent}",
              flush=True)


@contextmanager
def _hold(tmp: Path) -> Iterator[None]:
    """Lock ``tmp`` while it is written, so that another run's :func:`_remove_stale_temps` leaves it alone.

    A POSIX record lock (HDF5's own flock is separate, and either dies with its process), taken once HDF5 has
    the file open: the process loses such a lock whenever it closes any descriptor of the file, and HDF5 opens
    and closes it while creating it.
    """
    if fcntl is None:
        yield
        return
    with open(tmp, "rb+") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def _write_h5(output: Path, scales: Sequence[int], items: Sequence, load: Callable[..., Loaded],
              workers: int, compression: str | None, sources: Iterable[Path]) -> None:
    """Load every item and store it as dataset ``str(i)`` of HR and each X{s}, atomically."""
    _prepare_output(output, sources)
    _remove_stale_temps(output)
    try:
        with atomic_path(output) as tmp, h5py.File(tmp, "w") as f, _hold(tmp):
            groups = {"HR": f.create_group("HR")}
            groups.update({f"X{s}": f.create_group(f"X{s}") for s in scales})
            with closing(_ordered_map(load, items, workers)) as loaded, \
                    tqdm(total=len(items), unit="img", desc=output.name, disable=None) as bar:
                for i, (hr, lrs) in enumerate(loaded):
                    groups["HR"].create_dataset(str(i), data=hr, compression=compression)
                    for s in scales:
                        groups[f"X{s}"].create_dataset(str(i), data=lrs[s], compression=compression)
                    bar.update()
    except OSError as err:  # loaders raise InputError, so an OSError here is a write failure
        raise InputError(f"cannot write {output} ({' '.join(str(err).split())}): check free space and "
                         "permissions or pick another --output") from None


def pack_div2k(dataset_dir: str | os.PathLike, output: str | os.PathLike, dataset_type: str = "train",
               scales: Iterable[int] = SCALES, workers: int = 1,
               compression: str | None = None) -> int:
    """Pack DIV2K's HR and official bicubic LR images; returns the number of images."""
    scales = check_scales(scales)
    items = _div2k_pairs(Path(dataset_dir), dataset_type, scales)
    sources = [p for hr, lrs in items for p in (hr, *lrs.values())]
    _write_h5(Path(output), scales, items, _load_div2k, workers, compression, sources)
    return len(items)


def pack_hr_folder(hr_dir: str | os.PathLike, output: str | os.PathLike,
                   scales: Iterable[int] = SCALES, workers: int = 1,
                   compression: str | None = None) -> int:
    """Pack a folder of HR images, making each LR with MATLAB-style bicubic; returns the count."""
    scales = check_scales(scales)
    hr_dir = Path(hr_dir)
    if not hr_dir.is_dir():
        raise InputError(f"--hr_dir {hr_dir} not found: point it at a folder of HR images")
    paths = images_in(hr_dir)
    if not paths:
        raise InputError(f"no images in {hr_dir}: point --hr_dir at a folder of HR images")
    side = math.lcm(*scales)
    for p in paths:
        w, h = image_size(p)
        if min(w, h) < side:
            raise InputError(f"{p} is {w}x{h}, smaller than {side} (a multiple of every scale "
                             f"in {' '.join(map(str, scales))}): remove it")
    _write_h5(Path(output), scales, paths, partial(_load_and_downscale, scales=scales),
              workers, compression, paths)
    return len(paths)
