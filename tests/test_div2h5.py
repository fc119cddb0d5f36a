"""Packing training images into HDF5: the authors' format, pairing checks, atomic output, CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import dsrnet.data.pack as pack
from dataset.div2h5 import main
from dsrnet.cli import run_cli
from dsrnet.data.images import read_image, write_image
from dsrnet.data.imresize import imresize, modcrop
from dsrnet.data.pack import pack_div2k, pack_hr_folder
from dsrnet.data.train_data import TrainDataset
from dsrnet.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SCALES = (2, 3, 4)


def _div2k_tree(root: Path, n: int = 12, kind: str = "train") -> Path:
    """A miniature DIV2K: odd-sized HR (not multiples of 12) and bicubic LR as DIV2K makes them."""
    rng = np.random.default_rng(n)
    top = root / "DIV2K"
    for k in range(1, n + 1):
        h, w = int(rng.integers(26, 40)), int(rng.integers(26, 40))
        hr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        write_image(top / f"DIV2K_{kind}_HR" / f"{k:04d}.png", hr)
        for s in SCALES:
            lr = imresize(modcrop(hr, s), 1 / s)
            write_image(top / f"DIV2K_{kind}_LR_bicubic" / f"X{s}" / f"{k:04d}x{s}.png", lr)
    return top


def _authors_pack(top: Path, out: Path, kind: str = "train") -> None:
    """The authors' div2h5.py write loop (glob, sort, enumerate), with our image reader."""
    with h5py.File(out, "w") as f:
        for sub in ("HR", "X2", "X3", "X4"):
            folder = top / (f"DIV2K_{kind}_HR" if sub == "HR" else f"DIV2K_{kind}_LR_bicubic/{sub}")
            grp = f.create_group(sub)
            for i, path in enumerate(sorted(folder.glob("*.png"))):
                grp.create_dataset(str(i), data=read_image(path))


