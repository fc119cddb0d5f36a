"""Validation while training: the scores sample.py would give the checkpoint, computed on the live net."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from dsrnet.data.layouts import TestSet
from dsrnet.evaluation import evaluate_set
from dsrnet.train.config import TrainConfig
from dsrnet.upscale import network_method
from model import Net
from model.precision import fast_memory_format, memory_format_of, tf32


def score_valid_sets(net: Net, valid_sets: list[TestSet], device: torch.device, cfg: TrainConfig,
                     step: int) -> dict[str, float]:
    """PSNR/SSIM on --valid_data_dir with sample.py's protocol and its deterministic gate.

    In IEEE float32 and the memory layout sample.py uses, so that the logged scores are what sample.py
    gives the checkpoint; training itself keeps PyTorch's TF32 setting, restored afterwards.
    """
    scores = {}
    net.eval()
    try:  # the training gate's noise stream and the training log's routing count are kept across validation
        with net.router.evaluating("learned" if cfg.gate == "learned" else "selected"), tf32(False):
            layout = fast_memory_format(device)  # on a GPU, float32 runs NCHW: a copy, not the training net
            scored = net if layout == memory_format_of(net) else copy.deepcopy(net).to(memory_format=layout)
            for ts in valid_sets:
                upscale = network_method(scored, ts.scale, device)
                save = (Path(cfg.sample_dir) / cfg.ckpt_name / str(step) / ts.name / f"x{ts.scale}"
                        if cfg.sample_dir else None)
                result = evaluate_set(upscale, ts, "DSRNet", shave=cfg.shave, save_dir=save)
                scores[f"{ts.name}_x{ts.scale}_psnr"] = result.psnr
                scores[f"{ts.name}_x{ts.scale}_ssim"] = result.ssim
    finally:
        net.train()
    return scores
