"""Evaluate DSRNet (and/or the bicubic baseline) on benchmark sets: PSNR/SSIM on Y, SR images, reports.

    python sample.py --ckpt_path checkpoint/DSRNet_x2_600000.pth --test_data_dir dataset/benchmark/Set5
    python sample.py --bicubic --scale 2 3 4 --test_data_dir dataset/benchmark/Set5 dataset/benchmark/B100
    python sample.py --ckpt_path checkpoint/DSRNet_x2_600000.pth --input my_photo.png --output my_photo_x2.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dsrnet import AUTHORS_WEIGHTS, ROOT
from dsrnet.cli import HelpFormatter, check_seed, pick_device, run_cli
from dsrnet.data.layouts import find_test_set, list_input_images
from dsrnet.errors import InputError
from dsrnet.evaluation import SetResult, evaluate_routed, evaluate_set, markdown_table, method_sr_folder
from dsrnet.files import ensure_writable
from dsrnet.metrics import PROTOCOLS, QUANTIZE_MODES
from dsrnet.reports import check_report_writable, report_settings, write_report
from dsrnet.upscale import Method, bicubic_method, network_method, plan_outputs, upscale_inputs
from model import GATE_MODES, Net, load_checkpoint
from model.flops import upsampler_groups
from model.inference import MIN_TILE_CORE, RECEPTIVE_RADIUS
from model.precision import bf16_supported, fast_memory_format, precision_name, set_tf32, tf32_supported

DEFAULT_SETS = ("Set5", "Set14", "B100", "BSD100", "Urban100")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="dsrnet", help="the authors' flag, kept so that their command lines run: "
                   "accepts only dsrnet")
    p.add_argument("--ckpt_path", help=f"checkpoint (authors' or ours); default {AUTHORS_WEIGHTS.relative_to(ROOT)}")
    p.add_argument("--test_data_dir", nargs="+", help="one or more test-set folders (any supported layout); "
                   "default: dataset/benchmark/{Set5,Set14,B100,BSD100,Urban100} where present")
    p.add_argument("--sample_dir", default="results/sr",
                   help="SR images go to SAMPLE_DIR/<model>/<dataset>/x<s>/<method>/")
    p.add_argument("--scale", type=int, nargs="+", help="default: the checkpoint's scale")
    p.add_argument("--shave", type=int, help="border pixels left out of PSNR/SSIM (default: the scale)")
    p.add_argument("--weights", choices=("ema", "raw"),
                   help="a checkpoint of a run trained with --ema: its averaged weights (model_ema) or the raw ones "
                        "(default: the averaged ones where the file has them)")
    p.add_argument("--group", type=int, help="upsampler conv groups (default: the checkpoint's; the authors use 1)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--cuda", action="store_true", help="the same as --device cuda")
    p.add_argument("--gate", choices=GATE_MODES, default="selected",
                   help="gate mode (docs/evaluation.md#gate); 'learned' routes each image by the gate's noise-free decision")
    p.add_argument("--seed", type=int, default=0, help="seed of the 'sample' gate mode, 0 to 2**64-1")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default="authors",
                   help="scoring convention (docs/evaluation.md#protocol): 'authors' truncates the SR and rounds Y; "
                        "'basicsr' rounds the SR and keeps Y as float, comparable with BasicSR-trained models")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="SR float -> uint8 (default: the protocol's, truncate for authors, round for basicsr)")
    p.add_argument("--bicubic", action="store_true", help="add the MATLAB-bicubic baseline rows")
    p.add_argument("--self_ensemble", action="store_true", help="x8 flips/rotations ('+' results)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast: faster on Ampere+ GPUs and bf16-capable CPUs; scores differ slightly "
                        "from the float32 protocol (docs/evaluation.md#precision)")
    p.add_argument("--tf32", action="store_true",
                   help="let cuDNN run float32 convolutions in TF32 on Ampere+ GPUs (PyTorch's default, faster; "
                        "scores may differ slightly from IEEE float32, which is used without this flag)")
    p.add_argument("--tile", type=int, help=f"run in overlapping LR tiles of this size (large images); at least "
                   f"2 x TILE_OVERLAP + {MIN_TILE_CORE}; the result equals whole-image SR")
    p.add_argument("--tile_overlap", type=int, default=24,
                   help=f"LR pixels of context around each tile, at least {RECEPTIVE_RADIUS} (the receptive radius)")
    p.add_argument("--input", help="image or folder to upscale without HR (writes SR images only)")
    p.add_argument("--output", help="with --input: the image file (one input, one scale) or the folder to write "
                   "(a trailing / always means a folder); "
                   "default: SAMPLE_DIR/<model>/<input name>/x<s>/<name>_x<s>_SR.png")
    p.add_argument("--report", help="REPORT.json: write the results JSON there, plus REPORT.md (summary) and "
                   "REPORT_per_image.csv; naming REPORT.md instead gives the same three files")
    p.add_argument("--no_save", action="store_true", help="do not write SR images")
    p.add_argument("--workers", type=int, default=2, help="threads for decoding, scoring and saving")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_args(cfg: argparse.Namespace) -> None:
    """Every flag on its own and against the others, before any file is read: one line for each refusal.
    Then ``cfg.quantize`` is the protocol's unless given."""
    if cfg.model != "dsrnet":
        raise InputError(f"unknown --model {cfg.model!r}; this repository provides 'dsrnet'")
    if cfg.scale and min(cfg.scale) < 2:
        raise InputError(f"--scale {' '.join(map(str, cfg.scale))}: each scale must be 2 or more")
    if cfg.scale and len(set(cfg.scale)) < len(cfg.scale):
        raise InputError(f"--scale {' '.join(map(str, cfg.scale))} repeats a scale: give each once")
    for flag, value, least in (("--group", cfg.group, 1), ("--shave", cfg.shave, 0), ("--workers", cfg.workers, 0)):
        if value is not None and value < least:
            raise InputError(f"{flag} must be an integer >= {least}, got {value}")
    check_seed(cfg.seed)
    if cfg.tile_overlap < RECEPTIVE_RADIUS:
        raise InputError(f"--tile_overlap {cfg.tile_overlap} is below DSRNet's receptive radius ({RECEPTIVE_RADIUS} "
                         f"LR pixels): tiles would differ from whole-image SR; pass --tile_overlap {RECEPTIVE_RADIUS} "
                         "or more")
    if cfg.tile is not None and cfg.tile < 2 * cfg.tile_overlap + MIN_TILE_CORE:
        raise InputError(f"--tile {cfg.tile} is too small for --tile_overlap {cfg.tile_overlap}: each tile needs a "
                         f"core of {MIN_TILE_CORE} pixels beyond its context; pass --tile "
                         f"{2 * cfg.tile_overlap + MIN_TILE_CORE} or more")
    if cfg.cuda and cfg.device and not cfg.device.startswith("cuda"):
        raise InputError(f"--cuda and --device {cfg.device} contradict each other: pass one")
    if cfg.output is not None and not cfg.output.strip():
        raise InputError("--output '' names no place: pass a folder (e.g. --output .) or an image file")
    if cfg.output and not cfg.input:
        raise InputError("--output names where --input's images go: add --input (evaluation writes under "
                         "--sample_dir)")
    if cfg.input:
        ignored = {"--no_save": cfg.no_save, "--report": cfg.report, "--test_data_dir": cfg.test_data_dir,
                   "--shave": cfg.shave is not None}
        for flag, given in ignored.items():
            if given:
                raise InputError(f"--input upscales images without HR and writes them, so {flag} has nothing to "
                                 "act on: drop it")
        if cfg.bicubic and cfg.ckpt_path:
            raise InputError("--input upscales with one method: drop --bicubic to use --ckpt_path, or drop "
                             "--ckpt_path to upscale with bicubic")
    if cfg.protocol == "basicsr" and cfg.quantize == "truncate":
        raise InputError("--protocol basicsr rounds the SR to uint8 as BasicSR does, so --quantize truncate "
                         "contradicts it: drop --quantize truncate, or use --protocol authors")
    if cfg.report:
        check_report_writable(Path(cfg.report))
    if not cfg.no_save and not cfg.input:
        ensure_writable(Path(cfg.sample_dir) / "SR.png")
    cfg.quantize = cfg.quantize or PROTOCOLS[cfg.protocol].quantize


