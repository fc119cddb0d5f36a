"""The one home of the precision and layout choices (TF32, bf16, autocast, channels_last per device) that
evaluation, training, the mean shift and the provenance record all follow."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run natively here (an Ampere+ GPU, or a CPU with AVX512-BF16/AMX).

    Elsewhere autocast would emulate bf16 and run slower than float32, so callers refuse it.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private: may vanish in a later torch
    return bool(probe()) if probe is not None else cpu_flags_have_bf16()


def cpu_flags_have_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """The CPU's own word on native bf16 (Linux), used when torch's oneDNN probe is unavailable."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def tf32_supported(device: torch.device) -> bool:
    """TF32 exists on Ampere and newer NVIDIA GPUs only; elsewhere ``--tf32`` would change nothing."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


# Training runs NHWC on every device: oneDNN and cuDNN run it natively, forward and backward.
TRAINING_MEMORY_FORMAT = torch.channels_last
# Training's --amp values; evaluation's --bf16 is "bf16".
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(bf16: bool, tf32: bool) -> str:
    """The precision a run asks for, as :func:`fast_memory_format` names it (bf16 wins over TF32)."""
    return "bf16" if bf16 else "tf32" if tf32 else "fp32"


def autocast(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` (bf16 or fp16) on ``device_type``; ``None`` runs float32."""
    return torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``; the mean shift then stays float32 (bf16 would round the image)."""
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def in_float32(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` in float32 with autocast off: the few steps bf16 would change, not just round (the mean shift,
    which would put the image itself on steps of up to 1/256, and the gate, whose near-tied votes could flip)."""
    with torch.autocast(x.device.type, enabled=False):
        return fn(x.float())


def tf32_enabled() -> bool:
    """Whether cuDNN may run float32 convolutions in TF32 now (recorded with every result)."""
    return torch.backends.cudnn.allow_tf32


def set_tf32(enabled: bool) -> None:
    """Whether cuDNN may run float32 convolutions in TF32 (Ampere and newer GPUs; no effect on CPUs).

    PyTorch allows it by default: inputs are rounded to a 10-bit mantissa (about 5e-4 relative), beyond the
    benchmarks' 1e-4 agreement between paths. Evaluation and the benchmarks' float32 rows turn it off, so that
    "float32" means IEEE float32 and GPU scores match the CPU's; ``sample.py --tf32`` turns it back on for
    speed, and training keeps PyTorch's default.
    """
    torch.backends.cudnn.allow_tf32 = enabled


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """:func:`set_tf32` for one block; the setting before it comes back afterwards."""
    before = torch.backends.cudnn.allow_tf32
    set_tf32(enabled)
    try:
        yield
    finally:
        set_tf32(before)


def fast_memory_format(device: str | torch.device, precision: str = "fp32") -> torch.memory_format:
    """The layout (weights and activations) in which ``precision`` ("fp32", "tf32", "bf16") runs fastest here.

    Chosen from ``tools/benchmarks/memory_format.py`` (figures in docs/speed.md): channels_last (NHWC) on
    CPUs, where oneDNN runs it natively, and for TF32/bf16 on CUDA; NCHW for IEEE float32 on CUDA, where
    cuDNN's NHWC kernels were slower and, at x3, its heuristics could pick a far slower FFT algorithm.
    """
    if torch.device(device).type == "cuda" and precision == "fp32":
        return torch.contiguous_format
    return torch.channels_last


def memory_format_of(net: torch.nn.Module) -> torch.memory_format:
    """The layout of ``net``'s 3x3 convolution weights: inputs should match it, since a channels_last input
    makes cuDNN run an NCHW net in NHWC too."""
    for w in net.parameters():
        if w.dim() == 4 and w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1:
            return torch.contiguous_format if w.is_contiguous() else torch.channels_last
    return torch.contiguous_format
