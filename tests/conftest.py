"""Shared fixtures: the read-only reference material (the authors' x2 weights, the test sets, training photos),
found where CI keeps it or where a user following the README put it, and skipped with a reason when absent."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np
import pytest

from dsrnet.data.images import write_image
from dsrnet.data.imresize import imresize

ROOT = Path(__file__).resolve().parents[1]
# A folder laid out like ../shared (weights/, data/benchmark/, data/train/Sun-Hays80/), looked at first.
DATA_ENV = "DSRNET_DATA"
# Each kind of material inside such a folder, and where the README tells users to put it in the checkout.
SHARED_LAYOUT = {"weights_x2": "weights/DSRNet_x2_600000.pth", "benchmark": "data/benchmark",
                 "train_photos": "data/train/Sun-Hays80"}
README_PLACES = {"weights_x2": "checkpoint/DSRNet_x2_600000.pth", "benchmark": "dataset/benchmark"}
# The paper's "B100" is the SelfExSR download's "BSD100": a test needing one accepts the other.
OTHER_SET_NAME = {"BSD100": "B100", "B100": "BSD100"}


def reference_candidates(kind: str, root: Path = ROOT, env: Mapping[str, str] = os.environ) -> list[tuple[Path, str]]:
    """Where ``kind`` may be, in the order looked at, each with how to name that place: $DSRNET_DATA (the
    user's explicit choice), ../shared (CI's reference copy), then the README's place in the checkout."""
    places = []
    if env.get(DATA_ENV):
        places.append((Path(env[DATA_ENV]).expanduser() / SHARED_LAYOUT[kind], f"${DATA_ENV}"))
    places.append((root.parent / "shared" / SHARED_LAYOUT[kind], "../shared"))
    if kind in README_PLACES:
        places.append((root / README_PLACES[kind], "the checkout"))
    return places


def _present(path: Path) -> bool:
    """A file, or a folder with something in it (an empty dataset/benchmark/ holds no test set)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def find_reference(kind: str, root: Path = ROOT, env: Mapping[str, str] = os.environ) -> tuple[Path | None, str]:
    """The first place holding ``kind`` and a line saying where it was found, or None and where it was looked for."""
    places = reference_candidates(kind, root, env)
    for path, origin in places:
        if _present(path):
            return path, f"{path} ({origin})"
    return None, "absent; looked in " + ", ".join(str(p) for p, _ in places)


FOUND = {kind: find_reference(kind) for kind in SHARED_LAYOUT}
# The x2 weights, or where CI keeps them when absent (test_demo checks is_file()).
WEIGHTS_X2 = FOUND["weights_x2"][0] or ROOT.parent / "shared" / SHARED_LAYOUT["weights_x2"]


def _where_lines() -> list[str]:
    return [f"reference {kind}: {where}" for kind, (_, where) in FOUND.items()]


def pytest_report_header(config) -> list[str]:
    return _where_lines()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Under -q (the README's command) there is no header: say it at the end instead."""
    if config.get_verbosity() < 0:
        for line in _where_lines():
            terminalreporter.write_line(line)


def _need(kind: str) -> Path:
    path, where = FOUND[kind]
    if path is None:
        pytest.skip(f"{kind} {where} (set {DATA_ENV}, see docs/datasets.md; CI always has it)")
    return path


def need_set(benchmark_dir: Path, name: str) -> Path:
    """One test set, under its other name where only that exists (B100/BSD100), skipped with a reason when
    absent (a GPU machine may carry only some)."""
    for candidate in (name, OTHER_SET_NAME.get(name)):
        if candidate and (benchmark_dir / candidate).is_dir():
            return benchmark_dir / candidate
    pytest.skip(f"{benchmark_dir / name} is absent (the test sets were found in {benchmark_dir})")


@pytest.fixture(scope="session")
def weights_x2() -> Path:
    return _need("weights_x2")


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    return _need("benchmark")


@pytest.fixture(scope="session")
def train_photos() -> Path:
    return _need("train_photos")


@pytest.fixture(scope="module")
def one_thread():
    """Two intra-op threads on a shared two-core box spin against each other; one is faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torchrun():
    """``run(script, dump, *args)``: ``script`` under torchrun as two CPU ranks (gloo) that may write to ``dump``
    (made here, named by $DUMP), with the repository importable."""
    def run(script: Path, dump: Path, *args: str) -> subprocess.CompletedProcess:
        dump.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DUMP": str(dump), "OMP_NUM_THREADS": "1",
               "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               "2", str(script), *args], capture_output=True, text=True, env=env, timeout=240)
    return run


def write_pack(path: Path, hrs: Iterable[np.ndarray], scales: Sequence[int] = (2,)) -> Path:
    """A training file in div2h5's layout: each HR image as ``HR/k`` (k from 0), its MATLAB-bicubic LR as
    ``X{s}/k``."""
    with h5py.File(path, "w") as f:
        for k, hr in enumerate(hrs):
            f[f"HR/{k}"] = hr
            for s in scales:
                f[f"X{s}/{k}"] = imresize(hr, 1 / s)
    return path


def write_valid_set(root: Path, hrs: Iterable[np.ndarray], scales: Sequence[int] = (2,)) -> Path:
    """A SelfExSR-style test set: ``image_SRF_{s}/img_{k:03d}_SRF_{s}_HR.png`` (k from 1) and its LR partner."""
    for k, hr in enumerate(hrs, 1):
        for s in scales:
            write_image(root / f"image_SRF_{s}" / f"img_{k:03d}_SRF_{s}_HR.png", hr)
            write_image(root / f"image_SRF_{s}" / f"img_{k:03d}_SRF_{s}_LR.png", imresize(hr, 1 / s))
    return root


@pytest.fixture(scope="session")
def x2_pack(tmp_path_factory) -> Path:
    """Three 40x40 noise HR images with their x2 LR, in div2h5's layout: a training file for tiny runs."""
    rng = np.random.default_rng(0)
    return write_pack(tmp_path_factory.mktemp("x2_pack") / "tiny.h5",
                      (rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)))


@pytest.fixture(scope="session")
def x2_valid(tmp_path_factory) -> Path:
    """A two-image SelfExSR-style x2 validation set of 24x24 noise HR images."""
    rng = np.random.default_rng(1)
    return write_valid_set(tmp_path_factory.mktemp("x2_valid") / "Tiny",
                           (rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(2)))
