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

Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and exits with 128 + the signal
(130 / 143), so a job script can tell an interrupted run from a finished one (exit 0). A second
signal aborts at once. A non-finite loss stops the run (exit 2) before anything is written for it.

Differences from the authors' solver: the net is built with --scale (theirs did not pass it),
training stops exactly at --max_steps with a final checkpoint, and bad input ends with one
``error:`` line instead of a traceback.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import math
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from dataset.io import atomic_write_bytes
from dataset.layouts import find_test_set, load_pair
from dataset.train_data import MULTI_SCALES, TrainDataset
from dsrnet.errors import InputError
from dsrnet.evaluation import evaluate_set, require_scorable
from dsrnet.metrics import to_uint8
from dsrnet.provenance import environment
from model import GATE_MODES, Net, read_checkpoint
from model.inference import bf16_supported, fast_memory_format, memory_format_of, super_resolve, tf32

ROOT = Path(__file__).resolve().parent
LOSSES = {"MSE": nn.MSELoss, "L1": nn.L1Loss, "SmoothL1": nn.SmoothL1Loss}
# Flags that change the network's tensors: a checkpoint resumes only into the same ones.
MODEL_FLAGS = ("model", "scale", "group")
# Flags a resume may change, at the price of no longer matching an uninterrupted run.
RUN_FLAGS = ("lr", "decay", "clip", "loss_fn", "batch_size", "patch_size", "seed", "gate", "amp",
             "train_data_path", "deterministic")
EXIT_ON_SIGNAL = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: 128 + signal.SIGTERM}


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


