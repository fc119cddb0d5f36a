"""What changes with the step: Adam's learning rates (the authors' halving) and the learned gate's temperature.

Both are functions of the step alone, so a resumed run sets exactly what an uninterrupted one would. The
learned gate trains in an Adam group of its own, whose lr is --gate_lr_mult times the rest's.
"""
from __future__ import annotations

import torch

from dsrnet.train.config import TrainConfig
from model import GateRouter, Net


def get_lr(step: int, lr: float, decay: int) -> float:
    """The authors' step schedule: halve every ``decay`` steps."""
    return lr * 0.5 ** (step // decay)


def get_gate_tau(step: int, start: float, floor: float, decay: int) -> float:
    """The learned gate's temperature: exponential from ``start`` at step 0 to ``floor`` at step ``decay``
    (the lr's first phase), then constant; a function of the step, like the lr, so a resumed run matches."""
    return start * (floor / start) ** min(1.0, step / decay)


def group_names(net: Net, gate: str) -> list[list[str]]:
    """The names of Adam's groups: one; with the learned gate a second for the gate, whose lr is
    --gate_lr_mult times --lr."""
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if gate != "learned":
        return [names]
    gate_names = net.gate_parameter_names()
    return [[n for n in names if n not in gate_names], [n for n in names if n in gate_names]]


def param_groups(net: Net, gate: str) -> list[dict]:
    """Adam's parameter groups, in :func:`group_names`' order."""
    params = dict(net.named_parameters())
    return [{"params": [params[n] for n in group]} for group in group_names(net, gate)]


def set_schedules(optim: torch.optim.Optimizer, router: GateRouter, cfg: TrainConfig, step: int) -> float:
    """Set this step's lr (the learned gate's group: --gate_lr_mult times it) and gate temperature; returns the lr."""
    lr = get_lr(step, cfg.lr, cfg.decay)
    for group, mult in zip(optim.param_groups, (1.0, cfg.gate_lr_mult)):
        group["lr"] = lr * mult
    router.tau = get_gate_tau(step, cfg.gate_tau, cfg.gate_tau_min, cfg.decay)
    return lr
