"""Training checkpoints: what one holds, the atomic save, the ``{name}_{step}.pth`` naming, resuming one.

A training checkpoint is what ``sample.py`` loads (weights, scale, group) plus the run's flags
(``config``), provenance and a ``train_state`` with everything a bit-exact resume needs: optimizer,
grad scaler, gate noise, every RNG and the open log interval's loss sums. A run with ``--ema`` also saves the
averaged weights (``model_ema``, see :mod:`dsrnet.train.ema`).
"""
from __future__ import annotations

import glob
import io
import os
import pickle
import re
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from dsrnet.errors import InputError
from dsrnet.files import atomic_write_bytes
from dsrnet.train.config import NETWORK, TrainConfig
from dsrnet.train.distributed import print_rank0
from dsrnet.train.ema import WeightAverage
from dsrnet.train.rng import capture_rng_states, restore_rng_states
from model import Net, held_weights, read_checkpoint


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


def _header(cfg: TrainConfig, step: int, net: Net, env: dict) -> dict:
    """What every checkpoint of a run holds: what sample.py loads (weights, scale, group) and its provenance."""
    return {"model": net.state_dict(), "scale": cfg.scale, "group": cfg.group, "step": step, "seed": cfg.seed,
            "config": cfg.to_dict(), "environment": env}


def training_checkpoint(cfg: TrainConfig, step: int, net: Net, optim: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, loss_sum: float, loss_count: int, world: int,
                        env: dict, train_data: dict, pending_row: dict | None,
                        ema: WeightAverage | None = None) -> dict:
    """The header plus everything a bit-exact resume needs. ``env``: :func:`dsrnet.provenance.environment`,
    taken once when the run starts (the code it describes is what the process imported); ``train_data``:
    :func:`dsrnet.data.train_data.file_identity` of the training file; ``pending_row``: this step's log row when
    its validation is still to come (saved first, so that a resume can finish the step if it never came);
    ``ema``: the run's averaged weights, saved as ``model_ema``."""
    return {
        **_header(cfg, step, net, env),
        **({"model_ema": ema.state_dict()} if ema is not None else {}),
        "train_state": {
            "optimizer": optim.state_dict(),
            "grad_scaler": scaler.state_dict(),
            "rng": capture_rng_states(),
            "loss_sum": loss_sum, "loss_count": loss_count,  # the open log interval
            **net.router.state(),  # gate noise, and the open interval's learned-gate routing count
            "world_size": world,
            "train_data": train_data,
            "pending_row": pending_row,
        },
    }


def weights_checkpoint(cfg: TrainConfig, step: int, net: Net, scores: dict[str, float], env: dict,
                       averaged: bool = False) -> dict:
    """A small file sample.py loads (no training state): the weights at ``step`` and their validation scores;
    ``averaged``: the net holds a run's averaged weights (recorded as ``weights: "ema"``)."""
    return {**_header(cfg, step, net, env), "valid": scores, **({"weights": "ema"} if averaged else {})}


def read_resumable(path: Path, cfg: TrainConfig) -> dict:
    """The checkpoint at ``path`` if this run can continue it: it has a training state and the same network."""
    ckpt = read_checkpoint(path)
    saved = ckpt.get("config", {})
    if ckpt.get("train_state") is None:
        raise InputError(f"{path} holds weights but no training state, so it cannot be resumed; "
                         "start a new run from it with --init_from")
    for flag in NETWORK:  # a checkpoint resumes only into the same tensors
        if saved.get(flag) != getattr(cfg, flag):
            raise InputError(f"cannot resume {path}: it was trained with --{flag} {saved.get(flag)}, "
                             f"this run has --{flag} {getattr(cfg, flag)}; pass the same value, or "
                             "start a new run from its weights with --init_from")
    return ckpt


