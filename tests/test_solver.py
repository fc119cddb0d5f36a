"""Training: learning, exact stop, checkpoints sample.py reads, bit-exact resume (also after a signal
and under DDP), --init_from, multi-scale, NaN handling, the CSV log and the CLI's error paths.

Everything runs on a tiny synthetic HDF5 with one intra-op thread, so the file stays well under a
minute and a half on a busy two-core CPU.
"""
from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import sample
import dsrnet.train.validation as validation_module
import dsrnet.upscale as upscale_module
import solver as solver_module
from conftest import write_pack, write_valid_set
from dsrnet.data.train_data import StepSampler
from dsrnet.errors import InputError
from dsrnet.train.rng import capture_rng_states, restore_rng_states
from dsrnet.train.schedule import get_lr
from model import SCALES, load_checkpoint, read_checkpoint
from model.precision import bf16_supported, memory_format_of
from solver import Solver, parse_args

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--patch_size", "8", "--batch_size", "4", "--num_workers", "0", "--log_interval", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin((xx * (k + 1) + yy * (c + 1)) * 5) for c in range(3)], -1) * 90 + 128
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A 4-image training file in the div2h5 layout and a 2-image SelfExSR-style validation set."""
    root = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    h5 = write_pack(root / "tiny.h5", (_image(rng, 96, k) for k in range(4)), SCALES)
    valid = write_valid_set(root / "Tiny", (_image(rng, 48, k + 5) for k in range(2)), SCALES)
    return {"h5": h5, "valid": valid}


def make(data, ckpt_dir: Path, *args: str, scale: int = 2) -> Solver:
    return Solver(parse_args(["--train_data_path", str(data["h5"]), "--ckpt_dir", str(ckpt_dir), *TINY, *args],
                             default_scale=scale))


def log_rows(ckpt_dir: Path) -> list[dict]:
    with open(ckpt_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_training_state(a: Solver, b: Solver) -> None:
    for (name, p), q in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(p, q), name
    sa, sb = a.optim.state_dict()["state"], b.optim.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for key in sa[k]:
            assert torch.equal(sa[k][key], sb[k][key]), (k, key)
    assert torch.equal(a.net.router.generator.get_state(),
                       b.net.router.generator.get_state())


def inject(solver: Solver, at_call: int, action) -> None:
    """Run ``action(loss)`` inside training step number ``at_call`` (1-based) through the loss function."""
    loss_fn, calls = solver.loss_fn, []

    def wrapped(sr, hr):
        calls.append(1)
        loss, data_loss = loss_fn(sr, hr)
        assert loss is data_loss  # no gate penalty in these runs: one loss, backpropagated and logged
        if len(calls) == at_call:
            loss = action(loss)
        return loss, loss
    solver.loss_fn = wrapped


# ---------------------------------------------------------------------------------------------- units

def test_schedule_and_sharding():
    assert [get_lr(s, 1e-4, 10) for s in (0, 9, 10, 25)] == [1e-4, 1e-4, 5e-5, 2.5e-5]
    single = list(StepSampler(3, 5, batch=4))
    ranks = [list(StepSampler(3, 5, batch=2, rank=r, world=2)) for r in (0, 1)]
    assert single == list(range(12, 20))
    assert ranks[0] + ranks[1] != single and sorted(ranks[0] + ranks[1]) == single
    assert ranks[0][:2] + ranks[1][:2] == single[:4]  # each step covers the same global batch


def test_paper_command_line_parses():
    cfg = parse_args("--patch_size 64 --batch_size 64 --max_steps 600000 --decay 400000 --model dsrnet "
                     "--ckpt_name dsrnet_x4 --ckpt_dir checkpoint/dsrnet_x4 --scale 4 --num_gpu 1".split(),
                     default_scale=4)
    assert (cfg.scale, cfg.lr, cfg.clip, cfg.loss_fn, cfg.gate) == (4, 1e-4, 10.0, "MSE", "sample")
    assert (cfg.print_interval, cfg.patch_size, cfg.batch_size, cfg.decay) == (1000, 64, 64, 400000)
    assert cfg.ckpt_dir == "checkpoint/dsrnet_x4" and cfg.train_data_path.endswith("dataset/DIV2K_train.h5")
    assert parse_args([], default_scale=3).ckpt_name == "dsrnet_x3"
    assert parse_args(["--scale", "0"]).ckpt_dir.endswith("checkpoint/dsrnet_multiscale")


# ------------------------------------------------------------------------------------------- training

def test_learns_stops_exactly_and_checkpoints_load(data, tmp_path):
    ck = tmp_path / "ck"
    s = make(data, ck, "--patch_size", "16", "--lr", "1e-3", "--max_steps", "30", "--print_interval", "12",
             "--log_interval", "5", "--valid_data_dir", str(data["valid"]))
    assert s.fit() == 30
    assert sorted(p.name for p in ck.glob("*.pth")) == ["dsrnet_x2_12.pth", "dsrnet_x2_24.pth", "dsrnet_x2_30.pth",
                                                        "dsrnet_x2_best.pth", "dsrnet_x2_final.pth"]
    rows = log_rows(ck)
    assert [int(r["step"]) for r in rows] == [5, 10, 12, 15, 20, 24, 25, 30]
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])
    assert rows[-1]["Tiny_x2_psnr"] and not rows[0]["Tiny_x2_psnr"]
    assert (ck / "tb").is_dir()

    raw = torch.load(ck / "dsrnet_x2_30.pth", map_location="cpu", weights_only=True)
    assert (raw["scale"], raw["step"], raw["group"], raw["seed"]) == (2, 30, 1, 0)
    assert raw["config"]["max_steps"] == 30 and raw["environment"]["torch"] == torch.__version__
    net = load_checkpoint(ck / "dsrnet_x2_30.pth")
    assert all(torch.equal(p, q.cpu()) for p, q in zip(net.state_dict().values(), s.net.state_dict().values()))
    [result] = sample.main(["--ckpt_path", str(ck / "dsrnet_x2_30.pth"), "--test_data_dir", str(data["valid"]),
                            "--no_save", "--quiet"])
    assert result.psnr == pytest.approx(float(rows[-1]["Tiny_x2_psnr"]), abs=1e-3)  # one protocol
    s.fit()  # already at --max_steps: nothing happens
    assert len(list(ck.glob("*.pth"))) == 5


def test_validation_runs_in_ieee_float32_and_restores_tf32(data, tmp_path, monkeypatch):
    """Logged validation scores must be sample.py's, which turns TF32 off; training keeps PyTorch's setting."""
    s = make(data, tmp_path / "ck", "--valid_data_dir", str(data["valid"]))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # PyTorch's default; restored afterwards
    seen = []
    real = upscale_module.super_resolve
    monkeypatch.setattr(upscale_module, "super_resolve",
                        lambda *a, **k: seen.append(torch.backends.cudnn.allow_tf32) or real(*a, **k))
    assert s.validate(0)["Tiny_x2_psnr"] > 0
    assert seen == [False, False] and torch.backends.cudnn.allow_tf32 is True


def test_validation_uses_sample_layout_without_touching_the_training_net(data, tmp_path, monkeypatch):
    """On a GPU float32 runs NCHW (sample.py's layout): validation must use an NCHW copy and give the same scores."""
    s = make(data, tmp_path / "ck", "--valid_data_dir", str(data["valid"]))
    channels_last = s.validate(0)
    monkeypatch.setattr(validation_module, "fast_memory_format", lambda device: torch.contiguous_format)  # as on CUDA
    seen = []
    real = upscale_module.super_resolve
    monkeypatch.setattr(upscale_module, "super_resolve",
                        lambda net, *a, **k: seen.append(memory_format_of(net)) or real(net, *a, **k))
    nchw = s.validate(0)
    assert seen == [torch.contiguous_format] * 2
    assert memory_format_of(s.net) == torch.channels_last  # the training net is left as it was
    assert nchw["Tiny_x2_psnr"] == pytest.approx(channels_last["Tiny_x2_psnr"], abs=1e-4)


def test_a_stop_before_the_first_log_row_starts_a_fresh_log(data, tmp_path):
    ck = tmp_path / "ck"
    s = make(data, ck, "--max_steps", "20", "--log_interval", "10")
    inject(s, 2, lambda loss: (os.kill(os.getpid(), signal.SIGINT), loss)[1])
    with pytest.raises(SystemExit):
        s.fit()
    assert (ck / "dsrnet_x2_2.pth").is_file()
    assert (ck / "log.csv").read_text().splitlines() == ["step,loss,lr,samples_per_s"]
    resumed = make(data, ck, "--max_steps", "4", "--log_interval", "10", "--resume")
    resumed.fit()
    assert [r["step"] for r in log_rows(ck)] == ["4"]


def test_resume_notes_changed_settings_but_not_deterministic_on_cpu(data, tmp_path, capsys):
    make(data, tmp_path, "--max_steps", "2").fit()
    capsys.readouterr()
    make(data, tmp_path, "--max_steps", "4", "--resume", "--deterministic", "--lr", "2e-4")
    out = capsys.readouterr().out
    assert "note: resuming with changed --lr 0.0001 -> 0.0002: the run no longer matches" in out
    if not torch.cuda.is_available():
        assert "--deterministic" not in out  # CPU runs are deterministic anyway
    make(data, tmp_path, "--max_steps", "4", "--resume")
    assert "resuming with changed" not in capsys.readouterr().out


def _draw_every_rng(gate: torch.Generator) -> list:
    """One draw from each RNG a resumed run relies on; the CUDA ones where there are GPUs."""
    draws = [torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.standard_normal(),
             random.random(), random.gauss(0, 1), torch.rand(3, generator=gate).tolist()]
    return draws + [torch.rand(3, device=f"cuda:{i}").tolist() for i in range(torch.cuda.device_count())]


def _scramble_every_rng(seed: int = 12345) -> None:
    torch.manual_seed(seed)  # also every GPU's
    np.random.seed(seed)
    random.seed(seed)


def test_rng_states_round_trip_exactly_through_a_checkpoint_file(tmp_path):
    """Every global RNG, mid-stream (numpy's and python's cached Gaussians included), saved as a checkpoint
    holds it (loadable with weights_only) and restored, continues exactly where it was."""
    _scramble_every_rng(7)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's legacy state
    random.gauss(0, 1)  # and in python's
    torch.save({"rng": capture_rng_states()}, tmp_path / "rng.pth")
    gate = torch.Generator().manual_seed(3)
    expected = _draw_every_rng(gate)
    _scramble_every_rng()
    restore_rng_states(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert _draw_every_rng(gate.manual_seed(3)) == expected


def test_a_resumed_run_draws_what_the_uninterrupted_one_would(data, tmp_path):
    """After resuming, each RNG (global torch, numpy, python, the gate's generator, CUDA where present)
    continues from its saved state, whatever this process did with it before."""
    first = make(data, tmp_path, "--max_steps", "2")
    first.fit()  # saves at step 2; nothing draws after the save
    expected = _draw_every_rng(first.net.router.generator)
    _scramble_every_rng()
    resumed = make(data, tmp_path, "--max_steps", "4", "--resume")
    assert _draw_every_rng(resumed.net.router.generator) == expected


def test_sigterm_finishes_the_step_saves_and_exits_143(data, tmp_path):
    ck = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, str(ROOT / "x2" / "train.py"), "--train_data_path", str(data["h5"]),
                             "--ckpt_dir", str(ck), *TINY, "--log_interval", "1", "--max_steps", "100000"],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (ck / "log.csv").is_file() or len((ck / "log.csv").read_text().splitlines()) < 2:  # training
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    [saved] = [p for p in ck.glob("dsrnet_x2_*.pth") if p.stem.rsplit("_", 1)[1].isdigit()]
    step = read_checkpoint(saved)["step"]
    assert step >= 1 and f"stopped by SIGTERM at step {step}" in out + err


def test_resume_is_bit_exact_after_signal_and_from_any_checkpoint(data, tmp_path):
    common = ("--max_steps", "12", "--print_interval", "6", "--deterministic")  # a no-op on CPU
    straight = make(data, tmp_path / "a", *common)
    straight.fit()

    interrupted = make(data, tmp_path / "b", *common)
    handler = signal.getsignal(signal.SIGINT)
    inject(interrupted, 5, lambda loss: (os.kill(os.getpid(), signal.SIGINT), loss)[1])
    with pytest.raises(SystemExit) as stop:
        interrupted.fit()
    assert stop.value.code == 130
    assert sorted(p.name for p in (tmp_path / "b").glob("*.pth")) == ["dsrnet_x2_5.pth"]
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    resumed = make(data, tmp_path / "b", *common, "--resume", "--num_workers", "1")
    assert resumed.step == 5 and resumed.fit() == 12
    assert_same_training_state(straight, resumed)
    rows_a, rows_b = log_rows(tmp_path / "a"), log_rows(tmp_path / "b")
    assert [r["step"] for r in rows_b] == ["2", "4", "6", "8", "10", "12"]
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a]

    from_file = make(data, tmp_path / "c", *common, "--resume", str(tmp_path / "a" / "dsrnet_x2_6.pth"))
    from_file.fit()
    assert_same_training_state(straight, from_file)

    with pytest.raises(InputError, match="trained with --scale 2"):
        make(data, tmp_path / "b", *common, "--resume", str(tmp_path / "b" / "dsrnet_x2_12.pth"), scale=4)


