"""What else was tried for the float32 forward, timed against the default path in one run.

    python -m tools.benchmarks.alternatives --report results/speed_alternatives.md

None of these is used by ``load_checkpoint``/``sample.py``; this script keeps the evidence for that:
  - oneDNN conv+ReLU fusion: the body's conv+ReLU pairs run as one ``mkldnn._convolution_pointwise``;
  - inductor with freezing and weight prepacking (``torch.compile``; the gate's Python-side branch
    counter is switched off so that dynamo sees one graph);
  - Winograd F(4x4, 3x3) for one 64-channel 3x3 layer, written with batched matmuls, against the direct conv.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.errors import InputError
from dsrnet.files import ensure_writable
from dsrnet.provenance import environment
from model import load_checkpoint
import model.dsrnet as dsrnet
from model.inference import image_to_tensor
from tools.benchmarks.inference import find_weights
from tools.benchmarks.report import printed_to, provenance, require_at_least
from tools.benchmarks.timing import interleaved

ROOT = Path(__file__).resolve().parents[2]

# Winograd F(4x4, 3x3) transforms (Lavin & Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A.
WINO_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                        [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float32)
WINO_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float32)
WINO_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                       dtype=torch.float32)


def winograd_conv3x3(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A 'same' 3x3 conv (no bias) of 1xCxHxW inputs with H, W multiples of 4, as 36 batched matmuls."""
    c_out, c_in = weight.shape[:2]
    u = torch.einsum("ar,ocrs,bs->abco", WINO_G, weight, WINO_G).reshape(36, c_in, c_out).contiguous()
    in_transform, out_transform = torch.kron(WINO_BT, WINO_BT), torch.kron(WINO_AT, WINO_AT)  # 36x36, 16x36

    def conv(x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        th, tw = h // 4, w // 4
        xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()  # 1 x (H+2) x (W+2) x C
        s = xp.stride()
        tiles = xp.as_strided((th, tw, 6, 6, c), (4 * s[1], 4 * s[2], s[1], s[2], 1)).reshape(th * tw, 36, c)
        m = torch.bmm(torch.matmul(in_transform, tiles).transpose(0, 1), u)  # 36 x tiles x C_out
        y = torch.matmul(out_transform, m.transpose(0, 1))  # tiles x 16 x C_out
        return y.view(th, tw, 4, 4, c_out).permute(0, 2, 1, 3, 4).reshape(1, h, w, c_out).permute(0, 3, 1, 2)
    return conv


def _fused_relu_conv(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(x, layer.weight, layer.bias, list(layer.padding),
                                                   list(layer.stride), list(layer.dilation), layer.groups,
                                                   "relu", [], "")


@contextlib.contextmanager
def fused_conv_relu() -> Iterator[None]:
    """Route the body's conv+ReLU pairs (``model.dsrnet._relu_conv``) through oneDNN's fused op."""
    plain, dsrnet._relu_conv = dsrnet._relu_conv, _fused_relu_conv
    try:
        yield
    finally:
        dsrnet._relu_conv = plain


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ckpt_path", help="the authors' x2 file (default: checkpoint/ or ../shared/weights/)")
    p.add_argument("--size", type=int, default=128, help="LR height and width (a multiple of 4)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (interleaved across paths)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--skip_compile", action="store_true", help="leave out the inductor path (slow to build)")
    p.add_argument("--report", help="also write the printed markdown here")
    cfg = p.parse_args(argv)
    require_at_least(cfg, size=4, rounds=1, warmup=0)
    if cfg.size % 4:
        raise InputError(f"--size must be a multiple of 4 (Winograd F(4x4, 3x3) tiles), got {cfg.size}")
    if cfg.report:
        ensure_writable(cfg.report)
    device = torch.device("cpu")
    weights = find_weights(cfg.ckpt_path)
    net = load_checkpoint(weights, device=device)
    x = image_to_tensor(np.random.default_rng(0).integers(0, 256, (cfg.size, cfg.size, 3), dtype=np.uint8))

    def default() -> torch.Tensor:
        with torch.inference_mode():
            return net(x, 2)

    def fused() -> torch.Tensor:
        with torch.inference_mode(), fused_conv_relu():
            return net(x, 2)

    paths = {"default path": default, "oneDNN fused conv+ReLU": fused}
    build = None
    if not cfg.skip_compile:
        import torch._inductor.config as inductor

        compiled = torch.compile(load_checkpoint(weights, device=device), dynamic=False)

        def inductor_frozen() -> torch.Tensor:
            with torch.inference_mode(), inductor.patch(freezing=True, **{"cpp.weight_prepack": True}):
                return compiled(x, 2)
        t0 = time.perf_counter()
        inductor_frozen()
        build = time.perf_counter() - t0
        paths["torch.compile, inductor freezing + weight prepack"] = inductor_frozen
    ref = default()
    diffs = {name: float((fn() - ref).abs().max()) for name, fn in paths.items()}
    times = interleaved(paths, cfg.rounds, cfg.warmup, device)

    layer = net.residual_enhancement.conv2
    feat = torch.relu(torch.randn(1, 64, cfg.size, cfg.size)).contiguous(memory_format=torch.channels_last)
    wino = winograd_conv3x3(layer.weight.detach().contiguous())
    with torch.inference_mode():
        layer_ref = layer(feat)
        layer_diff = float((wino(feat) - layer_ref).abs().max())
        layer_times = interleaved({"direct (oneDNN)": lambda: layer(feat), "Winograd F(4x4, 3x3)": lambda: wino(feat)},
                                  cfg.rounds, cfg.warmup, device)

    env = environment()
    with printed_to(cfg.report):
        print(provenance(env, torch.get_num_threads()))
        print(f"whole net, x2, LR {cfg.size}x{cfg.size}, medians of {cfg.rounds} interleaved rounds"
              + (f"; inductor build {build:.1f} s" if build is not None else ""))
        print("| path | ms | vs default | max abs diff |\n|---|---|---|---|")
        for name, t in times.items():
            print(f"| {name} | {t * 1e3:.1f} | {times['default path'] / t:.2f}x | {diffs[name]:.1e} |")
        print(f"\none 64-channel 3x3 layer (conv2's weights), LR {cfg.size}x{cfg.size}, channels_last input")
        print("| conv | ms | max abs diff |\n|---|---|---|")
        for name, t in layer_times.items():
            print(f"| {name} | {t * 1e3:.2f} | {0.0 if name.startswith('direct') else layer_diff:.1e} |")


if __name__ == "__main__":
    run_cli(main)
