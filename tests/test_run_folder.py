"""A run folder that never loses a run: no new run over an old one, nothing written over a file no run
wrote or through a link, non-finite flags and weights refused, every saved step validated even after a
kill, one best per validation set, resumes that change --gate or the data say so, output that cannot be
written never stops training.

Real processes (``x2/train.py``, or a ``python -c`` that kills itself at one exact point) where the
behaviour is a command line's; a tiny HDF5 pack, 8-pixel patches, one intra-op thread.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import dsrnet.train.checkpoints as checkpoints
import solver as solver_module
from conftest import write_pack, write_valid_set
from dsrnet.errors import InputError
from model import read_checkpoint
from solver import Solver, parse_args

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--patch_size", "8", "--batch_size", "2", "--num_workers", "0", "--log_interval", "1000")

pytestmark = pytest.mark.usefixtures("one_thread")


def _pack(path: Path, seed: int, n: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    return write_pack(path, (rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(n)))


def _valid_set(root: Path, smooth: bool) -> Path:
    """Two 24x24 x2 pairs: smooth ramps (a high PSNR) or noise (a low one)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:24, 0:24]

    def image(k: int) -> np.ndarray:
        if smooth:
            return np.stack([(xx * 4 + yy * 3 + 40 * c + 20 * k) % 200 + 20 for c in range(3)], -1).astype(np.uint8)
        return rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return write_valid_set(root, (image(k) for k in (1, 2)))


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return _pack(tmp_path_factory.mktemp("pack") / "tiny.h5", 0)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("valid")
    return {"Smooth": _valid_set(root / "Smooth", True), "Noise": _valid_set(root / "Noise", False)}


def make(pack: Path, ckpt_dir: Path, *args: str) -> Solver:
    return Solver(parse_args(["--train_data_path", str(pack), "--ckpt_dir", str(ckpt_dir), *TINY, *args]))


def cli(pack: Path, ckpt_dir: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """``x2/train.py`` with the tiny settings, or ``code`` run before the same training in the same process."""
    argv = ["--train_data_path", str(pack), "--ckpt_dir", str(ckpt_dir), *TINY, *args]
    run = ("from dsrnet.cli import run_cli\nfrom solver import Solver, parse_args\n"
           f"run_cli(lambda: Solver(parse_args({argv!r})).fit())\n")
    command = ([sys.executable, "-c", textwrap.dedent(code) + run] if code
               else [sys.executable, str(ROOT / "x2" / "train.py"), *argv])
    return subprocess.run(command, cwd=ROOT, text=True, capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    return proc.stderr


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def log_rows(folder: Path) -> list[dict]:
    with open(folder / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# A process that dies by SIGKILL at one exact point: right after the checkpoint of STEP is written.
KILL_AFTER_SAVE = """
    import os, signal
    import dsrnet.train.checkpoints as c
    real = c.save_checkpoint
    def save_then_die(path, ckpt):
        real(path, ckpt)
        if path.name == "{name}":
            os.kill(os.getpid(), signal.SIGKILL)
    c.save_checkpoint = save_then_die
"""


# ---------------------------------------------------------------------------- 1. a folder never loses a run

def test_a_new_run_never_replaces_a_finished_run_and_resume_continues_it(pack, tmp_path):
    d = tmp_path / "D"
    first = cli(pack, d, "--max_steps", "6", "--print_interval", "3", "--seed", "1")
    assert first.returncode == 0, first.stderr
    before = files(d)
    err = one_line(cli(pack, d, "--max_steps", "2", "--print_interval", "1", "--seed", "2"))
    assert "already holds a training run" in err and "--resume" in err and "another --ckpt_dir" in err
    assert files(d) == before  # not a byte changed, nothing added
    again = cli(pack, d, "--max_steps", "9", "--print_interval", "3", "--resume")
    assert again.returncode == 0, again.stderr
    assert read_checkpoint(d / "dsrnet_x2_9.pth")["seed"] == 1  # the first run, continued
    assert [r["step"] for r in log_rows(d)] == ["3", "6", "9"]


def test_another_name_in_a_run_folder_is_refused_and_keeps_that_runs_log(pack, tmp_path):
    make(pack, tmp_path, "--max_steps", "2", "--print_interval", "2", "--ckpt_name", "a").fit()
    log = (tmp_path / "log.csv").read_bytes()
    with pytest.raises(InputError, match=r"already holds a training run \(log.csv"):
        make(pack, tmp_path, "--max_steps", "2", "--ckpt_name", "b")
    assert (tmp_path / "log.csv").read_bytes() == log and not list(tmp_path.glob("b_*"))


def test_a_users_file_under_a_run_name_and_a_linked_lock_are_never_written(pack, tmp_path):
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"the user's own weights")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "dsrnet_x2_best.pth").write_bytes(b"the user's own weights")
    with pytest.raises(InputError, match="dsrnet_x2_best.pth"):
        make(pack, fresh, "--max_steps", "2")
    # a resumed run meets a user's file where its best weights go: refused, the file intact
    run = tmp_path / "run"
    make(pack, run, "--max_steps", "2", "--print_interval", "2").fit()
    (run / "dsrnet_x2_best.pth").symlink_to(mine)
    with pytest.raises(InputError, match="dsrnet_x2_best.pth was not written by"):
        make(pack, run, "--max_steps", "4", "--resume", "--valid_data_dir", str(_valid_set(tmp_path / "V", True)))
    assert mine.read_bytes() == b"the user's own weights"
    # one that appears while the run goes: refused when the run reaches its name, the file intact
    later = tmp_path / "later"
    s = make(pack, later, "--max_steps", "2", "--print_interval", "1")
    (later / "dsrnet_x2_2.pth").write_bytes(b"the user's own weights")
    with pytest.raises(InputError, match="dsrnet_x2_2.pth was not written by this run"):
        s.fit()
    assert (later / "dsrnet_x2_2.pth").read_bytes() == b"the user's own weights"
    # a lock file that is a link: refused, its target untouched
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".train.lock").symlink_to(mine)
    err = one_line(cli(pack, linked, "--max_steps", "1"))
    assert ".train.lock is a symbolic link" in err
    assert mine.read_bytes() == b"the user's own weights"