@pytest.mark.skipif(torch.cuda.is_available() or not bf16_supported(torch.device("cpu")),
                    reason="CPU bf16 path: needs a CPU with native bfloat16 (and runs only where CUDA is absent)")
def test_cpu_bf16_learns_and_resumes_bit_exactly(data, tmp_path):
    common = ("--amp", "--lr", "1e-3", "--patch_size", "16", "--max_steps", "16", "--print_interval", "8")
    straight = make(data, tmp_path / "a", *common)
    dtypes = set()
    straight.net.residual_enhancement.conv2.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    straight.fit()
    assert dtypes == {torch.bfloat16}
    rows = log_rows(tmp_path / "a")
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])
    assert all(p.dtype == torch.float32 for p in straight.net.parameters())  # autocast keeps fp32 masters
    raw = torch.load(tmp_path / "a" / "dsrnet_x2_16.pth", map_location="cpu", weights_only=True)
    assert raw["config"]["amp"] == "bf16"
    resumed = make(data, tmp_path / "a", *common, "--resume", str(tmp_path / "a" / "dsrnet_x2_8.pth"))
    resumed.fit()
    assert_same_training_state(straight, resumed)


def test_nan_loss_stops_keeping_the_last_good_checkpoint(data, tmp_path):
    s = make(data, tmp_path, "--max_steps", "10", "--print_interval", "2")
    inject(s, 5, lambda loss: loss * float("nan"))
    with pytest.raises(InputError, match=r"nan at step 5.*dsrnet_x2_4\.pth"):
        s.fit()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["dsrnet_x2_2.pth", "dsrnet_x2_4.pth"]
    assert [r["step"] for r in log_rows(tmp_path)] == ["2", "4"]
    assert all(torch.isfinite(v).all() for v in read_checkpoint(tmp_path / "dsrnet_x2_4.pth")["model"].values())


