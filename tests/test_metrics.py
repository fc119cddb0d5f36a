"""The protocol's metrics against scikit-image and against hand-checked properties."""
import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dsrnet.metrics import psnr_y, rgb_to_y, ssim_y, to_uint8


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    noise = rng.integers(-12, 13, hr.shape)
    sr = np.clip(hr.astype(int) + noise, 0, 255).astype(np.uint8)
    return sr, hr


def test_y_matches_skimage_rounded(pair):
    _, hr = pair
    expected = np.round(rgb2ycbcr(hr)[..., 0])
    np.testing.assert_array_equal(rgb_to_y(hr), expected)
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == 16
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == 235


def test_float_y_matches_skimage_unrounded(pair):
    """BasicSR's protocol keeps Y as float: the same BT.601 luma, never rounded."""
    sr, _ = pair
    np.testing.assert_allclose(rgb_to_y(sr, rounded=False), rgb2ycbcr(sr)[..., 0], rtol=0, atol=1e-10)
    assert not np.array_equal(rgb_to_y(sr, rounded=False), rgb_to_y(sr))


@pytest.mark.parametrize("round_y", [True, False])
def test_scores_on_float_y_match_skimage(pair, round_y):
    sr, hr = pair
    ys, yh = (rgb2ycbcr(x)[..., 0][2:-2, 2:-2] for x in (sr, hr))
    ys, yh = (np.round(ys), np.round(yh)) if round_y else (ys, yh)
    assert psnr_y(sr, hr, 2, round_y) == pytest.approx(peak_signal_noise_ratio(yh, ys, data_range=255), abs=1e-10)
    ref = structural_similarity(ys, yh, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim_y(sr, hr, 2, round_y) == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("shave", [0, 2, 4])
def test_psnr_matches_skimage(pair, shave):
    sr, hr = pair
    ys, yh = rgb_to_y(sr), rgb_to_y(hr)
    if shave:
        ys, yh = ys[shave:-shave, shave:-shave], yh[shave:-shave, shave:-shave]
    assert psnr_y(sr, hr, shave) == pytest.approx(peak_signal_noise_ratio(yh, ys, data_range=255), abs=1e-10)


@pytest.mark.parametrize("shave", [0, 3])
def test_ssim_matches_skimage_gaussian(pair, shave):
    sr, hr = pair
    ys, yh = rgb_to_y(sr), rgb_to_y(hr)
    if shave:
        ys, yh = ys[shave:-shave, shave:-shave], yh[shave:-shave, shave:-shave]
    ref = structural_similarity(ys, yh, data_range=255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ssim_y(sr, hr, shave) == pytest.approx(ref, abs=1e-9)


def test_shave_changes_the_score(pair):
    sr, hr = pair
    sr = sr.copy()
    sr[:2] = 0  # damage only the top border
    assert psnr_y(sr, hr, 2) > psnr_y(sr, hr, 0) + 1


def test_identical_images(pair):
    _, hr = pair
    assert math.isinf(psnr_y(hr, hr))
    assert ssim_y(hr, hr) == pytest.approx(1.0)


def test_quantize_truncate_vs_round():
    t = torch.tensor([0.0, 0.5 / 255, 0.999 / 255, 254.6 / 255, 1.2, -0.1]).view(1, 1, 6).expand(3, 1, 6)
    assert to_uint8(t, "truncate")[0, :, 0].tolist() == [0, 0, 0, 254, 255, 0]
    assert to_uint8(t, "round")[0, :, 0].tolist() == [0, 1, 1, 255, 255, 0]
    arr = t.permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(to_uint8(arr, "truncate"), to_uint8(t, "truncate"))
    with pytest.raises(ValueError):
        to_uint8(t, "nearest")


def test_size_mismatch_and_too_small():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError):
        psnr_y(a, np.zeros((20, 22, 3), np.uint8))
    with pytest.raises(ValueError):
        ssim_y(a, a, shave=5)
