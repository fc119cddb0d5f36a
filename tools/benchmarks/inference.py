"""Inference speed: the authors' eager forward vs this repository's default path vs the machine's roof.

    python -m tools.benchmarks.inference                       # 128x128 LR at x2, the size docs/speed.md quotes
    python -m tools.benchmarks.inference --compile             # also time torch.compile (opt-in: slow to build)
    python -m tools.benchmarks.inference --end_to_end dataset/benchmark/Set14

All paths run in one process, interleaved round by round so that a busy machine slows them alike;
times are medians after warm-up (CUDA synchronised). The roof is a 2048^3 float32 matmul (8192^3 on
CUDA, where a smaller one cannot fill the GPU).
The authors' sample.py never turns autograd off (its weights are nn.Parameters; it calls
``net(lr).detach()``), so the baseline is timed both that way and under ``torch.no_grad()``; both
compute the same gate branch as the default path, so that their outputs can be compared: the trained
"selected" one by default; ``--branch fixed`` times the all-3x3 branch (28.07 GFLOP at 128x128) that
the authors' batch-1 Gumbel gate mostly picks.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import sample
from dsrnet.cli import HelpFormatter, pick_device, run_cli
from dsrnet.data.layouts import find_test_set, load_pair
from dsrnet.errors import InputError
from dsrnet.evaluation import require_scorable
from dsrnet.files import ensure_writable
from dsrnet.metrics import psnr_y, ssim_y, to_uint8
from dsrnet.provenance import environment
from model import load_checkpoint, read_checkpoint, scale_name
from model.dsrnet import Net, is_authors_state_dict
from model.inference import image_to_tensor, super_resolve
from model.precision import bf16_supported, fast_memory_format, memory_format_of, set_tf32, tf32
from model.reference import reference_forward
from tools.benchmarks.complexity import count_flops, meta_net
from tools.benchmarks.report import WEIGHTS_CANDIDATES, cpu_flags_line, printed_to, provenance, require_at_least
from tools.benchmarks.timing import interleaved, timed

BF16_PATH = "sample.py --bf16 (opt-in)"
TF32_PATH = "sample.py --tf32 (opt-in, CUDA)"
ROOF_PRECISIONS = ("fp32", "tf32", "bf16")
# How far the roofs measured before and after the timed runs may differ (a share of the higher one) before
# the '% of roof' figures are called unreliable: the committed CPU reports' fp32 roofs, taken on different
# days, span 179-189 GFLOP/s (5 %); a loaded machine gave 41-60 in eight back-to-back measurements.
ROOF_TOLERANCE = 0.10

def find_weights(path: str | None) -> Path:
    """``path`` or the first default that exists, checked to be a readable x2 checkpoint."""
    candidates = [Path(path)] if path else WEIGHTS_CANDIDATES
    for c in candidates:
        if c.is_file():
            held = read_checkpoint(c)["scale"]
            if held != 2:
                raise InputError(f"{c} holds a {scale_name(held)} model; the benchmarks time x2: "
                                 "pass --ckpt_path to the authors' x2 file (DSRNet_x2_600000.pth)")
            return c
    raise InputError(f"no x2 weights at {', '.join(map(str, candidates))}: pass --ckpt_path "
                     "(the baseline runs on the authors' raw keys)")


def authors_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The file's tensors under the authors' raw keys, which their forward (the baseline) reads."""
    raw = torch.load(weights, map_location="cpu", weights_only=True)  # readable: find_weights read it
    if not is_authors_state_dict(raw):
        raise InputError(f"the baseline needs the authors' x2 file (raw keys conv1.0.weight ...); {weights} "
                         "is not one (e.g. a checkpoint of this repository's trainer): pass --ckpt_path to "
                         "DSRNet_x2_600000.pth")
    return raw