def test_multi_scale_trains_validates_and_loads(data, tmp_path):
    steps = 9  # the first steps of seed 0 draw x4 x3 x4 x3 x3 x4 x3 x4 x2
    s = make(data, tmp_path, "--max_steps", str(steps), "--print_interval", str(steps),
             "--valid_data_dir", str(data["valid"]), scale=0)
    init = {k: v.clone() for k, v in s.net.state_dict().items()}
    s.fit()
    assert [solver_module.step_scale(0, k) for k in range(steps)] == [4, 3, 4, 3, 3, 4, 3, 4, 2]
    for k in (2, 3, 4):  # every scale's upsampler was trained
        key = f"construction.upsample.x{k}.body.0.weight"
        assert not torch.equal(init[key], s.net.state_dict()[key]), key
    row = log_rows(tmp_path)[-1]
    assert all(row[f"Tiny_x{k}_psnr"] for k in (2, 3, 4))
    net = load_checkpoint(tmp_path / "dsrnet_multiscale_9.pth", scale=0)
    assert net.multi_scale and net(torch.rand(1, 3, 8, 8), 3).shape == (1, 3, 24, 24)


def test_init_from_authors_x2(data, tmp_path, weights_x2, capsys):
    source = read_checkpoint(weights_x2)["model"]
    x4 = make(data, tmp_path / "x4", "--init_from", str(weights_x2), scale=4)
    own = x4.net.state_dict()
    fresh = {"construction.upsample.body.2.weight", "construction.upsample.body.2.bias"}
    assert all(torch.equal(own[k].cpu(), v) for k, v in source.items())  # x2's upsampler = x4's first stage
    assert set(own) - set(source) == fresh
    assert "copied 35 tensors; skipped 0" in capsys.readouterr().out
    make(data, tmp_path / "x3", "--init_from", str(weights_x2), scale=3)
    out = capsys.readouterr().out
    assert "copied 33 tensors; skipped 2 that do not match: construction.upsample.body.0.bias" in out


