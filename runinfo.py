"""Provenance recorded in every checkpoint and results file: versions, command line, git commit."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict:
    import numpy
    import torch

    return {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion would not load with weights_only
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "threads": torch.get_num_threads(),
    }
