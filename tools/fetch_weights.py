"""Download the authors' released x2/x3/x4 weights into checkpoint/, each checked before it gets its name.

    python -m tools.fetch_weights                  # all three scales into checkpoint/
    python -m tools.fetch_weights --scales 2       # the x2 file alone (what `python sample.py` uses)
    python -m tools.fetch_weights --out_dir DIR    # somewhere else

The files come from the authors' repository (github.com/hellloxiaotian/DSRNet) at one fixed commit, and each
must have the git blob id (the SHA-1 `git hash-object` prints) the file has at that commit: a changed
upstream, a proxy's error page or a cut connection can never pass for the weights. A download is written to
a temporary file beside its target and renamed only once it verifies, so a failure leaves nothing. A file
already there that verifies is skipped; one that differs is never overwritten.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from dsrnet import AUTHORS_WEIGHTS
from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.errors import InputError
from dsrnet.files import atomic_path

REPOSITORY = "hellloxiaotian/DSRNet"
COMMIT = "01b6ad9cab6ab1aa26ae0a268341947567b9fac5"
# raw.githubusercontent.com serves a file's git content as is: right for these files, which the repository
# holds in git itself, not in Git LFS (the x2 file's blob id is that of the weights, not of an LFS pointer).
BASE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}"
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Release:
    """One released file: where it is in the authors' repository and its git blob id there."""

    path: str
    blob: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


RELEASES = {
    2: Release("checkpoint/DSRNet/DSRNet_x2_600000.pth", "795924a1d0b0499aa623dcc9c4d17e6c3e1cd968"),
    3: Release("checkpoint/DSRNet/DSRNet_x3_600000.pth", "3bf05c01a525dc9859a18d3d8d383f385a83d652"),
    4: Release("checkpoint/DSRNet/DSRNet_x4_600000.pth", "2500e01f50c129a36fd2414855382d3dfd29e1aa"),
}

Opener = Callable[[str], BinaryIO]


def git_blob_id(path: str | Path) -> str:
    """The SHA-1 git gives the file's content (``git hash-object``): sha1 of ``b"blob <size>\\0"`` + content."""
    path = Path(path)
    sha = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _open_url(url: str) -> BinaryIO:
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)


def _network_error(url: str, err: Exception) -> InputError:
    if isinstance(err, urllib.error.HTTPError):
        reason = f"HTTP {err.code} {err.reason}"
    elif isinstance(err, urllib.error.URLError):
        reason = str(err.reason)
    else:
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return InputError(f"cannot download {url} ({reason}): check the connection, or pass --base_url of a copy; "
                      "nothing was written")


def _download(url: str, into: Path, opener: Opener) -> None:
    """``url``'s bytes into ``into``; a failure to open or read (a cut connection included) is an InputError."""
    try:
        response = opener(url)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise _network_error(url, err) from None
    with response, open(into, "wb") as f:
        while True:
            try:
                chunk = response.read(CHUNK)
            except (http.client.HTTPException, OSError) as err:
                raise _network_error(url, err) from None
            if not chunk:
                break
            f.write(chunk)


def check_existing(dest: Path, release: Release) -> bool:
    """True when ``dest`` already holds the release; refuse a folder or a different file there."""
    if not dest.exists():
        return False
    if not dest.is_file():
        raise InputError(f"{dest} is not a file: move it away or pass another --out_dir")
    found = git_blob_id(dest)
    if found != release.blob:
        raise InputError(f"{dest} exists with git blob id {found}, not the authors' {release.blob}: "
                         "it is not overwritten; move it away or pass another --out_dir")
    return True


def fetch(scales: list[int], out_dir: Path, base_url: str = BASE_URL, opener: Opener = _open_url) -> list[Path]:
    """Each scale's file in ``out_dir``, downloaded and verified unless already there; returns their paths.

    Files already there are checked for every scale before any download, so a refusal costs no traffic.
    """
    targets = [(out_dir / RELEASES[s].name, RELEASES[s]) for s in scales]
    present = [check_existing(dest, release) for dest, release in targets]
    for (dest, release), there in zip(targets, present):
        if there:
            print(f"{dest}: already there, git blob {release.blob} verified; skipped")
            continue
        url = f"{base_url.rstrip('/')}/{release.path}"
        with atomic_path(dest) as tmp:
            _download(url, tmp, opener)
            got = git_blob_id(tmp)
            if got != release.blob:
                raise InputError(f"{dest}: the download from {url} has git blob id {got}, not the authors' "
                                 f"{release.blob}; nothing was written")
        print(f"{dest}: downloaded, git blob {release.blob} verified")
    return [dest for dest, _ in targets]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--scales", type=int, nargs="+", choices=sorted(RELEASES), default=sorted(RELEASES),
                   help="which scales' files (default: 2 3 4)")
    p.add_argument("--out_dir", type=Path, default=AUTHORS_WEIGHTS.parent,
                   help="folder for the files (default: this checkout's checkpoint/, where sample.py looks)")
    p.add_argument("--base_url", default=BASE_URL,
                   help="where the authors' repository's files are (a mirror, or a file:// copy of the repository)")
    cfg = p.parse_args(argv)
    if len(set(cfg.scales)) != len(cfg.scales):
        raise InputError(f"--scales {' '.join(map(str, cfg.scales))} repeats a scale: name each once")
    if cfg.out_dir.exists() and not cfg.out_dir.is_dir():
        raise InputError(f"--out_dir {cfg.out_dir} is a file: pass a folder")
    return cfg


def main(argv: list[str] | None = None, opener: Opener = _open_url) -> list[Path]:
    cfg = parse_args(argv)
    return fetch(cfg.scales, cfg.out_dir, cfg.base_url, opener)


if __name__ == "__main__":
    run_cli(main)
