"""Memory layout: NCHW against channels_last (NHWC) for the inference net, per scale, size and precision.

    python -m tools.benchmarks.memory_format --device cuda --report results/memory_format_cuda.md
    python -m tools.benchmarks.memory_format --sizes 256 512   # CPU: float32, and bf16 where it is native

Which layout is faster depends on the backend and the precision: oneDNN runs NHWC natively on CPUs, while
cuDNN has different kernels for float32, TF32 and bf16. This measures it instead of assuming it. Random
weights (time does not depend on their values), one net per layout holding the same weights, batch 1,
LR = HR // scale, ``torch.inference_mode()``; medians after warm-up, the two layouts interleaved round by
round. cuDNN's autotuner stays off unless ``--cudnn_benchmark``, as in ``sample.py``.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from dsrnet.cli import HelpFormatter, pick_device, run_cli
from dsrnet.errors import InputError
from dsrnet.files import ensure_writable
from dsrnet.provenance import environment
from model.dsrnet import SCALES, Net
from model.precision import bf16_supported, tf32
from tools.benchmarks.report import printed_to, provenance, require_at_least
from tools.benchmarks.timing import interleaved

ROOT = Path(__file__).resolve().parents[2]

LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def precisions(device: torch.device) -> list[str]:
    """float32 always; TF32 on CUDA; bf16 where it is native."""
    return ["fp32"] + (["tf32"] if device.type == "cuda" else []) + (["bf16"] if bf16_supported(device) else [])


def layout_times(scale: int, hr: int, precision: str, device: torch.device, rounds: int,
                 warmup: int) -> tuple[dict[str, float], float]:
    """Median seconds per layout, and the max abs difference between their outputs."""
    torch.manual_seed(scale)
    ref = Net(scale=scale).eval()
    nets = {name: copy.deepcopy(ref).to(device, memory_format=fmt) for name, fmt in LAYOUTS.items()}
    x = torch.rand(1, 3, hr // scale, hr // scale, device=device)
    inputs = {name: x.contiguous(memory_format=fmt) for name, fmt in LAYOUTS.items()}

    def run(name: str) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return nets[name](inputs[name], scale)

    with tf32(precision == "tf32"):
        diff = float((run("NCHW").float() - run("channels_last").float()).abs().max())
        times = interleaved({name: (lambda n=name: run(n)) for name in LAYOUTS}, rounds, warmup, device)
    return times, diff


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--scales", type=int, nargs="+", choices=SCALES, default=list(SCALES), help="scales to time")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="HR sizes (square)")
    p.add_argument("--rounds", type=int, help="timed rounds (default 20 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--cudnn_benchmark", action="store_true", help="let cuDNN autotune its kernels")
    p.add_argument("--report", help="also write the printed markdown here")
    cfg = p.parse_args(argv)
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    cfg.rounds = cfg.rounds if cfg.rounds is not None else (20 if cuda else 3)
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (5 if cuda else 1)
    require_at_least(cfg, rounds=1, warmup=0)
    if min(cfg.sizes) < 1:
        raise InputError(f"--sizes must be 1 or more, got {min(cfg.sizes)}")
    small = [(s, hr) for s in cfg.scales for hr in cfg.sizes if hr // s < 1]
    if small:
        raise InputError(f"HR {small[0][1]} at x{small[0][0]} leaves no LR pixel: raise --sizes")
    if cuda:
        torch.cuda.set_device(device)  # synchronize() follows the current device
    if cfg.report:
        ensure_writable(cfg.report)
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    env = environment()
    with printed_to(cfg.report):
        print(provenance(env, torch.get_num_threads()))
        print(f"batch 1, medians of {cfg.rounds} interleaved rounds after {cfg.warmup}, cuDNN autotuning "
              f"{'on' if cfg.cudnn_benchmark else 'off'}. ratio = NCHW ms / channels_last ms "
              "(above 1: channels_last is faster). max abs diff between the layouts' outputs.")
        print("| scale | HR | LR | precision | NCHW ms | channels_last ms | ratio | max abs diff |\n"
              "|---|---|---|---|---|---|---|---|")
        for scale in cfg.scales:
            for hr in cfg.sizes:
                for precision in precisions(device):
                    t, diff = layout_times(scale, hr, precision, device, cfg.rounds, cfg.warmup)
                    print(f"| x{scale} | {hr} | {hr // scale} | {precision} | {t['NCHW'] * 1e3:.2f} | "
                          f"{t['channels_last'] * 1e3:.2f} | {t['NCHW'] / t['channels_last']:.2f} | {diff:.1e} |",
                          flush=True)


if __name__ == "__main__":
    run_cli(main)
