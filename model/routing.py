"""How the wide enhancement's gate decides at run time, apart from the gate's weights.

The gate (``model.dsrnet.Gate``) only computes logits. Which branch runs is the router's: the mode, the
Gumbel noise stream, the learned gate's temperature, the DDP vote and noise shard, a branch forced on
every sample, the last training route and the counts of what ran. A plain object, not a module, so that
the network's ``state_dict`` keys stay the authors' blocks alone; a training checkpoint saves
:meth:`GateRouter.state`.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

# How the wide enhancement block chooses its branch.
#   selected: always the 3x3/1x1 "selected" branch. Deterministic, and what the released weights were
#             trained with: the authors' batch-64 rule almost never routes a whole batch to "fixed".
#   fixed:    always the all-3x3 "fixed" branch (barely trained; for study only).
#   sample:   the authors' behaviour: hard Gumbel-softmax per sample, "fixed" only when every sample
#             of the batch chose it. Seeded through the router's own generator, hence reproducible.
#   argmax:   the gate's noise-free decision, batch-wide like "sample".
#   learned:  not the authors': each sample routes itself. In training a hard Gumbel-softmax with a
#             straight-through gradient (the gate learns); in eval mode the noise-free argmax per image,
#             running only the branch each image chose.
GATE_MODES = ("selected", "fixed", "sample", "argmax", "learned")


class GateRouter:
    """The gate's run-time decisions: one per batch (the authors' modes) or one per sample ('learned')."""

    def __init__(self, mode: str = "selected", seed: int = 0):
        self.generator = torch.Generator()
        # Under DDP each rank sees a shard of the batch; the solver installs an all-reduce here so
        # that the batch-wide decision covers the global batch and every rank runs the same branch.
        self.combine_votes: Callable[[bool], bool] | None = None
        # 'learned' only: the Gumbel-softmax temperature (the solver anneals it; the forward pass does not
        # depend on it, only the gate's gradient does), this rank's share of the global batch, so that sample
        # k draws the same noise whatever the number of DDP ranks, and a decision imposed on every sample
        # (model.inference routes a tiled image as a whole).
        self.tau = 1.0
        self.noise_shard = (0, 1)
        self.forced: str | None = None
        self.route: torch.Tensor | None = None  # the last learned training forward's straight-through one-hot
        self.set_mode(mode, seed)

    def set_mode(self, mode: str, seed: int | None = None) -> None:
        """Choose the gate mode; ``seed`` restarts the Gumbel noise. The counts restart."""
        if mode not in GATE_MODES:
            raise ValueError(f"unknown gate mode {mode!r}; choose one of {', '.join(GATE_MODES)}")
        self.mode = mode
        if seed is not None:
            self.generator.manual_seed(seed)
        self.branch_counts: Counter[str] = Counter()  # forwards that ran each branch (a batch counts once)
        self.routed: Counter[str] = Counter()  # samples routed to each branch

    @property
    def reads_gate(self) -> bool:
        """Whether the batch-wide decision consults the gate ('selected' and 'fixed' never run it)."""
        return self.mode in ("sample", "argmax")

    def batch_choice(self, logits: torch.Tensor | None) -> str:
        """One branch for the whole batch, as the authors' `all samples chose index 1` rule; ``logits`` are
        the detached gate's (None where :attr:`reads_gate` is false)."""
        if not self.reads_gate:
            return self.mode
        logits = logits.float().cpu()
        if self.mode == "sample":
            u = torch.empty(logits.shape).exponential_(generator=self.generator)
            logits = logits - u.log()  # + Gumbel(0, 1); a hard Gumbel-softmax is its argmax
        fixed = bool((logits.argmax(dim=1) == 1).all())
        if self.combine_votes is not None:
            fixed = self.combine_votes(fixed)
        return "fixed" if fixed else "selected"

    def learned_route(self, logits: torch.Tensor, training: bool) -> torch.Tensor:
        """Per-sample one-hot (N x 2, float32) of the learned gate from its float32 ``logits``.

        Training: hard Gumbel-softmax at temperature :attr:`tau` whose gradient is the soft sample's
        (straight-through); ``hard + (soft - soft.detach())`` is exactly 0 or 1 in the forward pass, so
        each sample's output is exactly its branch's. Eval: the noise-free argmax, no gradient.
        """
        if not training:
            return F.one_hot(logits.argmax(dim=1), 2).float()
        rank, world = self.noise_shard
        n = logits.shape[0]
        u = torch.empty(n * world, 2).exponential_(generator=self.generator)[rank * n:(rank + 1) * n]
        soft = F.softmax((logits - u.log().to(logits.device)) / self.tau, dim=1)
        hard = F.one_hot(soft.argmax(dim=1), 2).to(soft.dtype)
        self.route = hard + (soft - soft.detach())
        return self.route

    @contextmanager
    def force(self, branch: str) -> Iterator[None]:
        """Route every sample of the learned gate to ``branch`` inside the block."""
        self.forced = branch
        try:
            yield
        finally:
            self.forced = None

    @contextmanager
    def evaluating(self, mode: str) -> Iterator[None]:
        """Decide in ``mode`` inside the block, then return to this mode with its noise stream (not reseeded)
        and its count of routed samples as they were."""
        before, routed = self.mode, self.routed.copy()
        self.set_mode(mode)
        try:
            yield
        finally:
            self.set_mode(before)
            self.routed.update(routed)

    def penalty(self) -> torch.Tensor:
        """The share of the last training batch the learned gate sent to the costlier 'fixed' branch, with the
        straight-through gradient of that choice."""
        return self.route[:, 1].mean()

    def take_fixed_share(self) -> float:
        """The share of the samples routed to 'fixed' since the previous call, whose count then restarts."""
        share = self.routed["fixed"] / max(1, self.routed["fixed"] + self.routed["selected"])
        self.routed.clear()
        return share

    def count(self, choice: str, n: int) -> None:
        """One forward that ran ``choice`` on ``n`` samples."""
        if not torch.compiler.is_compiling():  # a Python-side count would make dynamo retrace every call
            self.branch_counts[choice] += 1
            self.routed[choice] += n

    def count_routes(self, n_fixed: int, n: int) -> None:
        """One forward of the learned gate that sent ``n_fixed`` of its ``n`` samples to 'fixed'."""
        for choice, k in (("selected", n - n_fixed), ("fixed", n_fixed)):
            if k:
                self.count(choice, k)

    def state(self) -> dict:
        """What a bit-exact resume needs: the noise stream and the open log interval's routing count."""
        return {"gate_generator": self.generator.get_state(), "routed": dict(self.routed)}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state` (a checkpoint from before the routing count has none)."""
        self.generator.set_state(state["gate_generator"])
        self.routed.update(state.get("routed", {}))