def _leftovers(folder: Path) -> list[str]:
    """HDF5 outputs and temp files in ``folder`` (which may never have been created)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".h5", ".tmp"))


@pytest.fixture(scope="module")
def div2k(tmp_path_factory) -> Path:
    return _div2k_tree(tmp_path_factory.mktemp("div2k"))


@pytest.fixture
def tree(tmp_path) -> Path:
    """A small private DIV2K tree that a test may damage."""
    return _div2k_tree(tmp_path, n=3)


# --------------------------------------------------------------------------- format

def test_div2k_pack_matches_the_authors_file(div2k, tmp_path):
    ours, theirs = tmp_path / "ours.h5", tmp_path / "theirs.h5"
    assert pack_div2k(div2k, ours, workers=2) == 12
    _authors_pack(div2k, theirs)
    hrs = sorted((div2k / "DIV2K_train_HR").glob("*.png"))
    with h5py.File(ours, "r") as a, h5py.File(theirs, "r") as b:
        assert set(a) == set(b) == {"HR", "X2", "X3", "X4"}
        for group in b:
            assert set(a[group]) == set(b[group]) == {str(i) for i in range(12)}
            for name in b[group]:
                assert a[group][name].dtype == np.uint8
                np.testing.assert_array_equal(a[group][name][()], b[group][name][()])
        # HR stored as is (not modcropped), dataset "i" is the i-th file in sorted order.
        for i, path in enumerate(hrs):
            np.testing.assert_array_equal(a["HR"][str(i)][()], read_image(path))
        # The authors' reader walks .values() alphabetically ("0", "1", "10", ...) in every
        # group; it must still see matching pairs.
        for hr, lr in zip(a["HR"].values(), a["X3"].values()):
            assert (hr.shape[0] // 3, hr.shape[1] // 3) == lr.shape[:2]
            np.testing.assert_array_equal(imresize(modcrop(hr[()], 3), 1 / 3), lr[()])


def test_authors_file_reads_identically(div2k, tmp_path):
    ours, theirs = tmp_path / "ours.h5", tmp_path / "theirs.h5"
    pack_div2k(div2k, ours)
    _authors_pack(div2k, theirs)
    for scale in (0, 3):
        a, b = TrainDataset(ours, 5, scale, seed=3), TrainDataset(theirs, 5, scale, seed=3)
        for i in (0, 5, 11, 12, 40):
            for (ha, la), (hb, lb) in zip(a[i], b[i]):
                assert ha.equal(hb) and la.equal(lb)


def test_hr_dir_packs_real_photos(train_photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    picks = sorted(train_photos.glob("*.png"))[:3]
    for p in picks:
        (folder / p.name).symlink_to(p)
    out = tmp_path / "photos.h5"
    assert pack_hr_folder(folder, out, workers=2) == 3
    with h5py.File(out, "r") as f:
        assert set(f) == {"HR", "X2", "X3", "X4"}
        for i, p in enumerate(picks):
            hr = f["HR"][str(i)][()]
            np.testing.assert_array_equal(hr, modcrop(read_image(p), 12))
            for s in SCALES:
                np.testing.assert_array_equal(f[f"X{s}"][str(i)][()], imresize(hr, 1 / s))


def test_single_scale_and_compression(tree, tmp_path):
    out = tmp_path / "x3.h5"
    pack_div2k(tree, out, scales=[3], compression="gzip")
    with h5py.File(out, "r") as f:
        assert set(f) == {"HR", "X3"}
        assert f["X3"]["0"].compression == "gzip"
    with pytest.raises(InputError, match="no group X2: repack with --scales 2 3 4"):
        TrainDataset(out, 4, 2)


# --------------------------------------------------------------------------- CLI

def test_cli_from_dataset_folder_as_in_readme(div2k, tmp_path):
    out = tmp_path / "made_in_dataset_dir.h5"
    run = subprocess.run([sys.executable, "div2h5.py", "--dataset_dir", str(div2k), "--output", str(out),
                          "--scales", "2", "4", "--workers", "2"],
                         cwd=ROOT / "dataset", capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}: 12 images" in run.stdout
    with h5py.File(out, "r") as f:
        assert set(f) == {"HR", "X2", "X4"} and len(f["X4"]) == 12


def test_cli_defaults_pack_div2k_train_in_cwd(tree):
    run = subprocess.run([sys.executable, str(ROOT / "dataset" / "div2h5.py")],
                         cwd=tree.parent, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    with h5py.File(tree.parent / "DIV2K_train.h5", "r") as f:
        assert set(f) == {"HR", "X2", "X3", "X4"} and len(f["HR"]) == 3


def test_cli_error_is_one_line_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, "div2h5.py", "--dataset_dir", str(tmp_path / "nope"),
                          "--output", str(tmp_path / "out.h5")],
                         cwd=ROOT / "dataset", capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"error: dataset folder {tmp_path / 'nope'} not found: "
                                       "download DIV2K there or point --dataset_dir at it"]
    assert not (tmp_path / "out.h5").exists()


# --------------------------------------------------------------------------- bad input

def _truncate_png(path: Path) -> None:
    """Keep the header (sizes still readable) but cut the pixel data."""
    data = path.read_bytes()
    path.write_bytes(data[:60])


def _break(tree: Path, how: str) -> None:
    hr, lr = tree / "DIV2K_train_HR", tree / "DIV2K_train_LR_bicubic"
    if how == "empty":
        for p in hr.glob("*.png"):
            p.unlink()
    elif how == "no_scale":
        for p in (lr / "X3").glob("*"):
            p.unlink()
        (lr / "X3").rmdir()
    elif how == "missing_lr":
        (lr / "X4" / "0002x4.png").unlink()
    elif how == "extra_lr":
        write_image(lr / "X2" / "0009x2.png", np.zeros((8, 8, 3), np.uint8))
    elif how == "wrong_size":
        write_image(lr / "X2" / "0002x2.png", np.zeros((5, 5, 3), np.uint8))
    elif how == "garbage":
        (hr / "0003.png").write_bytes(b"not a png at all")
    elif how == "truncated":
        _truncate_png(lr / "X4" / "0003x4.png")


@pytest.mark.parametrize("how, culprit", [
    ("empty", "no .png images in"),
    ("no_scale", "DIV2K_train_LR_bicubic/X3 not found"),
    ("missing_lr", "0002x4.png is missing"),
    ("extra_lr", "0009x2.png has no HR partner"),
    ("wrong_size", "0002x2.png is 5x5 but its HR"),
    ("garbage", "cannot read image"),
    ("truncated", "0003x4.png"),  # header fine, pixels cut: fails mid-write
])
def test_bad_div2k_trees(tree, tmp_path, capsys, how, culprit):
    _break(tree, how)
    out = tmp_path / "out" / "train.h5"
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: main(["--dataset_dir", str(tree), "--output", str(out), "--workers", "2"]))
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and culprit in errors[0]
    assert not out.exists() and _leftovers(out.parent) == []


def test_bad_arguments_and_folders(tree, tmp_path):
    out = tmp_path / "out.h5"
    with pytest.raises(InputError, match="not found: download DIV2K"):
        pack_div2k(tmp_path / "missing", out)
    with pytest.raises(InputError, match="DIV2K_valid_HR not found"):
        pack_div2k(tree, out, dataset_type="valid")
    with pytest.raises(InputError, match="scale 1 is not an integer >= 2"):
        pack_div2k(tree, out, scales=[1, 2])
    with pytest.raises(InputError, match="repeats a scale"):
        pack_div2k(tree, out, scales=[2, 2])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot create output folder"):
        pack_div2k(tree, blocker / "out.h5")
    with pytest.raises(InputError, match="is a folder"):
        pack_div2k(tree, tmp_path)
    with pytest.raises(InputError, match="--hr_dir .* not found"):
        pack_hr_folder(tmp_path / "missing", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images in"):
        pack_hr_folder(tmp_path / "empty", out)
    write_image(tmp_path / "tiny" / "a.png", np.zeros((10, 30, 3), np.uint8))
    with pytest.raises(InputError, match=r"a.png is 30x10, smaller than 12"):
        pack_hr_folder(tmp_path / "tiny", out)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupt_mid_pack_leaves_nothing(tree, tmp_path, monkeypatch, workers):
    out = tmp_path / "train.h5"
    out.write_bytes(b"previous file")  # an earlier pack survives an interrupted one
    calls = []

    def flaky_read(path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return read_image(path)

    monkeypatch.setattr(pack, "read_image", flaky_read)
    with pytest.raises(KeyboardInterrupt):
        pack_div2k(tree, out, workers=workers)
    assert out.read_bytes() == b"previous file"
    assert _leftovers(tmp_path) == ["train.h5"]


def test_ctrl_c_on_the_cli_leaves_nothing(train_photos, tmp_path):
    out = tmp_path / "photos.h5"
    proc = subprocess.Popen([sys.executable, "div2h5.py", "--hr_dir", str(train_photos), "--output", str(out),
                             "--workers", "2"], cwd=ROOT / "dataset", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".photos.h5.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.02)  # interrupt once the temp file is being written
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.rstrip().endswith("interrupted") and "Traceback" not in err
    assert _leftovers(tmp_path) == []


def test_write_failure_is_an_input_error_and_leaves_nothing(tree, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h5py.Group, "create_dataset", disk_full)
    with pytest.raises(InputError, match="cannot write .*No space left"):
        pack_div2k(tree, tmp_path / "train.h5")
    assert _leftovers(tmp_path) == []
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))


def test_help_explains_every_flag_and_shows_defaults():
    run = subprocess.run([sys.executable, str(ROOT / "dataset" / "div2h5.py"), "--help"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert run.returncode == 0, run.stderr
    entries = " ".join(run.stdout.split("options:")[1].split()).split(" --")[1:]  # one per option, unwrapped
    lines = {"--" + entry.split()[0]: entry for entry in entries}
    assert "which DIV2K split" in lines["--dataset_type"] and "(default: train)" in lines["--dataset_type"]
    assert "LR groups" in lines["--scales"] and "(default: [2, 3, 4])" in lines["--scales"]
    assert "(default: DIV2K)" in lines["--dataset_dir"] and "(default: none)" in lines["--compression"]


# --------------------------------------------------------------------------- outputs that must not be

def _photos(folder: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(n)
    for k in range(n):
        write_image(folder / f"{k}.png", rng.integers(0, 256, (24, 28, 3), dtype=np.uint8))
    return folder


def test_an_output_that_is_an_input_is_refused(tree, tmp_path):
    """By its path, a symlink or a hard link to it: the pack would have replaced the photo."""
    photos = _photos(tmp_path / "photos")
    (tmp_path / "link.h5").symlink_to(photos / "1.png")
    os.link(photos / "2.png", tmp_path / "hard.h5")
    before = {p: p.read_bytes() for p in photos.iterdir()}
    for out in (photos / "0.png", tmp_path / "link.h5", tmp_path / "hard.h5"):
        with pytest.raises(InputError, match=rf"--output {out} is the input image .*[0-2]\.png: .*another --output"):
            pack_hr_folder(photos, out, scales=[2])
    lr = tree / "DIV2K_train_LR_bicubic" / "X3" / "0002x3.png"
    lr_bytes = lr.read_bytes()
    with pytest.raises(InputError, match="is the input image"):
        pack_div2k(tree, lr)
    assert lr.read_bytes() == lr_bytes and before == {p: p.read_bytes() for p in photos.iterdir()}


def test_temp_files_of_killed_runs_are_removed_at_the_next_start(tmp_path, capsys):
    """What SIGKILL leaves (atomic_path's .NAME.XXXXXXXX.tmp) goes; other outputs' temps and look-alikes stay,
    and so does a temp file a live process holds locked (another run still writing it)."""
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "pack.h5"
    stale, other, alike, live = (tmp_path / n for n in (".pack.h5.k1ll3d_x.tmp", ".other.h5.k1ll3d_x.tmp",
                                                         ".pack.h5.notmine.tmp", ".pack.h5.w0rk1ng_.tmp"))
    for p in (stale, other, alike, live):
        p.write_bytes(b"half an HDF5 file")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'rb+'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
                               str(live)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        pack_hr_folder(photos, out, scales=[2])
    finally:
        holder.communicate("", timeout=30)
    assert not stale.exists() and other.exists() and alike.exists() and live.exists()
    assert "removed 1 temp file(s) of pack.h5 that a killed run left" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert len(f["HR"]) == 3


def test_a_running_pack_holds_its_temp_file(tmp_path, monkeypatch):
    """Another start's clean-up, run while this pack writes, leaves the pack's temp file alone."""
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "pack.h5"
    seen = []

    def read_and_clean(path):
        if not seen:
            [tmp] = tmp_path.glob(".pack.h5.*.tmp")
            code = "import sys; from pathlib import Path; from dsrnet.data.pack import _remove_stale_temps; " \
                   "_remove_stale_temps(Path(sys.argv[1]))"
            subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, check=True, timeout=60)
            seen.append(tmp.exists())
        return read_image(path)

    monkeypatch.setattr(pack, "read_image", read_and_clean)
    pack_hr_folder(photos, out, scales=[2], workers=1)
    assert seen == [True]
    with h5py.File(out) as f:
        assert len(f["HR"]) == 3


def test_sigterm_mid_pack_leaves_nothing(train_photos, tmp_path):
    out = tmp_path / "photos.h5"
    proc = subprocess.Popen([sys.executable, "div2h5.py", "--hr_dir", str(train_photos), "--output", str(out),
                             "--workers", "2"], cwd=ROOT / "dataset", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".photos.h5.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert _leftovers(tmp_path) == []


def test_a_full_disk_in_hdf5_is_one_line(tree, tmp_path, monkeypatch, capsys):
    """HDF5's own message for ENOSPC runs over two lines (its time stamp ends in a newline)."""
    def disk_full(*args, **kwargs):
        raise OSError(28, "Can't synchronously write data (file write failed: time = Sun Dec  6 22:16:16 2026\n"
                          ", filename = 'x', errno = 28, error message = 'No space left on device')")

    monkeypatch.setattr(h5py.Group, "create_dataset", disk_full)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: main(["--dataset_dir", str(tree), "--output", str(tmp_path / "train.h5"), "--workers", "1"]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot write {tmp_path / 'train.h5'}: the disk is full (No space left on device)")
    assert _leftovers(tmp_path) == []
