"""Test-set layout detection, HR/LR pairing, size checks and the generated-LR cache."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import dsrnet.data.imresize as imresize_mod
from conftest import need_set
from dsrnet.data.images import read_image, write_image
from dsrnet.data.imresize import imresize, modcrop
from dsrnet.data.layouts import (
    ImagePair,
    TestSet,
    cached_lr_path,
    default_cache_dir,
    find_test_set,
    list_input_images,
    load_pair,
)
from dsrnet.errors import InputError

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Generated LR never lands in the real ~/.cache during tests."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DSRNET_CACHE", str(cache))
    return cache


def _hr(h: int = 24, w: int = 36) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_pair(hr_path: Path, lr_path: Path, scale: int, h: int = 24, w: int = 36) -> np.ndarray:
    """Write an HR image and its MATLAB-bicubic LR; returns the HR."""
    hr = _hr(h, w)
    write_image(hr_path, hr)
    write_image(lr_path, imresize(modcrop(hr, scale), 1 / scale))
    return hr


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# --------------------------------------------------------------------------- synthetic layouts

def _selfexsr(root: Path, s: int, names) -> None:
    for n in names:
        d = root / f"image_SRF_{s}"
        _write_pair(d / f"{n}_SRF_{s}_HR.png", d / f"{n}_SRF_{s}_LR.png", s)


def _xfolder(root: Path, s: int, names) -> None:
    for n in names:
        _write_pair(root / f"x{s}" / f"{n}_HR.png", root / f"x{s}" / f"{n}_LR.png", s)


def _xfolder_srf(root: Path, s: int, names) -> None:
    for n in names:
        _write_pair(root / f"x{s}" / f"{n}_SRF_{s}_HR.png", root / f"x{s}" / f"{n}_SRF_{s}_LR.png", s)


def _bicubic_same(root: Path, s: int, names) -> None:
    for n in names:
        _write_pair(root / "HR" / f"{n}.png", root / f"bicubic_x{s}" / f"{n}.png", s)


def _bicubic_decorated(root: Path, s: int, names) -> None:
    for n in names:
        _write_pair(root / "HR" / f"{n}.png", root / f"bicubic_x{s}" / f"{n}x{s}.png", s)


def _edsr(root: Path, s: int, names) -> None:
    for n in names:
        _write_pair(root / "HR" / f"{n}.png", root / "LR_bicubic" / f"X{s}" / f"{n}x{s}.png", s)


def _basicsr(root: Path, s: int, names) -> None:
    for n in names:
        _write_pair(root / "GTmod12" / f"{n}.png", root / f"LRbicx{s}" / f"{n}.png", s)


def _div2k_valid(root: Path, s: int, names) -> None:
    for n in names:
        _write_pair(root / "DIV2K_valid_HR" / f"{n}.png",
                    root / "DIV2K_valid_LR_bicubic" / f"X{s}" / f"{n}x{s}.png", s)


def _div2k_train(root: Path, s: int, names) -> None:
    for n in names:
        _write_pair(root / "DIV2K_train_HR" / f"{n}.png",
                    root / "DIV2K_train_LR_bicubic" / f"X{s}" / f"{n}x{s}.png", s)


LAYOUTS = [
    # builder, dataset folder, scale, names (written out of order), expected label
    (_selfexsr, "Set5", 2, ["img_002", "img_001", "img_003"], "selfexsr"),
    (_xfolder, "Set5", 3, ["woman", "baby", "bird"], "x3-folder"),
    (_xfolder_srf, "Set14", 2, ["img_010", "img_002"], "x2-folder"),
    (_bicubic_same, "Urban100", 4, ["img_2", "img_1"], "hr+bicubic_x4"),
    (_bicubic_decorated, "Set5", 2, ["head", "baby"], "hr+bicubic_x2"),
    (_edsr, "B100", 3, ["8023", "3096"], "edsr"),
    (_basicsr, "Manga109", 4, ["YumeiroCooking", "AisazuNihaIrarenai"], "basicsr"),
    (_div2k_valid, "DIV2K", 2, ["0802", "0801"], "div2k"),
    (_div2k_train, "DIV2K", 4, ["0002", "0001"], "div2k"),
]


@pytest.mark.parametrize("build, folder, scale, names, label", LAYOUTS,
                         ids=[f"{b.__name__[1:]}-x{s}" for b, _, s, _, _ in LAYOUTS])
def test_detects_layout_and_pairs(tmp_path, build, folder, scale, names, label):
    root = tmp_path / folder
    build(root, scale, names)
    ts = find_test_set(root, scale)
    assert isinstance(ts, TestSet)
    assert (ts.name, ts.scale, ts.layout, ts.root) == (folder, scale, label, root)
    assert [p.name for p in ts.pairs] == sorted(names)
    assert len(ts) == len(names)
    for pair in ts.pairs:
        assert pair.hr.is_file() and pair.lr.is_file()
        assert pair.hr.is_absolute()
        assert pair.name in pair.hr.stem and pair.name in pair.lr.stem
        assert pair.hr != pair.lr
        hr, lr = load_pair(ts, pair)
        assert hr.dtype == lr.dtype == np.uint8
        assert hr.shape == (24, 36, 3) and lr.shape == (24 // scale, 36 // scale, 3)
        np.testing.assert_array_equal(hr, read_image(pair.hr))


def test_first_matching_layout_wins_and_other_scales_are_ignored(tmp_path):
    root = tmp_path / "Set5"
    _selfexsr(root, 2, ["a"])
    _selfexsr(root, 4, ["a", "b"])
    _xfolder(root, 2, ["z"])
    ts2, ts4 = find_test_set(root, 2), find_test_set(root, 4)
    assert (ts2.layout, [p.name for p in ts2.pairs]) == ("selfexsr", ["a"])
    assert (ts4.layout, [p.name for p in ts4.pairs]) == ("selfexsr", ["a", "b"])


def test_folder_names_match_case_insensitively(tmp_path):
    root = tmp_path / "Set5"
    for n in ["baby", "bird"]:
        _write_pair(root / "hr" / f"{n}.png", root / "lr_bicubic" / "x2" / f"{n}x2.png", 2)
    ts = find_test_set(root, 2)
    assert ts.layout == "edsr" and [p.name for p in ts.pairs] == ["baby", "bird"]


@pytest.mark.parametrize("sub, label", [("image_SRF_2", "selfexsr"), ("x2", "x2-folder")])
def test_root_may_be_the_pair_folder_itself(tmp_path, sub, label):
    root = tmp_path / "Set5"
    (_selfexsr if sub.startswith("image") else _xfolder)(root, 2, ["b", "a"])
    ts = find_test_set(root / sub, 2)
    assert (ts.name, ts.layout, [p.name for p in ts.pairs]) == ("Set5", label, ["a", "b"])
    with pytest.raises(InputError, match="not x3"):
        find_test_set(root / sub, 3)


def test_lr_suffix_is_only_stripped_when_needed(tmp_path):
    # An HR whose own name ends in "x2" must keep it: box2.png pairs with box2x2.png.
    root = tmp_path / "Set"
    _write_pair(root / "HR" / "box2.png", root / "LR_bicubic" / "X2" / "box2x2.png", 2)
    _write_pair(root / "HR" / "fox.png", root / "LR_bicubic" / "X2" / "foxx2.png", 2)
    ts = find_test_set(root, 2)
    assert [(p.name, p.lr.name) for p in ts.pairs] == [("box2", "box2x2.png"), ("fox", "foxx2.png")]


def test_edsr_unmodcropped_hr_is_modcropped(tmp_path):
    root = tmp_path / "Set14"
    hr = _write_pair(root / "HR" / "comic.png", root / "LR_bicubic" / "X3" / "comicx3.png", 3, h=25, w=38)
    ts = find_test_set(root, 3)
    got_hr, lr = load_pair(ts, ts.pairs[0])
    assert got_hr.shape == (24, 36, 3) and lr.shape == (8, 12, 3)
    np.testing.assert_array_equal(got_hr, hr[:24, :36])


def test_non_image_and_hidden_files_are_ignored(tmp_path):
    root = tmp_path / "Set5"
    _selfexsr(root, 2, ["img_001"])
    (root / "image_SRF_2" / "readme.txt").write_text("not an image")
    (root / "image_SRF_2" / "._img_001_SRF_2_HR.png").write_bytes(b"AppleDouble junk")
    assert [p.name for p in find_test_set(root, 2).pairs] == ["img_001"]


# --------------------------------------------------------------------------- HR-only

@pytest.mark.parametrize("where", ["HR", "."])
def test_hr_only_generates_lr_into_cache_not_dataset(tmp_path, _private_cache, where):
    root = tmp_path / "MySet"
    hrs = {n: _hr(26, 31) for n in ["b", "a"]}
    for n, img in hrs.items():
        write_image(root / where / f"{n}.png", img)
    before = _files(root)
    ts = find_test_set(root, 3)
    assert (ts.name, ts.layout) == ("MySet", "hr-only")
    assert [p.name for p in ts.pairs] == ["a", "b"] and all(p.lr is None for p in ts.pairs)
    for pair in ts.pairs:
        hr, lr = load_pair(ts, pair)
        expect_hr = modcrop(hrs[pair.name], 3)
        np.testing.assert_array_equal(hr, expect_hr)
        np.testing.assert_array_equal(lr, imresize(expect_hr, 1 / 3))
        assert lr.shape == (8, 10, 3)
        cache = cached_lr_path(pair.hr, 3, name=pair.name)
        assert cache.is_file() and _private_cache in cache.parents
    assert _files(root) == before, "load_pair must never write into the dataset folder"


def test_hr_only_root_named_hr_takes_parent_name(tmp_path):
    write_image(tmp_path / "Set5" / "HR" / "baby.png", _hr())
    ts = find_test_set(tmp_path / "Set5" / "HR", 2)
    assert (ts.name, ts.layout, ts.pairs[0].name) == ("Set5", "hr-only", "baby")


def test_explicit_cache_dir_and_cache_key(tmp_path, _private_cache):
    root = tmp_path / "S"
    write_image(root / "HR" / "a.png", _hr())
    ts = find_test_set(root, 2)
    mine = tmp_path / "mine"
    load_pair(ts, ts.pairs[0], cache_dir=mine)
    assert cached_lr_path(ts.pairs[0].hr, 2, mine, name="a").is_file()
    assert not _private_cache.exists()
    # The key follows scale and the HR's identity (size/mtime), so an edited HR is not served stale LR.
    p = ts.pairs[0].hr
    k2, k3 = cached_lr_path(p, 2, mine), cached_lr_path(p, 3, mine)
    assert k2 != k3 and k2.parent.parent == mine / "lr_bicubic"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cached_lr_path(p, 2, mine) != k2


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DSRNET_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DSRNET_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dsrnet"


def test_hr_only_real_images_cache_reuse_and_corrupt_cache(tmp_path, benchmark_dir, monkeypatch):
    # Real photos at x3: Set5's x2 HR images are not all multiples of 3, so modcrop matters.
    root = tmp_path / "RealHR"
    src = benchmark_dir / "Set5" / "image_SRF_2"
    for n in ["img_002", "img_003"]:  # the two smallest Set5 images keep this fast
        (root / "HR").mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f"{n}_SRF_2_HR.png", root / "HR" / f"{n}.png")
    ts = find_test_set(root, 3)
    assert ts.layout == "hr-only" and [p.name for p in ts.pairs] == ["img_002", "img_003"]

    for pair in ts.pairs:
        hr, lr = load_pair(ts, pair)
        full = read_image(pair.hr)
        np.testing.assert_array_equal(hr, modcrop(full, 3))
        np.testing.assert_array_equal(lr, imresize(modcrop(full, 3), 1 / 3))
        assert hr.shape[0] == 3 * lr.shape[0] and hr.shape[1] == 3 * lr.shape[1]
    assert full.shape[:2] == (256, 256) and hr.shape[:2] == (255, 255)  # img_003: modcrop did crop
    cache = cached_lr_path(pair.hr, 3, name=pair.name)
    mtime = cache.stat().st_mtime_ns

    # Second load: served from the cache, imresize is never called.
    def boom(*a, **k):
        raise AssertionError("imresize called although the LR is cached")
    with monkeypatch.context() as m:
        m.setattr(imresize_mod, "imresize", boom)
        hr2, lr2 = load_pair(ts, pair)
    np.testing.assert_array_equal(lr2, lr)
    np.testing.assert_array_equal(hr2, hr)
    assert cache.stat().st_mtime_ns == mtime

    # A corrupt (truncated) cache file is regenerated, not an error.
    cache.write_bytes(cache.read_bytes()[:50])
    _, lr3 = load_pair(ts, pair)
    np.testing.assert_array_equal(lr3, lr)
    np.testing.assert_array_equal(read_image(cache), lr)
    # A cache file of the wrong size is regenerated too.
    write_image(cache, np.zeros((3, 3, 3), np.uint8))
    _, lr4 = load_pair(ts, pair)
    np.testing.assert_array_equal(lr4, lr)


# --------------------------------------------------------------------------- errors

def test_hr_without_lr_names_the_file(tmp_path):
    root = tmp_path / "Set5"
    _selfexsr(root, 2, ["img_001", "img_002"])
    (root / "image_SRF_2" / "img_002_SRF_2_LR.png").unlink()
    with pytest.raises(InputError, match="img_002_SRF_2_HR.png.*no x2 LR partner"):
        find_test_set(root, 2)


def test_lr_without_hr_names_the_file(tmp_path):
    root = tmp_path / "Set5"
    _edsr(root, 2, ["baby", "bird"])
    (root / "HR" / "bird.png").unlink()
    with pytest.raises(InputError, match="birdx2.png has no HR partner"):
        find_test_set(root, 2)


def test_unmarked_image_in_mixed_folder(tmp_path):
    root = tmp_path / "Set5"
    _xfolder(root, 2, ["baby"])
    write_image(root / "x2" / "stray.png", _hr())
    with pytest.raises(InputError, match="stray.png is neither HR nor LR"):
        find_test_set(root, 2)


def test_duplicate_names(tmp_path):
    root = tmp_path / "Set5"
    _bicubic_same(root, 2, ["baby"])
    write_image(root / "HR" / "baby.bmp", _hr())
    with pytest.raises(InputError, match="baby.bmp"):
        find_test_set(root, 2)


def test_wrong_lr_size_names_both_files_and_sizes(tmp_path):
    root = tmp_path / "Set5"
    _bicubic_same(root, 2, ["baby", "bird"])
    write_image(root / "bicubic_x2" / "bird.png", _hr(8, 12))  # a x3 LR among x2 ones
    ts = find_test_set(root, 2)
    load_pair(ts, ts.pairs[0])
    with pytest.raises(InputError) as err:
        load_pair(ts, ts.pairs[1])
    msg = str(err.value)
    assert "HR/bird.png" in msg and "bicubic_x2/bird.png" in msg
    assert "36x24" in msg and "12x8" in msg and "18x12" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        find_test_set(tmp_path / "Set5", 2)


@pytest.mark.parametrize("asked, present", [("B100", "BSD100"), ("BSD100", "B100"), ("b100", "BSD100")])
def test_b100_and_bsd100_name_one_set(tmp_path, capsys, asked, present):
    """The README says B100, the SelfExSR download unpacks as BSD100: either path finds the set, said in one line."""
    _selfexsr(tmp_path / present, 2, ["img_001"])
    ts = find_test_set(tmp_path / asked, 2)
    assert (ts.name, ts.root, len(ts)) == (present, tmp_path / present, 1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / asked) in lines[0] and str(tmp_path / present) in lines[0], lines
    find_test_set(tmp_path / asked, 2)
    assert capsys.readouterr().err == ""  # said once per folder, not once per scale


def test_an_existing_b100_keeps_its_name_and_says_nothing(tmp_path, capsys):
    _selfexsr(tmp_path / "B100", 2, ["img_001"])
    _selfexsr(tmp_path / "BSD100", 2, ["img_001", "img_002"])
    assert (find_test_set(tmp_path / "B100", 2).name, len(find_test_set(tmp_path / "BSD100", 2))) == ("B100", 2)
    assert capsys.readouterr().err == ""


def test_neither_b100_nor_bsd100_names_bsd100(tmp_path):
    with pytest.raises(InputError) as err:
        find_test_set(tmp_path / "B100", 2)
    msg = str(err.value)
    assert "\n" not in msg and "does not exist" in msg and str(tmp_path / "BSD100") in msg


def test_root_is_a_file(tmp_path):
    write_image(tmp_path / "a.png", _hr())
    with pytest.raises(InputError, match="is a file"):
        find_test_set(tmp_path / "a.png", 2)


def test_empty_folder(tmp_path):
    (tmp_path / "Set5").mkdir()
    with pytest.raises(InputError, match="is empty.*image_SRF_2"):
        find_test_set(tmp_path / "Set5", 2)


@pytest.mark.parametrize("sub", ["image_SRF_2", "x2", "HR"])
def test_empty_layout_folder(tmp_path, sub):
    (tmp_path / "Set5" / sub).mkdir(parents=True)
    with pytest.raises(InputError, match=f"no images in .*{sub}"):
        find_test_set(tmp_path / "Set5", 2)


def test_edsr_with_empty_lr_folder(tmp_path):
    root = tmp_path / "Set5"
    write_image(root / "HR" / "baby.png", _hr())
    (root / "LR_bicubic" / "X2").mkdir(parents=True)
    with pytest.raises(InputError, match="no LR images in .*X2"):
        find_test_set(root, 2)


def test_unknown_layout(tmp_path):
    root = tmp_path / "Set5"
    (root / "photos").mkdir(parents=True)
    (root / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="no recognisable test-set layout.*LR_bicubic/X2"):
        find_test_set(root, 2)


@pytest.mark.parametrize("build, found", [(_selfexsr, "image_SRF_2"), (_xfolder, "x2"),
                                          (_edsr, "LR_bicubic"), (_basicsr, "LRbicx2"),
                                          (_div2k_valid, "DIV2K_valid_LR_bicubic"),
                                          (_bicubic_same, "bicubic_x2")])
def test_missing_scale_lists_what_is_there(tmp_path, build, found):
    root = tmp_path / "Set5"
    build(root, 2, ["a"])
    with pytest.raises(InputError, match=f"no x3 LR images in .*{found}"):
        find_test_set(root, 3)


def test_missing_scale_suggests_hr_folder(tmp_path):
    root = tmp_path / "Set5"
    _edsr(root, 2, ["a"])
    with pytest.raises(InputError, match=r"X2.*pass .*HR to evaluate"):
        find_test_set(root, 4)


def test_mixed_folder_file_for_another_scale(tmp_path):
    root = tmp_path / "Set5"
    _xfolder_srf(root, 2, ["a"])
    _write_pair(root / "x2" / "b_SRF_3_HR.png", root / "x2" / "b_SRF_3_LR.png", 3)
    with pytest.raises(InputError, match="b_SRF_3_HR.png is for scale 3"):
        find_test_set(root, 2)


@pytest.mark.parametrize("scale", [0, 1, -2, 2.0, "2", True])
def test_bad_scale(tmp_path, scale):
    _selfexsr(tmp_path / "Set5", 2, ["a"])
    with pytest.raises(InputError, match="scale must be an integer"):
        find_test_set(tmp_path / "Set5", scale)


def test_image_smaller_than_scale(tmp_path):
    root = tmp_path / "Tiny"
    write_image(root / "HR" / "dot.png", _hr(3, 40))
    ts = find_test_set(root, 4)
    with pytest.raises(InputError, match=r"dot.png is 40x3, smaller than the scale x4"):
        load_pair(ts, ts.pairs[0])


def test_pair_without_hr_is_a_programming_error(tmp_path):
    ts = TestSet(name="x", scale=2, layout="hr-only", root=tmp_path, pairs=())
    with pytest.raises(ValueError):
        load_pair(ts, ImagePair(name="a", hr=None, lr=tmp_path / "a.png"))


def test_corrupt_dataset_image_is_an_input_error(tmp_path):
    root = tmp_path / "Set5"
    _bicubic_same(root, 2, ["baby"])
    (root / "bicubic_x2" / "baby.png").write_bytes(b"\x89PNG broken")
    ts = find_test_set(root, 2)
    with pytest.raises(InputError, match="baby.png"):
        load_pair(ts, ts.pairs[0])


# --------------------------------------------------------------------------- inference inputs

def test_list_input_images(tmp_path):
    write_image(tmp_path / "in" / "b.png", _hr())
    write_image(tmp_path / "in" / "a.jpg", _hr())
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "in" / ".hidden.png").write_bytes(b"")
    (tmp_path / "in" / "sub").mkdir()
    write_image(tmp_path / "in" / "sub" / "c.png", _hr())
    assert [p.name for p in list_input_images(tmp_path / "in")] == ["a.jpg", "b.png"]
    assert list_input_images(tmp_path / "in" / "b.png") == [tmp_path / "in" / "b.png"]
    with pytest.raises(InputError, match="notes.txt is not an image"):
        list_input_images(tmp_path / "in" / "notes.txt")
    with pytest.raises(InputError, match="does not exist"):
        list_input_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images in .*empty"):
        list_input_images(tmp_path / "empty")


# --------------------------------------------------------------------------- real benchmark data

@pytest.mark.parametrize("name, count", [("Set5", 5), ("Set14", 14), ("BSD100", 100)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_real_benchmarks(benchmark_dir, name, count, scale):
    folder = need_set(benchmark_dir, name)  # BSD100 may be a user's B100
    ts = find_test_set(folder, scale)
    assert (ts.name, ts.scale, ts.layout, len(ts.pairs)) == (folder.name, scale, "selfexsr", count)
    assert [p.name for p in ts.pairs] == [f"img_{i:03d}" for i in range(1, count + 1)]
    for pair in ts.pairs:  # all of BSD100 at three scales is ~1.5 s
        hr, lr = load_pair(ts, pair)
        assert hr.shape == (scale * lr.shape[0], scale * lr.shape[1], 3)
        assert hr.dtype == lr.dtype == np.uint8
