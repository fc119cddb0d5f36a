"""Upscaling a user's own images (no HR): they come out as they went in, and no output overwrites another.

Every still image PIL opens is decoded, upright, by :func:`dsrnet.data.images.read_planes`; the network always sees RGB.
A grayscale input comes back as one channel, the BT.601 luma of the SR (:func:`dsrnet.metrics.luma`); an alpha
channel is upscaled with MATLAB-style bicubic and kept; a 16-bit input is run and written at 16 bits.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dsrnet.data.images import (
    IMAGE_EXTENSIONS,
    Planes,
    check_savable,
    image_size,
    read_planes,
    write_image,
)
from dsrnet.data.imresize import imresize
from dsrnet.errors import InputError
from dsrnet.files import check_replaceable, ensure_writable, overwritten_input
from dsrnet.metrics import luma, to_uint8, to_uint16
from model.inference import super_resolve

# LR RGB HxWx3 and "the input was grayscale" -> SR in the LR's dtype (uint8, or uint16 for a 16-bit photo),
# HxWx3 or (gray) HxW.
Method = Callable[[np.ndarray, bool], np.ndarray]


def bicubic_method(scale: int) -> Method:
    """MATLAB-style bicubic, on the one gray channel when there is only one (the three are equal)."""
    return lambda lr, gray=False: imresize(lr[..., 0] if gray else lr, scale)


def network_method(net: torch.nn.Module, scale: int, device: torch.device, quantize: str = "truncate",
                   tile: int | None = None, tile_overlap: int = 24, self_ensemble: bool = False,
                   bf16: bool = False) -> Method:
    """The network as an upscaler (sample.py's and training validation's): SR quantised to the LR's depth (a
    16-bit photo is run and returned at 16 bits); for a gray input the SR's luma, quantised like the RGB output."""
    def upscale(lr: np.ndarray, gray: bool = False) -> np.ndarray:
        sr = super_resolve(net, lr, scale, tile=tile, tile_overlap=tile_overlap, self_ensemble=self_ensemble,
                           device=device, bf16=bf16)
        levels = to_uint16 if lr.dtype == np.uint16 else to_uint8
        return levels(luma(sr), quantize)[..., 0] if gray else levels(sr, quantize)
    return upscale


def is_file_target(output: str) -> bool:
    """``--output`` names an image file (it ends in an image extension, is no folder and does not end in a
    slash), else a folder."""
    if output.endswith(("/", os.sep)):
        return False
    return Path(output).suffix.lower() in IMAGE_EXTENSIONS and not Path(output).is_dir()


def output_names(inputs: list[Path]) -> list[str]:
    """Output stems: the input's, with its extension added when two inputs share a stem (a.png, a.jpg)."""
    stems = [p.stem.casefold() for p in inputs]
    names = [f"{p.stem}_{p.suffix[1:]}" if stems.count(p.stem.casefold()) > 1 else p.stem for p in inputs]
    seen: dict[str, Path] = {}
    for p, name in zip(inputs, names):
        if name.casefold() in seen:
            raise InputError(f"{seen[name.casefold()]} and {p} would write the same output name; rename one")
        seen[name.casefold()] = p
    return names


def plan_outputs(inputs: list[Path], source: Path, output: str | None, scales: list[int],
                 default_dir: Path) -> list[tuple[Path, int, Path]]:
    """(input, scale, destination) for every job, checked writable before any work.

    Without ``output``: ``default_dir/<source name>/x<s>/<name>_x<s>_SR.png``. With a folder:
    ``output/<name>_x<s>_SR.png``. With a file: exactly that file (one input, one scale).
    """
    if output is not None and is_file_target(output):
        if len(inputs) > 1 or len(scales) > 1:
            what = f"{len(inputs)} images" if len(inputs) > 1 else f"{len(scales)} scales"
            raise InputError(f"--output {output} is one file but there are {what} to write: "
                             "pass a folder as --output")
        plan = [(inputs[0], scales[0], Path(output))]
    else:
        folder, names = Path(output) if output is not None else None, output_names(inputs)
        plan = [(p, s, (folder or default_dir / source.stem / f"x{s}") / f"{name}_x{s}_SR.png")
                for s in scales for p, name in zip(inputs, names)]
    clash = overwritten_input((dst for _, _, dst in plan), inputs)
    if clash:
        raise InputError(f"the output {clash[0]} would overwrite the input {clash[1]}: pass another --output")
    for _, _, dst in plan:
        check_replaceable(dst)
    for parent in dict.fromkeys(dst.parent for _, _, dst in plan):
        ensure_writable(parent / "SR.png")
    return plan


def upscale_planes(planes: Planes, scale: int, method: Method) -> np.ndarray:
    """SR of decoded planes in the input's own kind: gray (HxW), gray+alpha, RGB or RGBA (alpha last), at the
    planes' depth."""
    sr = method(planes.rgb, planes.gray)
    if planes.alpha is None:
        return sr
    alpha = imresize(planes.alpha, scale)  # uint8 (uint16) in, the same out, rounded as MATLAB does
    return np.dstack([sr, alpha])


def upscale_inputs(plan: list[tuple[Path, int, Path]], methods: dict[int, Method]) -> None:
    """Run every job of :func:`plan_outputs`, printing each written path; every input's header is read first."""
    for src in dict.fromkeys(src for src, _, _ in plan):
        image_size(src)
    for src, scale, dst in plan:
        planes = read_planes(src, keep_depth=True)
        check_savable(dst, (1 if planes.gray else 3) + (planes.alpha is not None))
        write_image(dst, upscale_planes(planes, scale, methods[scale]))
        print(dst, flush=True)
