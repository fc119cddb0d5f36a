"""Small building blocks shared by the DSRNet blocks: conv+ReLU stacks, mean shift, sub-pixel upsampler."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.precision import autocast_enabled, in_float32

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv(in_ch: int, out_ch: int, kernel_size: int = 3, bias: bool = False, groups: int = 1) -> nn.Conv2d:
    """'Same'-padded convolution; DSRNet's body convs have no bias."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias, groups=groups)


class ConvReLUChain(nn.Module):
    """Convs each followed by ReLU, applied in order (a branch of the wide enhancement block)."""

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(conv(channels, channels, k) for k in kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.convs:
            x = F.relu(layer(x), inplace=True)
        return x


class MeanShift(nn.Module):
    """Frozen 1x1 conv adding (sign=+1) or subtracting (sign=-1) the DIV2K RGB mean.

    Kept as a conv rather than a constant so the authors' checkpoint tensors have a home. Under
    autocast it stays in float32: in bf16 the image itself would be rounded to steps of up to 1/256.
    """

    def __init__(self, sign: int, mean: tuple[float, float, float] = DIV2K_RGB_MEAN):
        super().__init__()
        self.shifter = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.shifter.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.shifter.bias.copy_(sign * torch.tensor(mean))
        self.shifter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_float32(self.shifter, x) if autocast_enabled(x.device) else self.shifter(x)


class Upsampler(nn.Module):
    """Sub-pixel upsampling: x2/x4 as one/two (conv with bias + PixelShuffle(2)) stages, x3 as one stage."""

    def __init__(self, channels: int, scale: int, group: int = 1):
        super().__init__()
        if scale in (2, 4, 8):
            factors = [2] * int(math.log2(scale))
        elif scale == 3:
            factors = [3]
        else:
            raise ValueError(f"unsupported scale {scale}: DSRNet upsamples by 2, 3, 4 or 8")
        layers: list[nn.Module] = []
        for r in factors:
            layers += [conv(channels, r * r * channels, 3, bias=True, groups=group), nn.PixelShuffle(r)]
        self.body = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