def check_precision(cfg: argparse.Namespace, device: torch.device) -> None:
    if cfg.tf32 and not tf32_supported(device):
        raise InputError("--tf32 needs an Ampere or newer GPU (TF32 does not exist elsewhere, so it would change "
                         "nothing here): drop --tf32")
    if cfg.bf16 and not bf16_supported(device):
        raise InputError("--bf16 needs native bfloat16 (an Ampere or newer GPU, or a CPU with AVX512-BF16 or "
                         "AMX); this machine would emulate it, slower than float32: drop --bf16")


def device_from_flags(cfg: argparse.Namespace) -> torch.device:
    if cfg.cuda and not torch.cuda.is_available():
        raise InputError("--cuda was given but no CUDA device is available; drop --cuda to run on CPU")
    return pick_device(cfg.device or ("cuda" if cfg.cuda else None))


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
    if not AUTHORS_WEIGHTS.is_file():
        raise InputError(f"no checkpoint: pass --ckpt_path, or put the authors' weights at {AUTHORS_WEIGHTS} "
                         "(see checkpoint/README.md); --bicubic alone runs the baseline")
    return AUTHORS_WEIGHTS


def build_net(cfg: argparse.Namespace, device: torch.device) -> tuple[Net | None, Path | None, list[int]]:
    """The network the flags ask for (None for bicubic alone), its checkpoint, and the scales to run."""
    ckpt = resolve_checkpoint(cfg)
    net = None
    if ckpt is not None:
        net = load_checkpoint(ckpt, scale=cfg.scale[0] if cfg.scale and len(cfg.scale) == 1 else None,
                              device=device, gate_mode=cfg.gate, gate_seed=cfg.seed, group=cfg.group,
                              memory_format=fast_memory_format(device, precision_name(cfg.bf16, cfg.tf32)),
                              weights=cfg.weights)
    scales = cfg.scale or ([net.scale] if net is not None and net.scale else None)
    if not scales:
        raise InputError("pass --scale (needed for --bicubic alone and for multi-scale checkpoints)")
    if net is not None and net.scale and any(s != net.scale for s in scales):
        raise InputError(f"checkpoint {ckpt} holds a x{net.scale} model; --scale {' '.join(map(str, scales))} "
                         f"asks for others: pass --scale {net.scale}")
    return net, ckpt, scales


