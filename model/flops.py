"""Counting DSRNet's FLOPs from a real forward pass (torch's FlopCounterMode on the meta device: no arithmetic).

Both gate branches, per LR pixel, feed the per-image GFLOPs of ``sample.py`` reports and the learned gate's
compute penalty documentation; ``tools/benchmarks/complexity.py`` builds its tables on the same count.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from model.dsrnet import Net


def count_flops(net: nn.Module, lr_hw: tuple[int, int], scale: int | None = None) -> tuple[int, int]:
    """(FLOPs, MACs) of one forward on a 1x3xHxW LR input.

    FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions and matmuls and nothing for
    biases, ReLU, additions and pixel shuffle (about 0.1% more here), so MACs = FLOPs / 2. On a
    meta-device net (``with torch.device("meta"): Net(...)``) this costs no arithmetic at all.
    """
    p = next(net.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, *lr_hw, device=p.device, dtype=p.dtype), scale)
    flops = counter.get_total_flops()
    return flops, flops // 2


def meta_net(scale: int, gate: str = "selected", multi_scale: bool = False, group: int = 1) -> Net:
    """A weightless Net of the right shapes: for counting parameters and FLOPs for free."""
    with torch.device("meta"):
        return Net(scale=scale or 2, multi_scale=multi_scale, group=group, gate_mode=gate)


@lru_cache(maxsize=None)
def flops_per_lr_pixel(scale: int, branch: str, multi_scale: bool = False, group: int = 1) -> int:
    """FLOPs per LR pixel of a forward through ``branch`` ('selected' or 'fixed') at ``scale``.

    Every op counted is a 'same'-padded convolution, so a forward's FLOPs are exactly this times H x W (the
    gate's two small matmuls, 2,112 FLOPs per image, are left out). At x2: 1,582,042 (selected) and
    1,713,114 (fixed); the fixed branch's four 3x3 convs cost 131,072 FLOPs per LR pixel more than the
    selected branch's 3x3/1x1/3x3/1x1.
    """
    flops, _ = count_flops(meta_net(scale, branch, multi_scale, group), (8, 8), scale)
    return flops // 64


def upsampler_groups(net: Net) -> int:
    """The ``group`` a Net was built with (its upsampler convs'), to count FLOPs on a twin of it."""
    return next(m.groups for m in net.construction.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)
