"""tools.fetch_weights, offline: a file:// copy of the authors' repository or an injected opener stands in
for GitHub. Verified files get their name, anything else leaves nothing behind and says why in one line."""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsrnet.errors import InputError
from tools import fetch_weights
from tools.fetch_weights import RELEASES, Release, fetch, git_blob_id

ROOT = Path(__file__).resolve().parents[1]


def _mirror(tmp_path: Path, files: dict[int, bytes | Path]) -> str:
    """A file:// copy of the authors' repository holding ``files`` (bytes, or a file linked in) per scale."""
    base = tmp_path / "mirror"
    for scale, content in files.items():
        dest = base / RELEASES[scale].path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            dest.symlink_to(content)
        else:
            dest.write_bytes(content)
    return base.as_uri()


@pytest.fixture
def tiny_releases(monkeypatch) -> dict[int, bytes]:
    """Small stand-ins for the three files, with their blob ids in the table the tool checks against."""
    contents = {s: f"weights x{s}".encode() * 100 for s in RELEASES}
    table = {}
    for s, content in contents.items():
        table[s] = Release(RELEASES[s].path, hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest())
    monkeypatch.setattr(fetch_weights, "RELEASES", table)
    return contents


def test_blob_id_is_gits(tmp_path):
    (tmp_path / "f").write_bytes(b"\x00\x01weights\n" * 1000)
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    expected = subprocess.run(["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert git_blob_id(tmp_path / "f") == expected


def test_the_authors_x2_file_has_the_pinned_blob_id(weights_x2):
    assert git_blob_id(weights_x2) == RELEASES[2].blob == "795924a1d0b0499aa623dcc9c4d17e6c3e1cd968"


def test_the_real_x2_file_from_a_copy_of_the_repository(tmp_path, weights_x2, capsys):
    base = _mirror(tmp_path, {2: weights_x2})
    out = tmp_path / "checkpoint"
    assert fetch_weights.main(["--scales", "2", "--out_dir", str(out), "--base_url", base]) == \
        [out / "DSRNet_x2_600000.pth"]
    assert sorted(p.name for p in out.iterdir()) == ["DSRNet_x2_600000.pth"]
    assert (out / "DSRNet_x2_600000.pth").read_bytes() == weights_x2.read_bytes()
    assert "downloaded" in capsys.readouterr().out


def test_all_scales_then_a_rerun_skips_what_verifies(tmp_path, tiny_releases, capsys):
    out = tmp_path / "out"
    fetch([2, 3, 4], out, _mirror(tmp_path, tiny_releases))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == \
        {f"DSRNet_x{s}_600000.pth": c for s, c in tiny_releases.items()}
    capsys.readouterr()

    def never(url):
        raise AssertionError(f"opened {url}")
    fetch([2, 3, 4], out, "file:///nowhere", opener=never)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("skipped" in line for line in lines)


def test_an_existing_different_file_is_never_overwritten(tmp_path, tiny_releases):
    out = tmp_path / "out"
    out.mkdir()
    (out / "DSRNet_x3_600000.pth").write_bytes(b"my own x3")
    base = _mirror(tmp_path, tiny_releases)
    with pytest.raises(InputError) as err:
        fetch([2, 3], out, base)
    msg = str(err.value)
    assert "\n" not in msg and "DSRNet_x3_600000.pth" in msg and fetch_weights.RELEASES[3].blob in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"DSRNet_x3_600000.pth": b"my own x3"}  # x2 neither


def test_a_mismatch_names_both_hashes_and_leaves_nothing(tmp_path, tiny_releases):
    out = tmp_path / "out"
    base = _mirror(tmp_path, {2: b"version https://git-lfs.github.com/spec/v1\n"})  # e.g. an LFS pointer
    with pytest.raises(InputError) as err:
        fetch([2], out, base)
    msg = str(err.value)
    got = git_blob_id(tmp_path / "mirror" / RELEASES[2].path)
    assert "\n" not in msg and "DSRNet_x2_600000.pth" in msg and got in msg and fetch_weights.RELEASES[2].blob in msg
    assert not out.exists() or list(out.iterdir()) == []


class _CutConnection(io.BytesIO):
    """A response that delivers some bytes, then loses the connection."""

    def read(self, size=-1):
        if self.tell() > 0:
            raise ConnectionResetError("connection reset by peer")
        return super().read(10)


def test_a_cut_download_leaves_nothing(tmp_path, tiny_releases):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="connection reset by peer.*nothing was written"):
        fetch([2], out, "https://example.invalid", opener=lambda url: _CutConnection(tiny_releases[2]))
    assert list(out.iterdir()) == []


def test_a_network_error_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "tools.fetch_weights", "--scales", "4", "--out_dir", str(out),
                           "--base_url", (tmp_path / "no_mirror").as_uri()],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download") and "DSRNet_x4_600000.pth" in lines[0]
    assert not out.exists() or list(out.iterdir()) == []


def test_repeated_scales_are_refused_before_any_work(tmp_path):
    with pytest.raises(InputError, match="repeats"):
        fetch_weights.main(["--scales", "2", "2", "--out_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
