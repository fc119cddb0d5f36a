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

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.ops import ConvReLUChain, MeanShift, Upsampler, conv
from model.precision import in_float32
from model.routing import GateRouter

FEATURES = 64
SCALES = (2, 3, 4)


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
    """conv5-conv6, then an upper path (conv7, conv8 x3) plus one gated branch, summed.

    The gate computes logits; its router (:class:`model.routing.GateRouter`) decides which branch runs.
    """

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
        self.router = GateRouter(gate_mode, gate_seed)

    def choose_branch(self, x6: torch.Tensor) -> str:
        """One branch for the whole batch (every mode but 'learned'): the router decides, from the gate's
        logits where its mode reads them."""
        logits = None
        if self.router.reads_gate:
            with torch.no_grad():  # the authors' gate is detached: it never receives a gradient
                logits = self.gate(x6)
        return self.router.batch_choice(logits)

    def gate_logits(self, x6: torch.Tensor) -> torch.Tensor:
        """The gate's float32 logits, outside autocast: a bf16 gate could flip near-tied decisions."""
        return in_float32(self.gate, x6)

    def _branch(self, choice: str) -> nn.Module:
        return self.fixed_branch if choice == "fixed" else self.selected_branch

    def _learned(self, x6: torch.Tensor) -> torch.Tensor:
        """The branches' output with per-sample routing: both branches mixed by the one-hot in training (so
        the gate gets a gradient), and in eval each branch run only on the samples that chose it."""
        router = self.router
        if router.forced is not None:
            router.count(router.forced, x6.shape[0])
            return self._branch(router.forced)(x6)
        route = router.learned_route(self.gate_logits(x6), self.training)
        picks = route.detach().argmax(dim=1)
        if self.training:
            router.count_routes(int(picks.sum()), picks.numel())
            w = route.to(x6.dtype).view(-1, 2, 1, 1)
            return w[:, 0:1] * self.selected_branch(x6) + w[:, 1:2] * self.fixed_branch(x6)
        if torch.onnx.is_in_onnx_export():  # a static graph: both branches, each sample keeps its own
            return torch.where(picks.view(-1, 1, 1, 1) == 1, self.fixed_branch(x6), self.selected_branch(x6))
        on_host = picks.tolist()  # the one device-to-host copy of an evaluation forward
        n_fixed = sum(on_host)
        router.count_routes(n_fixed, len(on_host))
        if n_fixed in (0, len(on_host)):
            return self._branch("fixed" if n_fixed else "selected")(x6)
        out = torch.empty_like(x6)
        for k, branch in enumerate((self.selected_branch, self.fixed_branch)):
            idx = (picks == k).nonzero().flatten()
            if idx.numel():
                out[idx] = branch(x6[idx])
        return out

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
        if self.router.mode == "learned":
            return x10 + self._learned(x6)
        choice = self.choose_branch(x6)
        self.router.count(choice, x6.shape[0])
        return x10 + self._branch(choice)(x6)


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
    def router(self) -> GateRouter:
        """How the gate decides at run time (mode, noise, counts): the one way in from outside ``model/``."""
        return self.wide_enhancement.router

    @property
    def gate_mode(self) -> str:
        return self.router.mode

    def set_gate(self, mode: str, seed: int | None = None) -> None:
        """Choose the gate mode (see :data:`model.routing.GATE_MODES`); ``seed`` restarts its Gumbel noise."""
        self.router.set_mode(mode, seed)

    def gate_parameter_names(self) -> set[str]:
        """The gate's parameters as ``named_parameters`` names them (the learned gate trains them apart)."""
        return {f"wide_enhancement.gate.{n}" for n, _ in self.wide_enhancement.gate.named_parameters()}

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
