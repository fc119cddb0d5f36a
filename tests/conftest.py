"""Shared fixtures: the read-only reference material in ../shared, skipped with a reason when absent."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS_X2 = SHARED / "weights" / "DSRNet_x2_600000.pth"
BENCHMARK = SHARED / "data" / "benchmark"
TRAIN_PHOTOS = SHARED / "data" / "train" / "Sun-Hays80"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: reference material lives in ../shared (CI always has it)")
    return path


def need_set(benchmark_dir: Path, name: str) -> Path:
    """One test set of ../shared, skipped with a reason when absent (a GPU machine may carry only some)."""
    return _need(benchmark_dir / name)


@pytest.fixture(scope="session")
def weights_x2() -> Path:
    return _need(WEIGHTS_X2)


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    return _need(BENCHMARK)


@pytest.fixture(scope="session")
def train_photos() -> Path:
    return _need(TRAIN_PHOTOS)


@pytest.fixture(scope="module")
def one_thread():
    """Two intra-op threads on a shared two-core box spin against each other; one is faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
