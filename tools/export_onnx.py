"""Export DSRNet to ONNX for deployment: one scale, a deterministic gate, dynamic batch/height/width.

    python -m tools.export_onnx --ckpt_path checkpoint/DSRNet_x2_600000.pth --check
    python -m tools.export_onnx --ckpt_path checkpoint/multi_scale.pth --scale 3 --output dsrnet_x3.onnx

The graph maps "lr" (float32 RGB NCHW in [0, 1]) to "sr". The 'selected' (default), 'fixed' and 'learned'
gate modes export: 'learned' as its noise-free per-image decision, a graph that runs both branches and keeps
each image's own (about 8 % more FLOPs than either branch alone). 'sample' and 'argmax' choose one branch for
the whole batch on the host, a data-dependent Python decision that a static graph cannot hold.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.errors import InputError
from dsrnet.files import atomic_path, ensure_writable
from dsrnet.provenance import environment
from model import GATE_MODES, load_checkpoint, scale_name
from model.dsrnet import SCALES, Net
from tools.benchmarks.report import printed_to, provenance
from tools.benchmarks.timing import interleaved

ROOT = Path(__file__).resolve().parents[1]

EXPORTABLE_GATES = ("selected", "fixed", "learned")
OPSETS = range(11, 21)  # 11: DepthToSpace as PixelShuffle needs it; 20: the TorchScript exporter's newest
TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| on the [0, 1] scale
CHECK_SIZES = ((24, 32), (37, 29))  # two LR sizes, odd ones included: the axes really are dynamic
SPEED_ROUNDS = 10  # interleaved rounds of the --check timing


class FixedScale(nn.Module):
    """``net(lr, scale)`` with the scale baked in: an ONNX graph takes tensors only."""

    def __init__(self, net: Net, scale: int):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.net(lr, self.scale)


def require_exportable(gate_mode: str) -> None:
    if gate_mode not in EXPORTABLE_GATES:
        raise InputError(f"gate mode {gate_mode!r} cannot be exported: it picks the branch on the host from the "
                         "gate's output at run time; use --gate selected (default), fixed or learned")


def export(net: Net, scale: int, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write ``net`` at ``scale`` as an ONNX graph with dynamic batch/height/width, atomically (temp + rename).

    Uses the TorchScript exporter: the dynamo one needs onnxscript, which this project does not install.
    """
    require_exportable(net.gate_mode)
    if opset not in OPSETS:
        raise InputError(f"--opset {opset} is not supported; choose {OPSETS.start}-{OPSETS.stop - 1}")
    allowed = (net.scale,) if net.scale else SCALES
    if scale not in allowed:
        raise InputError(f"this {scale_name(net.scale)} DSRNet exports {' or '.join(f'x{s}' for s in allowed)}, "
                         f"not x{scale}")
    path = Path(path)
    p = next(net.parameters())
    example = torch.rand(1, 3, 16, 16, device=p.device, dtype=p.dtype)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": see the docstring
            torch.onnx.export(FixedScale(net, scale).eval(), (example,), tmp, dynamo=False, opset_version=opset,
                              input_names=["lr"], output_names=["sr"],
                              dynamic_axes={"lr": {0: "batch", 2: "height", 3: "width"},
                                            "sr": {0: "batch", 2: "sr_height", 3: "sr_width"}})
    return path


def _session(path: str | os.PathLike) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Its threads would otherwise busy-wait after each run, stealing the cores from the PyTorch run
    # interleaved after it in compare_speed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def _torch_sr(net: Net, x: torch.Tensor, scale: int) -> np.ndarray:
    p = next(net.parameters())
    return net(x.to(p.device, p.dtype), scale).float().cpu().numpy()


