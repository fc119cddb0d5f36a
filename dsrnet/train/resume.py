"""Resuming is "the same command, plus --resume": the checkpoint's recorded flags are the defaults.

Flags given on the command line override the recorded ones, each change named in one line. Where
the run lives (--ckpt_dir) and which network the entry point trains (--scale) are not taken from
the checkpoint: the folder is where --resume found it, and x2/x3/x4/train.py each name a scale.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from dsrnet.train.checkpoints import MODEL_FLAGS, RUN_FLAGS, find_resume
from dsrnet.train.distributed import print_rank0
from model import read_checkpoint

# Not part of a run's recipe: where to find it, the network the entry point names, how a new run starts.
NOT_INHERITED = ("resume", "ckpt_dir", "scale", "init_from", "init_weights")


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The flags (dests) the command line sets itself: parsed again with every default suppressed.

    The parser is changed in place; build a fresh one for other uses.
    """
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _same(a: object, b: object) -> bool:
    """Equal values; paths spelled differently (relative, absolute) count as the same."""
    if isinstance(a, str) and isinstance(b, str):
        return os.path.abspath(a) == os.path.abspath(b)
    return a == b


def apply_resume_defaults(cfg: argparse.Namespace, given: set[str]) -> None:
    """Fill every flag not given from the checkpoint --resume names, and point --resume at that file."""
    path = find_resume(cfg.resume, Path(cfg.ckpt_dir), cfg.ckpt_name, name_given="ckpt_name" in given)
    saved = {"ema": 0.0, **(read_checkpoint(path).get("config") or {})}  # runs before --ema had no average
    for key, value in saved.items():
        if hasattr(cfg, key) and key not in given and key not in NOT_INHERITED:
            setattr(cfg, key, value)
    if cfg.resume == "latest":
        cfg.ckpt_name = path.stem.rsplit("_", 1)[0]  # the run found there
    elif "ckpt_dir" not in given:
        cfg.ckpt_dir = str(path.parent)  # continue where the run lives
    if "init_from" in given:
        print_rank0(f"note: --init_from {cfg.init_from} is ignored with --resume (it only starts a new run)")
    if "init_weights" in given:
        print_rank0(f"note: --init_weights {cfg.init_weights} is ignored with --resume (it only starts a new run)")
    cfg.init_from = saved.get("init_from")  # how the run once started, for the record
    cfg.init_weights = saved.get("init_weights", "raw")
    cfg.resume = str(path)
    note_overrides(saved, cfg, given)


def note_overrides(saved: dict, cfg: argparse.Namespace, given: set[str]) -> None:
    """One line for the given flags that change the math, one for the others; CPU runs are deterministic anyway."""
    skip = {*NOT_INHERITED, *MODEL_FLAGS} | (set() if torch.cuda.is_available() else {"deterministic"})
    changed = [f for f in sorted(given - skip) if f in saved and not _same(saved[f], getattr(cfg, f))]
    math = [f"--{f} {saved[f]} -> {getattr(cfg, f)}" for f in changed if f in RUN_FLAGS]
    other = [f"--{f} {saved[f]} -> {getattr(cfg, f)}" for f in changed if f not in RUN_FLAGS]
    if math:
        print_rank0(f"note: resuming with changed {', '.join(math)}: the run no longer matches an uninterrupted one")
    if other:
        print_rank0("note: resuming with " + ", ".join(other) + " (every other flag as the checkpoint recorded it)")