def test_checkpoints_a_kill_left_beyond_keep_last_are_pruned_at_the_next_start(pack, tmp_path):
    """Killed between writing step 6 and deleting step 2 (--keep_last 2): the resume deletes step 2, and only
    files of this run (another name's and a user's stay)."""
    (tmp_path / "other_2.pth").write_bytes(b"another run's")
    killed = cli(pack, tmp_path, "--max_steps", "8", "--print_interval", "2", "--keep_last", "2",
                 code=KILL_AFTER_SAVE.format(name="dsrnet_x2_6.pth"))
    assert killed.returncode == -9
    assert {"dsrnet_x2_2.pth", "dsrnet_x2_4.pth", "dsrnet_x2_6.pth"} <= set(files(tmp_path))
    resumed = cli(pack, tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "deleted dsrnet_x2_2.pth" in resumed.stdout
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["dsrnet_x2_6.pth", "dsrnet_x2_8.pth",
                                                              "dsrnet_x2_final.pth", "other_2.pth"]


# ---------------------------------------------------------------------------- 2. no poisoned checkpoint

@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "1e400"), ("--lr", "nan"), ("--lr", "2"),
                                         ("--clip", "nan"), ("--clip", "inf"), ("--gate_tau", "inf"),
                                         ("--gate_tau_min", "nan"), ("--gate_lr_mult", "inf"),
                                         ("--gate_penalty", "nan"), ("--gate_penalty", "-1")])
