"""Inference speed: the authors'-style eager forward vs this repository's default path vs the machine's roof.

    python benchmarks/inference.py                       # 128x128 LR at x2, the issue's anchor
    python benchmarks/inference.py --compile             # also time torch.compile (opt-in: slow to build)
    python benchmarks/inference.py --end_to_end ../shared/data/benchmark/Set14

All paths run in one process, interleaved round by round so that a busy machine slows them alike;
times are medians after warm-up (CUDA synchronised). The roof is a 2048^3 float32 matmul.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.complexity import count_flops, meta_net  # noqa: E402
from errors import InputError, run_cli  # noqa: E402
from model import load_checkpoint  # noqa: E402
from model.inference import image_to_tensor  # noqa: E402
from model.reference import reference_forward  # noqa: E402
from runinfo import environment  # noqa: E402

DEFAULT_WEIGHTS = [ROOT / "checkpoint" / "DSRNet_x2_600000.pth", ROOT.parent / "shared" / "weights" / "DSRNet_x2_600000.pth"]


def find_weights(path: str | None) -> Path:
    candidates = [Path(path)] if path else DEFAULT_WEIGHTS
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(f"no x2 weights at {', '.join(map(str, candidates))}: pass --ckpt_path "
                     "(the baseline runs on the authors' raw keys)")


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(paths: dict[str, Callable[[], object]], rounds: int, warmup: int,
                device: torch.device) -> dict[str, float]:
    """Median seconds per path; each round times every path once, in turn."""
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_roof(device: torch.device, n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of an n^3 float32 matmul: what this machine's BLAS reaches on dense work."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    a @ b
    return 2 * n ** 3 / min(timed(lambda: a @ b, device) for _ in range(rounds)) / 1e9


def forward_benchmark(cfg: argparse.Namespace, device: torch.device) -> None:
    weights = find_weights(cfg.ckpt_path)
    raw = {k: v.to(device) for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    net = load_checkpoint(weights, device=device)
    lr_u8 = np.random.default_rng(0).integers(0, 256, (cfg.size, cfg.size, 3), dtype=np.uint8)
    x_nchw = image_to_tensor(lr_u8, device).contiguous()

    def baseline() -> torch.Tensor:  # eager NCHW, one op at a time, gate read back to the host
        with torch.no_grad():
            return reference_forward(raw, x_nchw, use_fixed=False, decide_on_host=True)

    def default() -> torch.Tensor:
        with torch.inference_mode():
            return net(image_to_tensor(lr_u8, device), 2)

    paths = {"baseline (authors' eager)": baseline, "default path": default}
    if cfg.compile:
        compiled = torch.compile(net, dynamic=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(image_to_tensor(lr_u8, device), 2)
        print(f"torch.compile build: {time.perf_counter() - t0:.1f} s (first call)")

        def compiled_path() -> torch.Tensor:
            with torch.inference_mode():
                return compiled(image_to_tensor(lr_u8, device), 2)
        paths["torch.compile"] = compiled_path
    ref = baseline()
    diffs = {name: float((fn() - ref).abs().max()) for name, fn in paths.items()}
    flops = count_flops(meta_net(2), (cfg.size, cfg.size), 2)[0]
    roof = matmul_roof(device)
    times = interleaved(paths, cfg.rounds, cfg.warmup, device)
    base = times["baseline (authors' eager)"]
    print(f"x2, LR {cfg.size}x{cfg.size}, selected branch: {flops / 1e9:.2f} GFLOP per forward "
          f"(torch.utils.flop_counter); roof {roof:.0f} GFLOP/s (2048^3 fp32 matmul)")
    print(f"| path | ms | vs baseline | GFLOP/s | % of roof | max abs diff |\n|---|---|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:.1f} | {base / t:.2f}x | {flops / t / 1e9:.0f} | "
              f"{100 * flops / t / 1e9 / roof:.0f} % | {diffs[name]:.1e} |")


def authors_loop(net_raw: dict, pairs, out: Path, device: torch.device) -> float:
    """The original sample.py's loop shape: per image read, forward (batch 1), save SR and HR PNGs, score."""
    from PIL import Image

    from dataset.layouts import load_pair
    from metrics import psnr_y, ssim_y, to_uint8

    scores = []
    for ts, pair in pairs:
        hr, lr = load_pair(ts, pair)
        with torch.no_grad():
            sr = reference_forward(net_raw, image_to_tensor(lr, device).contiguous(), use_fixed=False,
                                   decide_on_host=True)[0]
        sr_u8 = to_uint8(sr)
        Image.fromarray(sr_u8).save(out / f"{pair.name}_SR.png")
        Image.fromarray(hr).save(out / f"{pair.name}_HR.png")
        scores.append((psnr_y(sr_u8, hr, ts.scale), ssim_y(sr_u8, hr, ts.scale)))
    return float(np.mean([s[0] for s in scores]))


def end_to_end(cfg: argparse.Namespace, device: torch.device) -> None:
    import tempfile

    import sample
    from dataset.layouts import find_test_set

    weights = find_weights(cfg.ckpt_path)
    raw = {k: v.to(device) for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    ts = find_test_set(cfg.end_to_end, 2)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        authors_psnr = authors_loop(raw, [(ts, p) for p in ts.pairs], Path(tmp), device)
        authors_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        (ours,) = sample.main(["--ckpt_path", str(weights), "--test_data_dir", cfg.end_to_end,
                               "--sample_dir", tmp, "--quiet"])
        ours_s = time.perf_counter() - t0
    print(f"end to end on {ts.name} x2 ({len(ts.pairs)} images, SR PNGs written, Y PSNR/SSIM):")
    print(f"| loop | seconds | PSNR |\n|---|---|---|\n| authors' per-image loop | {authors_s:.1f} | "
          f"{authors_psnr:.4f} |\n| sample.py | {ours_s:.1f} | {ours.psnr:.4f} |")
    print(f"sample.py takes {ours_s / authors_s:.2f} of the authors' loop time")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", help="the authors' x2 file (default: checkpoint/ or ../shared/weights/)")
    p.add_argument("--size", type=int, default=128, help="LR height and width")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(net)")
    p.add_argument("--end_to_end", metavar="TEST_SET", help="time sample.py vs the authors' loop on a test set")
    p.add_argument("--cuda", action="store_true", help="run on the GPU")
    cfg = p.parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.cuda and not torch.cuda.is_available():
        raise InputError("--cuda given but no CUDA device is available")
    device = torch.device("cuda" if cfg.cuda else "cpu")
    env = environment()
    print(f"# {env['command']}\n# torch {env['torch']}, {env['device_name'] or env['platform']}, "
          f"{torch.get_num_threads()} threads, git {env['git_commit']}")
    if cfg.end_to_end:
        end_to_end(cfg, device)
    else:
        forward_benchmark(cfg, device)


if __name__ == "__main__":
    run_cli(main)