def regroup_optimizer_state(saved: dict, saved_groups: list[list[str]], groups: list[list[str]]) -> dict:
    """An optimizer state_dict whose parameter groups held the parameters named ``saved_groups``, re-keyed for
    ``groups`` (the same parameters grouped otherwise, as when a resume changes --gate): each parameter keeps
    its own moments; every group takes the first saved group's settings (the lr is set every step anyway)."""
    flat_saved = [n for g in saved_groups for n in g]
    if sorted(flat_saved) != sorted(n for g in groups for n in g) or len(flat_saved) != sum(
            len(g["params"]) for g in saved["param_groups"]):
        raise ValueError("the checkpoint's optimizer holds other parameters than this network")
    index = {n: i for i, n in enumerate(flat_saved)}
    flat = [n for g in groups for n in g]
    settings = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    starts = [sum(len(g) for g in groups[:k]) for k in range(len(groups))]
    return {"state": {j: saved["state"][index[n]] for j, n in enumerate(flat) if index[n] in saved["state"]},
            "param_groups": [{**settings, "params": list(range(a, a + len(g)))} for a, g in zip(starts, groups)]}


def restore_training_state(path: Path, ckpt: dict, net: Net, optim: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler,
                           regroup: Callable[[dict], dict] | None = None,
                           ema: WeightAverage | None = None) -> tuple[int, float, int]:
    """Load weights, optimizer, grad scaler, gate noise and every RNG; returns (step, loss_sum, loss_count).
    ``regroup`` maps the saved optimizer state onto this run's parameter groups when they differ. ``ema``
    continues the saved average, or starts from the resumed weights when the checkpoint has none."""
    state = ckpt["train_state"]
    try:
        net.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt.get("model_ema") or ckpt["model"])
        optim.load_state_dict(regroup(state["optimizer"]) if regroup else state["optimizer"])
        if state["grad_scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["grad_scaler"])
        net.router.load_state(state)
        restore_rng_states(state["rng"])
        return int(ckpt["step"]), state["loss_sum"], state["loss_count"]
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot resume {path}: its training state is damaged ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); resume from an earlier "
                         "checkpoint, or start a new run from its weights with --init_from") from None


def data_change(saved: dict | None, now: dict) -> str | None:
    """One line when the training file differs from the one a checkpoint recorded (see
    :func:`dsrnet.data.train_data.file_identity`); None when it is the same, or the checkpoint recorded none."""
    if not saved or (saved.get("size"), saved.get("sha256_ends")) == (now["size"], now["sha256_ends"]):
        return None
    moved = f" (it was {saved.get('path')})" if saved.get("path") != now["path"] else ""
    how = (f"{saved.get('size'):,} -> {now['size']:,} bytes" if saved.get("size") != now["size"]
           else "same size, other content")
    return f"the training file {now['path']} is not the one the checkpoint trained on{moved}: {how}"