def matmul_roof(device: torch.device, precision: str = "fp32", n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of an n^3 matmul: what this machine reaches on dense work in ``precision`` (fp32, tf32, bf16)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.rand(n, n, device=device, dtype=dtype), torch.rand(n, n, device=device, dtype=dtype)
    before, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, precision == "tf32"
    try:
        a @ b
        return 2 * n ** 3 / min(timed(lambda: a @ b, device) for _ in range(rounds)) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def measure_roofs(device: torch.device, precisions: set[str], n: int) -> dict[str, float]:
    """:func:`matmul_roof` of each precision the paths run in (fp32 first)."""
    return {prec: matmul_roof(device, prec, n) for prec in ROOF_PRECISIONS if prec in precisions}


def roof_list(roofs: dict[str, float]) -> str:
    """'188 GFLOP/s in fp32, 421 in bf16'."""
    return ", ".join(f"{gflops:.0f}{' GFLOP/s' if k == 0 else ''} in {prec}"
                     for k, (prec, gflops) in enumerate(roofs.items()))


def roof_warnings(before: dict[str, float], after: dict[str, float], shares: dict[str, tuple[str, float]],
                  tolerance: float = ROOF_TOLERANCE) -> list[str]:
    """Why the '% of roof' column cannot be trusted, one line per reason; none when it can.

    ``before``/``after``: GFLOP/s per precision, measured around the timed runs; ``shares``: each path's
    precision and % of the roof. A roof that moved by more than ``tolerance`` (a share of the higher
    measurement), or a path above 100 % of it, means the machine's speed changed under the run.
    """
    why = "warning: % of roof is unreliable (machine busy or CPU frequency changed): "
    lines = []
    for prec, first in before.items():
        apart = abs(first - after[prec]) / max(first, after[prec])
        if apart > tolerance:
            lines.append(f"{why}the {prec} roof measured {first:.0f} GFLOP/s before the timed runs and "
                         f"{after[prec]:.0f} after, {100 * apart:.0f} % apart (tolerance {100 * tolerance:.0f} %)")
    for name, (prec, share) in shares.items():
        if share > 100:
            lines.append(f"{why}{name} ran at {share:.0f} % of the {prec} roof, more than the machine can "
                         f"({before[prec]:.0f} GFLOP/s before the timed runs, {after[prec]:.0f} after)")
    return lines


def as_parameters(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint as the authors' nn.Module holds it: float tensors that require grad."""
    return {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in raw.items()}


def forward_benchmark(cfg: argparse.Namespace, weights: Path, raw: dict[str, torch.Tensor],
                      device: torch.device) -> None:
    params = as_parameters(raw)
    fixed = cfg.branch == "fixed"
    lr_u8 = np.random.default_rng(0).integers(0, 256, (cfg.size, cfg.size, 3), dtype=np.uint8)
    x_nchw = image_to_tensor(lr_u8, device).contiguous()

    def as_written() -> torch.Tensor:  # their sample.py: no torch.no_grad(), net(lr).detach()
        return reference_forward(params, x_nchw, use_fixed=fixed, decide_on_host=True).detach()

    def eager_no_grad() -> torch.Tensor:  # the same forward with autograd off
        with torch.no_grad():
            return reference_forward(raw, x_nchw, use_fixed=fixed, decide_on_host=True)

    def loaded(precision: str) -> Net:  # as sample.py loads it: in the layout that precision runs fastest in
        return load_checkpoint(weights, device=device, gate_mode=cfg.branch,
                               memory_format=fast_memory_format(device, precision))

    def default_path(net: torch.nn.Module, precision: str = "fp32") -> Callable[[], torch.Tensor]:
        """sample.py's forward in ``precision``, the input in the net's layout."""
        layout = memory_format_of(net)

        def run() -> torch.Tensor:
            with tf32(precision == "tf32"), torch.inference_mode(), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                return net(image_to_tensor(lr_u8, device, layout), 2).float()
        return run

    net = loaded("fp32")
    paths = {"authors' code as written (autograd on)": as_written,
             "authors' forward under no_grad": eager_no_grad, "default path (fp32)": default_path(net)}
    if bf16_supported(device):
        paths[BF16_PATH] = default_path(loaded("bf16"), "bf16")
    if device.type == "cuda":
        paths[TF32_PATH] = default_path(loaded("tf32"), "tf32")
    if cfg.compile:
        compiled = torch.compile(net, dynamic=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(image_to_tensor(lr_u8, device, memory_format_of(net)), 2)
        print(f"torch.compile build: {time.perf_counter() - t0:.1f} s (first call)")
        paths["torch.compile"] = default_path(compiled)
    ref = eager_no_grad()
    diffs = {name: float((fn() - ref).abs().max()) for name, fn in paths.items()}
    flops = count_flops(meta_net(2, cfg.branch), (cfg.size, cfg.size), 2)[0]
    precision = {name: {BF16_PATH: "bf16", TF32_PATH: "tf32"}.get(name, "fp32") for name in paths}
    roof_n = 8192 if device.type == "cuda" else 2048
    roofs = measure_roofs(device, set(precision.values()), roof_n)
    times = interleaved(paths, cfg.rounds, cfg.warmup, device)
    roofs_after = measure_roofs(device, set(precision.values()), roof_n)
    written, no_grad = times["authors' code as written (autograd on)"], times["authors' forward under no_grad"]
    print(f"x2, LR {cfg.size}x{cfg.size}, {cfg.branch} branch: {flops / 1e9:.2f} GFLOP per forward "
          f"(torch.utils.flop_counter); roof: a {roof_n}^3 matmul, {roof_list(roofs)} "
          f"(before the timed runs; {roof_list(roofs_after)} after)")
    print("| path | ms | vs as written | vs no_grad eager | GFLOP/s | % of roof | max abs diff |\n"
          "|---|---|---|---|---|---|---|")
    shares = {name: (precision[name], 100 * flops / t / 1e9 / roofs[precision[name]]) for name, t in times.items()}
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:.1f} | {written / t:.2f}x | {no_grad / t:.2f}x | {flops / t / 1e9:.0f} | "
              f"{shares[name][1]:.0f} % | {diffs[name]:.1e} |")
    print("% of roof: against the matmul roof of the path's own precision, measured before the timed runs. "
          "max abs diff: against the no_grad eager output on the [0, 1] scale; float32 paths must stay <= 1e-4, "
          "tf32 and bf16 cannot")
    for line in roof_warnings(roofs, roofs_after, shares):
        print(line)


def authors_loop(net_raw: dict, pairs, out: Path, device: torch.device) -> float:
    """The original sample.py's loop shape: per image read, forward (batch 1), save SR and HR PNGs, score
    (with our metric functions, which give their numbers). Autograd follows ``net_raw``, as in theirs."""
    from PIL import Image


    scores = []
    for ts, pair in pairs:
        hr, lr = load_pair(ts, pair)
        require_scorable(pair.name, hr, ts.scale)
        sr = reference_forward(net_raw, image_to_tensor(lr, device).contiguous(), use_fixed=False,
                               decide_on_host=True)[0].detach()
        sr_u8 = to_uint8(sr)
        Image.fromarray(sr_u8).save(out / f"{pair.name}_SR.png")
        Image.fromarray(hr).save(out / f"{pair.name}_HR.png")
        scores.append((psnr_y(sr_u8, hr, ts.scale), ssim_y(sr_u8, hr, ts.scale)))
    return float(np.mean([s[0] for s in scores]))


def end_to_end(cfg: argparse.Namespace, weights: Path, raw: dict[str, torch.Tensor], device: torch.device) -> None:
    import tempfile

    ts = find_test_set(cfg.end_to_end, 2)
    pairs = [(ts, p) for p in ts.pairs]
    sample_args = ["--ckpt_path", str(weights), "--test_data_dir", cfg.end_to_end, "--quiet", "--sample_dir"]
    loops = {
        "authors' loop as written (autograd on)": lambda tmp: authors_loop(as_parameters(raw), pairs, tmp, device),
        "authors' loop under no_grad": lambda tmp: torch.no_grad()(authors_loop)(raw, pairs, tmp, device),
        "sample.py": lambda tmp: sample.main(sample_args + [str(tmp)])[0].psnr,
    }
    if bf16_supported(device):
        loops[BF16_PATH] = lambda tmp: sample.main(sample_args + [str(tmp), "--bf16"])[0].psnr
    net, lrs = load_checkpoint(weights, device=device), [load_pair(ts, p)[1] for p in ts.pairs]
    loops["the default path's forwards alone (images in memory, nothing saved or scored)"] = \
        lambda tmp: [super_resolve(net, lr, 2) for lr in lrs] and math.nan
    rows = {}
    for name, run in loops.items():
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # sample.py's table
            t0 = time.perf_counter()
            psnr = run(Path(tmp))
            rows[name] = (time.perf_counter() - t0, psnr)
    written = rows["authors' loop as written (autograd on)"][0]
    print(f"end to end on {ts.name} x2 ({len(ts.pairs)} images, SR PNGs written, Y PSNR/SSIM):")
    print("| loop | seconds | share of as written | PSNR |\n|---|---|---|---|")
    for name, (seconds, psnr) in rows.items():
        print(f"| {name} | {seconds:.1f} | {seconds / written:.2f} | {'-' if math.isnan(psnr) else f'{psnr:.4f}'} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ckpt_path", help="the authors' x2 file (default: checkpoint/ or ../shared/weights/)")
    p.add_argument("--size", type=int, default=128, help="LR height and width")
    p.add_argument("--branch", choices=("selected", "fixed"), default="selected",
                   help="gate branch every path computes (default selected, the trained one)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (interleaved across paths)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(net)")
    p.add_argument("--end_to_end", metavar="TEST_SET", help="time sample.py vs the authors' loop on a test set")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--cuda", dest="device", action="store_const", const="cuda", help="the same as --device cuda")
    p.add_argument("--report", help="also write the printed markdown here (e.g. results/mine/speed.md; git ignores results/mine/)")
    cfg = p.parse_args(argv)
    require_at_least(cfg, size=1, rounds=1, warmup=0, threads=1)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # synchronize() and the memory figures follow the current device
    if cfg.report:
        ensure_writable(cfg.report)
    weights = find_weights(cfg.ckpt_path)
    raw = {k: v.to(device) for k, v in authors_state_dict(weights).items()}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_tf32(False)  # the float32 rows must be float32, not TF32
    env = environment()
    with printed_to(cfg.report):
        print(provenance(env, torch.get_num_threads()))
        if device.type == "cpu":
            print(cpu_flags_line())
        if cfg.end_to_end:
            end_to_end(cfg, weights, raw, device)
        else:
            forward_benchmark(cfg, weights, raw, device)


if __name__ == "__main__":
    run_cli(main)
