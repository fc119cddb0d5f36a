"""Training checkpoints: what one holds, the atomic save, the ``{name}_{step}.pth`` naming, resuming one.

A training checkpoint is what ``sample.py`` loads (weights, scale, group) plus the run's flags
(``config``), provenance and a ``train_state`` with everything a bit-exact resume needs: optimizer,
grad scaler, gate noise, every RNG and the open log interval's loss sums.
"""
from __future__ import annotations

import argparse
import io
import pickle
import re
import uuid
import zipfile
from pathlib import Path

import torch

from dataset.io import atomic_write_bytes
from dsrnet.distributed import print_rank0
from dsrnet.errors import InputError
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


def run_names(ckpt_dir: Path) -> set[str]:
    """The CKPT_NAMEs of the ``{name}_{step}.pth`` files in ``ckpt_dir``."""
    return {m.group(1) for p in ckpt_dir.glob("*_*.pth") if (m := re.fullmatch(r"(.+)_(\d+)\.pth", p.name))}


def find_resume(resume: str, ckpt_dir: Path, name: str, name_given: bool = True) -> Path:
    """The checkpoint ``--resume`` names: a file, or 'latest' for the highest step in ``ckpt_dir``.

    Without --ckpt_name, a folder holding the checkpoints of one other name resumes that run.
    """
    if resume != "latest":
        if not Path(resume).is_file():
            raise InputError(f"--resume {resume}: no such file (--resume alone picks the latest "
                             f"checkpoint in --ckpt_dir)")
        return Path(resume)
    path = latest_checkpoint(ckpt_dir, name)
    names = run_names(ckpt_dir) if path is None and not name_given else set()
    if len(names) > 1:
        raise InputError(f"--resume: {ckpt_dir} holds the runs {', '.join(sorted(names))}: pick one with --ckpt_name")
    if names:
        path = latest_checkpoint(ckpt_dir, names.pop())
    if path is None:
        raise InputError(f"--resume: no {name}_<step>.pth in {ckpt_dir}; check "
                         "--ckpt_dir/--ckpt_name or start without --resume")
    return path


# Flags that change the network's tensors: a checkpoint resumes only into the same ones.
MODEL_FLAGS = ("model", "scale", "group")
# Flags a resume may change, at the price of no longer matching an uninterrupted run.
RUN_FLAGS = ("lr", "decay", "clip", "loss_fn", "batch_size", "patch_size", "seed", "gate", "gate_tau", "gate_tau_min",
             "gate_lr_mult", "gate_penalty", "amp",
             "train_data_path", "deterministic")


def _header(cfg: argparse.Namespace, step: int, net: Net, env: dict) -> dict:
    """What every checkpoint of a run holds: what sample.py loads (weights, scale, group) and its provenance."""
    return {"model": net.state_dict(), "scale": cfg.scale, "group": cfg.group, "step": step, "seed": cfg.seed,
            "config": vars(cfg), "environment": env}


def training_checkpoint(cfg: argparse.Namespace, step: int, net: Net, optim: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, loss_sum: float, loss_count: int, world: int,
                        env: dict) -> dict:
    """The header plus everything a bit-exact resume needs. ``env``: :func:`dsrnet.provenance.environment`,
    taken once when the run starts (the code it describes is what the process imported)."""
    return {
        **_header(cfg, step, net, env),
        "train_state": {
            "optimizer": optim.state_dict(),
            "grad_scaler": scaler.state_dict(),
            "gate_generator": net.wide_enhancement.gate_generator.get_state(),
            "rng": capture_rng_states(),
            "loss_sum": loss_sum, "loss_count": loss_count,  # the open log interval
            "routed": dict(net.wide_enhancement.routed),  # and its learned-gate routing count
            "world_size": world,
        },
    }


def weights_checkpoint(cfg: argparse.Namespace, step: int, net: Net, scores: dict[str, float], env: dict) -> dict:
    """A small file sample.py loads (no training state): the weights at ``step`` and their validation scores."""
    return {**_header(cfg, step, net, env), "valid": scores}


def read_resumable(path: Path, cfg: argparse.Namespace) -> dict:
    """The checkpoint at ``path`` if this run can continue it: it has a training state and the same network."""
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
        net.wide_enhancement.routed.update(state.get("routed", {}))
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


