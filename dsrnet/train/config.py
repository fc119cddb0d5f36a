"""The training settings: one frozen record whose fields are the training flags' dests, in the flags' order,
and the keys of every checkpoint's ``config``.

A setting is described in two places only: its field here and its flag in ``solver.build_parser``. The
field's tag says what a resume does with it: a ``network`` setting shapes the tensors (a resume refuses a
change), a ``recipe`` one changes the math (a change is noted: the run no longer matches an uninterrupted
one), a ``run`` one neither (a change is noted plainly). Settings not ``inherited`` are never taken from
the checkpoint: where the run lives, the network the entry point names, how a new run starts.
"""
from __future__ import annotations

from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, Callable, Collection, Mapping

from dsrnet import ROOT


def _setting(default: Any, kind: str = "run", inherited: bool = True) -> Any:
    return field(default=default, metadata={"kind": kind, "inherited": inherited})


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the flags' (ckpt_dir and ckpt_name: None until the entry point derives them from the scale)."""

    model: str = _setting("dsrnet", "network")
    scale: int = _setting(2, "network", inherited=False)
    group: int = _setting(1, "network")
    train_data_path: str = _setting(str(ROOT / "dataset" / "DIV2K_train.h5"), "recipe")
    patch_size: int = _setting(64, "recipe")
    batch_size: int = _setting(64, "recipe")
    max_steps: int = _setting(600000)
    lr: float = _setting(1e-4, "recipe")
    decay: int = _setting(400000, "recipe")
    clip: float = _setting(10.0, "recipe")
    loss_fn: str = _setting("MSE", "recipe")
    gate: str = _setting("sample", "recipe")
    gate_tau: float = _setting(1.0, "recipe")
    gate_tau_min: float = _setting(0.5, "recipe")
    gate_lr_mult: float = _setting(1.0, "recipe")
    gate_penalty: float = _setting(0.0, "recipe")
    seed: int = _setting(0, "recipe")
    ckpt_dir: str | None = _setting(None, inherited=False)
    ckpt_name: str | None = _setting(None)
    print_interval: int = _setting(1000)
    keep_last: int = _setting(5)
    log_interval: int = _setting(100)
    verbose: bool = _setting(False)
    valid_data_dir: list[str] | None = _setting(None)
    shave: int | None = _setting(None)
    sample_dir: str | None = _setting(None)
    resume: str | None = _setting(None, inherited=False)
    init_from: str | None = _setting(None, inherited=False)
    init_weights: str = _setting("ema", inherited=False)
    ema: float = _setting(0.0, "recipe")
    num_gpu: int | None = _setting(None)
    amp: str | None = _setting(None, "recipe")
    deterministic: bool = _setting(False, "recipe")
    num_workers: int = _setting(2)
    in_memory: bool = _setting(False)

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, in field order: what a checkpoint records as ``config``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> TrainConfig:
        """A recorded ``config``; keys no field has (settings since removed) are dropped, and settings the
        record predates take their defaults."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    def resumed_from(self, saved: TrainConfig, given: Collection[str]) -> TrainConfig:
        """Defaults < checkpoint < command line: every inherited setting the command line did not give is
        ``saved``'s."""
        return replace(self, **{f.name: getattr(saved, f.name) for f in fields(self)
                                if f.metadata["inherited"] and f.name not in given})


def _names(keep: Callable[[Field], bool]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(TrainConfig) if keep(f))


SETTINGS = _names(lambda f: True)
NETWORK = _names(lambda f: f.metadata["kind"] == "network")
RECIPE = _names(lambda f: f.metadata["kind"] == "recipe")
NOT_INHERITED = _names(lambda f: not f.metadata["inherited"])
