"""Averaged weights (EMA): an exponential moving average of the network's weights over the training steps.

BasicSR's ``ema_decay`` (saved as ``params_ema``) and KAIR's ``E_decay``: after every optimizer step
``average = decay * average + (1 - decay) * weights``. With decay 0.999 the average spans the last few
thousand steps, smoothing out the noise of the last ones; it costs one float32 copy of the weights and one
fused lerp per step, and changes nothing in how the raw weights train.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


class WeightAverage:
    """A float32 copy of a network's state_dict, moved toward the network's weights by :meth:`update`.

    Trainable parameters are averaged; everything else (the frozen mean shift) is copied, so that the
    average holds exactly the network's constants. Under DDP every rank holds the same weights after the
    all-reduced step, so every rank updating its own average keeps the averages identical too.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        trainable = {name for name, p in net.named_parameters() if p.requires_grad}
        self.state = {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
                      for k, v in net.state_dict().items()}
        self.averaged = [k for k in self.state if k in trainable]
        self.copied = [k for k in self.state if k not in trainable]
        self.targets = [self.state[k] for k in self.averaged]

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """One step of the average toward ``net``'s current weights (call after every optimizer step)."""
        source = net.state_dict()
        torch._foreach_lerp_(self.targets, [source[k].float() for k in self.averaged], 1.0 - self.decay)
        for k in self.copied:
            self.state[k].copy_(source[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average, keyed as the network's state_dict (what checkpoints save as ``model_ema``)."""
        return dict(self.state)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from ``state`` (a saved average, or a network's weights to start one from), bit-exactly."""
        if set(state) != set(self.state):
            differ = sorted(set(state) ^ set(self.state))
            raise KeyError(f"the averaged weights hold other tensors than the network ({', '.join(differ[:3])})")
        for k, v in self.state.items():
            v.copy_(state[k])

    @contextmanager
    def applied(self, net: nn.Module) -> Iterator[None]:
        """``net`` holds the average inside the block (to validate or save it) and its own weights again after,
        bit for bit."""
        raw = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.state)
        try:
            yield
        finally:
            net.load_state_dict(raw)
