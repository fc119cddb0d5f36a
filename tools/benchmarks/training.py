"""Training throughput: the Solver against a naive loop (no workers, NCHW, fp32), same data and net.

    python -m tools.benchmarks.training --train_data_path PACK.h5 --scale 2 --steps 60

All loops run in this process, one after the other, on the same HDF5 file with the same batch and
patch; each is timed after a few warm-up steps. The Solver runs in float32, with ``--amp bf16`` where
the hardware has native bfloat16, and with ``--amp fp16`` on CUDA; on CUDA also with ``--deterministic``
(cuDNN's deterministic kernels, no autotuning: what bit-exact resume costs). Its figures come from its own
training loop (`Solver.fit`), so they include everything a real run does per step. On an Ampere+ GPU
the float32 rows, like any training here, let cuDNN use TF32 (PyTorch's default).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.data.train_data import TrainDataset
from dsrnet.errors import InputError
from dsrnet.files import ensure_writable
from dsrnet.provenance import environment
from model import SCALES, Net
from model.precision import bf16_supported
from solver import Solver, parse_args
from tools.benchmarks.report import printed_to, provenance, require_at_least

ROOT = Path(__file__).resolve().parents[2]


def naive_steps_per_s(h5: str, scale: int, batch: int, patch: int, steps: int, warmup: int) -> float:
    """What a plain script does: items fetched inline, NCHW float32, Adam + MSE + clip."""
    data = TrainDataset(h5, patch, scale, seed=0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the Solver trains
    net = Net(scale=scale, gate_mode="sample").train().to(device)
    optim = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    t0 = 0.0
    for k in range(warmup + steps):
        if k == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        items = [data[k * batch + i][0] for i in range(batch)]
        hr, lr = torch.stack([h for h, _ in items]).to(device), torch.stack([x for _, x in items]).to(device)
        loss = nn.functional.mse_loss(net(lr, scale), hr)
        optim.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optim.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def solver_steps_per_s(h5: str, scale: int, batch: int, patch: int, steps: int, warmup: int,
                       workers: int, extra: list[str]) -> float:
    """The repository's loop: warm up ``warmup`` steps, then resume and time ``steps`` more."""
    with tempfile.TemporaryDirectory() as ckpt_dir:
        common = ["--train_data_path", h5, "--scale", str(scale), "--batch_size", str(batch),
                  "--patch_size", str(patch), "--ckpt_dir", ckpt_dir, "--num_workers", str(workers),
                  "--print_interval", str(10 ** 9), "--log_interval", str(10 ** 9), *extra]
        Solver(parse_args(common + ["--max_steps", str(warmup)])).fit()
        solver = Solver(parse_args(common + ["--max_steps", str(warmup + steps), "--resume"]))
        t0 = time.perf_counter()
        solver.fit()  # includes the final checkpoint write, as a real run's last step does
        return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--train_data_path", required=True, help="an HDF5 file made by dataset/div2h5.py")
    p.add_argument("--scale", type=int, default=2, help="upscaling factor of the net and the patches")
    p.add_argument("--batch_size", type=int, default=16, help="patches per step")
    p.add_argument("--patch_size", type=int, default=32, help="LR patch side")
    p.add_argument("--steps", type=int, default=60, help="timed steps per loop")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--num_workers", type=int, default=1, help="DataLoader workers")
    p.add_argument("--report", help="also write the printed markdown here (e.g. results/speed_training.md)")
    cfg = p.parse_args(argv)
    if cfg.scale not in SCALES:
        raise InputError(f"--scale must be {', '.join(map(str, SCALES[:-1]))} or {SCALES[-1]}, got {cfg.scale}")
    require_at_least(cfg, batch_size=1, patch_size=1, steps=1, warmup=1, num_workers=0)
    if cfg.report:
        ensure_writable(cfg.report)
    env = environment()
    args = (cfg.train_data_path, cfg.scale, cfg.batch_size, cfg.patch_size, cfg.steps, cfg.warmup)
    with contextlib.redirect_stdout(io.StringIO()):  # the Solver's own log lines
        loops = {"naive (inline data, NCHW, fp32)": naive_steps_per_s(*args),
                 f"Solver ({cfg.num_workers} workers, fp32)": solver_steps_per_s(*args, cfg.num_workers, [])}
        if torch.cuda.is_available():  # what bit-exact resume costs on a GPU (CPU runs are deterministic anyway)
            loops[f"Solver ({cfg.num_workers} workers, fp32, --deterministic)"] = \
                solver_steps_per_s(*args, cfg.num_workers, ["--deterministic"])
        if bf16_supported(torch.device("cuda" if torch.cuda.is_available() else "cpu")):
            loops[f"Solver ({cfg.num_workers} workers, --amp bf16)"] = \
                solver_steps_per_s(*args, cfg.num_workers, ["--amp", "bf16"])
        if torch.cuda.is_available():  # fp16 autocast (with its grad scaler) is CUDA-only
            loops[f"Solver ({cfg.num_workers} workers, --amp fp16)"] = \
                solver_steps_per_s(*args, cfg.num_workers, ["--amp", "fp16"])
    naive = next(iter(loops.values()))
    with printed_to(cfg.report):
        print(provenance(env, torch.get_num_threads()))
        print(f"x{cfg.scale}, batch {cfg.batch_size}, LR patch {cfg.patch_size}, {cfg.steps} timed steps")
        print("| loop | steps/s | samples/s | vs naive |\n|---|---|---|---|")
        for name, rate in loops.items():
            print(f"| {name} | {rate:.2f} | {rate * cfg.batch_size:.1f} | {rate / naive:.2f}x |")


if __name__ == "__main__":
    run_cli(main)
