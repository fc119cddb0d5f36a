"""Upscaling a user's own images (no HR): gray stays gray, alpha is kept, and no output overwrites another.

Every mode PIL opens is decoded by :func:`dataset.io.read_planes`; the network always sees RGB. A grayscale
input comes back as one channel, the BT.601 luma of the SR (:func:`dsrnet.metrics.luma`); an alpha channel is
upscaled with MATLAB-style bicubic and kept.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from dataset.imresize import imresize
from dataset.io import IMAGE_EXTENSIONS, Planes, check_savable, ensure_writable, image_size, read_planes, write_image
from dsrnet.errors import InputError

# LR uint8 RGB HxWx3 and "the input was grayscale" -> SR uint8, HxWx3 or (gray) HxW.
Method = Callable[[np.ndarray, bool], np.ndarray]


def bicubic_method(scale: int) -> Method:
    """MATLAB-style bicubic, on the one gray channel when there is only one (the three are equal)."""
    return lambda lr, gray: imresize(lr[..., 0] if gray else lr, scale)


def is_file_target(output: str | os.PathLike) -> bool:
    """``--output`` names an image file (it ends in an image extension and is no folder), else a folder."""
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
    sources = {p.resolve(): p for p in inputs}
    for _, _, dst in plan:
        if dst.resolve() in sources:
            raise InputError(f"the output {dst} would overwrite the input {sources[dst.resolve()]}: "
                             "pass another --output")
    for parent in dict.fromkeys(dst.parent for _, _, dst in plan):
        ensure_writable(parent / "SR.png")
    return plan


def upscale_planes(planes: Planes, scale: int, method: Method) -> np.ndarray:
    """SR of decoded planes in the input's own kind: gray (HxW), gray+alpha, RGB or RGBA (alpha last)."""
    sr = method(planes.rgb, planes.gray)
    if planes.alpha is None:
        return sr
    alpha = imresize(planes.alpha, scale)  # uint8 in, uint8 out, rounded as MATLAB does
    return np.dstack([sr, alpha])


def upscale_inputs(plan: list[tuple[Path, int, Path]], methods: dict[int, Method]) -> None:
    """Run every job of :func:`plan_outputs`, printing each written path; every input's header is read first."""
    for src in dict.fromkeys(src for src, _, _ in plan):
        image_size(src)
    for src, scale, dst in plan:
        planes = read_planes(src)
        check_savable(dst, (1 if planes.gray else 3) + (planes.alpha is not None))
        write_image(dst, upscale_planes(planes, scale, methods[scale]))
        print(dst, flush=True)
