"""Provenance recorded in every checkpoint and results file: versions, command line, git commit."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from dsrnet import ROOT
from model.precision import tf32_enabled


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit: a result made so is not reproducible from it alone."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def git_description(env: dict) -> str:
    """The commit a result came from, flagged when the tree had uncommitted changes."""
    commit = env.get("git_commit") or "unknown"
    return commit + (" (uncommitted changes)" if env.get("git_dirty") else "")


def environment() -> dict:
    import numpy
    import torch

    return {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion would not load with weights_only
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "threads": torch.get_num_threads(),
        # cuDNN's float32 convolutions in TF32 (PyTorch's default on Ampere+; sample.py turns it off)
        "cudnn_tf32": tf32_enabled() if torch.cuda.is_available() else None,
    }
