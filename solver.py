"""Training DSRNet: one Solver for x2/x3/x4 and multi-scale, in one process or under torchrun (DDP).

    python x4/train.py --patch_size 64 --batch_size 64 --max_steps 600000 --decay 400000 \\
        --model dsrnet --ckpt_name dsrnet_x4 --ckpt_dir checkpoint/dsrnet_x4 --scale 4 --num_gpu 1
    torchrun --nproc_per_node 4 x4/train.py --scale 4 --num_gpu 4          # same global batch of 64
    python x4/train.py --resume                                            # continue from the latest checkpoint

A run is a function of its flags alone. Step k trains on samples k*B ... (k+1)*B - 1 of the seeded
endless stream of ``TrainDataset`` (B = --batch_size, split over the ranks), the learning rate is a
function of the step, and the checkpoint holds every RNG state, so an interrupted CPU run resumed
with --resume ends bit-identical to an uninterrupted one, whatever --num_workers is.

--num_gpu N means N processes, one GPU each, started by torchrun; it must match torchrun's world
size, and above 1 without torchrun it is refused with the command to use (the authors' DataParallel
would split the batch-wide gate per replica). --batch_size stays the global batch.

One run at a time owns --ckpt_dir, through a lock that dies with its process: a second run there stops
at startup with one line naming the first one's pid and host.

Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and exits with 128 + the signal
(130 / 143), so a job script can tell an interrupted run from a finished one (exit 0). A second
signal aborts at once. A non-finite loss stops the run (exit 2) before anything is written for it.

Differences from the authors' solver: the net is built with --scale (theirs did not pass it),
training stops exactly at --max_steps with a final checkpoint, and bad input ends with one
``error:`` line instead of a traceback.
"""
from __future__ import annotations

import argparse
import datetime
import math
import re
import signal
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsrnet.cli import HelpFormatter, output_never_stops_the_run, run_cli
from dsrnet.data.layouts import find_test_set, load_pair
from dsrnet.data.train_data import TrainDataset, file_identity, step_loader, step_scale
from dsrnet.errors import InputError
from dsrnet.evaluation import require_scorable
from dsrnet.files import ensure_writable_folder, stale_temps
from dsrnet.provenance import environment
from dsrnet.stopping import EXIT_ON_SIGNAL, stop_requests
from dsrnet.train.checkpoints import (RunCheckpoints, copy_matching_tensors, data_change, find_resume,
                                      read_resumable, regroup_optimizer_state, restore_training_state,
                                      training_checkpoint, valid_basis, weights_checkpoint)
from dsrnet.train.config import SETTINGS, TrainConfig
from dsrnet.train.distributed import (init_distributed, mean_loss_and_stop_signal, print_rank0,
                                      shutdown_distributed, wrap_for_ranks)
from dsrnet.train.ema import WeightAverage
from dsrnet.train.loss import LOSSES, build_loss
from dsrnet.train.resume import resume_config
from dsrnet.train.rng import NUMPY_MAX_SEED, seed_everything
from dsrnet.train.run_lock import RunLock
from dsrnet.train.run_log import RunLog, Throughput
from dsrnet.train.schedule import group_names, param_groups, set_schedules
from dsrnet.train.validation import score_valid_sets
from model import GATE_MODES, SCALES, Net
from model.precision import AMP_DTYPES, TRAINING_MEMORY_FORMAT, autocast, bf16_supported

ROOT = Path(__file__).resolve().parent


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _finite_float(low: float, high: float = math.inf, low_open: bool = True,
                  high_open: bool = False) -> Callable[[str], float]:
    """A finite float between ``low`` and ``high``, each bound open or closed: inf, nan or 1e400 in a flag would
    poison every checkpoint after it."""
    if math.isfinite(high):
        wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    else:
        wanted = f"{'>' if low_open else '>='} {low:g}"

    def parse(text: str) -> float:
        value = float(text)
        if not (math.isfinite(value) and (value > low if low_open else value >= low)
                and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"must be a finite number {wanted}, got {text}")
        return value
    return parse


