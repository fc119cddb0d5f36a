"""Reliability (issue 13): one training run per checkpoint folder, durable writes, a full disk, a killed
DataLoader worker, stale temp files, and flags that used to end in tracebacks or lost checkpoints.

CLI behaviour is checked through real processes (``x2/train.py``, ``demo.py``) on a tiny HDF5 pack.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import stat
import inspect
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dsrnet.cli import run_cli
from dsrnet.data.images import write_image
from dsrnet.data.pack import pack_hr_folder
from dsrnet.data.train_data import step_loader
from dsrnet.errors import InputError
from dsrnet.files import atomic_write_bytes, stale_temps
from dsrnet.train.run_lock import LOCK_NAME, RunLock
from model import Net, read_checkpoint
from solver import Solver, parse_args
from tools.benchmarks import checkpoint_save

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "x2" / "train.py"
TINY = ["--patch_size", "8", "--batch_size", "4", "--log_interval", "1000000"]
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """A 3-image x2 training pack made by div2h5's packer."""
    root = tmp_path_factory.mktemp("pack")
    rng = np.random.default_rng(0)
    for k in range(3):
        write_image(root / "hr" / f"{k}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    pack_hr_folder(root / "hr", root / "tiny.h5", scales=(2,))
    return root / "tiny.h5"


def train(pack: Path, ckpt_dir: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(TRAIN), "--train_data_path", str(pack), "--ckpt_dir", str(ckpt_dir),
                             *TINY, *args], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


def one_error_line(proc: subprocess.Popen, timeout: float = 180) -> str:
    """The process's stderr, asserted to be a single ``error:`` line with exit status 2."""
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 2, err[-3000:]
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err[-3000:]
    return err


# ------------------------------------------------------------------------------- durable atomic writes

def fsync_spy(monkeypatch, final: Path) -> list[tuple[int, bool, bool]]:
    """Record each os.fsync as (inode, is a folder, ``final`` exists yet)."""
    calls, real = [], os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        calls.append((st.st_ino, stat.S_ISDIR(st.st_mode), final.exists()))
        real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_atomic_writes_sync_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    final = tmp_path / "sub" / "report.json"
    calls = fsync_spy(monkeypatch, final)
    atomic_write_bytes(final, b"{}")
    assert calls == [(final.stat().st_ino, False, False), (final.parent.stat().st_ino, True, True)]


def test_the_hdf5_pack_is_synced_before_it_becomes_final(tmp_path, monkeypatch):
    write_image(tmp_path / "hr" / "a.png", np.zeros((8, 8, 3), np.uint8))
    final = tmp_path / "out" / "pack.h5"
    calls = fsync_spy(monkeypatch, final)
    pack_hr_folder(tmp_path / "hr", final, scales=(2,))
    assert calls[-2:] == [(final.stat().st_ino, False, False), (final.parent.stat().st_ino, True, True)]


def test_a_full_disk_is_one_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    final = tmp_path / "model.pth"
    final.write_bytes(b"good")

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match="model.pth: the disk is full .*free space"):
        atomic_write_bytes(final, b"new")
    assert final.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_stale_temps_match_only_the_names_asked_for(tmp_path):
    names = [".run_4.pth.abcd_123.tmp", ".run_extra_4.pth.abcd1234.tmp", ".other_4.pth.abcd1234.tmp",
             ".run_4.pth.abcd1234.tmp", "run_4.pth", ".log.csv.zz99zz99.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in stale_temps(tmp_path, r"run_\d+\.pth|log\.csv")] == [
        ".log.csv.zz99zz99.tmp", ".run_4.pth.abcd1234.tmp", ".run_4.pth.abcd_123.tmp"]


# ------------------------------------------------------------------------------- the folder lock

HOLDER = ("import sys, time; from dsrnet.train.run_lock import RunLock; "
          "lock = RunLock(sys.argv[1]); print('held', flush=True); time.sleep(120)")


