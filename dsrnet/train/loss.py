"""The training loss, built in one place: --loss_fn on (SR, HR), plus the learned gate's compute penalty."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from dsrnet.train.config import TrainConfig
from model import GateRouter

LOSSES = {"MSE": nn.MSELoss, "L1": nn.L1Loss, "SmoothL1": nn.SmoothL1Loss}
Loss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def build_loss(cfg: TrainConfig, router: GateRouter) -> Loss:
    """(SR, HR) -> (loss to backpropagate, data loss to log): --loss_fn, plus --gate_penalty times the share of
    the batch the learned gate sent to the costlier 'fixed' branch (with the straight-through gradient of that
    choice), added only when the weight is non-zero. The log keeps the data loss alone."""
    data_loss_fn, weight = LOSSES[cfg.loss_fn](), cfg.gate_penalty

    def loss_fn(sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        data_loss = data_loss_fn(sr, hr)
        return (data_loss + weight * router.penalty() if weight else data_loss), data_loss
    return loss_fn