_positive_float = _finite_float(0.0)


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= NUMPY_MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{NUMPY_MAX_SEED} (numpy's seed range), got {value}")
    return value


def _ckpt_name(text: str) -> str:
    """A plain file-name prefix: with a folder (or a glob wildcard) in it, --resume would not find the checkpoints."""
    if not text or text in (".", "..") or any(c in text for c in "/\\*?["):
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain file name: put folders in --ckpt_dir and give "
                                         "--ckpt_name a name without / \\ * ? [, such as dsrnet_x2")
    return text


def build_parser(default_scale: int = 2) -> argparse.ArgumentParser:
    """The training flags: the authors' (same names and meaning) plus resume/validation/DDP extras."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", default="dsrnet", help="the authors' flag, kept so that their command lines run: "
                   "accepts only dsrnet")
    p.add_argument("--scale", type=int, choices=(0, *SCALES), default=default_scale,
                   help="upscaling factor; 0 trains one multi-scale net on x2/x3/x4 (default: the folder's)")
    p.add_argument("--group", type=_int_at_least(1), default=1, help="upsampler conv groups (authors: 1)")
    p.add_argument("--train_data_path", default=str(ROOT / "dataset" / "DIV2K_train.h5"),
                   help="HDF5 made by dataset/div2h5.py (default: dataset/DIV2K_train.h5)")
    p.add_argument("--patch_size", type=_int_at_least(1), default=64, help="LR patch side; HR is x scale")
    p.add_argument("--batch_size", type=_int_at_least(1), default=64,
                   help="patches per step, in total over all DDP processes")
    p.add_argument("--max_steps", type=_int_at_least(1), default=600000, help="stop exactly here")
    p.add_argument("--lr", type=_finite_float(0.0, 1.0), default=1e-4, help="Adam learning rate at step 0")
    p.add_argument("--decay", type=_int_at_least(1), default=400000, help="halve the lr every N steps")
    p.add_argument("--clip", type=_positive_float, default=10.0, help="max global gradient norm")
    p.add_argument("--loss_fn", choices=tuple(LOSSES), default="MSE", help="training loss")
    p.add_argument("--gate", choices=GATE_MODES, default="sample",
                   help="wide-enhancement gate while training; 'sample' is the authors' batch-wide "
                        "hard Gumbel gate, 'learned' a per-sample one that trains (validation uses 'selected', "
                        "as sample.py, or 'learned' for a learned gate)")
    p.add_argument("--gate_tau", type=_positive_float, default=1.0,
                   help="'learned' gate: Gumbel-softmax temperature at step 0; it anneals exponentially to "
                        "--gate_tau_min at step --decay and stays there (only the gate's gradient depends on it)")
    p.add_argument("--gate_tau_min", type=_positive_float, default=0.5, help="'learned' gate: the temperature's floor")
    p.add_argument("--gate_lr_mult", type=_positive_float, default=1.0,
                   help="'learned' gate: its learning rate is --lr times this (Adam moves a weight by about the "
                        "lr per step, and the authors' gate starts far from its decision boundary)")
    p.add_argument("--gate_penalty", type=_finite_float(0.0, low_open=False), default=0.0,
                   help="'learned' gate: add this times the share of the batch routed to the costlier all-3x3 "
                        "'fixed' branch to the loss (0: no compute penalty)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seeds the init, the sample stream and the gate noise")
    p.add_argument("--ckpt_dir", help="checkpoint folder (default: checkpoint/dsrnet_x{scale})")
    p.add_argument("--ckpt_name", type=_ckpt_name,
                   help="checkpoints are CKPT_DIR/CKPT_NAME_{step}.pth (default: dsrnet_x{scale})")
    p.add_argument("--print_interval", "--checkpoint_every", dest="print_interval", type=_int_at_least(1),
                   default=1000, help="validate and checkpoint every N steps (and at the last step); "
                                      "the two names are one flag")
    p.add_argument("--keep_last", type=_int_at_least(0), default=5,
                   help="keep this run's N newest full checkpoints, deleting its older ones after each save "
                        "(0 keeps all); CKPT_NAME_best.pth and CKPT_NAME_final.pth keep the weights of the best "
                        "mean validation PSNR and of the last step")
    p.add_argument("--log_interval", type=_int_at_least(1), default=100,
                   help="log loss, lr and samples/s every N steps")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=False,
                   help="print every log row, not only validation rows")
    valid = p.add_mutually_exclusive_group()
    valid.add_argument("--valid_data_dir", nargs="+",
                       help="test-set folders (any layout sample.py reads) scored every --print_interval")
    valid.add_argument("--no-valid_data_dir", dest="valid_data_dir", action="store_const", const=None,
                       help="validate on nothing (turns off the folders a resumed checkpoint recorded)")
    p.add_argument("--shave", type=_int_at_least(0), help="border left out of validation PSNR/SSIM (default: scale)")
    samples = p.add_mutually_exclusive_group()
    samples.add_argument("--sample_dir", help="write validation SR images to SAMPLE_DIR/CKPT_NAME/{step}/{set}/x{s}/")
    samples.add_argument("--no-sample_dir", dest="sample_dir", action="store_const", const=None,
                         help="write no validation images (turns off a resumed checkpoint's --sample_dir)")
    p.add_argument("--resume", nargs="?", const="latest",
                   help="continue a run: a checkpoint file, or no value for the latest in --ckpt_dir; flags not "
                        "given are the checkpoint's (given ones override them)")
    p.add_argument("--init_from", help="start a new run from any checkpoint's tensors that match in name and shape "
                                       "(ignored with --resume)")
    p.add_argument("--init_weights", choices=("ema", "raw"), default="ema",
                   help="--init_from a checkpoint of an --ema run: its averaged weights (model_ema) or its raw ones")
    p.add_argument("--ema", type=_finite_float(0.0, 1.0, low_open=False, high_open=True), default=0.0,
                   help="keep an average of the weights, average = EMA * average + (1 - EMA) * weights after every "
                        "step (BasicSR's ema_decay, e.g. 0.999), saved as model_ema; validation, _best and _final "
                        "then use it (0: no average, the authors' recipe)")
    p.add_argument("--num_gpu", type=_int_at_least(1),
                   help="GPUs = processes; above 1, launch with torchrun --nproc_per_node N "
                        "(default: as many as torchrun started, else 1)")
    p.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16", "none"),
                   help="mixed precision (bf16 if no value; fp16 adds a grad scaler and needs CUDA; none: float32, "
                        "as without the flag); bf16 on a CPU needs native bfloat16 (AVX512-BF16/AMX)")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                   help="deterministic cuDNN kernels, no autotuning: on a GPU a resumed run then ends bit-identical "
                        "to an uninterrupted one, at some cost in steps/s (CPU runs are deterministic anyway)")
    p.add_argument("--num_workers", type=_int_at_least(0), default=2, help="DataLoader worker processes")
    p.add_argument("--in_memory", action=argparse.BooleanOptionalAction, default=False,
                   help="load the whole HDF5 file into RAM first")
    return p


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The settings the command line gives itself: parsed again into a namespace that already holds a marker
    for every setting, which only a given flag replaces (argparse fills in defaults only where one is absent)."""
    unset = object()
    parsed = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(SETTINGS, unset)))
    return {name for name, value in vars(parsed).items() if value is not unset}


