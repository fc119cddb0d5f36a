"""Running a DSRNet on whole images: tensor conversion, overlapping tiles, x8 self-ensemble, and the one home
of the precision/layout choices (TF32, bf16, autocast, channels_last per device) that evaluation, training,
the mean shift and the provenance record all follow.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run natively here (an Ampere+ GPU, or a CPU with AVX512-BF16/AMX).

    Elsewhere autocast would emulate bf16 and run slower than float32, so callers refuse it.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private: may vanish in a later torch
    return bool(probe()) if probe is not None else cpu_flags_have_bf16()


def cpu_flags_have_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU's own word on native bf16 (Linux), used when torch's oneDNN probe is unavailable."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def tf32_supported(device: torch.device) -> bool:
    """TF32 exists on Ampere and newer NVIDIA GPUs only; elsewhere ``--tf32`` would change nothing."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


# Training runs NHWC on every device: oneDNN and cuDNN run it natively, forward and backward.
TRAINING_MEMORY_FORMAT = torch.channels_last
# Training's --amp values; evaluation's --bf16 is "bf16".
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(bf16: bool, tf32: bool) -> str:
    """The precision a run asks for, as :func:`fast_memory_format` names it (bf16 wins over TF32)."""
    return "bf16" if bf16 else "tf32" if tf32 else "fp32"


def autocast(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` (bf16 or fp16) on ``device_type``; ``None`` runs float32."""
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``; the mean shift then stays float32 (bf16 would round the image)."""
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def tf32_enabled() -> bool:
    """Whether cuDNN may run float32 convolutions in TF32 now (recorded with every result)."""
    return torch.backends.cudnn.allow_tf32


def set_tf32(enabled: bool) -> None:
    """Whether cuDNN may run float32 convolutions in TF32 (Ampere and newer GPUs; no effect on CPUs).

    PyTorch allows it by default: inputs are rounded to a 10-bit mantissa (about 5e-4 relative), beyond the
    benchmarks' 1e-4 agreement between paths. Evaluation and the benchmarks' float32 rows turn it off, so that
    "float32" means IEEE float32 and GPU scores match the CPU's; ``sample.py --tf32`` turns it back on for
    speed, and training keeps PyTorch's default.
    """
    torch.backends.cudnn.allow_tf32 = enabled


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """:func:`set_tf32` for one block; the setting before it comes back afterwards."""
    before = torch.backends.cudnn.allow_tf32
    set_tf32(enabled)
    try:
        yield
    finally:
        set_tf32(before)


def fast_memory_format(device: str | torch.device, precision: str = "fp32") -> torch.memory_format:
    """The layout (weights and activations) in which ``precision`` ("fp32", "tf32", "bf16") runs fastest here.

    Chosen from ``tools/benchmarks/memory_format.py`` (figures in docs/speed.md): channels_last (NHWC) on
    CPUs, where oneDNN runs it natively, and for TF32/bf16 on CUDA; NCHW for IEEE float32 on CUDA, where
    cuDNN's NHWC kernels were slower and, at x3, its heuristics could pick a far slower FFT algorithm.
    """
    if torch.device(device).type == "cuda" and precision == "fp32":
        return torch.contiguous_format
    return torch.channels_last


def memory_format_of(net: torch.nn.Module) -> torch.memory_format:
    """The layout of ``net``'s 3x3 convolution weights: inputs should match it, since a channels_last input
    makes cuDNN run an NCHW net in NHWC too."""
    for w in net.parameters():
        if w.dim() == 4 and w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1:
            return torch.contiguous_format if w.is_contiguous() else torch.channels_last
    return torch.contiguous_format


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
    gate = net.wide_enhancement.gate
    with torch.autocast(x.device.type, enabled=False):
        return "fixed" if int(gate.classify(pooled).argmax(dim=1)) == 1 else "selected"


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
            route = net.wide_enhancement.force(learned_decision(net, x, tile, tile_overlap))
    with route:
        if not self_ensemble:
            return run(x)[0]
        acc = sum(_dihedral(run(_dihedral(x, k)), k, inverse=True) for k in range(8))
    return acc[0] / 8
