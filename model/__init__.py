"""DSRNet and its checkpoint loading.

``from model import load_checkpoint; net = load_checkpoint(path)`` returns an eval-mode :class:`Net`
from the authors' released files or from this repository's own checkpoints.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import torch

from model.dsrnet import SCALES, Net, checkpoint_filter_fn, infer_scale, is_authors_state_dict
from model.precision import fast_memory_format
from model.routing import GATE_MODES, GateRouter

__all__ = ["CheckpointError", "Net", "GATE_MODES", "GateRouter", "SCALES", "held_weights", "load_checkpoint", "read_checkpoint", "file_sha256", "scale_name"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked. The message names the file and the fix; the CLIs
    print it as one line (``dsrnet.cli.run_cli``). ``model/`` defines its own error so that it
    depends on torch alone and can be copied into another project."""


def scale_name(scale: int) -> str:
    return "multi-scale" if scale == 0 else f"x{scale}"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file safely (weights_only) and return our-format keys plus its metadata.

    Returns ``{"model": state_dict, "scale": int, ...}``; the authors' plain state_dict is renamed
    through :func:`model.dsrnet.checkpoint_filter_fn`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass --ckpt_path to an existing .pth file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if reason.startswith("Weights only load failed"):  # torch's long advice on pickles: not the point here
            reason = "not a tensor-only PyTorch file"
        raise CheckpointError(f"cannot read checkpoint {path}: damaged, truncated or not a checkpoint ({reason[:120]}); "
                         "re-download or re-save it") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict")
    ckpt = dict(obj) if "model" in obj and isinstance(obj["model"], dict) else {"model": obj}
    state = ckpt["model"]
    if is_authors_state_dict(state) or any(k.startswith("module.") for k in state):
        state = checkpoint_filter_fn(state)
        ckpt["format"] = "authors" if is_authors_state_dict(ckpt["model"]) else "dsrnet"
    ckpt.setdefault("format", "dsrnet")
    ckpt["model"] = state
    try:
        ckpt["scale"] = infer_scale(state)
    except KeyError:
        raise CheckpointError(f"checkpoint {path} has no DSRNet upsampler weights: is it a DSRNet checkpoint?") from None
    return ckpt


def held_weights(ckpt: dict) -> dict[str, dict]:
    """The weights a checkpoint holds by kind: 'raw' (``model``) and, from a run with ``--ema``, 'ema'
    (``model_ema``); a weights-only file of such a run holds the average under ``model`` (``weights: "ema"``)."""
    if "model_ema" in ckpt:
        return {"ema": ckpt["model_ema"], "raw": ckpt["model"]}
    return {"ema" if ckpt.get("weights") == "ema" else "raw": ckpt["model"]}


def load_checkpoint(path: str | os.PathLike, scale: int | None = None, device: str | torch.device = "cpu",
                    gate_mode: str = "selected", gate_seed: int = 0, group: int | None = None,
                    memory_format: torch.memory_format | None = None, weights: str | None = None) -> Net:
    """Build an eval-mode Net from ``path`` with the scale the weights were trained for.

    ``scale`` (optional) is checked against the file: a x2 file asked for x4 is refused. A
    multi-scale checkpoint accepts any of 2, 3, 4. The weights are put in ``memory_format``, by default
    the one float32 runs fastest in on ``device`` (:func:`model.precision.fast_memory_format`).
    ``weights``: 'ema' or 'raw' (see :func:`held_weights`); by default the averaged ones where the file has
    them (as BasicSR releases params_ema), else its only ones. The net records which as ``net.weights``.
    """
    ckpt = read_checkpoint(path)
    sets = held_weights(ckpt)
    which = weights or ("ema" if "ema" in sets else "raw")
    if which not in sets:
        raise CheckpointError(
            f"checkpoint {path} holds no averaged weights (model_ema: a run trained with --ema saves them); drop "
            "--weights ema" if which == "ema" else
            f"checkpoint {path} holds only averaged weights (the _best/_final file of an --ema run); its step "
            "checkpoints hold the raw ones, or drop --weights raw")
    held = ckpt["scale"]
    if scale not in (None, 0) and held != 0 and held != scale:
        raise CheckpointError(f"checkpoint {path} holds a x{held} model but x{scale} was asked; "
                         f"pass --scale {held} or a x{scale} checkpoint")
    if scale == 0 and held != 0:
        raise CheckpointError(f"checkpoint {path} holds a x{held} model, not a multi-scale one; pass --scale {held}")
    groups = group or int(ckpt.get("group", 1))
    if groups < 1:
        raise CheckpointError(f"--group must be a positive integer, got {groups}")
    net = Net(scale=held or 2, multi_scale=held == 0, group=groups, gate_mode=gate_mode, gate_seed=gate_seed)
    try:
        result = net.load_state_dict(sets[which], strict=False)
    except RuntimeError as err:  # tensor shapes differ, e.g. another --group than the file was trained with
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(f"checkpoint {path} does not fit DSRNet with group {groups} ({first}); "
                         "drop --group or pass the one it was trained with") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"checkpoint {path} does not match DSRNet ({scale_name(held)}): "
                         f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    net.weights = which
    return net.to(device, memory_format=memory_format or fast_memory_format(device)).eval()