def dsrnet_method(net: Net, scale: int, cfg: argparse.Namespace, device: torch.device) -> Method:
    """The network as an upscaler, run as the flags ask (:func:`dsrnet.upscale.network_method`)."""
    return network_method(net, scale, device, cfg.quantize, tile=cfg.tile, tile_overlap=cfg.tile_overlap,
                          self_ensemble=cfg.self_ensemble, bf16=cfg.bf16)


def evaluate_sets(cfg: argparse.Namespace, net: Net | None, scales: list[int], device: torch.device,
                  out_root: Path, test_dirs: list[str]) -> list[SetResult]:
    """Every test set at every scale, bicubic and/or DSRNet rows, printed as they finish."""
    test_sets = [find_test_set(d, s) for d in test_dirs for s in scales]
    results: list[SetResult] = []
    for ts in test_sets:
        jobs = [("Bicubic", bicubic_method(ts.scale))] if cfg.bicubic else []
        if net is not None:
            jobs.append(("DSRNet+" if cfg.self_ensemble else "DSRNet", dsrnet_method(net, ts.scale, cfg, device)))
        for name, upscale in jobs:
            save = None if cfg.no_save else method_sr_folder(out_root, ts.name, ts.scale, name)
            how = dict(shave=cfg.shave, save_dir=save, workers=cfg.workers, progress=not cfg.quiet,
                       round_y=PROTOCOLS[cfg.protocol].round_y)
            r = (evaluate_set(upscale, ts, name, **how) if name == "Bicubic" else
                 evaluate_routed(upscale, net, ts, name, passes=8 if cfg.self_ensemble else 1, **how))
            results.append(r)
            print(f"{r.method:8s} {r.dataset:10s} x{r.scale}  PSNR {r.psnr:.4f}  SSIM {r.ssim:.4f}  "
                  f"({r.n_images} images, {r.seconds:.1f} s)", flush=True)
    return results


def main(argv: list[str] | None = None) -> list[SetResult]:
    cfg = parse_args(argv)
    check_args(cfg)
    device = device_from_flags(cfg)
    set_tf32(cfg.tf32)
    check_precision(cfg, device)
    net, ckpt, scales = build_net(cfg, device)
    out_root = Path(cfg.sample_dir) / (ckpt.stem if ckpt is not None else "bicubic")
    if cfg.input:
        methods = {s: dsrnet_method(net, s, cfg, device) if net is not None else bicubic_method(s) for s in scales}
        inputs = list_input_images(cfg.input)
        upscale_inputs(plan_outputs(inputs, Path(cfg.input), cfg.output, scales, out_root), methods)
        return []
    test_dirs = cfg.test_data_dir or default_test_dirs()
    results = evaluate_sets(cfg, net, scales, device, out_root, test_dirs)
    table = markdown_table(results)
    print("\n" + table)
    if cfg.report:
        group = upsampler_groups(net) if net is not None else None
        settings = report_settings(cfg, ckpt, test_dirs, group, scales=scales, device=device,
                                   weights=net.weights if net is not None else None)
        write_report(Path(cfg.report), results, settings, table)
    return results


if __name__ == "__main__":
    run_cli(main)