def test_the_lock_names_its_holder_dies_with_it_and_is_shared_within_a_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(InputError, match=f"in use by another training run \\(pid {holder.pid} on {HOST}\\)"):
            RunLock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()
    lock = RunLock(tmp_path)  # a killed holder's lock is free at once, though its file stays
    again = RunLock(tmp_path)
    child = os.fork()
    if child == 0:  # a forked DataLoader worker that ends must not remove its parent's lock
        again.release()
        os._exit(0)
    os.waitpid(child, 0)
    lock.release()
    assert (tmp_path / LOCK_NAME).exists()
    again.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_second_run_in_a_held_folder_stops_at_once_naming_the_first(pack, tmp_path):
    ckpt_dir = tmp_path / "ck"
    ckpt_dir.mkdir()
    stale = ckpt_dir / ".dsrnet_x2_2.pth.abcd1234.tmp"  # the holder may be writing it: left alone
    stale.write_bytes(b"")
    lock = RunLock(ckpt_dir)
    try:
        err = one_error_line(train(pack, ckpt_dir, "--max_steps", "2", "--num_workers", "0"))
    finally:
        lock.release()
    assert f"--ckpt_dir {ckpt_dir} is in use by another training run (pid {os.getpid()} on {HOST})" in err
    assert list(ckpt_dir.iterdir()) == [stale]


def test_a_run_refused_for_its_data_never_contends_for_the_folder(pack, tmp_path):
    """Training data is checked before the folder is claimed: a run with a bad --train_data_path says so even
    while another run holds the folder (it used to report the other run instead, at random under load)."""
    ckpt_dir = tmp_path / "ck"
    ckpt_dir.mkdir()
    lock = RunLock(ckpt_dir)
    try:
        err = one_error_line(train(tmp_path / "missing.h5", ckpt_dir, "--max_steps", "1", "--num_workers", "0"))
    finally:
        lock.release()
    assert "missing.h5" in err and "in use" not in err


# ------------------------------------------------------------------------------- a killed DataLoader worker