def test_non_finite_and_out_of_range_floats_are_refused_at_parsing(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args([flag, value, "--gate", "learned"])
    assert stop.value.code == 2
    assert f"argument {flag}: must be a finite number" in capsys.readouterr().err


def test_a_temperature_floor_above_the_start_is_refused():
    with pytest.raises(InputError, match="--gate_tau_min 2.0 is above --gate_tau 1.0"):
        parse_args(["--gate", "learned", "--gate_tau_min", "2"])


def test_lr_inf_on_a_resume_is_refused_before_any_file_is_touched(pack, tmp_path):
    make(pack, tmp_path, "--max_steps", "2", "--print_interval", "1", "--keep_last", "1").fit()
    before = files(tmp_path)
    proc = cli(pack, tmp_path, "--resume", "--lr", "inf", "--max_steps", "4")
    assert proc.returncode == 2 and "argument --lr: must be a finite number" in proc.stderr
    assert files(tmp_path) == before


def test_weights_that_became_non_finite_are_never_saved_nor_the_good_checkpoint_pruned(pack, tmp_path):
    s = make(pack, tmp_path, "--max_steps", "6", "--print_interval", "1", "--keep_last", "1")
    step = s.optim.step

    def poisoning_step(*args, **kwargs):
        out = step(*args, **kwargs)
        if s.step == 2:  # the update of step 3
            next(s.net.parameters()).data.fill_(float("inf"))
        return out
    s.optim.step = poisoning_step
    with pytest.raises(InputError, match="the weights became non-finite at step 3; stopped without saving "
                                         r"\(last checkpoint: .*dsrnet_x2_2.pth\)"):
        s.fit()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["dsrnet_x2_2.pth"]
    assert all(t.isfinite().all() for t in read_checkpoint(tmp_path / "dsrnet_x2_2.pth")["model"].values()
               if t.is_floating_point())


# ---------------------------------------------------------------------------- 3. every saved step validated

def test_a_kill_while_validating_the_last_step_is_finished_by_the_resume(pack, sets, tmp_path):
    args = ("--max_steps", "4", "--print_interval", "4", "--valid_data_dir", str(sets["Smooth"]), str(sets["Noise"]))
    killed = cli(pack, tmp_path, *args, code=KILL_AFTER_SAVE.format(name="dsrnet_x2_4.pth"))
    assert killed.returncode == -9 and (tmp_path / "dsrnet_x2_4.pth").is_file()
    assert not (tmp_path / "dsrnet_x2_final.pth").exists()
    resumed = cli(pack, tmp_path, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "step 4 was saved but never validated" in resumed.stdout
    (row,) = log_rows(tmp_path)
    assert row["step"] == "4" and float(row["Smooth_x2_psnr"]) > 0 and float(row["loss"]) > 0
    assert read_checkpoint(tmp_path / "dsrnet_x2_final.pth")["step"] == 4
    assert read_checkpoint(tmp_path / "dsrnet_x2_best.pth")["step"] == 4
    again = cli(pack, tmp_path, *args, "--resume")
    assert "nothing to do" in again.stdout and "never validated" not in again.stdout
    assert len(log_rows(tmp_path)) == 1


def test_an_interrupted_validation_or_a_failed_best_mid_run_is_redone_on_resume(pack, sets, tmp_path, monkeypatch):
    """A double Ctrl-C while step 2 validates, then a full disk while step 4's best is written: each resume
    completes the step (row, best candidacy), and the log equals an uninterrupted run's."""
    args = ("--max_steps", "6", "--print_interval", "2", "--valid_data_dir", str(sets["Smooth"]))
    make(pack, tmp_path / "straight", *args).fit()
    ck = tmp_path / "ck"
    real_score = solver_module.score_valid_sets

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(solver_module, "score_valid_sets", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make(pack, ck, *args).fit()
    monkeypatch.setattr(solver_module, "score_valid_sets", real_score)
    real_save = checkpoints.save_checkpoint

    def full_disk_at_best(path, ckpt):
        if path.name == "dsrnet_x2_best.pth" and ckpt["step"] == 4:
            raise InputError(f"cannot write {path}: the disk is full")
        real_save(path, ckpt)
    monkeypatch.setattr(checkpoints, "save_checkpoint", full_disk_at_best)
    with pytest.raises(InputError, match="disk is full"):
        make(pack, ck, *args, "--resume").fit()
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    make(pack, ck, *args, "--resume").fit()

    def scores(folder: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["Smooth_x2_psnr"]) for r in log_rows(folder)]
    assert scores(ck) == scores(tmp_path / "straight")
    best = read_checkpoint(ck / "dsrnet_x2_best.pth")
    assert best["step"] == read_checkpoint(tmp_path / "straight" / "dsrnet_x2_best.pth")["step"]


def test_the_best_is_only_ever_the_best_on_one_validation_set(pack, sets, tmp_path, capsys):
    make(pack, tmp_path, "--max_steps", "2", "--print_interval", "2", "--valid_data_dir", str(sets["Smooth"])).fit()
    smooth_best = read_checkpoint(tmp_path / "dsrnet_x2_best.pth")
    capsys.readouterr()
    make(pack, tmp_path, "--max_steps", "4", "--print_interval", "2", "--resume",
         "--valid_data_dir", str(sets["Noise"])).fit()
    out = capsys.readouterr().out
    assert "validation now scores Noise_x2_psnr" in out and "the best starts anew" in out
    best = read_checkpoint(tmp_path / "dsrnet_x2_best.pth")
    assert best["step"] == 4 and set(best["valid"]) == {"Noise_x2_psnr", "Noise_x2_ssim"}
    assert best["mean_psnr"] < smooth_best["mean_psnr"]  # a lower score on a harder set, still its best
    aside = read_checkpoint(tmp_path / "best_before_step_2" / "dsrnet_x2_best.pth")
    assert aside["step"] == 2 and aside["mean_psnr"] == smooth_best["mean_psnr"]


# ---------------------------------------------------------------------------- 4. resume tells the truth

def test_resume_may_change_the_gate_keeping_each_parameters_adam_moments(pack, tmp_path):
    make(pack, tmp_path, "--max_steps", "2", "--print_interval", "2").fit()
    saved = torch.load(tmp_path / "dsrnet_x2_2.pth", weights_only=True)["train_state"]["optimizer"]
    learned = make(pack, tmp_path, "--max_steps", "4", "--resume", "--gate", "learned")
    assert len(learned.optim.param_groups) == 2
    names = [n for n, p in learned.net.named_parameters() if p.requires_grad]
    by_param = {p: n for n, p in learned.net.named_parameters()}
    moved = 0
    for group in learned.optim.param_groups:
        for p in group["params"]:
            old = saved["state"].get(names.index(by_param[p]))  # the detached gate of 'sample' had no moments
            if old is None:
                assert p not in learned.optim.state, by_param[p]
            else:
                assert torch.equal(learned.optim.state[p]["exp_avg_sq"], old["exp_avg_sq"]), by_param[p]
                moved += 1
    assert moved == len(saved["state"]) > 0
    learned.fit()
    back = make(pack, tmp_path, "--max_steps", "6", "--resume", "--gate", "sample")
    assert len(back.optim.param_groups) == 1
    back.fit()
    assert read_checkpoint(tmp_path / "dsrnet_x2_6.pth")["config"]["gate"] == "sample"


def test_every_recorded_switch_has_an_off_form_on_resume(pack, sets, tmp_path, capsys):
    make(pack, tmp_path, "--max_steps", "2", "--print_interval", "2", "--in_memory", "--deterministic",
         "--valid_data_dir", str(sets["Smooth"]), "--sample_dir", str(tmp_path / "sr")).fit()
    ckpt = tmp_path / "dsrnet_x2_2.pth"
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["amp"] = "bf16"  # as a run on a bf16 machine records it
    torch.save(saved, ckpt)
    kept = parse_args(["--ckpt_dir", str(tmp_path), "--resume"])
    assert (kept.in_memory, kept.deterministic, kept.amp, kept.sample_dir) == (True, True, "bf16", str(tmp_path / "sr"))
    assert kept.valid_data_dir == [str(sets["Smooth"])]
    off = parse_args(["--ckpt_dir", str(tmp_path), "--resume", "--no-in_memory", "--no-deterministic", "--amp", "none",
                      "--no-valid_data_dir", "--no-sample_dir"])
    assert (off.in_memory, off.deterministic, off.amp, off.valid_data_dir, off.sample_dir) == (False, False, None,
                                                                                             None, None)
    assert "--amp bf16 -> None" in capsys.readouterr().out
    saved["config"]["amp"] = None  # a float32 run: --amp none changes nothing, and no note says otherwise
    torch.save(saved, ckpt)
    parse_args(["--ckpt_dir", str(tmp_path), "--resume", "--amp", "none"])
    assert "--amp" not in capsys.readouterr().out


def test_a_changed_training_file_is_named_on_resume(pack, tmp_path, capsys):
    data = tmp_path / "train.h5"
    shutil.copy(pack, data)
    run = tmp_path / "run"
    make(data, run, "--max_steps", "2", "--print_interval", "2").fit()
    make(data, run, "--max_steps", "4", "--resume")
    assert "training file" not in capsys.readouterr().out  # the same file: nothing said
    _pack(data, seed=5, n=4)  # repacked in place
    make(data, run, "--max_steps", "4", "--resume")
    out = capsys.readouterr().out
    assert f"note: the training file {data.resolve()} is not the one the checkpoint trained on" in out
    assert "no longer matches an uninterrupted one" in out


def test_output_nobody_reads_never_stops_training(pack, tmp_path):
    """`x2/train.py ... | head -n 1`: the reader leaves after the first line; the run still ends with its
    final checkpoint and exit 0."""
    argv = [sys.executable, "-u", str(ROOT / "x2" / "train.py"), "--train_data_path", str(pack), "--ckpt_dir",
            str(tmp_path), *TINY, "--max_steps", "6", "--print_interval", "1", "--log_interval", "1", "--verbose"]
    proc = subprocess.Popen(argv, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().startswith("DSRNet x2")
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert read_checkpoint(tmp_path / "dsrnet_x2_final.pth")["step"] == 6


def test_a_run_without_a_terminal_prints_progress_every_log_interval(pack, tmp_path):
    """Output into a file or pipe (nohup, a job script) has no progress bar: a line every --log_interval
    steps says where the run stands."""
    proc = cli(pack, tmp_path, "--max_steps", "6", "--print_interval", "6", "--log_interval", "2")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ") and "/6:" in line]
    assert [line.split(":")[0] for line in lines] == ["step 2/6", "step 4/6"]
    assert all(re.fullmatch(r"step \d/6: loss \d\.\d{5}, \d+\.\d samples/s, about \d+:\d\d:\d\d left", line)
               for line in lines), lines
