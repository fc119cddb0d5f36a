"""The training set: random aligned HR/LR patches read from a ``div2h5.py`` HDF5 file.

Augmentation follows the authors (CARN's ``TrainDataset``): a random ``patch_size`` LR crop
with the aligned ``patch_size * scale`` HR crop, then the same vertical flip (p=.5),
horizontal flip (p=.5) and ``rot90`` by k in {0..3} applied to both.

Unlike the authors' dataset, the index is a *global sample counter* ``i = 0, 1, 2, ...``
with no upper bound, not an image index: epoch ``i // N`` visits the images in a fresh
permutation seeded by ``(seed, epoch)``, and the crop and flips of sample ``i`` are drawn
from a generator seeded by ``(seed, i)``. Sample ``i`` is therefore a pure function of
``(seed, i)`` — the same in every process, DataLoader worker and after a resume — which is
what makes bit-exact resumption and DDP sharding possible. Drive it with a sampler that
yields global counters (``range(start, stop)`` or a rank's share of it); a default sampler
would only ever show epoch 0.
"""
from __future__ import annotations

import hashlib
import operator
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dsrnet.errors import InputError
from dsrnet.stopping import data_worker_init
from model import SCALES

__all__ = ["TrainDataset", "StepSampler", "file_identity", "step_loader", "step_scale"]


# Tags that keep the permutation and crop random streams apart: SeedSequence zero-pads
# its entropy, so [seed, epoch] and [seed, epoch, 0] would otherwise be the same stream.
_PERM_STREAM, _CROP_STREAM = 0, 1


