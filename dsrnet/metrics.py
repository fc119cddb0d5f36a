"""The evaluation protocols, defined once: uint8 quantisation, Y channel, PSNR and MATLAB-style SSIM.

Both `sample.py` and training validation call these, so the protocol cannot drift between them
(the authors' code has two diverging copies). Each convention is a parameter, defaulting to the authors':
``quantize`` (how the float SR becomes uint8), ``round_y`` (whether Y is rounded to integers) and ``shave``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

QUANTIZE_MODES = ("truncate", "round")


@dataclass(frozen=True)
class Protocol:
    """A scoring convention as a whole; both shave ``scale`` border pixels unless told otherwise."""

    quantize: str  # float SR -> uint8, see to_uint8
    round_y: bool  # Y rounded to integers (MATLAB's rgb2ycbcr on uint8) or kept as float


PROTOCOLS = {
    # The authors' code: `.mul(255).clamp(0, 255).byte()` truncation, MATLAB's integer Y.
    "authors": Protocol(quantize="truncate", round_y=True),
    # BasicSR's calculate_psnr/calculate_ssim(test_y_channel=True) on tensor2img's output: the SR rounded to
    # uint8, Y taken as float from it (to_y_channel does not round), the scores in float64.
    "basicsr": Protocol(quantize="round", round_y=False),
}


def to_uint8(img: torch.Tensor | np.ndarray, quantize: str = "truncate") -> np.ndarray:
    """[0, 1] float image (CHW tensor or HWC array) -> HWC uint8.

    'truncate' is the authors' `.mul(255).clamp(0, 255).byte()`; 'round' rounds to nearest.
    """
    return _to_levels(img, quantize, 255, np.uint8)


def to_uint16(img: torch.Tensor | np.ndarray, quantize: str = "truncate") -> np.ndarray:
    """[0, 1] float image -> HWC uint16, quantised like :func:`to_uint8` (a 16-bit photo's SR keeps its depth)."""
    return _to_levels(img, quantize, 65535, np.uint16)


def _to_levels(img: torch.Tensor | np.ndarray, quantize: str, peak: int, dtype: type) -> np.ndarray:
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if isinstance(img, torch.Tensor):
        t = img.detach().float().mul(peak)
        t = t.add_(0.5).floor_() if quantize == "round" else t
        t = t.clamp_(0, peak).permute(1, 2, 0)
        return t.to(torch.uint8).cpu().numpy() if dtype == np.uint8 else t.cpu().numpy().astype(dtype)
    a = np.asarray(img, dtype=np.float64) * peak
    a = np.floor(a + 0.5) if quantize == "round" else a
    return np.clip(a, 0, peak).astype(dtype)


# ITU-R BT.601 luma weights; rgb_to_y's studio-range Y is 16 + 219/255 times this full-range luma.
BT601 = (0.299, 0.587, 0.114)


def luma(sr: torch.Tensor) -> torch.Tensor:
    """Full-range BT.601 luma of a 3xHxW float RGB tensor, as 1xHxW: the gray image of an SR made from a gray LR.

    It is the channel mix that PSNR-Y scores (up to Y's affine range), so a gray output keeps the RGB output's Y.
    """
    weights = torch.tensor(BT601, dtype=sr.dtype, device=sr.device).view(3, 1, 1)
    return (sr * weights).sum(dim=0, keepdim=True)


def rgb_to_y(img: np.ndarray, rounded: bool = True) -> np.ndarray:
    """ITU-R BT.601 studio-range luma (16..235) of a uint8 RGB image, in float64: rounded to integers as
    MATLAB's rgb2ycbcr does on uint8 images, or left unrounded (BasicSR's to_y_channel) with ``rounded=False``."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {img.dtype} {img.shape}")
    y = img.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0
    return np.round(y) if rounded else y


def _shaved_y(sr: np.ndarray, hr: np.ndarray, shave: int, round_y: bool) -> tuple[np.ndarray, np.ndarray]:
    if sr.shape != hr.shape:
        raise ValueError(f"SR {sr.shape} and HR {hr.shape} differ in size")
    ys, yh = rgb_to_y(sr, round_y), rgb_to_y(hr, round_y)
    if shave:
        ys, yh = ys[shave:-shave, shave:-shave], yh[shave:-shave, shave:-shave]
    if ys.size == 0:
        raise ValueError(f"nothing left after shaving {shave} pixels from a {hr.shape[:2]} image")
    return ys, yh


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int = 0, round_y: bool = True) -> float:
    """PSNR (dB, peak 255) between the Y channels of two uint8 RGB images, ``shave`` border pixels removed;
    Y rounded to integers unless ``round_y`` is False."""
    ys, yh = _shaved_y(sr, hr, shave, round_y)
    mse = float(np.mean((ys - yh) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    g = cv2.getGaussianKernel(size, sigma)
    return g @ g.T


def check_scorable(hw: tuple[int, int], shave: int) -> None:
    """Raise ValueError unless an HxW image keeps SSIM's 11x11 window once ``shave`` pixels are cut per side."""
    h, w = hw[0] - 2 * shave, hw[1] - 2 * shave
    if min(h, w) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after shaving {shave} per side, "
                         f"got {max(h, 0)}x{max(w, 0)} from {hw[0]}x{hw[1]}")


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave: int = 0, round_y: bool = True) -> float:
    """MATLAB-style SSIM on Y: 11x11 Gaussian (sigma 1.5), 'valid' windows only, K = (0.01, 0.03), L = 255,
    in float64 (BasicSR's calculate_ssim is the same); Y rounded to integers unless ``round_y`` is False."""
    check_scorable(hr.shape[:2], shave)
    a, b = _shaved_y(sr, hr, shave, round_y)
    w = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, w, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())
