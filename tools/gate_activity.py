"""How much the wide-enhancement block's gated branches matter in a trained DSRNet, per checkpoint.

    python -m tools.gate_activity CKPT [CKPT ...] --test_data_dir dataset/benchmark/Set14

A gate can only learn when its two branches produce different outputs. For each checkpoint, averaged over
the test set's LR images: the mean |activation| of the block's upper path (conv7, conv8 x3) and of each
branch, the gate's noise-free probability of 'fixed' and share of images it sends there, and the PSNR
between the SR images the net makes with every image forced through 'selected' and through 'fixed' (the
higher, the less the decision changes the output; the Y channel of the uint8 outputs, no shave).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.data.layouts import find_test_set, load_pair
from dsrnet.metrics import psnr_y, to_uint8
from model import Net, load_checkpoint
from model.inference import image_to_tensor


@dataclass
class Activity:
    """One checkpoint's means over the images (activations in the block's units; PSNR in dB)."""

    upper: float
    selected: float
    fixed: float
    p_fixed: float
    share_fixed: float
    swap_psnr: float


@torch.no_grad()
def block_activity(net: Net, lr_images: list[np.ndarray]) -> Activity:
    """Means over ``lr_images`` (uint8 RGB) of the quantities the module docstring lists."""
    block, rows, mode = net.wide_enhancement, [], net.gate_mode
    try:
        for lr in lr_images:
            x = image_to_tensor(lr, memory_format=torch.contiguous_format)
            x6 = net.gate_features(x)
            p_fixed = float(torch.softmax(block.gate_logits(x6), dim=1)[0, 1])
            sr = {}
            for branch in ("selected", "fixed"):
                net.set_gate(branch)
                sr[branch] = to_uint8(net(x)[0])
            rows.append((block.upper_path(x6).abs().mean().item(), block.selected_branch(x6).abs().mean().item(),
                         block.fixed_branch(x6).abs().mean().item(), p_fixed, float(p_fixed > 0.5),
                         min(psnr_y(sr["fixed"], sr["selected"], 0), 99.0)))
    finally:
        net.set_gate(mode)
    return Activity(*np.mean(rows, axis=0).tolist())


def main(argv: list[str] | None = None) -> list[Activity]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("ckpt", nargs="+", help="checkpoints (sample.py loads the same files)")
    p.add_argument("--test_data_dir", required=True, help="a test set folder (any layout sample.py reads)")
    p.add_argument("--scale", type=int, default=2, help="scale of the checkpoints and of the test set's LR")
    cfg = p.parse_args(argv)
    test_set = find_test_set(cfg.test_data_dir, cfg.scale)
    lrs = [load_pair(test_set, pair)[1] for pair in test_set.pairs]
    print(f"{test_set.name} x{cfg.scale}, {len(lrs)} images; mean |activation| of the block's paths, the gate's "
          "noise-free P(fixed), and the PSNR between the SR made through 'selected' and through 'fixed'\n")
    print("| checkpoint | upper path | selected branch | fixed branch | P(fixed) | images to fixed "
          "| PSNR selected vs fixed (dB) |\n|---|---|---|---|---|---|---|")
    found = []
    for path in cfg.ckpt:
        a = block_activity(load_checkpoint(path, scale=cfg.scale, memory_format=torch.contiguous_format), lrs)
        print(f"| {Path(path).name} | {a.upper:.4g} | {a.selected:.4g} | {a.fixed:.4g} | {a.p_fixed:.3f} "
              f"| {a.share_fixed:.0%} | {a.swap_psnr:.2f} |")
        found.append(a)
    return found


if __name__ == "__main__":
    run_cli(main)