class TrainDataset(Dataset):
    """Aligned, augmented HR/LR patches; item ``i`` is global sample number ``i``.

    ``scale`` is 2, 3 or 4, or 0 for multi-scale (one pair per scale 2, 3, 4). Each item
    is a list of ``(hr, lr)`` float32 CHW tensors in [0, 1], one per scale. The HDF5 file
    is opened lazily in each process (h5py handles do not survive fork) and only the crop
    is read from it, unless ``in_memory`` loads every image up front.
    """

    def __init__(self, path: str | Path, patch_size: int, scale: int, seed: int = 0,
                 in_memory: bool = False) -> None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
            raise InputError(f"--patch_size must be a positive integer, got {patch_size!r}")
        if scale not in (0, *SCALES) or isinstance(scale, bool):
            raise InputError(f"scale must be 2, 3, 4 or 0 (multi-scale), got {scale!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        self.path = Path(path)
        self.patch_size = int(patch_size)
        self.scale = int(scale)
        self.scales = SCALES if scale == 0 else (int(scale),)
        self.seed = int(seed)
        self._groups = ("HR", *(f"X{s}" for s in self.scales))
        self._shapes, self._arrays = self._inspect(in_memory)
        self._file: h5py.File | None = None
        self._file_pid: int | None = None
        self._perm: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------------ validation

    def _inspect(self, in_memory: bool) -> tuple[dict[str, list[tuple[int, int]]],
                                                 dict[str, list[np.ndarray]] | None]:
        """Check the file's layout and sizes from metadata only; optionally load all pixels."""
        name = self.path.name
        if not self.path.is_file():
            raise InputError(f"training file {self.path} not found: make it with "
                             "`cd dataset && python div2h5.py` or fix the path")
        try:
            with h5py.File(self.path, "r") as f:
                for group in self._groups:
                    if not isinstance(f.get(group), h5py.Group):
                        raise InputError(f"{self.path} has no group {group}: repack with "
                                         f"--scales {' '.join(map(str, SCALES))}")
                n = len(f["HR"])
                if n == 0:
                    raise InputError(f"{self.path} holds no images: repack it with dataset/div2h5.py")
                shapes = {group: self._group_shapes(f[group], group, n) for group in self._groups}
                arrays = None
                if in_memory:
                    arrays = {g: [f[g][str(k)][()] for k in range(n)] for g in self._groups}
        except (OSError, KeyError, RuntimeError, ValueError) as err:
            raise InputError(f"{self.path} is not a readable HDF5 training file ({err}): "
                             "repack it with dataset/div2h5.py") from None
        for s in self.scales:
            for k, ((hh, hw), (lh, lw)) in enumerate(zip(shapes["HR"], shapes[f"X{s}"])):
                if min(lh, lw) < self.patch_size:
                    raise InputError(f"{name}: image {k} of X{s} is {lw}x{lh}, smaller than "
                                     f"--patch_size {self.patch_size}: lower --patch_size")
                if (hh // s, hw // s) != (lh, lw):
                    raise InputError(f"{name}: image {k} is {hw}x{hh} in HR but {lw}x{lh} in X{s}, "
                                     f"not 1/{s} of it: the file pairs the wrong images; repack it")
        return shapes, arrays

    def _group_shapes(self, group: h5py.Group, label: str, n: int) -> list[tuple[int, int]]:
        """(height, width) of datasets "0".."n-1", insisting on exactly those names."""
        names = set(group.keys())
        wanted = {str(k) for k in range(n)}
        if names != wanted:
            if len(names) != n:
                raise InputError(f"{self.path}: HR has {n} images but {label} has {len(names)}: "
                                 "repack it with dataset/div2h5.py")
            odd = sorted(names - wanted)[0]
            raise InputError(f"{self.path}: group {label} has a dataset named {odd!r}, expected "
                             f"0..{n - 1}: repack it with dataset/div2h5.py")
        shapes = []
        for k in range(n):
            ds = group[str(k)]
            if not isinstance(ds, h5py.Dataset) or ds.dtype != np.uint8 or ds.ndim != 3 or ds.shape[2] != 3:
                what = f"shape {ds.shape} {ds.dtype}" if isinstance(ds, h5py.Dataset) else "a group"
                raise InputError(f"{self.path}: image {k} of {label} is {what}, not uint8 HxWx3: "
                                 "repack it with dataset/div2h5.py")
            shapes.append(ds.shape[:2])
        return shapes

    # ------------------------------------------------------------------ sampling

    def __len__(self) -> int:
        """Number of images N; one epoch is N consecutive sample counters."""
        return len(self._shapes["HR"])

    def __getitem__(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        i = operator.index(i)
        if i < 0:
            raise IndexError(f"sample counter must be >= 0, got {i}")
        epoch, k = divmod(i, len(self))
        image = int(self._permutation(epoch)[k])
        rng = np.random.default_rng([self.seed, _CROP_STREAM, i])
        return [self._patch(image, s, rng) for s in self.scales]

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, _PERM_STREAM, epoch])
            self._perm = (epoch, rng.permutation(len(self)))
        return self._perm[1]

    def _patch(self, image: int, s: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.patch_size
        h, w = self._shapes[f"X{s}"][image]
        x = int(rng.integers(0, w - size + 1))  # x before y, as the authors draw them
        y = int(rng.integers(0, h - size + 1))
        lr = self._read(f"X{s}", image, y, x, size)
        hr = self._read("HR", image, y * s, x * s, size * s)
        if rng.random() < 0.5:
            hr, lr = hr[::-1], lr[::-1]
        if rng.random() < 0.5:
            hr, lr = hr[:, ::-1], lr[:, ::-1]
        turns = int(rng.integers(4))
        return _to_tensor(np.rot90(hr, turns)), _to_tensor(np.rot90(lr, turns))

    def _read(self, group: str, image: int, y: int, x: int, size: int) -> np.ndarray:
        if self._arrays is not None:
            return self._arrays[group][image][y:y + size, x:x + size]
        try:
            return self._h5()[group][str(image)][y:y + size, x:x + size]
        except (OSError, KeyError) as err:
            raise InputError(f"cannot read image {image} of {group} from {self.path} ({err}): "
                             "repack it with dataset/div2h5.py") from None

    def _h5(self) -> h5py.File:
        """This process's read handle: a handle inherited through fork is never used."""
        if self._file is None or self._file_pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._file_pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        """Pickle without the open file (spawned DataLoader workers reopen their own)."""
        state = self.__dict__.copy()
        state["_file"] = None
        return state


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> contiguous 3xHxW float32 in [0, 1], the same values as ToTensor.

    Done in numpy: torch's intra-op thread pool makes these tiny ops many times slower on a
    busy CPU, and the float32 division gives bit-identical results.
    """
    out = np.empty((3, *img.shape[:2]), dtype=np.float32)
    np.divide(img.transpose(2, 0, 1), np.float32(255), out=out, dtype=np.float32)
    return torch.from_numpy(out)


class StepSampler(Sampler[int]):
    """Global sample counters for steps ``start`` .. ``stop - 1`` of one rank.

    Step k of rank r takes counters (k*W + r)*B ... (k*W + r + 1)*B - 1 (B per rank, W ranks), so
    every step trains on the same global batch whatever the world size and wherever a run resumed.
    """

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        for k in range(self.start, self.stop):
            first = (k * self.world + self.rank) * self.batch
            yield from range(first, first + self.batch)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.batch


def file_identity(path: str | Path, chunk: int = 1 << 20) -> dict:
    """Size, modification time and a SHA-256 of the first and last ``chunk`` bytes: enough to tell a
    repacked or replaced training file from the one a checkpoint trained on, without reading gigabytes."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(f.read(chunk))
        f.seek(max(0, size - chunk))
        digest.update(f.read(chunk))
    return {"path": str(path.resolve()), "size": size, "mtime_ns": path.stat().st_mtime_ns,
            "sha256_ends": digest.hexdigest()}


def step_scale(seed: int, step: int) -> int:
    """Which scale a multi-scale step trains: a function of (seed, step), identical on every rank."""
    return SCALES[int(np.random.default_rng([seed, step]).integers(len(SCALES)))]


def step_loader(dataset: TrainDataset, start: int, stop: int, batch: int, rank: int, world: int,
                num_workers: int, seed: int, pin_memory: bool) -> DataLoader:
    """One rank's batches of steps ``start`` .. ``stop - 1`` (``batch`` patches each), in step order.

    Workers ignore SIGINT/SIGTERM (the main process finishes the step and saves), and the loader's own
    generator is seeded so that it never draws from the global RNG a resume must reproduce.
    """
    return DataLoader(dataset, batch_size=batch, sampler=StepSampler(start, stop, batch, rank, world),
                      num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=data_worker_init,
                      generator=torch.Generator().manual_seed(seed))
