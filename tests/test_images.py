"""Decoding every image kind PIL opens, from real files: 16-bit and float are scaled (never clamped), gray and
alpha are known; an unwritable LR cache falls back to memory; a full disk is one line."""
import errno
import os
import warnings
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from dsrnet.data.images import read_image, read_planes, write_image
from dsrnet.data.imresize import imresize
from dsrnet.data.layouts import find_test_set, load_pair
from dsrnet.data.pack import pack_hr_folder
from dsrnet.errors import InputError
from dsrnet.files import atomic_write_bytes

RNG = np.random.default_rng(0)
WIDE = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)  # 16-bit samples, all values likely
WIDE_RGB = RNG.integers(0, 65536, (12, 10, 3), dtype=np.uint16)


def im2uint8(v: np.ndarray) -> np.ndarray:
    """MATLAB's im2uint8 of 16-bit data, in integers: the nearest 8-bit level."""
    return ((v.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def _gray(planes, expected):
    assert planes.gray and planes.alpha is None
    np.testing.assert_array_equal(planes.rgb, np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.parametrize("name, write", [
    ("i16.png", lambda p: Image.fromarray(WIDE).save(p)),                  # PIL mode I;16
    ("i16.tif", lambda p: Image.fromarray(WIDE).save(p)),                  # I;16 (little-endian)
    ("i16b.tif", lambda p: tifffile.imwrite(p, WIDE.astype(">u2"))),        # I;16B
    ("i32.tif", lambda p: tifffile.imwrite(p, WIDE.astype(np.int32))),      # I (32-bit, 16-bit values)
    ("u32.tif", lambda p: tifffile.imwrite(p, WIDE.astype(np.uint32))),     # I;32N
])
def test_16bit_gray_is_scaled_not_clamped(tmp_path, name, write):
    write(tmp_path / name)
    with Image.open(tmp_path / name) as im:
        assert im.mode.startswith("I")  # the mode this test is about
    _gray(read_planes(tmp_path / name), im2uint8(WIDE))


def test_float_in_unit_range_is_scaled(tmp_path):
    f = (WIDE / 65535).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    assert Image.open(tmp_path / "f.tif").mode == "F"
    _gray(read_planes(tmp_path / "f.tif"), np.rint(f.astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.parametrize("data, culprit", [
    ((WIDE / 257).astype(np.float32), "float image with values in"),   # a [0, 255] float: not guessed
    (np.full((4, 4), np.nan, np.float32), "float image"),
    (WIDE.astype(np.int32) - 40000, "integer samples in"),             # PIL mode I, negative values
    (WIDE.astype(np.int16) // 2 - 10000, "integer samples in"),        # I;16S: signed
])
def test_out_of_range_samples_are_refused(tmp_path, data, culprit):
    tifffile.imwrite(tmp_path / "x.tif", data)
    with pytest.raises(InputError, match=culprit):
        read_image(tmp_path / "x.tif")


@pytest.mark.parametrize("name", ["rgb16.png", "rgb16.tif"])
def test_16bit_colour_keeps_all_bits(tmp_path, name):
    """PIL opens these as RGB holding only the high byte (v >> 8); the nearest level is round(v / 257)."""
    cv2.imwrite(str(tmp_path / name), WIDE_RGB[..., ::-1])
    assert Image.open(tmp_path / name).mode == "RGB"
    planes = read_planes(tmp_path / name)
    assert not planes.gray and planes.alpha is None
    np.testing.assert_array_equal(planes.rgb, im2uint8(WIDE_RGB))


def test_16bit_rgba_keeps_alpha(tmp_path):
    rgba = np.dstack([WIDE_RGB, WIDE])
    cv2.imwrite(str(tmp_path / "a.png"), rgba[..., [2, 1, 0, 3]])
    assert Image.open(tmp_path / "a.png").mode == "RGBA"
    planes = read_planes(tmp_path / "a.png")
    np.testing.assert_array_equal(planes.rgb, im2uint8(WIDE_RGB))
    np.testing.assert_array_equal(planes.alpha, im2uint8(WIDE))


def test_8bit_modes(tmp_path):
    gray = RNG.integers(0, 256, (6, 8), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "l.png")
    Image.fromarray(np.dstack([gray, 255 - gray])).save(tmp_path / "la.png")
    Image.fromarray(np.dstack([rgb, gray])).save(tmp_path / "rgba.png")
    Image.fromarray(gray > 127).save(tmp_path / "one.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "pt.png", transparency=0)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    _gray(read_planes(tmp_path / "l.png"), gray)
    la = read_planes(tmp_path / "la.png")
    assert la.gray and (la.rgb[..., 0] == gray).all() and (la.alpha == 255 - gray).all()
    rgba = read_planes(tmp_path / "rgba.png")
    assert not rgba.gray and (rgba.rgb == rgb).all() and (rgba.alpha == gray).all()
    _gray(read_planes(tmp_path / "one.png"), np.where(gray > 127, 255, 0).astype(np.uint8))
    assert not read_planes(tmp_path / "p.png").gray and read_planes(tmp_path / "p.png").alpha is None
    assert read_planes(tmp_path / "pt.png").alpha is not None  # palette transparency becomes alpha
    assert (read_planes(tmp_path / "cmyk.tif").rgb == np.asarray(Image.open(tmp_path / "cmyk.tif").convert("RGB"))).all()


def test_16bit_hr_only_set_evaluates_on_scaled_images(tmp_path):
    """The evaluation path (load_pair) sees the scaled image, not a white one."""
    (tmp_path / "HR").mkdir()
    Image.fromarray(WIDE).save(tmp_path / "HR" / "a.png")
    ts = find_test_set(tmp_path, 2)
    hr, lr = load_pair(ts, ts.pairs[0], cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(hr[..., 0], im2uint8(WIDE))
    np.testing.assert_array_equal(lr, imresize(hr, 0.5))


def test_unwritable_lr_cache_warns_and_computes_in_memory(tmp_path):
    """Tests run as root, which ignores permissions: a cache folder under a regular file cannot be made by anyone."""
    write_image(tmp_path / "Set" / "HR" / "a.png", RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (tmp_path / "a_file").write_text("")
    ts = find_test_set(tmp_path / "Set", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hr, lr = load_pair(ts, ts.pairs[0], cache_dir=tmp_path / "a_file" / "cache")
    np.testing.assert_array_equal(lr, imresize(hr, 0.5))
    assert any("not cached" in str(w.message) and "DSRNET_CACHE" in str(w.message) for w in caught)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(InputError, match=r"out\.png: the disk is full \(No space left on device\)"):
        atomic_write_bytes(tmp_path / "out.png", b"x")
    assert list(tmp_path.iterdir()) == []


def test_div2h5_packs_16bit_photos_scaled(tmp_path):
    (tmp_path / "hr").mkdir()
    Image.fromarray(WIDE).save(tmp_path / "hr" / "a.png")
    pack_hr_folder(tmp_path / "hr", tmp_path / "p.h5", scales=(2,))
    with h5py.File(tmp_path / "p.h5") as f:
        np.testing.assert_array_equal(f["HR"]["0"][()][..., 0], im2uint8(WIDE))