def children(pid: int) -> list[int]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_worker_killed_by_the_oom_killer_ends_in_one_line(pack, tmp_path):
    proc = train(pack, tmp_path, "--max_steps", "1000000", "--print_interval", "1000000", "--num_workers", "2")
    try:
        deadline = time.monotonic() + 150
        while len(children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = children(proc.pid)
        assert workers, "the trainer started no DataLoader worker"
        os.kill(workers[0], signal.SIGKILL)
        err = one_error_line(proc, timeout=120)
    finally:
        proc.kill()
    assert "a data-loading worker died" in err and "--num_workers" in err and "--in_memory" in err


LINGERING_WORKER = """
import multiprocessing, signal, sys, time
from dsrnet.cli import run_cli
from dsrnet.errors import InputError

def worker():  # as a DataLoader worker: deaf to SIGTERM, and it may still write after its parent has failed
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3)
    print("Traceback (most recent call last): BrokenPipeError", file=sys.stderr, flush=True)

def main():
    multiprocessing.get_context("fork").Process(target=worker, daemon=True).start()
    raise InputError("bad input")

run_cli(main)
"""


def test_a_failure_leaves_no_worker_behind_to_print_after_its_one_line():
    """The cause of the one-line tests' rare failures under load: a surviving DataLoader worker printed a
    broken-pipe traceback into the trainer's stderr after the error line. The CLI edge now kills them."""
    proc = subprocess.run([sys.executable, "-c", LINGERING_WORKER], cwd=ROOT, text=True, capture_output=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (proc.returncode, proc.stderr) == (2, "error: bad input\n")


# ------------------------------------------------------------------------------- flags refused at startup

def test_training_refuses_out_of_range_seeds_and_ckpt_names_with_folders(pack, tmp_path):
    cases = {"argument --seed: must be in 0..4294967295": ["--seed", "4294967296"],
             "argument --ckpt_name: 'sub/run' is not a plain file name": ["--ckpt_name", "sub/run"]}
    procs = {msg: train(pack, tmp_path / "ck", "--max_steps", "1", *args) for msg, args in cases.items()}
    for msg, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and msg in err.strip().splitlines()[-1] and "Traceback" not in err, err
    assert not (tmp_path / "ck").exists()


def test_demo_refuses_authors_weights_of_another_scale_before_any_work(tmp_path):
    x4 = tmp_path / "x4.pth"
    torch.save(Net(scale=4, multi_scale=False, group=1).state_dict(), x4)
    assert read_checkpoint(x4)["scale"] == 4
    proc = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--quick", "--authors_ckpt", str(x4),
                             "--out", str(tmp_path / "out")], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    err = one_error_line(proc, timeout=120)
    assert f"--authors_ckpt {x4} holds a x4 model" in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_save_benchmark_runs(tmp_path, capsys):
    checkpoint_save.main(["--dir", str(tmp_path), "--repeats", "1"])
    printed = capsys.readouterr().out
    assert "with fsync" in printed and "without fsync" in printed and "MB)" in printed
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------- training: disk full, stale temps

DISK_FULL_AT_STEP_4 = """
import errno, os, runpy, sys
real_fsync = os.fsync
def fsync(fd):  # the disk fills while the step-4 checkpoint is being written
    if ".dsrnet_x2_4.pth." in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_fsync(fd)
os.fsync = fsync
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the patched writer names files through /proc")
def test_a_full_disk_at_a_checkpoint_ends_in_one_line_keeping_the_last_one(pack, tmp_path):
    driver = tmp_path / "disk_full.py"
    driver.write_text(DISK_FULL_AT_STEP_4)
    ckpt_dir = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, str(driver), str(TRAIN), "--train_data_path", str(pack), "--ckpt_dir",
                             str(ckpt_dir), *TINY, "--max_steps", "6", "--print_interval", "2", "--num_workers", "0"],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    err = one_error_line(proc)
    assert "the disk is full" in err and f"{ckpt_dir / 'dsrnet_x2_2.pth'} is intact" in err and "--resume" in err
    assert sorted(p.name for p in ckpt_dir.glob("*.pth")) == ["dsrnet_x2_2.pth"]
    assert read_checkpoint(ckpt_dir / "dsrnet_x2_2.pth")["step"] == 2
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]  # no temp file, no lock left


def test_startup_removes_only_this_runs_stale_temp_files(pack, tmp_path):
    ours = [".dsrnet_x2_4.pth.abcd1234.tmp", ".dsrnet_x2_best.pth.abcd1234.tmp", ".log.csv.abcd1234.tmp"]
    others = [".other_4.pth.abcd1234.tmp", ".dsrnet_x2_best_4.pth.abcd1234.tmp", "notes.tmp"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x" * 1000)
    solver = Solver(parse_args(["--train_data_path", str(pack), "--ckpt_dir", str(tmp_path), *TINY,
                                "--max_steps", "1", "--num_workers", "0"]))
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, LOCK_NAME])
    finally:
        solver.lock.release()


def test_a_full_disk_anywhere_else_is_one_line(capsys):
    def fail(code: int) -> None:  # e.g. appending a row to log.csv, outside the atomic helpers
        raise OSError(code, os.strerror(code), "ck/log.csv")
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: fail(errno.ENOSPC))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: the disk is full writing ck/log.csv (")
    assert len(err.strip().splitlines()) == 1 and "--resume" in err
    with pytest.raises(PermissionError):  # any other OSError is not disguised
        run_cli(lambda: fail(errno.EACCES))


def test_a_folder_that_cannot_be_locked_is_trained_in_with_a_note(pack, tmp_path, monkeypatch, capsys):
    def no_locks(*_args) -> None:  # some network file systems
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    solver = Solver(parse_args(["--train_data_path", str(pack), "--ckpt_dir", str(tmp_path), *TINY,
                                "--max_steps", "1", "--num_workers", "0"]))
    assert not solver.lock.guarded and "cannot be locked on this system" in capsys.readouterr().out
    solver.lock.release()


SIGTERM_WRITER = """
import sys, time
from pathlib import Path
from dsrnet.cli import run_cli
from dsrnet.files import atomic_path

def main():
    with atomic_path(Path(sys.argv[1])) as tmp:
        tmp.write_bytes(b"half")
        print("writing", flush=True)
        time.sleep(60)

run_cli(main)
"""


def test_sigterm_during_any_command_leaves_no_temp_file(tmp_path):
    """Every command runs through run_cli, which unwinds on SIGTERM as on Ctrl-C: a download, report or export
    being written leaves nothing behind, and the status is 143."""
    out = tmp_path / "out" / "weights.pth"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_WRITER, str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n", proc.stderr.read()
        assert [p.name for p in out.parent.iterdir()] != []  # the temp file exists while the block runs
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert list(out.parent.iterdir()) == []


STUCK_WORKER = """
import multiprocessing, signal, sys, time
from dsrnet.cli import run_cli

def worker():  # as a DataLoader worker: deaf to SIGTERM, and busy for longer than the test waits
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)

def main():
    multiprocessing.get_context("fork").Process(target=worker, daemon=True).start()
    exec(compile(sys.argv[1], sys.argv[2], "exec"))  # the error, raised as if in that file

