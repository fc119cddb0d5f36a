"""The authors' forward written out plainly on their raw checkpoint keys: eager, NCHW, one op at a time.

It is independent of our module tree, so it serves as the yardstick twice: tests check that
:class:`model.dsrnet.Net` computes the same thing, and the speed benchmark times it as the
"authors' implementation" baseline (including its host round trip for the gate decision).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _conv(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
    w = sd[f"{name}.0.weight"]
    y = F.conv2d(x, w, padding=w.shape[-1] // 2)
    return F.relu(y, inplace=True) if relu else y  # as nn.ReLU(inplace=True) in the original


def authors_gate_votes_fixed(sd: dict[str, torch.Tensor], x6: torch.Tensor) -> bool:
    """The gate's noise-free batch vote, read back to the host as the authors' `.cpu().numpy()` does."""
    h = F.relu(F.linear(x6.mean(dim=(2, 3)), sd["gate.fc1.weight"], sd["gate.fc1.bias"]))
    logits = F.linear(h, sd["gate.fc2.weight"], sd["gate.fc2.bias"])
    return bool((logits.argmax(dim=1) == 1).cpu().numpy().all())


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, use_fixed: bool,
                      decide_on_host: bool = False) -> torch.Tensor:
    """x2 DSRNet forward on the authors' keys; ``use_fixed`` picks the branch (the gate is evaluated
    and synchronised when ``decide_on_host``, as in the original, but does not override the choice)."""
    x0 = F.conv2d(x, sd["sub_mean.shifter.weight"], sd["sub_mean.shifter.bias"])
    x1 = _conv(sd, "conv1", x0)
    x2 = _conv(sd, "conv2", x1)
    x4 = _conv(sd, "conv4", _conv(sd, "conv3", x2))
    x6 = _conv(sd, "conv6", _conv(sd, "conv5", x2 + x4))
    x10 = _conv(sd, "conv8", _conv(sd, "conv8", _conv(sd, "conv8", _conv(sd, "conv7", x6))))
    if decide_on_host:
        authors_gate_votes_fixed(sd, x6)
    b = "1" if use_fixed else "2"
    t = x10 + _conv(sd, f"conv10_{b}", _conv(sd, f"conv9_{b}", _conv(sd, f"conv8_{b}", _conv(sd, f"conv7_{b}", x6))))
    for i in range(11, 16):
        t = _conv(sd, f"conv{i}", t)
    t = _conv(sd, "conv16", t + x4 + x1)
    t = F.pixel_shuffle(F.conv2d(t, sd["upsample.up.body.0.weight"], sd["upsample.up.body.0.bias"], padding=1), 2)
    t = _conv(sd, "conv17", t, relu=False)
    return F.conv2d(t, sd["add_mean.shifter.weight"], sd["add_mean.shifter.bias"])
