"""Training runs as a researcher lives them: the help, resuming by re-running the command, bounded
checkpoint disk, no resume from an abandoned future, nothing lost to a failing validation, a torn log.

Tiny HDF5 packs (three 40x40 images), 8-pixel patches and a handful of steps, one intra-op thread.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsrnet.errors import InputError
from model import load_checkpoint, read_checkpoint
import solver as solver_module
from solver import Solver, parse_args

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


TINY = ("--patch_size", "8", "--batch_size", "2", "--num_workers", "0", "--print_interval", "2", "--log_interval", "2")


def make(x2_pack: Path, ckpt_dir: Path, *args: str) -> Solver:
    return Solver(parse_args(["--train_data_path", str(x2_pack), "--ckpt_dir", str(ckpt_dir), *TINY, *args]))


def log_steps(ckpt_dir: Path) -> list[int]:
    with open(ckpt_dir / "log.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def assert_same_state(a: Path, b: Path) -> None:
    """Two checkpoint files with identical weights, optimizer state and gate noise."""
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert ca["step"] == cb["step"]
    for key, value in ca["model"].items():
        assert torch.equal(value, cb["model"][key]), key
    sa, sb = ca["train_state"]["optimizer"]["state"], cb["train_state"]["optimizer"]["state"]
    for k in sa:
        for key in sa[k]:
            assert torch.equal(sa[k][key], sb[k][key]), (k, key)
    assert torch.equal(ca["train_state"]["gate_generator"], cb["train_state"]["gate_generator"])


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "x2" / "train.py"), *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_help_shows_every_default_and_no_measured_figures():
    help_text = train("--help").stdout
    flat = " ".join(help_text[help_text.index("options:"):].split())
    for flag, default in (("--batch_size", "64"), ("--patch_size", "64"), ("--max_steps", "600000"),
                          ("--print_interval", "1000"), ("--lr", "0.0001"), ("--num_workers", "2"),
                          ("--seed", "0")):
        entry = re.search(rf"{flag} {flag.lstrip('-').upper()}(.*?)\(default: ([^)]*)\)", flat)
        assert entry and entry.group(2) == default, flag
        other_flag = re.search(r" --\w+ [A-Z]", entry.group(1).replace(", --checkpoint_every PRINT_INTERVAL", ""))
        assert other_flag is None, (flag, entry.group(0))  # the default read is this flag's own
    assert "%" not in flat and "H200" not in flat


def test_checkpoint_every_is_print_interval():
    assert parse_args(["--checkpoint_every", "7"]).print_interval == 7
    assert parse_args(["--print_interval", "7"]).print_interval == 7


# ------------------------------------------------------------------ resume = the same command, plus --resume

def test_resume_by_rerunning_the_command_is_bit_exact(x2_pack, tmp_path):
    """Straight to 6 in A; B holds A's step-2 checkpoint alone. `x2/train.py --ckpt_dir B --resume` finds the
    run's name, data and recipe in the checkpoint (--max_steps/--print_interval overridden, named in one
    line) and ends where A was at step 4; `--resume A/run_4.pth` alone re-runs A's steps 5-6 bit-exactly."""
    a, b = tmp_path / "a", tmp_path / "b"
    make(x2_pack, a, "--ckpt_name", "run", "--max_steps", "6", "--seed", "3", "--lr", "3e-4").fit()
    b.mkdir()
    shutil.copy(a / "run_2.pth", b / "run_2.pth")
    with_overrides = train("--ckpt_dir", str(b), "--resume", "--max_steps", "4", "--print_interval", "1")
    assert with_overrides.returncode == 0, with_overrides.stderr
    assert "note: resuming with --max_steps 6 -> 4, --print_interval 2 -> 1 (every other" in with_overrides.stdout
    assert "no longer matches" not in with_overrides.stdout
    assert names(b) == ["log.csv", "run_2.pth", "run_3.pth", "run_4.pth", "run_final.pth"]
    assert_same_state(a / "run_4.pth", b / "run_4.pth")

    as_is = parse_args(["--resume", str(a / "run_4.pth")])
    assert (as_is.ckpt_dir, as_is.ckpt_name, as_is.max_steps, as_is.seed) == (str(a), "run", 6, 3)
    Solver(as_is).fit()
    assert_same_state(a / "abandoned_after_step_4" / "run_6.pth", a / "run_6.pth")
    assert log_steps(a) == [2, 4, 6]


def test_init_from_is_ignored_on_resume_with_a_note(x2_pack, tmp_path, capsys):
    make(x2_pack, tmp_path, "--max_steps", "2").fit()
    cfg = parse_args(["--ckpt_dir", str(tmp_path), "--resume", "--init_from", str(tmp_path / "absent.pth")])
    assert cfg.train_data_path == str(x2_pack) and cfg.init_from is None and cfg.patch_size == 8
    assert Solver(cfg).step == 2
    assert "--init_from " in capsys.readouterr().out


