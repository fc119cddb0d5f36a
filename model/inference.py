"""Running a DSRNet on whole images: tensor conversion, overlapping tiles, x8 self-ensemble. The precision and
layout choices they follow live in :mod:`model.precision`.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from model.precision import AMP_DTYPES, autocast, in_float32, memory_format_of


def image_to_tensor(img: np.ndarray, device: str | torch.device = "cpu",
                    memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """HWC uint8 RGB -> 1x3xHxW float in [0, 1] (the authors' ToTensor), in ``memory_format``; uint16 (a 16-bit
    photo) is divided by 65535, so the net sees its full precision.

    HWC is already the NHWC layout, so the permute is free and no copy is made before the float cast.
    """
    peak = 65535 if img.dtype == np.uint16 else 255
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32 if peak == 65535 else None)).to(device)
    return t.permute(2, 0, 1).unsqueeze(0).float().div_(peak).contiguous(memory_format=memory_format)


# LR pixels of context a tile needs for its SR to equal whole-image SR, at every scale. Every conv is 3x3 (reach 1):
# 16 on the longest LR path (conv1-conv4, conv5-conv6, conv7 and conv8 three times -- neither gated branch is
# deeper -- and conv11-conv16), the upsampler's first conv, and 1 for the convs after the first PixelShuffle
# (the second x4 stage and conv17): at a pixel's edge they reach into the next LR pixel, never further
# (1/2 + 1/4 < 1). tests/test_tiling.py checks it against the network by perturbation at x2, x3 and x4.
RECEPTIVE_RADIUS = 16 + 1 + 1
# Below this core (tile minus twice the overlap), tiles spend over 10x the work of whole-image SR on context.
MIN_TILE_CORE = 16


def _window_starts(length: int, window: int, overlap: int) -> list[int]:
    if window >= length:
        return [0]
    stride = window - 2 * overlap
    starts = list(range(0, length - window, stride)) + [length - window]
    return sorted(set(starts))


def _cores(starts: list[int], window: int, length: int) -> list[tuple[int, int]]:
    """The part of the axis each window is responsible for: split at the middle of each overlap."""
    bounds = [0] + [(nxt + cur + window) // 2 for cur, nxt in zip(starts, starts[1:])] + [length]
    return list(zip(bounds[:-1], bounds[1:]))


def _tile_jobs(h: int, w: int, tile: int, overlap: int) -> tuple[int, int, list]:
    """(tile height, tile width, [(y0, x0, core rows, core cols)]) covering an h x w LR image."""
    if tile <= 2 * overlap:
        raise ValueError(f"tile ({tile}) must exceed twice the overlap ({overlap})")
    th, tw = min(tile, h), min(tile, w)
    ys, xs = _window_starts(h, th, overlap), _window_starts(w, tw, overlap)
    cores_y, cores_x = _cores(ys, th, h), _cores(xs, tw, w)
    return th, tw, [(y0, x0, cy, cx) for y0, cy in zip(ys, cores_y) for x0, cx in zip(xs, cores_x)]


def forward_tiled(net: torch.nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int = 24,
                  batch: int = 4) -> torch.Tensor:
    """SR of a 1x3xHxW tensor from overlapping ``tile``-sized LR windows, run ``batch`` at a time.

    With ``overlap`` >= :data:`RECEPTIVE_RADIUS` the result equals whole-image inference up to float rounding
    (in the deterministic gate modes; the sampled gate sees one tile at a time; the learned gate needs the
    image's decision imposed, as :func:`super_resolve` does); below it, it does not.
    """
    _, _, h, w = x.shape
    th, tw, jobs = _tile_jobs(h, w, tile, overlap)
    out = x.new_empty(1, 3, h * scale, w * scale)
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        sr = net(torch.cat([x[:, :, y0:y0 + th, x0:x0 + tw] for y0, x0, _, _ in chunk]), scale)
        for k, (y0, x0, (a, b), (c, d)) in enumerate(chunk):
            out[0, :, a * scale:b * scale, c * scale:d * scale] = \
                sr[k, :, (a - y0) * scale:(b - y0) * scale, (c - x0) * scale:(d - x0) * scale]
    return out


def learned_decision(net: torch.nn.Module, x: torch.Tensor, tile: int | None = None, overlap: int = 24) -> str:
    """The learned gate's noise-free branch for a whole 1x3xHxW image.

    With ``tile`` the gate's average pooling is summed over the tiles' cores, whose features equal the whole
    image's (x6 sees 6 LR pixels around, less than any useful overlap), so a tiled image routes as the whole
    image does, at the cost of conv1-conv6 once more per tile.
    """
    if tile is None:
        pooled = net.gate_features(x).float().mean(dim=(2, 3))
    else:
        _, _, h, w = x.shape
        th, tw, jobs = _tile_jobs(h, w, tile, overlap)
        pooled = 0
        for y0, x0, (a, b), (c, d) in jobs:
            x6 = net.gate_features(x[:, :, y0:y0 + th, x0:x0 + tw])
            pooled = pooled + x6[:, :, a - y0:b - y0, c - x0:d - x0].float().sum(dim=(2, 3))
        pooled = pooled / (h * w)
    logits = in_float32(net.wide_enhancement.gate.classify, pooled)
    return "fixed" if int(logits.argmax(dim=1)) == 1 else "selected"


def _dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 flips/rotations (k = 4*transpose + 2*flipH + flipW), or its inverse."""
    flips = [d for d, on in ((3, k & 1), (2, k & 2)) if on]
    if inverse:
        x = x.transpose(2, 3) if k & 4 else x
        return x.flip(flips) if flips else x
    x = x.flip(flips) if flips else x
    return x.transpose(2, 3) if k & 4 else x


@torch.inference_mode()
def super_resolve(net: torch.nn.Module, lr: np.ndarray, scale: int, tile: int | None = None,
                  tile_overlap: int = 24, self_ensemble: bool = False,
                  device: str | torch.device | None = None, bf16: bool = False) -> torch.Tensor:
    """SR of one uint8 (or uint16) HWC image -> 3xHxW float tensor in ~[0, 1] on ``device``.

    ``self_ensemble`` averages the 8 dihedral transforms (the usual "+" results). ``bf16`` runs the
    net under bfloat16 autocast: faster where the hardware has it, but not the float32 protocol. A net
    in the 'learned' gate mode routes each image once: its tiles and transforms all take the branch
    the whole untransformed image chooses (:func:`learned_decision`), so tiling does not change the result.
    """
    device = torch.device(device) if device else next(net.parameters()).device
    x = image_to_tensor(lr, device, memory_format_of(net))

    def amp() -> torch.autocast:
        return autocast(device.type, AMP_DTYPES["bf16"] if bf16 else None)

    def run(inp: torch.Tensor) -> torch.Tensor:
        with amp():
            sr = forward_tiled(net, inp, scale, tile, tile_overlap) if tile else net(inp, scale)
        return sr.float()

    route = nullcontext()
    if getattr(net, "gate_mode", None) == "learned" and (tile or self_ensemble):
        with amp():  # one decision per image: tiles and the 8 transforms take the untransformed image's
            route = net.router.force(learned_decision(net, x, tile, tile_overlap))
    with route:
        if not self_ensemble:
            return run(x)[0]
        acc = sum(_dihedral(run(_dihedral(x, k)), k, inverse=True) for k in range(8))
    return acc[0] / 8