# numpy's legacy seeding, which seed_everything drives, takes 0 .. 2**32 - 1; torch and the gate take more.
MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED} (numpy's seed range), got {value}")
    return value


def _ckpt_name(text: str) -> str:
    """A plain file-name prefix: with a folder (or a glob wildcard) in it, --resume would not find the checkpoints."""
    if not text or text in (".", "..") or any(c in text for c in ("/", "\\", os.sep, "*", "?", "[")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain file name: put folders in --ckpt_dir and give "
                                         "--ckpt_name a name without / \\ * ? [, such as dsrnet_x2")
    return text


def parse_args(argv: list[str] | None = None, default_scale: int = 2) -> argparse.Namespace:
    """The training flags: the authors' (same names and meaning) plus resume/validation/DDP extras."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dsrnet", help="model module under model/ (only dsrnet)")
    p.add_argument("--scale", type=int, choices=(0, *MULTI_SCALES), default=default_scale,
                   help="upscaling factor; 0 trains one multi-scale net on x2/x3/x4 (default: the folder's)")
    p.add_argument("--group", type=_int_at_least(1), default=1, help="upsampler conv groups (authors: 1)")
    p.add_argument("--train_data_path", default=str(ROOT / "dataset" / "DIV2K_train.h5"),
                   help="HDF5 made by dataset/div2h5.py (default: dataset/DIV2K_train.h5)")
    p.add_argument("--patch_size", type=_int_at_least(1), default=64, help="LR patch side; HR is x scale")
    p.add_argument("--batch_size", type=_int_at_least(1), default=64,
                   help="patches per step, in total over all DDP processes")
    p.add_argument("--max_steps", type=_int_at_least(1), default=600000, help="stop exactly here")
    p.add_argument("--lr", type=_positive_float, default=1e-4, help="Adam learning rate at step 0")
    p.add_argument("--decay", type=_int_at_least(1), default=400000, help="halve the lr every N steps")
    p.add_argument("--clip", type=_positive_float, default=10.0, help="max global gradient norm")
    p.add_argument("--loss_fn", choices=tuple(LOSSES), default="MSE")
    p.add_argument("--gate", choices=GATE_MODES, default="sample",
                   help="wide-enhancement gate while training; 'sample' is the authors' batch-wide "
                        "hard Gumbel gate (validation always uses 'selected', as sample.py)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seeds the init, the sample stream and the gate noise")
    p.add_argument("--ckpt_dir", help="default checkpoint/dsrnet_x{scale}")
    p.add_argument("--ckpt_name", type=_ckpt_name,
                   help="checkpoints are CKPT_DIR/CKPT_NAME_{step}.pth; default dsrnet_x{scale}")
    p.add_argument("--print_interval", type=_int_at_least(1), default=1000,
                   help="validate and checkpoint every N steps (and at the last step)")
    p.add_argument("--log_interval", type=_int_at_least(1), default=100,
                   help="log loss, lr and samples/s every N steps")
    p.add_argument("--verbose", action="store_true", help="print every log row, not only validation rows")
    p.add_argument("--valid_data_dir", nargs="+",
                   help="test-set folders (any layout sample.py reads) scored every --print_interval")
    p.add_argument("--shave", type=_int_at_least(0), help="border left out of validation PSNR/SSIM (default: scale)")
    p.add_argument("--sample_dir", help="write validation SR images to SAMPLE_DIR/CKPT_NAME/{step}/{set}/x{s}/")
    p.add_argument("--resume", nargs="?", const="latest",
                   help="continue a run: a checkpoint file, or no value for the latest in --ckpt_dir")
    p.add_argument("--init_from", help="start from any checkpoint's tensors that match in name and shape")
    p.add_argument("--num_gpu", type=_int_at_least(1),
                   help="GPUs = processes; above 1, launch with torchrun --nproc_per_node N "
                        "(default: as many as torchrun started, else 1)")
    p.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16"),
                   help="mixed precision (bf16 if no value; fp16 adds a grad scaler and needs CUDA). On a "
                        "CPU with native bfloat16 (AVX512-BF16/AMX) bf16 about doubles steps/s")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic cuDNN kernels, no autotuning: on a GPU a resumed run then ends bit-identical "
                        "to an uninterrupted one, at 12-24 %% fewer steps/s on an H200 (CPU runs are deterministic "
                        "anyway)")
    p.add_argument("--num_workers", type=_int_at_least(0), default=2, help="DataLoader worker processes")
    p.add_argument("--in_memory", action="store_true", help="load the whole HDF5 file into RAM first")
    cfg = p.parse_args(argv)
    name = f"dsrnet_x{cfg.scale}" if cfg.scale else "dsrnet_multiscale"
    cfg.ckpt_name = cfg.ckpt_name or name
    cfg.ckpt_dir = cfg.ckpt_dir or str(ROOT / "checkpoint" / name)
    return cfg


def get_lr(step: int, lr: float, decay: int) -> float:
    """The authors' step schedule: halve every ``decay`` steps."""
    return lr * 0.5 ** (step // decay)


def step_scale(seed: int, step: int) -> int:
    """Which scale a multi-scale step trains: a function of (seed, step), identical on every rank."""
    return MULTI_SCALES[int(np.random.default_rng([seed, step]).integers(len(MULTI_SCALES)))]


class StepSampler(Sampler[int]):
    """Global sample counters for steps ``start`` .. ``stop - 1`` of one rank.

    Step k of rank r takes counters (k*W + r)*B ... (k*W + r + 1)*B - 1 (B per rank, W ranks), so
    every step trains on the same global batch whatever the world size and wherever a run resumed.
    """

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        for k in range(self.start, self.stop):
            first = (k * self.world + self.rank) * self.batch
            yield from range(first, first + self.batch)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.batch


def save_checkpoint(path: Path, ckpt: dict) -> None:
    """Write through a temp file + rename: a crash mid-save never leaves a truncated checkpoint."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_step(path: Path, name: str) -> int | None:
    m = re.fullmatch(rf"{re.escape(name)}_(\d+)\.pth", path.name)
    return int(m.group(1)) if m else None


def latest_checkpoint(ckpt_dir: Path, name: str) -> Path | None:
    found = [(checkpoint_step(p, name), p) for p in ckpt_dir.glob(f"{name}_*.pth")]
    found = [(s, p) for s, p in found if s is not None]
    return max(found)[1] if found else None


def rng_states() -> dict:
    """Every global RNG as tensors/lists/ints, so the checkpoint loads with weights_only=True."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": [version, list(state), gauss_next],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():
        for device, state in enumerate(states["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def check_writable(folder: Path, what: str = "checkpoints", flag: str = "--ckpt_dir") -> None:
    """Fail at startup, not after hours of training, when checkpoints (or images) cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise InputError(f"cannot write {what} to {folder} ({err.strerror or err}): "
                         f"pass a writable {flag}") from None


def check_amp(amp: str | None, device: torch.device) -> None:
    """Mixed precision where the hardware has it: fp16 on CUDA, bf16 on bf16-capable GPUs and CPUs."""
    if amp is None or (amp == "fp16" and device.type == "cuda"):
        return
    if amp == "fp16":
        raise InputError("--amp fp16 needs a CUDA GPU; on the CPU use --amp bf16, or drop --amp for float32")
    if not bf16_supported(device):
        raise InputError(f"--amp bf16 needs native bfloat16 (an Ampere or newer GPU, or a CPU with AVX512-BF16 "
                         f"or AMX), which this {device.type.upper()} lacks: use --amp fp16 on a GPU, or drop --amp")


def init_distributed(num_gpu: int | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). torchrun's environment decides; --num_gpu must agree with it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if num_gpu is not None and num_gpu != world:
        if world == 1:
            raise InputError(f"--num_gpu {num_gpu} trains with one process per GPU: launch "
                             f"`torchrun --nproc_per_node {num_gpu} {Path(sys.argv[0]).as_posix()} ...`")
        raise InputError(f"--num_gpu {num_gpu} but torchrun started {world} processes: make them "
                         "equal or drop --num_gpu")
    cuda = torch.cuda.is_available()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if cuda and local_world > torch.cuda.device_count():
        raise InputError(f"{local_world} processes per node but only {torch.cuda.device_count()} "
                         "GPUs are visible: lower --nproc_per_node")
    if world == 1:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world, torch.device(f"cuda:{local_rank}" if cuda else "cpu")


def vote_across_ranks(device: torch.device) -> Callable[[bool], bool]:
    """'fixed' only when every rank's batch chose it: the authors' batch-wide rule over the global batch.

    Ranks running different branches would silently mix gradients of two different networks.
    """
    def all_fixed(fixed: bool) -> bool:
        vote = torch.tensor([int(fixed)], device=device)
        dist.all_reduce(vote, op=dist.ReduceOp.MIN)
        return bool(vote.item())
    return all_fixed


def _leave_signals_to_main(_worker: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM sent to the whole process group (Ctrl-C, torchrun,
    SLURM): a worker killed mid-step would abort the step the main process wants to finish and save.
    Workers still exit with the main process."""
    for s in EXIT_ON_SIGNAL:
        signal.signal(s, signal.SIG_IGN)


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into an entry in the yielded list; a second signal aborts at once."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in EXIT_ON_SIGNAL}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class RunLog:
    """``log.csv`` (one row per logged step) plus TensorBoard under ``tb/`` when it is installed.

    On resume the CSV keeps the rows up to the resumed step and drops later ones, and TensorBoard
    purges events from that step on, so a run resumed any number of times logs each step once. An
    earlier log is read (and refused if damaged) at once, but nothing is written before the first row:
    a run that fails before it leaves the folder as it found it.
    """

    BASE_FIELDS = ["step", "loss", "lr", "samples_per_s"]

    def __init__(self, ckpt_dir: Path, valid_fields: list[str], start: int):
        self.ckpt_dir, self.start, self.path = ckpt_dir, start, ckpt_dir / "log.csv"
        self.rows, fields = [], self.BASE_FIELDS + valid_fields
        if start > 0 and self.path.is_file():
            try:
                with open(self.path, newline="") as f:
                    reader = csv.DictReader(f)
                    self.rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= start]
                    fields = list(reader.fieldnames or []) + [k for k in fields if k not in (reader.fieldnames or [])]
            except (UnicodeDecodeError, csv.Error) as err:
                raise InputError(f"cannot continue {self.path} ({err}): move it aside and resume again") from None
        self.fields = fields
        self.opened, self.tb = False, None

    def open(self) -> None:
        """Write the CSV header (and kept rows) and start TensorBoard, once."""
        if self.opened:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.fields, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.ckpt_dir / "tb"), purge_step=self.start)
        except ImportError:
            self.tb = None
        self.opened = True

    def write(self, row: dict) -> None:
        self.open()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, restval="", extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key if key in self.BASE_FIELDS else f"valid/{key}", value, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Solver:
    """Builds the net, optimizer, loss and data from the flags; :meth:`fit` is the training loop."""

    def __init__(self, cfg: argparse.Namespace):
        self.cfg = cfg
        if cfg.model != "dsrnet":
            raise InputError(f"unknown --model {cfg.model!r}; this repository provides 'dsrnet'")
        if cfg.resume and cfg.init_from:
            raise InputError("--resume continues a run and --init_from starts a new one: pass only one")
        self.rank, self.world, self.device = init_distributed(cfg.num_gpu)
        check_amp(cfg.amp, self.device)
        if cfg.batch_size % self.world:
            raise InputError(f"--batch_size {cfg.batch_size} (the global batch) does not split evenly "
                             f"over {self.world} processes")
        self.ckpt_dir = Path(cfg.ckpt_dir)
        check_writable(self.ckpt_dir)
        if cfg.sample_dir and cfg.valid_data_dir:
            check_writable(Path(cfg.sample_dir), "validation images", "--sample_dir")
        resume_path = self.find_resume() if cfg.resume else None
        earlier = None if cfg.resume else latest_checkpoint(self.ckpt_dir, cfg.ckpt_name)
        if earlier:
            self.say(f"note: {earlier} is from an earlier run; this new run overwrites such checkpoints "
                     "as it reaches their steps (continue that run with --resume instead)")
        if cfg.init_from and not Path(cfg.init_from).is_file():
            raise InputError(f"--init_from {cfg.init_from}: no such file")
        self.dataset = TrainDataset(cfg.train_data_path, cfg.patch_size, cfg.scale, seed=cfg.seed,
                                    in_memory=cfg.in_memory)
        scales = [cfg.scale] if cfg.scale else list(MULTI_SCALES)
        self.valid_sets = [find_test_set(d, s) for d in cfg.valid_data_dir or [] for s in scales]
        if self.rank == 0:  # a corrupt, mismatched or tiny image fails now, not at the first validation
            for ts in self.valid_sets:
                shave = ts.scale if cfg.shave is None else cfg.shave
                for pair in ts.pairs:
                    require_scorable(pair.name, load_pair(ts, pair)[0], shave)

        seed_everything(cfg.seed)
        self.net = Net(scale=cfg.scale, multi_scale=cfg.scale == 0, group=cfg.group,
                       gate_mode=cfg.gate, gate_seed=cfg.seed)
        # channels_last: oneDNN/cuDNN convolutions run NHWC natively, forward and backward
        self.net.to(self.device, memory_format=torch.channels_last)
        self.optim = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad],
                                      lr=cfg.lr, betas=(0.9, 0.999))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.loss_fn = LOSSES[cfg.loss_fn]()
        self.step, self.loss_sum, self.loss_count = 0, 0.0, 0
        if resume_path:
            self.resume(resume_path)
        elif cfg.init_from:
            self.init_from(Path(cfg.init_from))
        self.model: nn.Module = self.net
        if self.world > 1:
            self.net.wide_enhancement.combine_votes = vote_across_ranks(self.device)
            # Only one gated branch (and never conv9/conv10 or the detached gate) gets gradients.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.net, device_ids=device_ids, find_unused_parameters=True)
        if self.device.type == "cuda":  # autotuned kernels are faster but may differ from run to run
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cudnn.deterministic = cfg.deterministic

    # ------------------------------------------------------------------ the loop

    def fit(self) -> int:
        """Train from the current step to exactly --max_steps; returns the last step.

        SIGINT/SIGTERM: finish the step, save, SystemExit(130/143). A non-finite loss: InputError,
        nothing written for that step. Ranks decide both together (see :meth:`agree`).
        """
        cfg, step = self.cfg, self.step
        if step >= cfg.max_steps:
            self.say(f"checkpoint is at step {step}, not below --max_steps {cfg.max_steps}: nothing to do")
            if self.world > 1:
                dist.destroy_process_group()
            return step
        self.say(self.describe())
        batches = iter(self.loader(step))
        log = RunLog(self.ckpt_dir, self.valid_fields(), step) if self.rank == 0 else None
        bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True,
                   disable=None if self.rank == 0 else True)
        clock, clock_step = time.perf_counter(), step
        try:
            with stop_requests() as signals:
                while step < cfg.max_steps:
                    scale, lr_patch, hr = self.get_batch(next(batches), step)
                    lr = get_lr(step, cfg.lr, cfg.decay)
                    for group in self.optim.param_groups:
                        group["lr"] = lr
                    with self.autocast():
                        loss = self.loss_fn(self.model(lr_patch, scale).float(), hr)
                    loss_value, stop = self.agree(loss, signals)
                    if not math.isfinite(loss_value):
                        last = latest_checkpoint(self.ckpt_dir, cfg.ckpt_name)
                        raise InputError(f"the loss became {loss_value} at step {step + 1}; stopped without "
                                         f"saving (last checkpoint: {last or 'none'}): lower --lr or "
                                         "--clip, or check the training data")
                    self.optim.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optim)  # clip true gradients, not fp16-scaled ones
                    nn.utils.clip_grad_norm_(self.net.parameters(), cfg.clip)
                    self.scaler.step(self.optim)
                    self.scaler.update()
                    step = self.step = step + 1
                    self.loss_sum += loss_value
                    self.loss_count += 1
                    bar.update(1)

                    evaluate = step % cfg.print_interval == 0 or step == cfg.max_steps
                    if evaluate or step % cfg.log_interval == 0:
                        row = {"step": step, "loss": self.loss_sum / self.loss_count, "lr": lr,
                               "samples_per_s": (step - clock_step) * cfg.batch_size / (time.perf_counter() - clock)}
                        self.loss_sum, self.loss_count = 0.0, 0
                        if evaluate:
                            row.update(self.validate(step))
                        self.report(row, log, bar, evaluate)
                        if evaluate:
                            self.say(f"saved {self.save(step)}", bar)
                        clock, clock_step = time.perf_counter(), step  # validating and saving is not training
                    if stop:
                        if log is not None:
                            log.open()  # a checkpoint of this run: the folder's log must be this run's too
                        path = self.ckpt_path(step) if evaluate else self.save(step)
                        self.say(f"stopped by {signal.Signals(stop).name} at step {step}; saved {path}; "
                                 "continue with --resume", bar)
                        raise SystemExit(EXIT_ON_SIGNAL[stop])
        finally:
            bar.close()
            if log is not None:
                log.close()
            if self.world > 1:
                dist.destroy_process_group()
        return step

    # ------------------------------------------------------------------ helpers of the loop

    def loader(self, start: int) -> DataLoader:
        per_rank = self.cfg.batch_size // self.world
        return DataLoader(self.dataset, batch_size=per_rank,
                          sampler=StepSampler(start, self.cfg.max_steps, per_rank, self.rank, self.world),
                          num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda",
                          worker_init_fn=_leave_signals_to_main,
                          generator=torch.Generator().manual_seed(self.cfg.seed))  # not the global RNG

    def get_batch(self, pairs: list[list[torch.Tensor]], step: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(scale, LR, HR) of this step on the device; multi-scale items hold a pair per scale."""
        scale = self.cfg.scale or step_scale(self.cfg.seed, step)
        hr, lr = pairs[MULTI_SCALES.index(scale) if self.cfg.scale == 0 else 0]
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return scale, move(lr), move(hr)

    def autocast(self) -> torch.autocast:
        dtype = torch.float16 if self.cfg.amp == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.cfg.amp is not None)

    def agree(self, loss: torch.Tensor, signals: list[int]) -> tuple[float, int]:
        """The loss averaged over ranks, and the signal to stop on if any rank received one.

        One small all-reduce per step keeps the ranks deciding together: a rank that stopped (or
        raised on a NaN) alone would leave the others waiting forever.
        """
        if self.world == 1:
            return loss.item(), (signals[0] if signals else 0)
        flags = [float(signal.SIGINT in signals), float(signal.SIGTERM in signals)]
        shared = torch.cat([loss.detach().float().view(1), torch.tensor(flags, device=self.device)])
        dist.all_reduce(shared)
        total, sigint, sigterm = shared.tolist()
        return total / self.world, signal.SIGINT if sigint else signal.SIGTERM if sigterm else 0

    def validate(self, step: int) -> dict[str, float]:
        """PSNR/SSIM on --valid_data_dir with sample.py's protocol and its deterministic gate (rank 0).

        In IEEE float32 and the memory layout sample.py uses, so that the logged scores are what sample.py
        gives the checkpoint; training itself keeps PyTorch's TF32 setting, restored afterwards.
        """
        if self.rank != 0 or not self.valid_sets:
            return {}
        cfg, scores = self.cfg, {}
        self.net.eval()
        self.net.set_gate("selected")
        layout = fast_memory_format(self.device)  # on a GPU, float32 runs NCHW: a copy, not the training net
        net = self.net if layout == memory_format_of(self.net) else copy.deepcopy(self.net).to(memory_format=layout)
        try:
            with tf32(False):
                for ts in self.valid_sets:
                    def upscale(lr: np.ndarray, s: int = ts.scale) -> np.ndarray:
                        return to_uint8(super_resolve(net, lr, s, device=self.device))
                    save = (Path(cfg.sample_dir) / cfg.ckpt_name / str(step) / ts.name / f"x{ts.scale}"
                            if cfg.sample_dir else None)
                    result = evaluate_set(upscale, ts, "DSRNet", shave=cfg.shave, save_dir=save)
                    scores[f"{ts.name}_x{ts.scale}_psnr"] = result.psnr
                    scores[f"{ts.name}_x{ts.scale}_ssim"] = result.ssim
        finally:
            self.net.set_gate(cfg.gate)  # no seed: the training gate's noise stream continues
            self.net.train()
        return scores

    def valid_fields(self) -> list[str]:
        return [f"{ts.name}_x{ts.scale}_{m}" for ts in self.valid_sets for m in ("psnr", "ssim")]

    def report(self, row: dict, log: RunLog | None, bar: tqdm, evaluate: bool) -> None:
        if log is None:
            return
        log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.5f}", lr=f"{row['lr']:.2e}")
        if evaluate or self.cfg.verbose:
            self.say(f"step {row['step']}: " + ", ".join(
                f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "step"), bar)

    def say(self, message: str, bar: tqdm | None = None) -> None:
        if self.rank == 0:
            (bar.write if bar is not None else print)(message)

    def describe(self) -> str:
        cfg = self.cfg
        params = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        what = f"x{cfg.scale}" if cfg.scale else "multi-scale x2/x3/x4"
        return (f"DSRNet {what}: {params:,} parameters on {self.device} x {self.world} process(es), "
                f"batch {cfg.batch_size} of {cfg.patch_size}px LR patches from {len(self.dataset)} images, "
                f"gate '{cfg.gate}', steps {self.step} -> {cfg.max_steps}, checkpoints in {self.ckpt_dir}")

    # ------------------------------------------------------------------ checkpoints

    def ckpt_path(self, step: int) -> Path:
        return self.ckpt_dir / f"{self.cfg.ckpt_name}_{step}.pth"

    def save(self, step: int) -> Path:
        """Rank 0 writes ``{ckpt_name}_{step}.pth``: what sample.py loads, plus the resume state."""
        cfg, path = self.cfg, self.ckpt_path(step)
        if self.rank == 0:
            save_checkpoint(path, {
                "model": self.net.state_dict(),
                "scale": cfg.scale, "group": cfg.group, "step": step, "seed": cfg.seed,
                "config": vars(cfg),
                "environment": environment(),
                "train_state": {
                    "optimizer": self.optim.state_dict(),
                    "grad_scaler": self.scaler.state_dict(),
                    "gate_generator": self.net.wide_enhancement.gate_generator.get_state(),
                    "rng": rng_states(),
                    "loss_sum": self.loss_sum, "loss_count": self.loss_count,  # the open log interval
                    "world_size": self.world,
                },
            })
        if self.world > 1:
            dist.barrier()
        return path

    def find_resume(self) -> Path:
        cfg = self.cfg
        if cfg.resume != "latest":
            if not Path(cfg.resume).is_file():
                raise InputError(f"--resume {cfg.resume}: no such file (--resume alone picks the latest "
                                 f"checkpoint in --ckpt_dir)")
            return Path(cfg.resume)
        path = latest_checkpoint(self.ckpt_dir, cfg.ckpt_name)
        if path is None:
            raise InputError(f"--resume: no {cfg.ckpt_name}_<step>.pth in {self.ckpt_dir}; check "
                             "--ckpt_dir/--ckpt_name or start without --resume")
        return path

    def resume(self, path: Path) -> None:
        """Restore model, optimizer, step, gate noise and every RNG: the run continues bit-exactly."""
        cfg, ckpt = self.cfg, read_checkpoint(path)
        state, saved = ckpt.get("train_state"), ckpt.get("config", {})
        if state is None:
            raise InputError(f"{path} holds weights but no training state, so it cannot be resumed; "
                             "start a new run from it with --init_from")
        for flag in MODEL_FLAGS:
            if saved.get(flag) != getattr(cfg, flag):
                raise InputError(f"cannot resume {path}: it was trained with --{flag} {saved.get(flag)}, "
                                 f"this run has --{flag} {getattr(cfg, flag)}; pass the same value, or "
                                 "start a new run from its weights with --init_from")
        # Flags a checkpoint predates are not compared; CPU runs are deterministic with or without the flag.
        compared = [f for f in RUN_FLAGS if f in saved and (f != "deterministic" or self.device.type == "cuda")]
        changed = [f"--{f} {saved[f]} -> {getattr(cfg, f)}" for f in compared if saved[f] != getattr(cfg, f)]
        if changed:
            self.say("note: resuming with changed " + ", ".join(changed)
                     + ": the run no longer matches an uninterrupted one")
        try:
            self.net.load_state_dict(ckpt["model"])
            self.optim.load_state_dict(state["optimizer"])
            if state["grad_scaler"] and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["grad_scaler"])
            self.net.wide_enhancement.gate_generator.set_state(state["gate_generator"])
            set_rng_states(state["rng"])
            self.step, self.loss_sum, self.loss_count = int(ckpt["step"]), state["loss_sum"], state["loss_count"]
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"cannot resume {path}: its training state is damaged ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); resume from an earlier "
                             "checkpoint, or start a new run from its weights with --init_from") from None
        self.say(f"resumed {path} at step {self.step}")

    def init_from(self, path: Path) -> None:
        """Copy the tensors whose name and shape match (EDSR's practice: x3/x4 from x2 weights)."""
        source = read_checkpoint(path)["model"]
        own = self.net.state_dict()
        copied = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
        self.net.load_state_dict(copied, strict=False)
        skipped = sorted(set(source) - set(copied))
        fresh = sorted(set(own) - set(copied))
        self.say(f"--init_from {path}: copied {len(copied)} tensors; skipped {len(skipped)} that do not "
                 f"match{': ' + ', '.join(skipped) if skipped else ''}; {len(fresh)} left at their "
                 f"initialisation{': ' + ', '.join(fresh) if fresh else ''}")
