"""Every global random number generator of a training process: seeding, capture and restore.

The captured states are plain tensors/lists/ints, so a checkpoint holding them loads with
``weights_only=True``; restoring them is what lets a resumed run continue bit-exactly.
"""
from __future__ import annotations

import random

import numpy as np
import torch

# The largest seed seed_everything takes: numpy's legacy np.random.seed stops at 2**32 - 1 (torch takes more).
NUMPY_MAX_SEED = 2**32 - 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def capture_rng_states() -> dict:
    """The state of every global generator (torch CPU and CUDA, numpy, Python)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": [version, list(state), gauss_next],
    }


def restore_rng_states(states: dict) -> None:
    """Undo :func:`capture_rng_states`; CUDA states are restored for the devices present."""
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():
        for device, state in enumerate(states["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))