def parse_args(argv: list[str] | None = None, default_scale: int = 2) -> TrainConfig:
    """The training settings: checkpoint folder and name default from the scale; with --resume every flag not
    given defaults to the checkpoint's recorded one (see dsrnet.train.resume)."""
    parser = build_parser(default_scale)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    name = f"dsrnet_x{cfg.scale}" if cfg.scale else "dsrnet_multiscale"
    cfg = replace(cfg, ckpt_name=cfg.ckpt_name or name, ckpt_dir=cfg.ckpt_dir or str(ROOT / "checkpoint" / name),
                  amp=None if cfg.amp == "none" else cfg.amp)  # before a resume compares it with the recorded one
    if cfg.resume:  # the entry point's scale counts as given: x4/train.py never continues a x2 run
        cfg = resume_config(cfg, given_flags(parser, argv) | {"scale"})
    if cfg.model != "dsrnet":
        raise InputError(f"unknown --model {cfg.model!r}; this repository provides 'dsrnet'")
    learned_only = [f for f, unset in (("gate_penalty", 0.0), ("gate_lr_mult", 1.0)) if getattr(cfg, f) != unset]
    if learned_only and cfg.gate != "learned":
        raise InputError(f"--{learned_only[0]} acts on the learned gate, but --gate is {cfg.gate}: "
                         f"add --gate learned or drop --{learned_only[0]}")
    if cfg.gate == "learned" and cfg.gate_tau_min > cfg.gate_tau:
        raise InputError(f"--gate_tau_min {cfg.gate_tau_min} is above --gate_tau {cfg.gate_tau}: the temperature "
                         "anneals down from --gate_tau to its floor --gate_tau_min; lower --gate_tau_min")
    if cfg.init_weights != "ema" and not cfg.init_from and not cfg.resume:
        raise InputError(f"--init_weights {cfg.init_weights} picks the weights --init_from copies: add --init_from "
                         "CKPT or drop --init_weights")
    return cfg


