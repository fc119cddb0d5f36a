"""Training checkpoints: what one holds, the atomic save, the ``{name}_{step}.pth`` naming, resuming one.

A training checkpoint is what ``sample.py`` loads (weights, scale, group) plus the run's flags
(``config``), provenance and a ``train_state`` with everything a bit-exact resume needs: optimizer,
grad scaler, gate noise, every RNG and the open log interval's loss sums.
"""
from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import torch

from dataset.io import atomic_write_bytes
from dsrnet.distributed import print_rank0
from dsrnet.errors import InputError
from dsrnet.provenance import environment
from dsrnet.rng import capture_rng_states, restore_rng_states
from model import Net, read_checkpoint


def save_checkpoint(path: Path, ckpt: dict) -> None:
    """Write through a temp file + rename: a crash mid-save never leaves a truncated checkpoint."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_step(path: Path, name: str) -> int | None:
    """The step in ``{name}_{step}.pth``, or None for any other file name."""
    m = re.fullmatch(rf"{re.escape(name)}_(\d+)\.pth", path.name)
    return int(m.group(1)) if m else None


def latest_checkpoint(ckpt_dir: Path, name: str) -> Path | None:
    """The highest-step ``{name}_{step}.pth`` in ``ckpt_dir``."""
    found = [(checkpoint_step(p, name), p) for p in ckpt_dir.glob(f"{name}_*.pth")]
    found = [(s, p) for s, p in found if s is not None]
    return max(found)[1] if found else None


def find_resume(resume: str, ckpt_dir: Path, name: str) -> Path:
    """The checkpoint ``--resume`` names: a file, or 'latest' for the highest step in ``ckpt_dir``."""
    if resume != "latest":
        if not Path(resume).is_file():
            raise InputError(f"--resume {resume}: no such file (--resume alone picks the latest "
                             f"checkpoint in --ckpt_dir)")
        return Path(resume)
    path = latest_checkpoint(ckpt_dir, name)
    if path is None:
        raise InputError(f"--resume: no {name}_<step>.pth in {ckpt_dir}; check "
                         "--ckpt_dir/--ckpt_name or start without --resume")
    return path


# Flags that change the network's tensors: a checkpoint resumes only into the same ones.
MODEL_FLAGS = ("model", "scale", "group")
# Flags a resume may change, at the price of no longer matching an uninterrupted run.
RUN_FLAGS = ("lr", "decay", "clip", "loss_fn", "batch_size", "patch_size", "seed", "gate", "amp",
             "train_data_path", "deterministic")


def training_checkpoint(cfg: argparse.Namespace, step: int, net: Net, optim: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, loss_sum: float, loss_count: int, world: int) -> dict:
    """What sample.py loads (weights, scale, group) plus everything a bit-exact resume needs."""
    return {
        "model": net.state_dict(),
        "scale": cfg.scale, "group": cfg.group, "step": step, "seed": cfg.seed,
        "config": vars(cfg),
        "environment": environment(),
        "train_state": {
            "optimizer": optim.state_dict(),
            "grad_scaler": scaler.state_dict(),
            "gate_generator": net.wide_enhancement.gate_generator.get_state(),
            "rng": capture_rng_states(),
            "loss_sum": loss_sum, "loss_count": loss_count,  # the open log interval
            "world_size": world,
        },
    }


def read_resumable(path: Path, cfg: argparse.Namespace, on_gpu: bool) -> dict:
    """The checkpoint at ``path`` if this run can continue it; notes flags that change the math."""
    ckpt = read_checkpoint(path)
    saved = ckpt.get("config", {})
    if ckpt.get("train_state") is None:
        raise InputError(f"{path} holds weights but no training state, so it cannot be resumed; "
                         "start a new run from it with --init_from")
    for flag in MODEL_FLAGS:
        if saved.get(flag) != getattr(cfg, flag):
            raise InputError(f"cannot resume {path}: it was trained with --{flag} {saved.get(flag)}, "
                             f"this run has --{flag} {getattr(cfg, flag)}; pass the same value, or "
                             "start a new run from its weights with --init_from")
    # Flags a checkpoint predates are not compared; CPU runs are deterministic with or without the flag.
    compared = [f for f in RUN_FLAGS if f in saved and (f != "deterministic" or on_gpu)]
    changed = [f"--{f} {saved[f]} -> {getattr(cfg, f)}" for f in compared if saved[f] != getattr(cfg, f)]
    if changed:
        print_rank0("note: resuming with changed " + ", ".join(changed)
                    + ": the run no longer matches an uninterrupted one")
    return ckpt


def restore_training_state(path: Path, ckpt: dict, net: Net, optim: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler) -> tuple[int, float, int]:
    """Load weights, optimizer, grad scaler, gate noise and every RNG; returns (step, loss_sum, loss_count)."""
    state = ckpt["train_state"]
    try:
        net.load_state_dict(ckpt["model"])
        optim.load_state_dict(state["optimizer"])
        if state["grad_scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["grad_scaler"])
        net.wide_enhancement.gate_generator.set_state(state["gate_generator"])
        restore_rng_states(state["rng"])
        return int(ckpt["step"]), state["loss_sum"], state["loss_count"]
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot resume {path}: its training state is damaged ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); resume from an earlier "
                         "checkpoint, or start a new run from its weights with --init_from") from None


def copy_matching_tensors(net: Net, path: Path) -> str:
    """Copy the tensors of ``path`` whose name and shape match (EDSR's practice: x3/x4 from x2 weights).

    Returns the one-line account of what was copied, skipped and left at its initialisation.
    """
    source = read_checkpoint(path)["model"]
    own = net.state_dict()
    copied = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(copied, strict=False)
    skipped = sorted(set(source) - set(copied))
    fresh = sorted(set(own) - set(copied))
    return (f"--init_from {path}: copied {len(copied)} tensors; skipped {len(skipped)} that do not "
            f"match{': ' + ', '.join(skipped) if skipped else ''}; {len(fresh)} left at their "
            f"initialisation{': ' + ', '.join(fresh) if fresh else ''}")