def test_a_checkpoint_older_than_some_flags_resumes(x2_pack, tmp_path, capsys):
    """A recorded config without --ema and --init_weights (older runs) and with a flag since removed: the
    missing ones are the old behaviour (no average, raw weights), the removed one is dropped."""
    make(x2_pack, tmp_path, "--max_steps", "2", "--lr", "3e-4").fit()
    ckpt = tmp_path / "dsrnet_x2_2.pth"
    saved = torch.load(ckpt, weights_only=True)
    saved["config"] = {k: v for k, v in saved["config"].items() if k not in ("ema", "init_weights")}
    saved["config"]["authors_only"] = True
    torch.save(saved, ckpt)
    capsys.readouterr()
    cfg = parse_args(["--ckpt_dir", str(tmp_path), "--resume", "--max_steps", "4", "--ema", "0.5"])
    assert (cfg.lr, cfg.ema, cfg.init_weights, cfg.train_data_path) == (3e-4, 0.5, "raw", str(x2_pack))
    assert "note: resuming with changed --ema 0.0 -> 0.5: the run no longer matches" in capsys.readouterr().out
    assert Solver(cfg).fit() == 4
    assert "authors_only" not in read_checkpoint(tmp_path / "dsrnet_x2_4.pth")["config"]


def test_training_banner_counts_parameters_as_the_readme(x2_pack, tmp_path):
    s = make(x2_pack, tmp_path)
    line = solver_module.banner(s.cfg, s.net, s.device, s.world, len(s.dataset), s.step)
    assert "934,578 trainable + 24 frozen (mean shift) parameters" in line


# ------------------------------------------------------------------ checkpoint disk and lineage

def test_keep_last_keeps_n_plus_best_and_final_and_never_foreign_files(x2_pack, x2_valid, tmp_path):
    foreign = {"other_2.pth": b"another run's name", "notes.txt": b"mine", "dsrnet_x2_v1.pth": b"a user's file with the run's prefix"}
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    make(x2_pack, tmp_path, "--max_steps", "8", "--keep_last", "2", "--valid_data_dir", str(x2_valid)).fit()
    kept = ["dsrnet_x2_6.pth", "dsrnet_x2_8.pth", "dsrnet_x2_best.pth", "dsrnet_x2_final.pth"]
    assert names(tmp_path) == sorted([*foreign, "log.csv", *kept])
    with open(tmp_path / "log.csv", newline="") as f:
        psnr = {int(r["step"]): float(r["Tiny_x2_psnr"]) for r in csv.DictReader(f)}
    best = read_checkpoint(tmp_path / "dsrnet_x2_best.pth")
    assert best["step"] == max(psnr, key=psnr.get) and "train_state" not in best
    assert read_checkpoint(tmp_path / "dsrnet_x2_final.pth")["step"] == 8
    load_checkpoint(tmp_path / "dsrnet_x2_final.pth")  # what sample.py loads

    make(x2_pack, tmp_path, "--resume", str(tmp_path / "dsrnet_x2_8.pth"), "--max_steps", "12").fit()
    kept = ["dsrnet_x2_10.pth", "dsrnet_x2_12.pth", "dsrnet_x2_best.pth", "dsrnet_x2_final.pth"]
    assert names(tmp_path) == sorted([*foreign, "log.csv", *kept])
    assert all((tmp_path / name).read_bytes() == data for name, data in foreign.items())


def test_a_resume_never_picks_an_abandoned_future(x2_pack, tmp_path):
    make(x2_pack, tmp_path, "--max_steps", "8").fit()
    make(x2_pack, tmp_path, "--resume", str(tmp_path / "dsrnet_x2_4.pth"), "--max_steps", "6").fit()
    assert names(tmp_path / "abandoned_after_step_4") == ["dsrnet_x2_6.pth", "dsrnet_x2_8.pth", "dsrnet_x2_final.pth"]
    assert log_steps(tmp_path) == [2, 4, 6]
    again = make(x2_pack, tmp_path, "--resume", "--max_steps", "8")
    assert again.step == 6
    again.fit()
    assert log_steps(tmp_path) == [2, 4, 6, 8]
    assert_same_state(tmp_path / "abandoned_after_step_4" / "dsrnet_x2_8.pth", tmp_path / "dsrnet_x2_8.pth")


def test_a_validation_failing_mid_run_keeps_that_steps_checkpoint(x2_pack, x2_valid, tmp_path):
    folder = tmp_path / "Tiny"
    shutil.copytree(x2_valid, folder)
    s = make(x2_pack, tmp_path / "ck", "--max_steps", "4", "--valid_data_dir", str(folder))
    (folder / "image_SRF_2" / "img_002_SRF_2_LR.png").write_bytes(b"unreadable now")
    with pytest.raises(InputError, match="img_002_SRF_2_LR.png"):
        s.fit()
    assert (tmp_path / "ck" / "dsrnet_x2_2.pth").is_file()


def test_a_torn_last_log_line_does_not_survive_resume(x2_pack, tmp_path):
    make(x2_pack, tmp_path, "--max_steps", "4").fit()
    with open(tmp_path / "log.csv", "a") as f:
        f.write("1")  # the start of step 10's row when the power went
    make(x2_pack, tmp_path, "--resume", "--max_steps", "6").fit()
    assert log_steps(tmp_path) == [2, 4, 6]
