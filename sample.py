"""Evaluate DSRNet (and/or the bicubic baseline) on benchmark sets: PSNR/SSIM on Y, SR images, reports.

    python sample.py --ckpt_path checkpoint/DSRNet_x2_600000.pth --test_data_dir dataset/benchmark/Set5
    python sample.py --bicubic --scale 2 3 4 --test_data_dir dataset/benchmark/Set5 dataset/benchmark/B100
    python sample.py --ckpt_path checkpoint/DSRNet_x2_600000.pth --input my_photo.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dataset.imresize import imresize
from dataset.io import atomic_write_bytes, ensure_writable, read_image, write_image
from dataset.layouts import find_test_set, list_input_images
from dsrnet.errors import InputError, run_cli
from dsrnet.evaluation import (
    SetResult,
    evaluate_routed,
    evaluate_set,
    markdown_table,
    method_sr_folder,
    per_image_csv_beside,
    write_per_image_csv,
)
from dsrnet.metrics import QUANTIZE_MODES, to_uint8
from dsrnet.provenance import environment
from model import GATE_MODES, file_sha256, load_checkpoint
from model.inference import bf16_supported, fast_memory_format, set_tf32, super_resolve, tf32_supported

ROOT = Path(__file__).resolve().parent

DEFAULT_CKPT = ROOT / "checkpoint" / "DSRNet_x2_600000.pth"
DEFAULT_SETS = ("Set5", "Set14", "B100", "BSD100", "Urban100")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dsrnet", help="model module under model/ (only dsrnet)")
    p.add_argument("--ckpt_path", help=f"checkpoint (authors' or ours); default {DEFAULT_CKPT.relative_to(ROOT)}")
    p.add_argument("--test_data_dir", nargs="+", help="one or more test-set folders (any supported layout); "
                   "default: dataset/benchmark/{Set5,Set14,B100,BSD100,Urban100} where present")
    p.add_argument("--sample_dir", default="results/sr",
                   help="SR images go to SAMPLE_DIR/<model>/<dataset>/x<s>/<method>/ (default results/sr)")
    p.add_argument("--scale", type=int, nargs="+", help="default: the checkpoint's scale")
    p.add_argument("--shave", type=int, help="border pixels left out of PSNR/SSIM (default: the scale)")
    p.add_argument("--group", type=int, default=1, help="upsampler conv groups (the authors use 1)")
    p.add_argument("--cuda", action="store_true", help="require CUDA (it is used whenever available anyway)")
    p.add_argument("--gate", choices=GATE_MODES, default="selected",
                   help="gate mode (see README); 'learned' routes each image by the gate's noise-free decision")
    p.add_argument("--seed", type=int, default=0, help="seed of the 'sample' gate mode")
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default="truncate", help="SR float -> uint8")
    p.add_argument("--bicubic", action="store_true", help="add the MATLAB-bicubic baseline rows")
    p.add_argument("--self_ensemble", action="store_true", help="x8 flips/rotations ('+' results)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast: faster on Ampere+ GPUs and bf16-capable CPUs; scores differ slightly "
                        "from the float32 protocol (see README)")
    p.add_argument("--tf32", action="store_true",
                   help="let cuDNN run float32 convolutions in TF32 on Ampere+ GPUs (PyTorch's default, faster; "
                        "scores may differ slightly from IEEE float32, which is used without this flag)")
    p.add_argument("--tile", type=int, help="run in overlapping LR tiles of this size (large images)")
    p.add_argument("--tile_overlap", type=int, default=24, help="LR pixels of context around each tile")
    p.add_argument("--input", help="image or folder to upscale without HR (writes SR images only)")
    p.add_argument("--report", help="write results JSON here (plus .md summary and _per_image.csv)")
    p.add_argument("--no_save", action="store_true", help="do not write SR images")
    p.add_argument("--workers", type=int, default=2, help="threads for decoding, scoring and saving")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def pick_device(require_cuda: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if require_cuda:
        raise InputError("--cuda was given but no CUDA device is available; drop --cuda to run on CPU")
    return torch.device("cpu")


def default_test_dirs() -> list[str]:
    found = [str(ROOT / "dataset" / "benchmark" / n) for n in DEFAULT_SETS
             if (ROOT / "dataset" / "benchmark" / n).is_dir()]
    if not found:
        raise InputError("no test sets: pass --test_data_dir, or put Set5/Set14/B100 (or BSD100)/Urban100 under "
                         "dataset/benchmark/ (see dataset/README.md)")
    return found


def resolve_checkpoint(cfg: argparse.Namespace) -> Path | None:
    if cfg.ckpt_path:
        return Path(cfg.ckpt_path)
    if cfg.bicubic:
        return None
    if not DEFAULT_CKPT.is_file():
        raise InputError(f"no checkpoint: pass --ckpt_path, or put the authors' weights at {DEFAULT_CKPT} "
                         "(see checkpoint/README.md); --bicubic alone runs the baseline")
    return DEFAULT_CKPT


def main(argv: list[str] | None = None) -> list[SetResult]:
    cfg = parse_args(argv)
    if cfg.model != "dsrnet":
        raise InputError(f"unknown --model {cfg.model!r}; this repository provides 'dsrnet'")
    if cfg.scale and min(cfg.scale) < 2:
        raise InputError(f"--scale {' '.join(map(str, cfg.scale))}: each scale must be 2 or more")
    if cfg.tile_overlap < 0:
        raise InputError(f"--tile_overlap must be >= 0, got {cfg.tile_overlap}")
    if cfg.tile is not None and cfg.tile <= 2 * cfg.tile_overlap:
        raise InputError(f"--tile {cfg.tile} must exceed twice --tile_overlap ({cfg.tile_overlap})")
    if cfg.report:  # all three files, before any work, so that a report is never left in part
        report = Path(cfg.report)
        for path in (report, report.with_suffix(".md"), per_image_csv_beside(report)):
            ensure_writable(path)
    if not cfg.no_save:
        ensure_writable(Path(cfg.sample_dir) / "SR.png")
    device = pick_device(cfg.cuda)
    set_tf32(cfg.tf32)
    if cfg.tf32 and not tf32_supported(device):
        raise InputError("--tf32 needs an Ampere or newer GPU (TF32 does not exist elsewhere, so it would change "
                         "nothing here): drop --tf32")
    if cfg.bf16 and not bf16_supported(device):
        raise InputError("--bf16 needs native bfloat16 (an Ampere or newer GPU, or a CPU with AVX512-BF16 or "
                         "AMX); this machine would emulate it, slower than float32: drop --bf16")
    ckpt = resolve_checkpoint(cfg)
    net = None
    if ckpt is not None:
        precision = "bf16" if cfg.bf16 else "tf32" if cfg.tf32 else "fp32"
        net = load_checkpoint(ckpt, scale=cfg.scale[0] if cfg.scale and len(cfg.scale) == 1 else None,
                              device=device, gate_mode=cfg.gate, gate_seed=cfg.seed, group=cfg.group,
                              memory_format=fast_memory_format(device, precision))
    scales = cfg.scale or ([net.scale] if net is not None and net.scale else None)
    if not scales:
        raise InputError("pass --scale (needed for --bicubic alone and for multi-scale checkpoints)")
    if net is not None and net.scale and any(s != net.scale for s in scales):
        raise InputError(f"checkpoint {ckpt} holds a x{net.scale} model; --scale {' '.join(map(str, scales))} "
                         f"asks for others: pass --scale {net.scale}")
    model_name = ckpt.stem if ckpt is not None else "bicubic"

    def dsrnet(scale: int):
        def upscale(lr):
            sr = super_resolve(net, lr, scale, tile=cfg.tile, tile_overlap=cfg.tile_overlap,
                               self_ensemble=cfg.self_ensemble, device=device, bf16=cfg.bf16)
            return to_uint8(sr, cfg.quantize)
        return upscale

    method = "DSRNet+" if cfg.self_ensemble else "DSRNet"
    out_root = Path(cfg.sample_dir) / model_name

    if cfg.input:
        for scale in scales:
            upscale = dsrnet(scale) if net is not None else (lambda lr, s=scale: imresize(lr, s))
            for path in list_input_images(cfg.input):
                dst = out_root / Path(cfg.input).stem / f"x{scale}" / f"{path.stem}_x{scale}_SR.png"
                write_image(dst, upscale(read_image(path)))
                print(dst)
        return []

    test_dirs = cfg.test_data_dir or default_test_dirs()
    test_sets = [find_test_set(d, s) for d in test_dirs for s in scales]
    results: list[SetResult] = []
    for ts in test_sets:
        jobs = [("Bicubic", lambda lr, s=ts.scale: imresize(lr, s))] if cfg.bicubic else []
        if net is not None:
            jobs.append((method, dsrnet(ts.scale)))
        for name, upscale in jobs:
            save = None if cfg.no_save else method_sr_folder(out_root, ts.name, ts.scale, name)
            how = dict(shave=cfg.shave, save_dir=save, workers=cfg.workers, progress=not cfg.quiet)
            r = (evaluate_set(upscale, ts, name, **how) if name == "Bicubic" else
                 evaluate_routed(upscale, net, ts, name, passes=8 if cfg.self_ensemble else 1, **how))
            results.append(r)
            print(f"{r.method:8s} {r.dataset:10s} x{r.scale}  PSNR {r.psnr:.4f}  SSIM {r.ssim:.4f}  "
                  f"({r.n_images} images, {r.seconds:.1f} s)", flush=True)
    table = markdown_table(results)
    print("\n" + table)
    if cfg.report:
        write_report(Path(cfg.report), results, cfg, ckpt, table, test_dirs)
    return results


def write_report(path: Path, results: list[SetResult], cfg: argparse.Namespace, ckpt: Path | None,
                 table: str, test_dirs: list[str]) -> None:
    """JSON with results + settings + provenance, a markdown summary and a per-image CSV, each atomic."""
    settings = {
        "checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_sha256": file_sha256(ckpt) if ckpt else None,
        "gate_mode": cfg.gate, "seed": cfg.seed, "quantize": cfg.quantize,
        "shave": "scale" if cfg.shave is None else cfg.shave,
        "self_ensemble": cfg.self_ensemble, "bf16": cfg.bf16, "tf32": cfg.tf32,
        "tile": cfg.tile, "tile_overlap": cfg.tile_overlap,
        # Where the HR and the saved SR images are, so visualize.py can draw from the report alone.
        "test_data_dirs": [str(Path(d).resolve()) for d in test_dirs],
        "sr_dir": None if cfg.no_save else str((Path(cfg.sample_dir) / (ckpt.stem if ckpt else "bicubic")).resolve()),
    }
    doc = {"results": [r.summary() for r in results], "settings": settings, "environment": environment()}
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    atomic_write_bytes(path.with_suffix(".md"), (table + "\n").encode())
    write_per_image_csv(per_image_csv_beside(path), results)


if __name__ == "__main__":
    run_cli(main)
