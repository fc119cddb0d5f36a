"""Multi-node training is plain torchrun: two "nodes" of one process each, on this host, end bit-identical
to one node of two processes (gloo on the CPU, every address 127.0.0.1).

What it guards: a rank taken from LOCAL_RANK instead of RANK (both nodes' processes are local rank 0, so
both would read rank 0's shard of the batch and both would write checkpoints).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_pack
from dsrnet.errors import InputError
from dsrnet.train.distributed import init_distributed

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
TRAIN = ["--patch_size", "8", "--batch_size", "4", "--num_workers", "0", "--log_interval", "2",
         "--max_steps", str(STEPS), "--print_interval", str(STEPS), "--num_gpu", "2"]
DEADLINE_S = 180  # a hang (a node that never joins) fails here instead of waiting for torchrun's 15 minutes

LINUX_LOOPBACK = sys.platform.startswith("linux") and "lo" in dict(socket.if_nameindex()).values()
pytestmark = pytest.mark.skipif(not LINUX_LOOPBACK, reason="needs Linux's loopback interface 'lo' and /proc")


@pytest.fixture
def tiny_h5(tmp_path: Path) -> Path:
    """Four 32x32 noise images in the div2h5 layout (x2)."""
    rng = np.random.default_rng(0)
    return write_pack(tmp_path / "tiny.h5", (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)))


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (the sockets stay open until all are picked)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """A launcher still running, and every process it started."""
    if proc.poll() is None:
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_together(commands: dict[str, list[str]], env: dict[str, str], logs: Path) -> None:
    """Start every launcher at once and wait for all; the first failure, or the deadline, kills every
    launcher with its workers and fails the test with the logs' tails."""
    end = time.monotonic() + DEADLINE_S
    with contextlib.ExitStack() as stack:
        procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.STDOUT,
                                        stdout=stack.enter_context((logs / f"{name}.log").open("w")))
                 for name, cmd in commands.items()}
        for proc in procs.values():
            stack.callback(kill_tree, proc)
        while time.monotonic() < end and not any(p.returncode for p in procs.values()) \
                and any(p.poll() is None for p in procs.values()):
            time.sleep(0.2)
    failed = {name: p.returncode for name, p in procs.items() if p.returncode != 0}
    assert not failed, "\n".join(f"{name} exited {rc} (-9: killed at a failure or the {DEADLINE_S} s deadline):\n"
                                 + (logs / f"{name}.log").read_text()[-2000:] for name, rc in failed.items())


def test_two_nodes_of_one_process_equal_one_node_of_two(tiny_h5, tmp_path):
    one_port, two_port = free_ports(2)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--master_addr", "127.0.0.1"]
    one_node = [*launcher, "--master_port", str(one_port), "--nnodes", "1", "--nproc_per_node", "2"]
    two_nodes = [*launcher, "--master_port", str(two_port), "--nnodes", "2", "--nproc_per_node", "1"]
    train = ["x2/train.py", "--train_data_path", str(tiny_h5), *TRAIN]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",  # CPU ranks, gloo
           "GLOO_SOCKET_IFNAME": "lo"}  # gloo's connections on the loopback too, not the host name's address
    run_together({"one_node": [*one_node, *train, "--ckpt_dir", str(tmp_path / "one")],
                  **{f"node{r}": [*two_nodes, "--node_rank", str(r), *train, "--ckpt_dir", str(tmp_path / "two")]
                     for r in (0, 1)}}, env, tmp_path)

    one, two = (torch.load(tmp_path / d / f"dsrnet_x2_{STEPS}.pth", weights_only=True) for d in ("one", "two"))
    for ckpt in (one, two):
        assert ckpt["step"] == STEPS and ckpt["train_state"]["world_size"] == 2
    assert one["model"].keys() == two["model"].keys()
    for key, value in one["model"].items():
        assert torch.equal(value, two["model"][key]), key
    optim_one, optim_two = one["train_state"]["optimizer"], two["train_state"]["optimizer"]
    assert optim_one["param_groups"] == optim_two["param_groups"]
    assert optim_one["state"].keys() == optim_two["state"].keys() and optim_one["state"]  # Adam has stepped
    for index, state in optim_one["state"].items():
        for name, value in state.items():
            assert torch.equal(value, optim_two["state"][index][name]), (index, name)
    assert torch.equal(one["train_state"]["gate_generator"], two["train_state"]["gate_generator"])


def test_num_gpu_counts_the_processes_of_every_node(monkeypatch):
    """Two nodes of four: --num_gpu 4 (one node's GPUs) is refused before any process group starts."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(InputError, match=r"--num_gpu 4 but torchrun started 8 processes over all nodes "
                                         r"\(--num_gpu counts them all, not one node's\)"):
        init_distributed(4)
