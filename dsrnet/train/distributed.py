"""Several training processes (torchrun, one GPU each) that decide together.

torchrun's environment says how many processes there are; every per-step decision (the gate's branch,
stopping on a signal, stopping on a non-finite loss) is shared by one small all-reduce, because a rank
that went its own way would leave the others waiting forever or mix gradients of two networks.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dsrnet.errors import InputError


def init_distributed(num_gpu: int | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). torchrun's environment decides; --num_gpu must agree with it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if num_gpu is not None and num_gpu != world:
        if world == 1:
            raise InputError(f"--num_gpu {num_gpu} trains with one process per GPU: launch "
                             f"`torchrun --nproc_per_node {num_gpu} {Path(sys.argv[0]).as_posix()} ...`")
        raise InputError(f"--num_gpu {num_gpu} but torchrun started {world} processes over all nodes "
                         "(--num_gpu counts them all, not one node's): make them equal or drop --num_gpu")
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


def shutdown_distributed(world: int) -> None:
    if world > 1:
        dist.destroy_process_group()


def print_rank0(message: str, bar: tqdm | None = None) -> None:
    """Print once per run, not once per process (through the progress bar when there is one)."""
    if int(os.environ.get("RANK", "0")) == 0:
        (bar.write if bar is not None else print)(message)


def vote_across_ranks(device: torch.device) -> Callable[[bool], bool]:
    """The gate's vote: 'fixed' only when every rank's batch chose it, the authors' batch-wide rule
    over the global batch. Ranks running different branches would silently mix gradients of two networks.
    """
    def all_fixed(fixed: bool) -> bool:
        vote = torch.tensor([int(fixed)], device=device)
        dist.all_reduce(vote, op=dist.ReduceOp.MIN)
        return bool(vote.item())
    return all_fixed


def mean_loss_and_stop_signal(loss: torch.Tensor, signals: list[int], world: int) -> tuple[float, int]:
    """The loss averaged over ranks, and the signal to stop on if any rank received one (0: go on).

    One small all-reduce per step keeps the ranks deciding together: a rank that stopped (or
    raised on a NaN) alone would leave the others waiting forever.
    """
    if world == 1:
        return loss.item(), (signals[0] if signals else 0)
    flags = [float(signal.SIGINT in signals), float(signal.SIGTERM in signals)]
    shared = torch.cat([loss.detach().float().view(1), torch.tensor(flags, device=loss.device)])
    dist.all_reduce(shared)
    total, sigint, sigterm = shared.tolist()
    return total / world, signal.SIGINT if sigint else signal.SIGTERM if sigterm else 0


def wrap_for_ranks(net: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """The module the training step calls: ``net`` itself, or under torchrun a DDP wrapper whose ranks
    share the gate's vote (the router's ``combine_votes``); with the learned gate,
    which routes each sample alone, each rank instead draws its rows of the global batch's gate noise."""
    if world == 1:
        return net
    if net.gate_mode == "learned":  # each sample routes itself: no vote; noise drawn for the global batch
        net.router.noise_shard = (dist.get_rank(), world)
    else:
        net.router.combine_votes = vote_across_ranks(device)
    # conv9/conv10 never get gradients, nor (outside 'learned') the detached gate and the branch not run.
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=True)
