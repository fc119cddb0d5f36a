"""Image I/O and atomic writes: nothing half-written, ordinary permissions, one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsrnet.data.images import read_image, write_image
from dsrnet.errors import InputError
from dsrnet.files import atomic_path, atomic_write_bytes, ensure_writable

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_and_grayscale(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)
    write_image(tmp_path / "g.png", img[..., 0])
    assert read_image(tmp_path / "g.png").shape == (7, 9, 3)


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.txt", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "keep.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_writability_check_creates_nothing(tmp_path):
    ensure_writable(tmp_path / "new" / "deeper" / "report.md")
    assert list(tmp_path.iterdir()) == []  # neither the folders nor the probe are left
    (tmp_path / "a_file").touch()
    for bad, reason in [(tmp_path, "it is a folder"), (tmp_path / "a_file" / "sub" / "r.md", "Not a directory"),
                        (Path("/proc/no/such/r.md"), "cannot write /proc/no/such/r.md")]:
        with pytest.raises(InputError, match=reason):
            ensure_writable(bad)
    assert list(tmp_path.iterdir()) == [tmp_path / "a_file"]
    (tmp_path / "a_file").chmod(0o444)  # a report, export or download its owner made read-only is never replaced
    with pytest.raises(InputError, match="a_file exists and is read-only"):
        ensure_writable(tmp_path / "a_file")


def test_bad_images(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="bad.png"):
        read_image(tmp_path / "bad.png")


@pytest.mark.parametrize("module", ["dsrnet.errors", "dsrnet.files"])
def test_base_modules_load_no_torch(module):
    """The base of the house (errors, atomic writes) must stay importable without torch's 1.5 s: a fresh
    interpreter imports it and reports whether torch came along."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