def copy_matching_tensors(net: Net, path: Path, weights: str = "ema") -> str:
    """Copy the tensors of ``path`` whose name and shape match (EDSR's practice: x3/x4 from x2 weights), from the
    weights of kind ``weights`` it holds (:func:`model.held_weights`): 'ema' takes a file's only weights when it
    has no average; 'raw' from a file holding only an average (an --ema run's _best/_final) is refused.

    Returns the one-line account of which weights, what was copied, skipped and left at its initialisation.
    """
    sets = held_weights(read_checkpoint(path))
    if weights not in sets and weights == "raw":
        raise InputError(f"--init_from {path} holds only averaged weights (the _best/_final file of an --ema run): "
                         "drop --init_weights raw, or start from one of the run's step checkpoints")
    taken = weights if weights in sets else "raw"  # 'ema' from a file without an average: its only weights
    source = sets[taken]
    own = net.state_dict()
    copied = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(copied, strict=False)
    skipped = sorted(set(source) - set(copied))
    fresh = sorted(set(own) - set(copied))
    which = ("" if sets.keys() == {"raw"} else " (its averaged weights, the only ones it holds)" if len(sets) == 1
             else " (its averaged weights, model_ema; --init_weights raw takes the raw ones)" if taken == "ema"
             else " (its raw weights, model)")
    return (f"--init_from {path}{which}: copied {len(copied)} tensors; skipped {len(skipped)} that do not "
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


def valid_basis(scores: Iterable[str], shave: int | None) -> tuple[list[str], int | None]:
    """What a mean validation PSNR is a mean over: the sets and scales scored (the ``*_psnr`` names among
    ``scores``, a row's keys or the log's fields), and the border left out."""
    return sorted(k for k in scores if k.endswith("_psnr")), shave


class RunCheckpoints:
    """The files one run lineage keeps in its folder: ``{name}_{step}.pth`` plus weights-only
    ``{name}_best.pth`` (best mean validation PSNR) and ``{name}_final.pth`` (the --max_steps weights).

    A lineage is a run and its resumptions, named by a random id that every file records. A run writes
    only files its lineage wrote, or names that are free: a new run refuses a folder that already holds a
    run (:meth:`claim_new`), a resumed one refuses another run's file under one of its names, and no
    write follows a symbolic link. Each full checkpoint lists the full checkpoints its lineage wrote here
    and still keeps (``train_state["written"]``): --keep_last deletes only those, never another run's or
    another name's files. Resuming from an earlier step sets aside the lineage's files beyond it (a future
    the resume abandons), so that a later plain --resume cannot pick them; other files stay as they are.
    """

    def __init__(self, folder: Path, name: str, keep_last: int):
        self.folder, self.name, self.keep_last = folder, name, keep_last
        self.written: list[str] = []
        self.lineage = uuid.uuid4().hex
        self.best_psnr: float | None = None
        self.best_path = folder / f"{name}_best.pth"
        self.final_path = folder / f"{name}_final.pth"
        self.owned: set[Path] = set()  # existing files this lineage wrote: the only ones it may replace

    def path(self, step: int) -> Path:
        return self.folder / f"{self.name}_{step}.pth"

    def latest(self) -> Path | None:
        return latest_checkpoint(self.folder, self.name)

    def run_files(self) -> list[Path]:
        """The files of this name's runs in the folder: step checkpoints, best and final weights."""
        return sorted(p for p in self.folder.glob(f"{glob.escape(self.name)}_*.pth")
                      if checkpoint_step(p, self.name) is not None or p in (self.best_path, self.final_path))

    def claim_new(self) -> None:
        """A new run starts only where no run lives: it would replace that run's log and its checkpoints as it
        reached their steps, and a later --resume would continue the wrong one."""
        found = [p.name for p in (self.folder / "log.csv", self.folder / "tb") if os.path.lexists(p)]
        found += [p.name for p in self.run_files()]
        if found:
            listed = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            raise InputError(f"--ckpt_dir {self.folder} already holds a training run ({listed}): continue it with "
                             "the same command plus --resume, or start this run in another --ckpt_dir")

    def save(self, step: int, ckpt: dict) -> Path:
        """Write a full checkpoint, then delete this lineage's full checkpoints beyond the newest --keep_last."""
        path = self.path(step)
        self.check_free(path)
        kept = sorted({*self.written, path.name}, key=lambda n: checkpoint_step(Path(n), self.name))
        dropped = kept[:-self.keep_last] if self.keep_last else []
        kept = kept[len(dropped):]
        ckpt["train_state"].update(written=kept, lineage=self.lineage)
        self.write(path, ckpt)
        for name in dropped:
            (self.folder / name).unlink(missing_ok=True)
        self.written = kept
        return path

    def save_weights(self, weights: dict, mean_psnr: float | None, final: bool) -> None:
        """``{name}_best.pth`` when the mean validation PSNR beats the best so far; ``{name}_final.pth`` at the end."""
        weights = {**weights, "lineage": self.lineage}
        better = mean_psnr is not None and (self.best_psnr is None or mean_psnr > self.best_psnr)
        for path in [self.best_path] * better + [self.final_path] * final:
            self.check_free(path)
        if better:
            self.write(self.best_path, {**weights, "mean_psnr": mean_psnr})
            self.best_psnr = mean_psnr
        if final:
            self.write(self.final_path, weights)

    def check_free(self, path: Path) -> None:
        """Refuse to replace a file (or link) this lineage did not write: a user's own, or another run's."""
        if path not in self.owned and os.path.lexists(path):
            raise InputError(f"{path} was not written by this run, which would replace it: move it out of "
                             f"{self.folder} and resume with the same command plus --resume")

    def write(self, path: Path, ckpt: dict) -> None:
        save_checkpoint(path, ckpt)
        self.owned.add(path)

    def continue_from(self, path: Path, ckpt: dict, basis: tuple[list[str], int | None]) -> None:
        """Adopt the lineage of the checkpoint resumed; set aside this name's files beyond its step, delete the
        ones --keep_last had dropped when a kill cut the pruning short, and keep the best PSNR if it was scored
        on ``basis`` (see :func:`valid_basis`). Another run's file under one of this run's names is refused."""
        step, state = int(ckpt["step"]), ckpt["train_state"]
        lineage = state.get("lineage")  # None: written before runs recorded lineages, as were its siblings
        self.lineage = lineage or self.lineage
        here = path.resolve().parent == self.folder.resolve()
        if here:
            self.written = [n for n in state.get("written", [])
                            if (s := checkpoint_step(Path(n), self.name)) is not None and s <= step]
        recorded = {p: _recorded(p) for p in self.run_files() if not (here and p.name == path.name)}
        ours = {p for p, saved in recorded.items() if "model" in saved and _step_and_lineage(saved)[1] == lineage}
        later = [p for p in ours if _step_and_lineage(recorded[p])[0] > step]
        if later:
            self.set_aside(sorted(later), step)
        foreign = [p for p in recorded if p not in ours and (p in (self.best_path, self.final_path)
                                                              or (checkpoint_step(p, self.name) or 0) > step)]
        if foreign:
            raise InputError(f"{foreign[0]} was not written by the run resumed from {path}, which would replace "
                             f"it: move it out of {self.folder} and resume again")
        self.owned = {p for p in ours if p not in later} | ({path} if here else set())
        if here and self.keep_last and "written" in state:
            self.prune_unlisted(sorted(p for p in self.owned if checkpoint_step(p, self.name) is not None))
        best = recorded.get(self.best_path) if self.best_path in self.owned else None
        if best:
            self.best_psnr = best.get("mean_psnr")
            before = valid_basis(best.get("valid", {}), (best.get("config") or {}).get("shave"))
            if basis[0] and before != basis:
                self.set_aside([self.best_path], step, "best_before_step")
                print_rank0(f"note: validation now scores {', '.join(basis[0])} (shave {basis[1]}), the best so far "
                            f"was scored on {', '.join(before[0]) or 'nothing'} (shave {before[1]}): the best starts "
                            "anew")
                self.best_psnr = None

    def prune_unlisted(self, files: list[Path]) -> None:
        """Delete this lineage's step checkpoints that the newest one no longer lists (a kill -9 came between
        its save and the pruning), saying so."""
        dropped = [p for p in files if p.name not in self.written]
        for p in dropped:
            p.unlink(missing_ok=True)
            self.owned.discard(p)
        if dropped:
            print_rank0(f"note: deleted {', '.join(p.name for p in dropped)}: beyond --keep_last {self.keep_last} "
                        "when the run was stopped before it could prune them")

    def set_aside(self, files: list[Path], step: int, why: str = "abandoned_after_step") -> None:
        """Move ``files`` into a new ``{why}_{step}`` folder beside them, saying so."""
        aside, n = self.folder / f"{why}_{step}", 1
        while aside.exists():
            n += 1
            aside = self.folder / f"{why}_{step}_{n}"
        aside.mkdir()
        for p in files:
            p.replace(aside / p.name)
            self.owned.discard(p)
        if why == "abandoned_after_step":
            print_rank0(f"note: resuming at step {step} set aside {len(files)} later file(s) of {self.name} "
                        f"(a future this resume abandons) in {aside}; log rows after step {step} are dropped")
        else:
            print_rank0(f"note: moved {', '.join(p.name for p in files)} to {aside}")