run_cli(main)
"""


@pytest.mark.parametrize("error, where, code, last_line", [
    ("raise ConnectionRefusedError(111, 'Connection refused')", "/usr/lib/python3/multiprocessing/reductions.py", 2,
     "error: a data-loading worker died (a batch was lost in transit: ConnectionRefusedError), most likely killed "
     "for want of memory"),
    ("raise ValueError('unexpected')", "solver.py", 1, "ValueError: unexpected"),
])
def test_no_error_leaves_the_process_waiting_on_its_workers(error, where, code, last_line):
    """A worker killed while handing over a batch (the main process's unpickling fails in multiprocessing's
    reductions) is the worker death it is, in one line; and after any unexpected error, the traceback ends the
    run: the SIGTERM-deaf workers are killed, not joined forever."""
    proc = subprocess.run([sys.executable, "-c", STUCK_WORKER, error, where], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode == code and proc.stderr.strip().splitlines()[-1].startswith(last_line), proc.stderr
    if code == 2:
        assert len(proc.stderr.strip().splitlines()) == 1


def hang_up_on_the_resource_sharer() -> None:
    """Do to this process what the main process does to a worker when it stops mid-fetch: offer a file
    descriptor through multiprocessing's resource sharer (as a worker does for each batch), connect to it and
    hang up mid-handshake. Self-contained, so that a subprocess can run its source."""
    import os
    import socket
    import time
    from multiprocessing import resource_sharer

    read_end, _ = os.pipe()
    resource_sharer.DupFd(read_end)  # this process's sharer starts listening
    reader = socket.socket(socket.AF_UNIX)
    reader.connect(resource_sharer._resource_sharer._address)
    reader.close()
    time.sleep(1)  # time for the sharer's thread to report the hang-up


def test_an_abandoned_handover_prints_a_traceback_in_a_plain_process():
    """What the training loader's workers must not do: multiprocessing reports the hang-up with a traceback."""
    script = textwrap.dedent(inspect.getsource(hang_up_on_the_resource_sharer)) + "hang_up_on_the_resource_sharer()\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "multiprocessing/resource_sharer.py" in proc.stderr and "Traceback" in proc.stderr


class WorkerProbe(torch.utils.data.Dataset):
    """Each sample: whether the worker ignores SIGINT and SIGTERM, after a handover abandoned and an error of
    the worker's own reported."""

    def __getitem__(self, i: int) -> torch.Tensor:
        hang_up_on_the_resource_sharer()
        sys.excepthook(ValueError, ValueError("a worker's own error"), None)
        return torch.tensor([signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)])


def test_the_training_loaders_workers_ignore_stop_signals_and_abandoned_handovers(capfd):
    """A worker of the training loader keeps running on Ctrl-C (the main process finishes the step), and
    when the main process stops while fetching a batch (another worker was killed), the worker whose
    connection it dropped prints no traceback above the main process's one-line error; an error of the
    worker's own still reaches stderr."""
    (ignored,) = list(step_loader(WorkerProbe(), 0, 1, 1, 0, 1, num_workers=1, seed=0, pin_memory=False))
    err = capfd.readouterr().err
    assert ignored.all().item()
    assert "resource_sharer" not in err and "a worker's own error" in err, err


DEATH_IN_A_FINALIZER = """
import sys
from dsrnet.cli import run_cli

DEATH = "DataLoader worker (pid 7) is killed by signal: Killed. "

class Bar:  # as tqdm's bar, collected while PyTorch's SIGCHLD handler raises
    def __init__(self, error):
        self.error = error
    def __del__(self):
        raise self.error

def main():
    Bar(RuntimeError(DEATH))
    Bar(ValueError("a finalizer's own error"))
    raise RuntimeError(DEATH)  # the loader's next fetch

run_cli(main)
"""


def test_a_worker_death_raised_in_a_finalizer_adds_no_traceback():
    """PyTorch raises a worker's death from its SIGCHLD handler, possibly inside a ``__del__``, where Python
    prints it as "Exception ignored in" with a traceback; the run must still end in the one line (the loader
    raises the death again). A finalizer's other errors are still printed."""
    proc = subprocess.run([sys.executable, "-c", DEATH_IN_A_FINALIZER], cwd=ROOT, text=True, capture_output=True,
                          timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: a data-loading worker died (DataLoader worker (pid 7)")
    assert proc.stderr.count("Exception ignored") == 1 and "a finalizer's own error" in proc.stderr, proc.stderr
    assert "RuntimeError" not in proc.stderr, proc.stderr
