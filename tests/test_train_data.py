"""TrainDataset: aligned crops, shared augmentation, sample i as a pure function of (seed, i)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dsrnet.data.imresize import imresize
from dsrnet.data.pack import pack_hr_folder
from dsrnet.data.train_data import TrainDataset
from dsrnet.errors import InputError


def _write_h5(path: Path, groups: dict[str, list[np.ndarray]]) -> Path:
    """The authors' layout: one group per HR/X{s}, datasets "0".."N-1"."""
    with h5py.File(path, "w") as f:
        for name, images in groups.items():
            grp = f.create_group(name)
            for i, img in enumerate(images):
                grp.create_dataset(str(i), data=img)
    return path


def _blocky(path: Path, scale: int, sizes=((20, 26), (24, 21), (30, 30))) -> tuple[Path, list[np.ndarray]]:
    """Random LR images whose HR is their nearest-neighbour enlargement: alignment is exact."""
    rng = np.random.default_rng(scale)
    lrs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    hrs = [np.kron(lr, np.ones((scale, scale, 1), np.uint8)) for lr in lrs]
    return _write_h5(path, {"HR": hrs, f"X{scale}": lrs}), lrs


def _u8(t: torch.Tensor) -> np.ndarray:
    return np.rint(t.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


def _dihedral(img: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations the augmentation can produce, in a fixed order."""
    out = []
    for ud in (False, True):
        for lr in (False, True):
            a = img[::-1] if ud else img
            a = a[:, ::-1] if lr else a
            out.extend(np.rot90(a, k) for k in range(4))
    return out


# Each transform named by what it does to [[0, 1], [2, 3]] (16 flip/rot combos, 8 distinct).
_NAMES = [tuple(v.ravel()) for v in _dihedral(np.arange(4).reshape(2, 2))]


def _locate(patch: np.ndarray, images: list[np.ndarray]) -> set[tuple]:
    """Every transform (by name) that maps a crop of one of ``images`` onto ``patch``."""
    hits = set()
    for img in images:
        for t, view in enumerate(_dihedral(img)):
            windows = np.lib.stride_tricks.sliding_window_view(view, patch.shape)[:, :, 0]
            if (windows == patch).all(axis=(-3, -2, -1)).any():
                hits.add(_NAMES[t])
    return hits


@pytest.fixture(scope="module")
def photos_h5(train_photos, tmp_path_factory) -> Path:
    """Two real photos packed with --hr_dir (HR modcropped to 12, LR by MATLAB bicubic)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "hr").mkdir()
    for p in sorted(train_photos.glob("*.png"))[:2]:
        (root / "hr" / p.name).symlink_to(p)
    pack_hr_folder(root / "hr", root / "photos.h5", workers=2)
    return root / "photos.h5"


# --------------------------------------------------------------------------- crops

@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lr_patch_is_bicubic_of_its_hr_patch(photos_h5, scale):
    ds = TrainDataset(photos_h5, 24, scale, seed=1)
    for i in range(4):
        [(hr, lr)] = ds[i]
        assert hr.shape == (3, 24 * scale, 24 * scale) and lr.shape == (3, 24, 24)
        made = imresize(_u8(hr), 1 / scale).astype(int)
        diff = np.abs(made - _u8(lr).astype(int))[2:-2, 2:-2]  # the patch edge sees other pixels
        assert diff.max() <= 1, f"sample {i}: LR patch is not the bicubic of its HR patch"


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_same_crop_and_augmentation_on_both(tmp_path, scale):
    path, lrs = _blocky(tmp_path / "blocky.h5", scale)
    ds = TrainDataset(path, 6, scale, seed=7)
    transforms = set()
    for i in range(24):
        [(hr, lr)] = ds[i]
        hr8, lr8 = _u8(hr), _u8(lr)
        np.testing.assert_array_equal(hr8, np.kron(lr8, np.ones((scale, scale, 1), np.uint8)))
        hits = _locate(lr8, lrs)
        assert hits, f"sample {i} is not a flipped/rotated crop of any image"
        transforms |= hits
    assert len(transforms) >= 6  # flips and quarter turns really happen


def test_tensors_are_float_chw_in_unit_range(photos_h5):
    [(hr, lr)] = TrainDataset(photos_h5, 16, 3)[5]
    for t in (hr, lr):
        assert t.dtype == torch.float32 and t.is_contiguous()
        assert 0 <= t.min() and t.max() <= 1
    assert hr.shape == (3, 48, 48) and lr.shape == (3, 16, 16)


def test_multi_scale_gives_one_pair_per_scale(photos_h5):
    item = TrainDataset(photos_h5, 12, 0)[3]
    assert [(tuple(hr.shape), tuple(lr.shape)) for hr, lr in item] == [
        ((3, 24, 24), (3, 12, 12)), ((3, 36, 36), (3, 12, 12)), ((3, 48, 48), (3, 12, 12))]


# --------------------------------------------------------------------------- determinism

def _same(a: list, b: list) -> bool:
    return all(ha.equal(hb) and la.equal(lb) for (ha, la), (hb, lb) in zip(a, b))


def test_sample_is_a_function_of_seed_and_counter(photos_h5):
    a = TrainDataset(photos_h5, 10, 0, seed=5)
    b = TrainDataset(photos_h5, 10, 0, seed=5, in_memory=True)
    counters = [0, 1, 2, 3, 7, 1000, 10**12]
    first = a[7]
    for i in counters:
        assert _same(a[i], b[i])
    assert _same(a[7], first)  # reading again, after other epochs, changes nothing
    lrs = [a[i][0][1] for i in counters]
    assert all(not lrs[j].equal(lrs[k]) for j in range(len(lrs)) for k in range(j))
    other_seed = TrainDataset(photos_h5, 10, 0, seed=6)
    assert not _same(a[0], other_seed[0])


def test_each_epoch_is_a_fresh_permutation(tmp_path):
    n = 8
    flat = [np.full((8, 8, 3), 10 * k, np.uint8) for k in range(n)]  # image k is colour 10k
    path = _write_h5(tmp_path / "flat.h5", {"HR": [np.kron(f, np.ones((2, 2, 1), np.uint8)) for f in flat],
                                           "X2": flat})
    ds = TrainDataset(path, 4, 2, seed=0)
    orders = [[int(_u8(ds[e * n + k][0][1])[0, 0, 0]) // 10 for k in range(n)] for e in range(3)]
    assert all(sorted(order) == list(range(n)) for order in orders)
    assert len({tuple(order) for order in orders}) == 3


def test_dataloader_workers_see_the_same_samples(photos_h5):
    ds = TrainDataset(photos_h5, 8, 0, seed=2)
    ds[0]  # the parent opens the file before forking: workers must not reuse that handle

    def batches(workers: int) -> list:
        loader = DataLoader(ds, batch_size=4, sampler=range(0, 16), num_workers=workers)
        return [[t for pair in batch for t in pair] for batch in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        assert all(x.equal(y) for x, y in zip(a, b))
    assert serial[0][0].shape == (4, 3, 16, 16)  # batched HR at x2


def test_negative_counter_is_refused(photos_h5):
    with pytest.raises(IndexError):
        TrainDataset(photos_h5, 8, 2)[-1]


# --------------------------------------------------------------------------- bad files

def _rgb(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(InputError, match="missing.h5 not found"):
        TrainDataset(tmp_path / "missing.h5", 8, 2)
    (tmp_path / "junk.h5").write_bytes(b"this is no hdf5 file" * 100)
    with pytest.raises(InputError, match="junk.h5 is not a readable HDF5"):
        TrainDataset(tmp_path / "junk.h5", 8, 2)
    good = _write_h5(tmp_path / "good.h5", {"HR": [_rgb(96, 96)] * 2, "X2": [_rgb(48, 48)] * 2})
    (tmp_path / "cut.h5").write_bytes(good.read_bytes()[:1500])
    with pytest.raises(InputError, match="cut.h5 is not a readable HDF5"):
        TrainDataset(tmp_path / "cut.h5", 8, 2)
    with pytest.raises(InputError, match="has no group X3: repack with --scales 2 3 4"):
        TrainDataset(good, 8, 3)
    with pytest.raises(InputError, match="has no group X3"):
        TrainDataset(good, 8, 0)
    with pytest.raises(InputError, match="scale must be 2, 3, 4 or 0"):
        TrainDataset(good, 8, 5)
    with pytest.raises(InputError, match="--patch_size must be a positive integer"):
        TrainDataset(good, 0, 2)


@pytest.mark.parametrize("groups, message", [
    ({"HR": [_rgb(96, 96)] * 3, "X4": [_rgb(24, 24), _rgb(24, 24), _rgb(10, 30)]},
     "image 2 of X4 is 30x10, smaller than --patch_size 12: lower --patch_size"),
    ({"HR": [_rgb(96, 96)] * 3, "X4": [_rgb(24, 24)] * 2},
     "HR has 3 images but X4 has 2"),
    ({"HR": [_rgb(96, 96), _rgb(100, 96)], "X4": [_rgb(24, 24)] * 2},
     "image 1 is 96x100 in HR but 24x24 in X4, not 1/4 of it"),
    ({"HR": [_rgb(96, 96)], "X4": [np.zeros((24, 24), np.uint8)]},
     "image 0 of X4 is shape \\(24, 24\\) uint8, not uint8 HxWx3"),
    ({"HR": [], "X4": []}, "holds no images"),
])
def test_bad_contents_are_named(tmp_path, groups, message):
    path = _write_h5(tmp_path / "bad.h5", groups)
    with pytest.raises(InputError, match=message):
        TrainDataset(path, 12, 4)


def test_foreign_dataset_names_are_refused(tmp_path):
    path = tmp_path / "named.h5"
    with h5py.File(path, "w") as f:
        f.create_group("HR").create_dataset("0001", data=_rgb(96, 96))
        f.create_group("X4").create_dataset("0", data=_rgb(24, 24))
    with pytest.raises(InputError, match="group HR has a dataset named '0001', expected 0..0"):
        TrainDataset(path, 12, 4)