def check_amp(amp: str | None, device: torch.device) -> None:
    """Mixed precision where the hardware has it: fp16 on CUDA, bf16 on bf16-capable GPUs and CPUs."""
    if amp is None or (amp == "fp16" and device.type == "cuda"):
        return
    if amp == "fp16":
        raise InputError("--amp fp16 needs a CUDA GPU; on the CPU use --amp bf16, or drop --amp for float32")
    if not bf16_supported(device):
        raise InputError(f"--amp bf16 needs native bfloat16 (an Ampere or newer GPU, or a CPU with AVX512-BF16 "
                         f"or AMX), which this {device.type.upper()} lacks: use --amp fp16 on a GPU, or drop --amp")


def check_run(cfg: TrainConfig, world: int, device: torch.device) -> Path | None:
    """Refuse flags this machine or folder cannot run, before any data is read; returns the checkpoint to resume."""
    check_amp(cfg.amp, device)
    if cfg.batch_size % world:
        raise InputError(f"--batch_size {cfg.batch_size} (the global batch) does not split evenly "
                         f"over {world} processes")
    ensure_writable_folder(cfg.ckpt_dir, "checkpoints", "--ckpt_dir")
    if cfg.sample_dir and cfg.valid_data_dir:
        ensure_writable_folder(cfg.sample_dir, "validation images", "--sample_dir")
    resume_path = find_resume(cfg.resume, Path(cfg.ckpt_dir), cfg.ckpt_name) if cfg.resume else None
    if cfg.init_from and not cfg.resume and not Path(cfg.init_from).is_file():
        raise InputError(f"--init_from {cfg.init_from}: no such file")
    return resume_path


