"""DSRNet (Tian et al., "Image super-resolution via dynamic network", CAAI TIT 2023), as the authors' code computes it.

Figure 1 of the paper, top to bottom:

    LR -> sub_mean -> residual enhancement (conv1-4, x2 + x4)
       -> wide enhancement (conv5-6, an upper conv7/conv8 path, and a gate that picks one of two
          parallel branches; their sum)
       -> feature refinement (conv11-15, + x4 + x1, conv16)
       -> construction (sub-pixel upsampler, conv17, add_mean) -> SR

Every body conv is 64-channel, bias-free and followed by ReLU; only the upsampler convs have a bias.
The authors' flat checkpoint keys (conv1.0.weight ... upsample.up.body.0.weight) are mapped onto these
blocks in exactly one place, :func:`checkpoint_filter_fn`.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.ops import ConvReLUChain, MeanShift, Upsampler, conv

FEATURES = 64
SCALES = (2, 3, 4)

# How the wide enhancement block chooses its branch.
#   selected: always the 3x3/1x1 "selected" branch. Deterministic, and what the released weights were
#             trained with: the authors' batch-64 rule almost never routes a whole batch to "fixed".
#   fixed:    always the all-3x3 "fixed" branch (barely trained; for study only).
#   sample:   the authors' behaviour: hard Gumbel-softmax per sample, "fixed" only when every sample
#             of the batch chose it. Seeded through the net's own generator, hence reproducible.
#   argmax:   the gate's noise-free decision, batch-wide like "sample".
#   learned:  not the authors': each sample routes itself. In training a hard Gumbel-softmax with a
#             straight-through gradient (the gate learns); in eval mode the noise-free argmax per image,
#             running only the branch each image chose.
GATE_MODES = ("selected", "fixed", "sample", "argmax", "learned")


def _relu_conv(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.relu(layer(x), inplace=True)  # the conv output is fresh: no copy needed


class Gate(nn.Module):
    """avgpool -> FC 64->16 -> ReLU -> FC 16->2. Logit 1 votes for the fixed branch.

    fc2's bias starts at [0.1, 2.0]; the authors' gate is detached from the loss, so it never
    learns and the released x2 weights still hold exactly that bias (only the 'learned' mode trains it).
    """

    def __init__(self, channels: int = FEATURES, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, 2)
        with torch.no_grad():
            self.fc2.bias.copy_(torch.tensor([0.1, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x.mean(dim=(2, 3)))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from the already pooled N x C features (a tiled image pools tile by tile)."""
        return self.fc2(F.relu(self.fc1(pooled)))


