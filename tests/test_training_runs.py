"""Training runs as a researcher lives them: the help, resuming by re-running the command, bounded
checkpoint disk, no resume from an abandoned future, nothing lost to a failing validation, a torn log.

Tiny HDF5 packs (three 40x40 images), 8-pixel patches and a handful of steps, one intra-op thread.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dataset.imresize import imresize
from solver import parse_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """Three 40x40 HR images with their x2 LR, in div2h5's layout."""
    path = tmp_path_factory.mktemp("pack") / "tiny.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for k in range(3):
            hr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            f[f"HR/{k}"] = hr
            f[f"X2/{k}"] = imresize(hr, 1 / 2)
    return path


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "x2" / "train.py"), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=300)


def test_help_shows_every_default_and_no_measured_figures():
    help_text = train("--help").stdout
    flat = " ".join(help_text[help_text.index("options:"):].split())
    for flag, default in (("--batch_size", "64"), ("--patch_size", "64"), ("--max_steps", "600000"),
                          ("--print_interval", "1000"), ("--lr", "0.0001"), ("--num_workers", "2"),
                          ("--seed", "0")):
        entry = re.search(rf"{flag} {flag.lstrip('-').upper()}(.*?)\(default: ([^)]*)\)", flat)
        assert entry and entry.group(2) == default, flag
        other_flag = re.search(r" --\w+ [A-Z]", entry.group(1).replace(", --checkpoint_every PRINT_INTERVAL", ""))
        assert other_flag is None, (flag, entry.group(0))  # the default read is this flag's own
    assert "%" not in flat and "H200" not in flat


def test_checkpoint_every_is_print_interval():
    assert parse_args(["--checkpoint_every", "7"]).print_interval == 7
    assert parse_args(["--print_interval", "7"]).print_interval == 7