def check(path: str | os.PathLike, net: Net, scale: int, sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
          batch: int = 1, seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over random ``batch``x3xHxW LR inputs of each size (inf if shapes differ)."""
    session = _session(path)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for h, w in sizes:
        x = torch.rand(batch, 3, h, w, generator=g)
        (got,) = session.run(["sr"], {"lr": x.numpy()})
        want = _torch_sr(net, x, scale)
        worst = max(worst, float(np.abs(got - want).max()) if got.shape == want.shape else float("inf"))
    return worst


def compare_speed(path: str | os.PathLike, net: Net, scale: int, lr_hw: tuple[int, int] = (128, 128),
                  repeats: int = SPEED_ROUNDS) -> tuple[float, float]:
    """(ONNX Runtime ms, PyTorch ms): medians on one random 1x3xHxW LR input, both on the CPU.

    PyTorch runs ``net`` as given (pass it in channels_last for the default inference path) on a
    channels_last input; ONNX Runtime uses its CPUExecutionProvider with default threading.
    """
    session = _session(path)
    x = torch.rand(1, 3, *lr_hw)
    feed = {"lr": x.numpy()}
    x_cl = x.contiguous(memory_format=torch.channels_last)
    seconds = interleaved({"onnxruntime": lambda: session.run(["sr"], feed),
                           "pytorch": lambda: _torch_sr(net, x_cl, scale)}, repeats, 1, torch.device("cpu"))
    return seconds["onnxruntime"] * 1e3, seconds["pytorch"] * 1e3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ckpt_path", help="DSRNet checkpoint (the authors' or ours)")
    p.add_argument("--scale", type=int, help="scale to export (default: the checkpoint's; needed for multi-scale)")
    p.add_argument("--output", help="ONNX file (default: <checkpoint name>[_x<s>][_fixed].onnx here)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--gate", default="selected",
                   help="selected (default), fixed or learned (the noise-free per-image decision); sample/argmax "
                        "cannot export")
    p.add_argument("--check", action="store_true",
                   help="compare ONNX Runtime with PyTorch on two LR sizes and time both on one")
    p.add_argument("--speed_size", type=int, default=128, help="LR side for the --check timing (default 128)")
    p.add_argument("--report", help="also write what --check printed here, with the command and commit "
                                    "(e.g. results/onnx.md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_args(argv)
    if not cfg.ckpt_path:
        raise InputError("pass --ckpt_path CKPT (e.g. checkpoint/DSRNet_x2_600000.pth)")
    if cfg.gate not in GATE_MODES:
        raise InputError(f"unknown --gate {cfg.gate!r}; choose selected, fixed or learned")
    require_exportable(cfg.gate)
    if cfg.report and not cfg.check:
        raise InputError("--report keeps what --check prints: add --check")
    if cfg.report:
        ensure_writable(cfg.report)
    if cfg.speed_size < 1:
        raise InputError(f"--speed_size must be positive, got {cfg.speed_size}")
    if cfg.scale is not None and cfg.scale not in SCALES:
        raise InputError(f"--scale {cfg.scale} is not one of {', '.join(map(str, SCALES))}")
    net = load_checkpoint(cfg.ckpt_path, scale=cfg.scale, gate_mode=cfg.gate)
    scale = cfg.scale or net.scale
    if not scale:
        raise InputError(f"{cfg.ckpt_path} is a multi-scale checkpoint: pass --scale 2, 3 or 4")
    suffix = ("" if net.scale else f"_x{scale}") + (f"_{cfg.gate}" if cfg.gate != "selected" else "")
    out = export(net, scale, cfg.output or f"{Path(cfg.ckpt_path).stem}{suffix}.onnx", cfg.opset)
    print(f"wrote {out}: {scale_name(scale)}, gate {cfg.gate}, opset {cfg.opset}, "
          f"{out.stat().st_size / 2 ** 20:.1f} MiB; input 'lr' Nx3xHxW in [0, 1], output 'sr'")
    if cfg.check:
        diff = check(out, net, scale)
        side = cfg.speed_size
        ort_ms, torch_ms = compare_speed(out, net.to(memory_format=torch.channels_last), scale, (side, side))
        with printed_to(cfg.report):
            print(provenance(environment(), torch.get_num_threads()))
            sizes = ", ".join(f"{h}x{w}" for h, w in CHECK_SIZES)
            print(f"max |onnxruntime - pytorch| = {diff:.2e} at LR {sizes} (tolerance {TOLERANCE:g})")
            print(f"speed at LR {side}x{side} on CPU (medians of {SPEED_ROUNDS} interleaved rounds): onnxruntime "
                  f"{ort_ms:.1f} ms, pytorch {torch_ms:.1f} ms (onnxruntime / pytorch = {ort_ms / torch_ms:.2f})")
        if not diff <= TOLERANCE:
            print(f"error: ONNX Runtime differs from PyTorch by {diff:.2e} > {TOLERANCE:g}", file=sys.stderr)
            sys.exit(1)
    return out


if __name__ == "__main__":
    run_cli(main)