def _recorded(path: Path) -> dict:
    """What a checkpoint file records (memory-mapped: nothing is read but what is asked), or {} if unreadable."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile):
        return {}  # an unreadable file is simply not one of this run's
    return ckpt if isinstance(ckpt, dict) else {}


def _step_and_lineage(ckpt: dict) -> tuple[int, str | None]:
    """The step and run lineage a checkpoint records (full or weights-only); (0, None) if it records none."""
    return int(ckpt.get("step", 0)), (ckpt.get("train_state") or {}).get("lineage") or ckpt.get("lineage")


class RunCheckpoints:
    """The files one run lineage keeps in its folder: ``{name}_{step}.pth`` plus weights-only
    ``{name}_best.pth`` (best mean validation PSNR) and ``{name}_final.pth`` (the --max_steps weights).

    A lineage is a run and its resumptions, named by a random id that every file records. Each full
    checkpoint also lists the full checkpoints its lineage wrote here and still keeps
    (``train_state["written"]``): --keep_last deletes only those, never another run's or another name's
    files. Resuming from an earlier step sets aside the lineage's files beyond it (a future the resume
    abandons), so that a later plain --resume cannot pick them; other files stay as they are.
    """

    def __init__(self, folder: Path, name: str, keep_last: int):
        self.folder, self.name, self.keep_last = folder, name, keep_last
        self.written: list[str] = []
        self.lineage = uuid.uuid4().hex
        self.best_psnr: float | None = None
        self.best_path = folder / f"{name}_best.pth"
        self.final_path = folder / f"{name}_final.pth"

    def path(self, step: int) -> Path:
        return self.folder / f"{self.name}_{step}.pth"

    def latest(self) -> Path | None:
        return latest_checkpoint(self.folder, self.name)

    def save(self, step: int, ckpt: dict) -> Path:
        """Write a full checkpoint, then delete this lineage's full checkpoints beyond the newest --keep_last."""
        path = self.path(step)
        kept = sorted({*self.written, path.name}, key=lambda n: checkpoint_step(Path(n), self.name))
        dropped = kept[:-self.keep_last] if self.keep_last else []
        kept = kept[len(dropped):]
        ckpt["train_state"].update(written=kept, lineage=self.lineage)
        save_checkpoint(path, ckpt)
        for name in dropped:
            (self.folder / name).unlink(missing_ok=True)
        self.written = kept
        return path

    def save_weights(self, weights: dict, mean_psnr: float | None, final: bool) -> None:
        """``{name}_best.pth`` when the mean validation PSNR beats the best so far; ``{name}_final.pth`` at the end."""
        weights = {**weights, "lineage": self.lineage}
        if mean_psnr is not None and (self.best_psnr is None or mean_psnr > self.best_psnr):
            save_checkpoint(self.best_path, {**weights, "mean_psnr": mean_psnr})
            self.best_psnr = mean_psnr
        if final:
            save_checkpoint(self.final_path, weights)

    def continue_from(self, path: Path, ckpt: dict) -> None:
        """Adopt the lineage of the checkpoint resumed and set aside this name's files beyond its step."""
        step, state = int(ckpt["step"]), ckpt["train_state"]
        self.lineage = state.get("lineage") or self.lineage  # checkpoints before lineages: a new one
        if path.resolve().parent == self.folder.resolve():
            self.written = [n for n in state.get("written", [])
                            if (s := checkpoint_step(Path(n), self.name)) is not None and s <= step]
        files = [p for p in self.folder.glob(f"{self.name}_*.pth") if (checkpoint_step(p, self.name) or 0) > step]
        files += [p for p in (self.best_path, self.final_path) if p.is_file()]
        recorded = {p: _recorded(p) for p in files}
        ours = {p for p, ckpt in recorded.items() if _step_and_lineage(ckpt)[1] == self.lineage}
        later = [p for p in files if p in ours and _step_and_lineage(recorded[p])[0] > step]
        if later:
            self.set_aside(later, step)
        if self.best_path in ours and self.best_path not in later:
            self.best_psnr = recorded[self.best_path].get("mean_psnr")

    def set_aside(self, files: list[Path], step: int) -> None:
        """Move ``files`` into a new ``abandoned_after_step_{step}`` folder beside them, saying so."""
        aside, n = self.folder / f"abandoned_after_step_{step}", 1
        while aside.exists():
            n += 1
            aside = self.folder / f"abandoned_after_step_{step}_{n}"
        aside.mkdir()
        for p in files:
            p.replace(aside / p.name)
        print_rank0(f"note: resuming at step {step} set aside {len(files)} later file(s) of {self.name} "
                    f"(a future this resume abandons) in {aside}; log rows after step {step} are dropped")
