"""Resuming is "the same command, plus --resume": the checkpoint's recorded flags are the defaults.

Flags given on the command line override the recorded ones, each change named in one line. Where
the run lives (--ckpt_dir) and which network the entry point trains (--scale) are not taken from
the checkpoint: the folder is where --resume found it, and x2/x3/x4/train.py each name a scale.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from dsrnet.train.checkpoints import find_resume
from dsrnet.train.config import NETWORK, NOT_INHERITED, RECIPE, TrainConfig
from dsrnet.train.distributed import print_rank0
from model import read_checkpoint


def _same(a: object, b: object) -> bool:
    """Equal values; paths spelled differently (relative, absolute) count as the same."""
    if isinstance(a, str) and isinstance(b, str):
        return os.path.abspath(a) == os.path.abspath(b)
    return a == b


def resume_config(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """``cfg`` with every setting not given taken from the checkpoint --resume names, and --resume pointing at
    that file; ``given``: the settings the command line gave."""
    path = find_resume(cfg.resume, Path(cfg.ckpt_dir), cfg.ckpt_name, name_given="ckpt_name" in given)
    # runs before --init_weights copied raw weights; before --ema, they had no average (the default)
    saved = TrainConfig.from_dict({"init_weights": "raw", **(read_checkpoint(path).get("config") or {})})
    resumed = cfg.resumed_from(saved, given)
    if cfg.resume == "latest":
        resumed = replace(resumed, ckpt_name=path.stem.rsplit("_", 1)[0])  # the run found there
    elif "ckpt_dir" not in given:
        resumed = replace(resumed, ckpt_dir=str(path.parent))  # continue where the run lives
    if "init_from" in given:
        print_rank0(f"note: --init_from {cfg.init_from} is ignored with --resume (it only starts a new run)")
    if "init_weights" in given:
        print_rank0(f"note: --init_weights {cfg.init_weights} is ignored with --resume (it only starts a new run)")
    resumed = replace(resumed, init_from=saved.init_from,  # how the run once started, for the record
                      init_weights=saved.init_weights, resume=str(path))
    note_overrides(saved, resumed, given)
    return resumed


def note_overrides(saved: TrainConfig, cfg: TrainConfig, given: set[str]) -> None:
    """One line for the given flags that change the math, one for the others; CPU runs are deterministic anyway."""
    skip = {*NOT_INHERITED, *NETWORK} | (set() if torch.cuda.is_available() else {"deterministic"})
    changed = [f for f in sorted(given - skip) if not _same(getattr(saved, f), getattr(cfg, f))]
    math = [f"--{f} {getattr(saved, f)} -> {getattr(cfg, f)}" for f in changed if f in RECIPE]
    other = [f"--{f} {getattr(saved, f)} -> {getattr(cfg, f)}" for f in changed if f not in RECIPE]
    if math:
        print_rank0(f"note: resuming with changed {', '.join(math)}: the run no longer matches an uninterrupted one")
    if other:
        print_rank0("note: resuming with " + ", ".join(other) + " (every other flag as the checkpoint recorded it)")
