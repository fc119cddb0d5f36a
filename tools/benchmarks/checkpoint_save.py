"""What durability costs: saving a real training checkpoint with and without the fsyncs of dsrnet/files.py.

    python -m tools.benchmarks.checkpoint_save --dir checkpoint --repeats 15

The checkpoint is the Solver's own (x2 weights, Adam state for every parameter, RNG states), about 11 MB.
Saves alternate between the two ways (A B A B ...), so a busy machine slows both alike; the medians are
printed. Without fsync the data may still sit in the page cache when the call returns, which is what the
second row times.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.files import ensure_writable
from dsrnet.train.checkpoints import save_checkpoint
from tools.benchmarks.report import require_at_least
from dsrnet.train.rng import capture_rng_states
from model import Net


def checkpoint() -> dict:
    """A training checkpoint as the Solver writes it: weights plus Adam state for every parameter (after a
    while both gated branches have trained, so every parameter has its two moments)."""
    net = Net(scale=2, multi_scale=False, group=1)
    optim = torch.optim.Adam(net.parameters(), lr=1e-4)
    for param in net.parameters():
        param.grad = torch.randn_like(param)
    optim.step()
    return {"model": net.state_dict(), "scale": 2, "group": 1, "step": 1,
            "train_state": {"optimizer": optim.state_dict(), "rng": capture_rng_states()}}


def time_saves(folder: Path, repeats: int) -> tuple[dict[str, list[float]], int]:
    """Seconds per save, fsync on and off in turn, each into a fresh file name; and the file's bytes."""
    ckpt, times, size = checkpoint(), {"with fsync": [], "without fsync": []}, 0
    for i in range(repeats):
        for label, spent in times.items():
            path = folder / f"bench_{label[:4]}_{i}.pth"
            with mock.patch.object(os, "fsync", os.fsync if label == "with fsync" else lambda _fd: None):
                start = time.perf_counter()
                save_checkpoint(path, ckpt)
                spent.append(time.perf_counter() - start)
            size = path.stat().st_size
            path.unlink()
    return times, size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dir", default="checkpoint", help="folder on the disk checkpoints go to (default checkpoint)")
    p.add_argument("--repeats", type=int, default=15, help="saves per way (default 15)")
    cfg = p.parse_args(argv)
    require_at_least(cfg, repeats=1)
    ensure_writable(Path(cfg.dir) / "probe")
    Path(cfg.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cfg.dir) as folder:
        times, size = time_saves(Path(folder), cfg.repeats)
    print(f"checkpoint save ({size / 1e6:.1f} MB) into {Path(cfg.dir).resolve()}, {cfg.repeats} interleaved "
          "repeats, median (min-max) ms:")
    for label, t in times.items():
        print(f"  {label:14s} {statistics.median(t) * 1e3:8.1f}  ({min(t) * 1e3:.1f}-{max(t) * 1e3:.1f})")


if __name__ == "__main__":
    run_cli(main)