def claim_folder(ckpt_dir: Path, ckpt_name: str, rank: int) -> RunLock:
    """Rank 0 locks --ckpt_dir for the run (other ranks get a lock holding nothing; fit releases it at
    its end). Then the temp files that killed runs of this name left there (a checkpoint, its _best/_final
    weights or log.csv being written at a kill -9: up to ~12 MB each) go: only under the lock, and only
    this name's, as another live run may be writing its own."""
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)  # checked writable at startup, made once the data is read
    lock = RunLock(ckpt_dir, take=rank == 0)
    if rank == 0 and not lock.guarded:
        print_rank0(f"note: {ckpt_dir} cannot be locked on this system: nothing stops a second run there")
    ours = rf"{re.escape(ckpt_name)}_(?:\d+|best|final)\.pth|log\.csv"
    stale = stale_temps(ckpt_dir, ours) if lock.guarded else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        print_rank0(f"removed {len(stale)} temp file(s) a killed run left in {ckpt_dir}: "
                    f"{', '.join(p.name for p in stale)}")
    return lock


@contextmanager
def naming_the_kept_checkpoint(checkpoints: RunCheckpoints) -> Iterator[None]:
    """A save that fails (a full disk, a folder gone read-only) writes nothing and deletes nothing: its one
    line also names the newest checkpoint the run keeps."""
    try:
        yield
    except InputError as err:
        last = checkpoints.folder / checkpoints.written[-1] if checkpoints.written else None
        kept = (f"{last} is intact: continue from it with the same command plus --resume" if last
                else f"this run has no earlier checkpoint in {checkpoints.folder}")
        raise InputError(f"{err}; {kept}") from None


def progress_line(row: dict, max_steps: int, batch_size: int) -> str:
    """Where a run without a progress bar stands: step, loss, speed and the time left at that speed
    (validation and checkpoints aside)."""
    speed = row["samples_per_s"]
    left = (max_steps - row["step"]) * batch_size / speed if speed > 0 else math.inf
    eta = str(datetime.timedelta(seconds=round(left))) if math.isfinite(left) else "unknown"
    return (f"step {row['step']}/{max_steps}: loss {row['loss']:.5f}, {speed:.1f} samples/s, "
            f"about {eta} left")