# ------------------------------------------------------------------------------------------------ DDP

DDP_SCRIPT = """
import os, sys, torch
from model.dsrnet import Gate
from solver import Solver, parse_args
if os.environ["RANK"] == "1":  # this rank's gate always votes 'selected' (its noise is still drawn)
    Gate.forward = lambda self, x6: torch.tensor([[100.0, -100.0]]).expand(x6.shape[0], 2)
solver = Solver(parse_args(sys.argv[1:]))
solver.fit()
torch.save({"model": solver.net.state_dict(), "branches": dict(solver.net.router.branch_counts)},
           os.path.join(os.environ["DUMP"], "rank%s.pt" % os.environ["RANK"]))
"""



def test_ddp_two_cpu_ranks_stay_in_sync_and_resume_exactly(data, tmp_path, torchrun):
    """gloo, 2 ranks x batch 2. Rank 1 is made to vote 'selected' at every step while rank 0's sampled
    gate alone picks 'fixed' (at all 8 steps with this seed): the shared vote must make both run 'selected'."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    common = ["--train_data_path", str(data["h5"]), "--ckpt_dir", str(tmp_path / "ck"), *TINY,
              "--max_steps", "8", "--print_interval", "4", "--num_gpu", "2"]
    first = torchrun(script, tmp_path / "straight", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(script, tmp_path / "resumed", *common, "--resume", str(tmp_path / "ck" / "dsrnet_x2_4.pth"))
    assert second.returncode == 0, second.stderr[-3000:]
    runs = [[torch.load(d / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
            for d in (tmp_path / "straight", tmp_path / "resumed")]
    saved = read_checkpoint(tmp_path / "ck" / "dsrnet_x2_8.pth")
    assert saved["train_state"]["world_size"] == 2
    assert [[rank["branches"] for rank in run] for run in runs] == [[{"selected": 8}] * 2, [{"selected": 4}] * 2]
    for key, value in runs[0][0]["model"].items():
        assert torch.equal(value, runs[0][1]["model"][key]), key  # ranks in sync
        assert torch.equal(value, runs[1][0]["model"][key]), key  # resume is exact
        assert torch.equal(value, runs[1][1]["model"][key]), key
        assert torch.equal(value, saved["model"][key]), key
    assert [r["step"] for r in log_rows(tmp_path / "ck")] == ["2", "4", "6", "8"]


# ------------------------------------------------------------------------------------------- CLI edges

def _damaged_copy(src: Path, dst: Path) -> Path:
    """The file gzip-compressed, with every LR chunk overwritten: it opens, but reading an image fails."""
    with h5py.File(src) as f, h5py.File(dst, "w") as g:
        for group in f:
            for name, ds in f[group].items():
                g.create_dataset(f"{group}/{name}", data=ds[()], compression="gzip", chunks=ds.shape)
    with h5py.File(dst) as g:
        offsets = [g[f"X2/{name}"].id.get_chunk_info(0).byte_offset for name in g["X2"]]
    with open(dst, "r+b") as raw:
        for offset in offsets:
            raw.seek(offset)
            raw.write(b"\xff" * 64)
    return dst


def test_cli_errors_are_one_line(data, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file")
    damaged = _damaged_copy(data["h5"], tmp_path / "damaged.h5")
    base = ["--train_data_path", str(data["h5"]), "--ckpt_dir", str(tmp_path / "ck"), "--max_steps", "1"]
    cases = {
        # raised in a DataLoader worker: one line, and no hang on workers that ignore SIGTERM
        "cannot read image": [*base, "--train_data_path", str(damaged), *TINY, "--num_workers", "2",
                              "--ckpt_dir", str(tmp_path / "ck_damaged")],
        "training file": ["--train_data_path", str(tmp_path / "missing.h5"), "--ckpt_dir", str(tmp_path / "ck")],
        "cannot write checkpoints": [*base, "--ckpt_dir", str(blocker / "sub")],
        "--resume": [*base, "--resume", str(tmp_path / "nope.pth")],
        "not a readable HDF5": [*base, "--train_data_path", str(corrupt)],
    }
    procs = {k: subprocess.Popen([sys.executable, str(ROOT / "x2" / "train.py"), *args], cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k, args in cases.items()}
    for expected, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1, err
    assert not any((tmp_path / "ck_damaged").iterdir())  # no log.csv or tb/ from a run that never logged
    assert not (tmp_path / "ck").exists()  # refused for its data or its --resume: not even an empty folder


def test_refusals_in_process(data, tmp_path):
    with pytest.raises(InputError, match="torchrun --nproc_per_node 2"):
        make(data, tmp_path, "--num_gpu", "2")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--amp fp16 needs a CUDA GPU"):
            make(data, tmp_path, "--amp", "fp16")
        if not bf16_supported(torch.device("cpu")):
            with pytest.raises(InputError, match="needs native bfloat16"):
                make(data, tmp_path, "--amp")
    with pytest.raises(InputError, match="--init_from .*: no such file"):
        make(data, tmp_path, "--init_from", str(tmp_path / "nope.pth"))
    with pytest.raises(InputError, match="no dsrnet_x2_<step>.pth"):
        make(data, tmp_path / "empty", "--resume")
    with pytest.raises(InputError, match="smaller than --patch_size"):
        make(data, tmp_path, "--patch_size", "40", scale=4)


def test_damaged_resume_state_and_log_are_refused(data, tmp_path):
    make(data, tmp_path, "--max_steps", "2").fit()
    ckpt = tmp_path / "dsrnet_x2_2.pth"
    saved = torch.load(ckpt, weights_only=False)
    saved["train_state"]["optimizer"] = {}
    damaged = tmp_path / "damaged" / "dsrnet_x2_2.pth"
    damaged.parent.mkdir()
    torch.save(saved, damaged)
    with pytest.raises(InputError, match="training state is damaged"):
        make(data, damaged.parent, "--max_steps", "4", "--resume")
    (tmp_path / "log.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="log.csv .*move it aside"):
        make(data, tmp_path, "--max_steps", "4", "--resume").fit()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write validation images .*--sample_dir"):
        make(data, tmp_path, "--valid_data_dir", str(data["valid"]), "--sample_dir", str(blocker / "sr"))


def test_a_corrupt_validation_image_is_refused_before_training(data, tmp_path):
    valid = tmp_path / "Tiny"
    shutil.copytree(data["valid"], valid)
    (valid / "image_SRF_2" / "img_002_SRF_2_LR.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="img_002_SRF_2_LR.png"):
        make(data, tmp_path / "ck", "--valid_data_dir", str(valid))
    with pytest.raises(InputError, match="img_001: SSIM needs at least 11x11 .*smaller --shave"):
        make(data, tmp_path / "ck", "--valid_data_dir", str(data["valid"]), "--shave", "19")
    assert not (tmp_path / "ck").exists()  # nothing written, not even the folder