class ResidualEnhancement(nn.Module):
    """conv1-conv4 with the short residual link x2 + x4. Returns (x1, x4, x2 + x4) for the later skips."""

    def __init__(self, features: int = FEATURES):
        super().__init__()
        self.conv1 = conv(3, features)
        self.conv2 = conv(features, features)
        self.conv3 = conv(features, features)
        self.conv4 = conv(features, features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x1 = _relu_conv(self.conv1, x)
        x2 = _relu_conv(self.conv2, x1)
        x4 = _relu_conv(self.conv4, _relu_conv(self.conv3, x2))
        return x1, x4, x2 + x4


class WideEnhancement(nn.Module):
    """conv5-conv6, then an upper path (conv7, conv8 x3) plus one gated branch, summed."""

    def __init__(self, features: int = FEATURES, gate_mode: str = "selected", gate_seed: int = 0):
        super().__init__()
        self.conv5 = conv(features, features)
        self.conv6 = conv(features, features)
        self.conv7 = conv(features, features)
        self.conv8 = conv(features, features)
        # Faithful quirk: the authors' forward applies conv8 three times; conv9/conv10 are trained
        # nowhere and kept only so their checkpoint loads with every tensor accounted for.
        self.conv9 = conv(features, features)
        self.conv10 = conv(features, features)
        self.gate = Gate(features)
        self.fixed_branch = ConvReLUChain(features, (3, 3, 3, 3))
        self.selected_branch = ConvReLUChain(features, (3, 1, 3, 1))
        self.gate_generator = torch.Generator()
        # Under DDP each rank sees a shard of the batch; the solver installs an all-reduce here so
        # that the batch-wide decision covers the global batch and every rank runs the same branch.
        self.combine_votes: Callable[[bool], bool] | None = None
        # 'learned' only: the Gumbel-softmax temperature (the solver anneals it; the forward pass does not
        # depend on it, only the gate's gradient does), this rank's share of the global batch, so that sample
        # k draws the same noise whatever the number of DDP ranks, and a decision imposed on every sample
        # (model.inference routes a tiled image as a whole).
        self.gate_tau = 1.0
        self.noise_shard = (0, 1)
        self.forced: str | None = None
        self.route: torch.Tensor | None = None  # the last learned training forward's straight-through one-hot
        self.set_gate(gate_mode, gate_seed)

    def set_gate(self, mode: str, seed: int | None = None) -> None:
        """Choose the gate mode; ``seed`` restarts the Gumbel noise of the 'sample' mode."""
        if mode not in GATE_MODES:
            raise ValueError(f"unknown gate mode {mode!r}; choose one of {', '.join(GATE_MODES)}")
        self.gate_mode = mode
        if seed is not None:
            self.gate_generator.manual_seed(seed)
        self.branch_counts: Counter[str] = Counter()  # forwards that ran each branch (a batch counts once)
        self.routed: Counter[str] = Counter()  # samples routed to each branch

    def choose_branch(self, x6: torch.Tensor) -> str:
        """One decision for the whole batch, as the authors' `all samples chose index 1` rule."""
        if self.gate_mode in ("selected", "fixed"):
            return self.gate_mode
        with torch.no_grad():  # the authors' gate is detached: it never receives a gradient
            logits = self.gate(x6).float().cpu()
        if self.gate_mode == "sample":
            u = torch.empty(logits.shape).exponential_(generator=self.gate_generator)
            logits = logits - u.log()  # + Gumbel(0, 1); a hard Gumbel-softmax is its argmax
        fixed = bool((logits.argmax(dim=1) == 1).all())
        if self.combine_votes is not None:
            fixed = self.combine_votes(fixed)
        return "fixed" if fixed else "selected"

    def gate_logits(self, x6: torch.Tensor) -> torch.Tensor:
        """The gate's float32 logits, outside autocast: a bf16 gate could flip near-tied decisions."""
        with torch.autocast(x6.device.type, enabled=False):
            return self.gate(x6.float())

    def learned_route(self, x6: torch.Tensor) -> torch.Tensor:
        """Per-sample one-hot (N x 2, float32) of the learned gate.

        Training: hard Gumbel-softmax at temperature ``gate_tau`` whose gradient is the soft sample's
        (straight-through); ``hard + (soft - soft.detach())`` is exactly 0 or 1 in the forward pass, so
        each sample's output is exactly its branch's. Eval: the noise-free argmax, no gradient.
        """
        logits = self.gate_logits(x6)
        if not self.training:
            return F.one_hot(logits.argmax(dim=1), 2).float()
        rank, world = self.noise_shard
        n = logits.shape[0]
        u = torch.empty(n * world, 2).exponential_(generator=self.gate_generator)[rank * n:(rank + 1) * n]
        soft = F.softmax((logits - u.log().to(logits.device)) / self.gate_tau, dim=1)
        hard = F.one_hot(soft.argmax(dim=1), 2).to(soft.dtype)
        return hard + (soft - soft.detach())

    @contextmanager
    def force(self, branch: str) -> Iterator[None]:
        """Route every sample of the learned gate to ``branch`` inside the block."""
        self.forced = branch
        try:
            yield
        finally:
            self.forced = None

    def _learned(self, x6: torch.Tensor) -> torch.Tensor:
        """The branches' output with per-sample routing: both branches mixed by the one-hot in training (so
        the gate gets a gradient), and in eval each branch run only on the samples that chose it."""
        if self.forced is not None:
            self._count(self.forced, x6.shape[0])
            return (self.fixed_branch if self.forced == "fixed" else self.selected_branch)(x6)
        route = self.learned_route(x6)
        picks = route.detach().argmax(dim=1)
        if self.training:
            self.route = route
            self._count_routes(int(picks.sum()), picks.numel())
            w = route.to(x6.dtype).view(-1, 2, 1, 1)
            return w[:, 0:1] * self.selected_branch(x6) + w[:, 1:2] * self.fixed_branch(x6)
        if torch.onnx.is_in_onnx_export():  # a static graph: both branches, each sample keeps its own
            return torch.where(picks.view(-1, 1, 1, 1) == 1, self.fixed_branch(x6), self.selected_branch(x6))
        on_host = picks.tolist()  # the one device-to-host copy of an evaluation forward
        n_fixed = sum(on_host)
        self._count_routes(n_fixed, len(on_host))
        if n_fixed in (0, len(on_host)):
            return (self.fixed_branch if n_fixed else self.selected_branch)(x6)
        out = torch.empty_like(x6)
        for k, branch in enumerate((self.selected_branch, self.fixed_branch)):
            idx = (picks == k).nonzero().flatten()
            if idx.numel():
                out[idx] = branch(x6[idx])
        return out

    def _count(self, choice: str, n: int) -> None:
        if not torch.compiler.is_compiling():  # a Python-side count would make dynamo retrace every call
            self.branch_counts[choice] += 1
            self.routed[choice] += n

    def _count_routes(self, n_fixed: int, n: int) -> None:
        for choice, k in (("selected", n - n_fixed), ("fixed", n_fixed)):
            if k:
                self._count(choice, k)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x6 = conv6(conv5(x)): what the gate pools and both branches read."""
        return _relu_conv(self.conv6, _relu_conv(self.conv5, x))

    def upper_path(self, x6: torch.Tensor) -> torch.Tensor:
        """conv7, then conv8 three times (the authors' forward), summed with the gated branch's output."""
        x10 = _relu_conv(self.conv7, x6)
        for _ in range(3):
            x10 = _relu_conv(self.conv8, x10)
        return x10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x6 = self.features(x)
        x10 = self.upper_path(x6)
        if self.gate_mode == "learned":
            return x10 + self._learned(x6)
        choice = self.choose_branch(x6)
        self._count(choice, x6.shape[0])
        branch = self.fixed_branch if choice == "fixed" else self.selected_branch
        return x10 + branch(x6)


class FeatureRefinement(nn.Module):
    """conv11-conv15, the long skip (+ x4 + x1), then conv16."""

    def __init__(self, features: int = FEATURES):
        super().__init__()
        for i in range(11, 17):
            setattr(self, f"conv{i}", conv(features, features))

    def forward(self, x: torch.Tensor, x1: torch.Tensor, x4: torch.Tensor) -> torch.Tensor:
        for i in range(11, 16):
            x = _relu_conv(getattr(self, f"conv{i}"), x)
        return _relu_conv(self.conv16, x + x4 + x1)


class Construction(nn.Module):
    """Sub-pixel upsampler (one per scale when multi-scale), conv17 to RGB (no bias, no ReLU), add the mean."""

    def __init__(self, scale: int, multi_scale: bool, group: int, features: int = FEATURES):
        super().__init__()
        if multi_scale:
            self.upsample = nn.ModuleDict({f"x{s}": Upsampler(features, s, group) for s in SCALES})
        else:
            self.upsample = Upsampler(features, scale, group)
        self.conv17 = conv(features, 3)
        self.add_mean = MeanShift(+1)

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        up = self.upsample[f"x{scale}"] if isinstance(self.upsample, nn.ModuleDict) else self.upsample
        return self.add_mean(self.conv17(up(x)))


class Net(nn.Module):
    """DSRNet. ``Net(scale=4)``; ``multi_scale=True`` holds x2/x3/x4 upsamplers and needs ``forward(x, scale)``.

    Input and output are RGB in [0, 1], NCHW.
    """

    def __init__(self, scale: int = 2, multi_scale: bool = False, group: int = 1,
                 gate_mode: str = "selected", gate_seed: int = 0):
        super().__init__()
        if not multi_scale and scale not in (2, 3, 4, 8):
            raise ValueError(f"scale must be 2, 3, 4 or 8 (or multi_scale=True), got {scale}")
        self.scale = 0 if multi_scale else scale
        self.multi_scale = multi_scale
        self.sub_mean = MeanShift(-1)
        self.residual_enhancement = ResidualEnhancement()
        self.wide_enhancement = WideEnhancement(gate_mode=gate_mode, gate_seed=gate_seed)
        self.feature_refinement = FeatureRefinement()
        self.construction = Construction(scale, multi_scale, group)

    @property
    def gate_mode(self) -> str:
        return self.wide_enhancement.gate_mode

    def set_gate(self, mode: str, seed: int | None = None) -> None:
        self.wide_enhancement.set_gate(mode, seed)

    def gate_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the gate pools (x6) for an RGB input: the first half of the forward pass."""
        return self.wide_enhancement.features(self.residual_enhancement(self.sub_mean(x))[2])

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        if self.multi_scale:
            if scale not in SCALES:
                raise ValueError(f"a multi-scale DSRNet needs forward(x, scale) with scale in {SCALES}")
        elif scale is not None and scale != self.scale:
            raise ValueError(f"this DSRNet upsamples x{self.scale}, not x{scale}")
        x1, x4, x = self.residual_enhancement(self.sub_mean(x))
        x = self.wide_enhancement(x)
        x = self.feature_refinement(x, x1, x4)
        return self.construction(x, scale or self.scale)


_AUTHORS_PREFIXES = {
    "sub_mean.shifter": "sub_mean.shifter",
    "add_mean.shifter": "construction.add_mean.shifter",
    "gate.fc1": "wide_enhancement.gate.fc1",
    "gate.fc2": "wide_enhancement.gate.fc2",
    "conv17.0": "construction.conv17",
    **{f"conv{i}.0": f"residual_enhancement.conv{i}" for i in range(1, 5)},
    **{f"conv{i}.0": f"wide_enhancement.conv{i}" for i in range(5, 11)},
    **{f"conv{i}_1.0": f"wide_enhancement.fixed_branch.convs.{i - 7}" for i in range(7, 11)},
    **{f"conv{i}_2.0": f"wide_enhancement.selected_branch.convs.{i - 7}" for i in range(7, 11)},
    **{f"conv{i}.0": f"feature_refinement.conv{i}" for i in range(11, 17)},
}
_AUTHORS_UPSAMPLE = re.compile(r"^upsample\.up(\d?)\.body\.(\d+)\.(weight|bias)$")


def is_authors_state_dict(state_dict: dict) -> bool:
    return "conv1.0.weight" in state_dict


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' flat keys (conv7_2.0.weight, upsample.up.body.0.bias, ...) onto our blocks.

    Unknown keys are passed through unchanged so that ``load_state_dict(strict=True)`` names them.
    """
    out = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        m = _AUTHORS_UPSAMPLE.match(key)
        if m:
            scale, index, kind = m.groups()
            where = f"upsample.x{scale}" if scale else "upsample"
            out[f"construction.{where}.body.{index}.{kind}"] = tensor
            continue
        prefix, _, kind = key.rpartition(".")
        out[f"{_AUTHORS_PREFIXES[prefix]}.{kind}" if prefix in _AUTHORS_PREFIXES else key] = tensor
    return out


def infer_scale(state_dict: dict[str, torch.Tensor]) -> int:
    """The upscaling factor a (our-format) state_dict was trained for; 0 for multi-scale."""
    if any(k.startswith("construction.upsample.x") for k in state_dict):
        return 0
    stage_channels = [v.shape[0] for k, v in state_dict.items()
                      if re.fullmatch(r"construction\.upsample\.body\.\d+\.weight", k)]
    if not stage_channels:
        raise KeyError("no upsampler weights")
    r = math.isqrt(stage_channels[0] // FEATURES)  # a stage outputs r*r*64 channels for PixelShuffle(r)
    return r ** len(stage_channels)