def all_finite(net: Net) -> bool:
    """Every weight and buffer finite (one host sync): a checkpoint of NaN weights poisons every resume."""
    tensors = [t for t in net.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def banner(cfg: TrainConfig, net: Net, device: torch.device, world: int, n_images: int, step: int) -> str:
    """The start line; parameters counted as the README does (the mean shift's 24 frozen values apart)."""
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    what = f"x{cfg.scale}" if cfg.scale else "multi-scale x2/x3/x4"
    return (f"DSRNet {what}: {trainable:,} trainable + {frozen:,} frozen (mean shift) parameters on "
            f"{device} x {world} process(es), batch {cfg.batch_size} of {cfg.patch_size}px LR patches from "
            f"{n_images} images, gate '{cfg.gate}', steps {step} -> {cfg.max_steps}, checkpoints in {cfg.ckpt_dir}")


def main(default_scale: int) -> None:
    """What x2/x3/x4/train.py run: one line for a user's error, and output that cannot be written (``| head``)
    never stops training."""
    output_never_stops_the_run()
    run_cli(lambda: Solver(parse_args(default_scale=default_scale)).fit())


class Solver:
    """Builds the net, optimizer, loss and data from the flags; :meth:`fit` is the training loop."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world, self.device = init_distributed(cfg.num_gpu)
        resume_path = check_run(cfg, self.world, self.device)
        self.ckpt_dir = Path(cfg.ckpt_dir)
        self.load_data()  # reads only: a run refused for its data never contends for the folder
        self.lock = claim_folder(self.ckpt_dir, cfg.ckpt_name, self.rank)
        self.checkpoints = RunCheckpoints(self.ckpt_dir, cfg.ckpt_name, cfg.keep_last)
        self.env = environment()  # versions, command, git: recorded in every checkpoint of the run
        with self.lock.released_on_error():
            if not resume_path:
                self.checkpoints.claim_new()
            self.build_model()
            if resume_path:
                self.resume(resume_path)
            elif cfg.init_from:
                print_rank0(copy_matching_tensors(self.net, Path(cfg.init_from), cfg.init_weights))
                if self.ema is not None:
                    self.ema.load_state_dict(self.net.state_dict())
        self.model = wrap_for_ranks(self.net, self.device, self.world)
        if self.device.type == "cuda":  # autotuned kernels are faster but may differ from run to run
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cudnn.deterministic = cfg.deterministic

    def load_data(self) -> None:
        """The training stream and the validation sets; a bad validation image fails now, not hours later."""
        cfg = self.cfg
        self.dataset = TrainDataset(cfg.train_data_path, cfg.patch_size, cfg.scale, seed=cfg.seed,
                                    in_memory=cfg.in_memory)
        self.train_data = file_identity(cfg.train_data_path)  # recorded: a resume says if the file changed
        scales = [cfg.scale] if cfg.scale else list(SCALES)
        self.valid_sets = [find_test_set(d, s) for d in cfg.valid_data_dir or [] for s in scales]
        if self.rank == 0:
            for ts in self.valid_sets:
                shave = ts.scale if cfg.shave is None else cfg.shave
                for pair in ts.pairs:
                    require_scorable(pair.name, load_pair(ts, pair)[0], shave)

    def build_model(self) -> None:
        """Net (seeded), Adam, grad scaler and loss at step 0."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.net = Net(scale=cfg.scale, multi_scale=cfg.scale == 0, group=cfg.group,
                       gate_mode=cfg.gate, gate_seed=cfg.seed)
        self.net.to(self.device, memory_format=TRAINING_MEMORY_FORMAT)
        self.optim = torch.optim.Adam(param_groups(self.net, cfg.gate), lr=cfg.lr, betas=(0.9, 0.999))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.loss_fn = build_loss(cfg, self.net.router)
        self.ema = WeightAverage(self.net, cfg.ema) if cfg.ema else None  # averaged weights, from these
        self.step, self.loss_sum, self.loss_count = 0, 0.0, 0  # the sums of the open log interval
        self.pending_row: dict | None = None  # a resumed step whose validation never came

    # ------------------------------------------------------------------ the loop

    def fit(self) -> int:
        """Train from the current step to exactly --max_steps; returns the last step.

        A resumed checkpoint whose validation never came (a kill while validating) gets it first.
        SIGINT/SIGTERM: finish the step, save, SystemExit(130/143). A non-finite loss: InputError,
        nothing written for that step. The ranks decide both together.
        """
        cfg = self.cfg
        log = RunLog(self.ckpt_dir, self.valid_fields(), self.step) if self.rank == 0 else None
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=None if self.rank == 0 else True)
        try:
            if log is not None and self.pending_row and not log.has_row(self.step):
                print_rank0(f"step {self.step} was saved but never validated: validating it now", bar)
                self.close_step(dict(self.pending_row), log, bar)
            if self.step >= cfg.max_steps:
                print_rank0(f"checkpoint is at step {self.step}, not below --max_steps {cfg.max_steps}: "
                            "nothing to do", bar)
                return self.step
            print_rank0(banner(cfg, self.net, self.device, self.world, len(self.dataset), self.step), bar)
            batches = iter(self.loader())
            speed = Throughput(self.step, cfg.batch_size)
            with stop_requests() as signals:
                while self.step < cfg.max_steps:
                    scale, lr_patch, hr = self.get_batch(next(batches), self.step)
                    lr = set_schedules(self.optim, self.net.router, cfg, self.step)
                    with autocast(self.device.type, AMP_DTYPES.get(cfg.amp)):
                        sr = self.model(lr_patch, scale).float()
                    loss, data_loss = self.loss_fn(sr, hr)
                    loss_value, stop = mean_loss_and_stop_signal(data_loss, signals, self.world)  # logged: no penalty
                    if not math.isfinite(loss_value):
                        raise self.diverged(f"the loss became {loss_value} at step {self.step + 1}")
                    self.optim.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optim)  # clip true gradients, not fp16-scaled ones
                    nn.utils.clip_grad_norm_(self.net.parameters(), cfg.clip)
                    self.scaler.step(self.optim)
                    self.scaler.update()
                    if self.ema is not None:
                        self.ema.update(self.net)
                    self.step += 1
                    self.loss_sum += loss_value
                    self.loss_count += 1
                    bar.update(1)

                    checkpoint_due = self.step % cfg.print_interval == 0 or self.step == cfg.max_steps
                    if checkpoint_due or self.step % cfg.log_interval == 0:
                        row = self.next_log_row(lr, speed.samples_per_s(self.step))
                        if checkpoint_due:  # saved first (with its row): a validation that fails loses no training
                            print_rank0(f"saved {self.save(self.step, row)}", bar)
                            self.close_step(row, log, bar)
                        else:
                            self.report(row, log, bar, evaluated=False)
                        speed.restart(self.step)  # validating and saving is not training
                    if stop:
                        self.stop_on_signal(stop, checkpoint_due, log, bar)
        finally:
            bar.close()
            if log is not None:
                log.close()
            shutdown_distributed(self.world)
            self.lock.release()
        return self.step

    # ------------------------------------------------------------------ helpers of the loop

    def loader(self) -> DataLoader:
        return step_loader(self.dataset, self.step, self.cfg.max_steps, self.cfg.batch_size // self.world,
                           self.rank, self.world, self.cfg.num_workers, self.cfg.seed, self.device.type == "cuda")

    def get_batch(self, pairs: list[list[torch.Tensor]], step: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(scale, LR, HR) of this step on the device; multi-scale items hold a pair per scale."""
        scale = self.cfg.scale or step_scale(self.cfg.seed, step)
        hr, lr = pairs[SCALES.index(scale) if self.cfg.scale == 0 else 0]
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, non_blocking=True).contiguous(memory_format=TRAINING_MEMORY_FORMAT)
        return scale, move(lr), move(hr)

    def diverged(self, what: str) -> InputError:
        last = self.checkpoints.latest()
        return InputError(f"{what}; stopped without saving (last checkpoint: {last or 'none'}): lower --lr or "
                          "--clip, or check the training data")

    def next_log_row(self, lr: float, samples_per_s: float) -> dict:
        """This step's log row: the mean loss since the previous row, whose sums then restart."""
        row = {"step": self.step, "loss": self.loss_sum / self.loss_count, "lr": lr, "samples_per_s": samples_per_s}
        self.loss_sum, self.loss_count = 0.0, 0
        if self.cfg.gate == "learned":  # the share of this rank's samples sent to 'fixed' since the previous row
            row["fixed_share"] = self.net.router.take_fixed_share()
        return row

    def stop_on_signal(self, signum: int, saved: bool, log: RunLog | None, bar: tqdm) -> None:
        """After the step a signal arrived in: checkpoint it (once) and exit with 128 + the signal."""
        if log is not None:
            log.open()  # a checkpoint of this run: the folder's log must be this run's too
        path = self.checkpoints.path(self.step) if saved else self.save(self.step)
        print_rank0(f"stopped by {signal.Signals(signum).name} at step {self.step}; saved {path}; "
                    "continue with --resume", bar)
        raise SystemExit(EXIT_ON_SIGNAL[signum])

    def close_step(self, row: dict, log: RunLog | None, bar: tqdm) -> None:
        """After a checkpoint: validate, write the best/final weights, then log the step's row (last, so that
        a row in log.csv means the step is complete)."""
        averaged = self.ema is not None and self.rank == 0  # only rank 0 validates and saves the average
        with self.ema.applied(self.net) if averaged else nullcontext():
            row.update(self.save_weights(self.validate(row["step"])))
        if self.ema is not None and self.valid_sets:
            row["ema_decay"] = self.cfg.ema
        self.report(row, log, bar, evaluated=True)

    def validate(self, step: int) -> dict[str, float]:
        """Validation scores of the net (with --ema, its average) at ``step`` (computed on rank 0 only)."""
        if self.rank != 0 or not self.valid_sets:
            return {}
        return score_valid_sets(self.net, self.valid_sets, self.device, self.cfg, step)

    def valid_fields(self) -> list[str]:
        routing = ["fixed_share"] if self.cfg.gate == "learned" else []
        averaged = ["ema_decay"] if self.cfg.ema and self.valid_sets else []  # the scores are the average's
        return routing + averaged + [f"{ts.name}_x{ts.scale}_{m}" for ts in self.valid_sets for m in ("psnr", "ssim")]

    def report(self, row: dict, log: RunLog | None, bar: tqdm, evaluated: bool) -> None:
        """Rank 0: the row into log.csv/TensorBoard and the progress bar; printed if validated or --verbose.
        Without a terminal (nohup, a job script) there is no bar: a progress line takes its place."""
        if log is None:
            return
        log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.5f}", lr=f"{row['lr']:.2e}")
        if evaluated or self.cfg.verbose:
            print_rank0(f"step {row['step']}: " + ", ".join(
                f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "step"), bar)
        elif bar.disable:
            print_rank0(progress_line(row, self.cfg.max_steps, self.cfg.batch_size), bar)

    def save_weights(self, scores: dict[str, float]) -> dict[str, float]:
        """Rank 0: the weights-only best (mean validation PSNR) and final files; returns ``scores``."""
        if self.rank == 0:
            psnr = [v for k, v in scores.items() if k.endswith("_psnr")]
            self.checkpoints.save_weights(weights_checkpoint(self.cfg, self.step, self.net, scores, self.env,
                                                             averaged=self.ema is not None),
                                          float(np.mean(psnr)) if psnr else None, self.step == self.cfg.max_steps)
        return scores

    # ------------------------------------------------------------------ checkpoints

    def save(self, step: int, pending_row: dict | None = None) -> Path:
        """Rank 0 writes ``{ckpt_name}_{step}.pth``: what sample.py loads, plus the resume state (and the
        step's log row while its validation is to come). Weights that are not finite are never saved."""
        path = self.checkpoints.path(step)
        if not all_finite(self.net):
            raise self.diverged(f"the weights became non-finite at step {step}")
        if self.rank == 0:
            with naming_the_kept_checkpoint(self.checkpoints):
                self.checkpoints.save(step, training_checkpoint(
                    self.cfg, step, self.net, self.optim, self.scaler, self.loss_sum, self.loss_count, self.world,
                    self.env, self.train_data, pending_row, self.ema))
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def resume(self, path: Path) -> None:
        """Restore model, optimizer, step, gate noise and every RNG: the run continues bit-exactly. A change of
        --gate regroups Adam's state by parameter name (the learned gate has a group of its own)."""
        ckpt = read_resumable(path, self.cfg)
        saved_groups = group_names(self.net, ckpt["config"].get("gate", self.cfg.gate))
        groups = group_names(self.net, self.cfg.gate)
        regroup = None if saved_groups == groups else partial(regroup_optimizer_state, saved_groups=saved_groups,
                                                              groups=groups)
        self.step, self.loss_sum, self.loss_count = restore_training_state(path, ckpt, self.net, self.optim,
                                                                           self.scaler, regroup, self.ema)
        if self.ema is not None and "model_ema" not in ckpt:
            print_rank0(f"note: {path} holds no averaged weights: the --ema average starts from its weights at "
                        f"step {self.step}")
        state = ckpt["train_state"]
        self.pending_row = state.get("pending_row")
        changed = data_change(state.get("train_data"), self.train_data)
        if changed:
            print_rank0(f"note: {changed}: the run no longer matches an uninterrupted one")
        if self.rank == 0:
            basis = valid_basis(self.valid_fields(), self.cfg.shave)
            self.checkpoints.continue_from(path, ckpt, basis)
        print_rank0(f"resumed {path} at step {self.step}")
