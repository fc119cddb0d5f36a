"""The training loss's parts: --loss_fn's criteria and the learned gate's compute penalty."""
from __future__ import annotations

import torch
import torch.nn as nn

from model import Net

LOSSES = {"MSE": nn.MSELoss, "L1": nn.L1Loss, "SmoothL1": nn.SmoothL1Loss}


def compute_penalty(net: Net, weight: float) -> torch.Tensor:
    """``weight`` times the share of the last training batch the learned gate sent to the costlier 'fixed'
    branch, with the straight-through gradient of that choice."""
    return weight * net.router.penalty()
