"""`sample.py --protocol basicsr` against an independent BasicSR-style computation on the SR images it saves,
and the default protocol left as it was."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import sample
from conftest import need_set
from dsrnet.data.images import read_image, write_image
from dsrnet.errors import InputError
from dsrnet.metrics import psnr_y, ssim_y
from model import load_checkpoint
from model.inference import super_resolve
from model.precision import tf32

ROOT = Path(__file__).resolve().parents[1]
SCALE = 2


@pytest.fixture(scope="module")
def crops(tmp_path_factory, benchmark_dir) -> Path:
    """Three small crops of Set5 and Set14 in the EDSR layout: quick to upscale, real image content."""
    root = tmp_path_factory.mktemp("data") / "Crops"
    picks = [("Set5", "img_001", (0, 0)), ("Set5", "img_004", (20, 30)), ("Set14", "img_005", (40, 16))]
    for ds, name, (top, left) in picks:
        folder = need_set(benchmark_dir, ds) / "image_SRF_2"
        hr = read_image(folder / f"{name}_SRF_2_HR.png")[2 * top:2 * top + 80, 2 * left:2 * left + 104]
        lr = read_image(folder / f"{name}_SRF_2_LR.png")[top:top + 40, left:left + 52]
        write_image(root / "HR" / f"{ds}_{name}.png", hr)
        write_image(root / "LR_bicubic" / "X2" / f"{ds}_{name}x2.png", lr)
    return root


def basicsr_y(rgb: np.ndarray) -> np.ndarray:
    """Y as BasicSR's to_y_channel takes it: the image as float32 in [0, 1], BT.601 weights (in float64) plus 16,
    returned through float32 in [0, 1] and scaled by 255 in float32; never rounded."""
    x = (rgb.astype(np.float32) / np.float32(255)).astype(np.float64)
    y = x[..., 0] * 65.481 + x[..., 1] * 128.553 + x[..., 2] * 24.966 + 16.0
    return ((y / 255.0).astype(np.float32) * np.float32(255)).astype(np.float64)


def windowed_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM summed window by window over every fully inside 11x11 window (Gaussian, sigma 1.5),
    with centred second moments: no image filter, no border handling to get wrong."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    pa, pb = sliding_window_view(a, (11, 11)), sliding_window_view(b, (11, 11))
    mu_a, mu_b = np.einsum("ijkl,kl->ij", pa, w), np.einsum("ijkl,kl->ij", pb, w)
    da, db = pa - mu_a[..., None, None], pb - mu_b[..., None, None]
    var_a, var_b = np.einsum("ijkl,kl->ij", da * da, w), np.einsum("ijkl,kl->ij", db * db, w)
    cov = np.einsum("ijkl,kl->ij", da * db, w)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean())


def basicsr_scores(sr: np.ndarray, hr: np.ndarray, crop: int) -> tuple[float, float]:
    """calculate_psnr / calculate_ssim with test_y_channel=True and crop_border=crop, recomputed."""
    ys, yh = basicsr_y(sr)[crop:-crop, crop:-crop], basicsr_y(hr)[crop:-crop, crop:-crop]
    return 10 * np.log10(255.0 ** 2 / np.mean((ys - yh) ** 2)), windowed_ssim(ys, yh)


@pytest.fixture(scope="module")
def basicsr_run(weights_x2, crops, tmp_path_factory):
    out = tmp_path_factory.mktemp("sr")
    results = sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", str(crops), "--bicubic", "--quiet",
                           "--protocol", "basicsr", "--sample_dir", str(out), "--report", str(out / "r.json")])
    return results, out


def test_basicsr_scores_match_an_independent_computation_on_the_saved_images(basicsr_run, crops):
    """Per image, to 0.001 dB and 5e-5 SSIM, for the DSRNet and the bicubic rows; and on these very images the
    authors' integer-Y scores of every image stray beyond that, so the comparison tells the two protocols apart."""
    results, out = basicsr_run
    strays = []
    for r in results:
        folder = out / "DSRNet_x2_600000" / "Crops" / "x2" / r.method.lower()
        for im in r.images:
            sr, hr = read_image(folder / f"{im.name}_SR.png"), read_image(crops / "HR" / f"{im.name}.png")
            psnr, ssim = basicsr_scores(sr, hr, SCALE)
            assert abs(im.psnr - psnr) < 1e-3 and abs(im.ssim - ssim) < 5e-5, (r.method, im.name)
            strays.append(max(abs(psnr_y(sr, hr, SCALE) - psnr) / 1e-3, abs(ssim_y(sr, hr, SCALE) - ssim) / 5e-5))
    assert len(strays) == 6 and min(strays) > 1


def test_basicsr_saves_the_sr_rounded_as_tensor2img_does(basicsr_run, weights_x2, crops):
    """tensor2img clamps the float SR to [0, 1] and rounds x * 255 to the nearest integer (half to even, where
    to_uint8 rounds half up in float32: 8 of Set5's 1.7 M values differ by one, so a few are allowed)."""
    _, out = basicsr_run
    lr = read_image(crops / "LR_bicubic" / "X2" / "Set5_img_001x2.png")
    with tf32(False):
        sr = super_resolve(load_checkpoint(weights_x2), lr, SCALE).clamp(0, 1).permute(1, 2, 0).numpy()
    want = np.round(sr * np.float32(255)).astype(np.uint8)
    got = read_image(out / "DSRNet_x2_600000" / "Crops" / "x2" / "dsrnet" / "Set5_img_001_SR.png")
    assert np.abs(got.astype(int) - want).max() <= 1 and np.count_nonzero(got != want) <= 3
    assert (want != (sr * 255).astype(np.uint8)).mean() > 0.1  # truncation would have given other images


def test_report_names_the_protocol(basicsr_run):
    _, out = basicsr_run
    s = json.loads((out / "r.json").read_text())["settings"]
    assert (s["protocol"], s["quantize"], s["shave"], s["scales"]) == ("basicsr", "round", "scale", [2])


def test_default_is_the_authors_protocol_unchanged(weights_x2, crops):
    """No --protocol, and --protocol authors, score every image alike: truncated SR, integer Y, shave = scale."""
    args = ["--ckpt_path", str(weights_x2), "--test_data_dir", str(crops), "--no_save", "--quiet"]
    default, authors = sample.main(args)[0], sample.main(args + ["--protocol", "authors"])[0]
    assert [(i.psnr, i.ssim) for i in default.images] == [(i.psnr, i.ssim) for i in authors.images]
    lr = read_image(crops / "LR_bicubic" / "X2" / "Set5_img_004x2.png")
    hr = read_image(crops / "HR" / "Set5_img_004.png")
    with tf32(False):
        sr = super_resolve(load_checkpoint(weights_x2), lr, SCALE).mul(255).clamp(0, 255).byte()
    sr = sr.permute(1, 2, 0).numpy()
    [im] = [i for i in default.images if i.name == "Set5_img_004"]
    assert (im.psnr, im.ssim) == (psnr_y(sr, hr, SCALE), ssim_y(sr, hr, SCALE))


def test_protocol_and_quantize(weights_x2, crops, tmp_path):
    """--quantize round restates basicsr's rounding (accepted, the same scores); --quantize truncate contradicts
    it (refused in one line before any work); the authors' protocol still takes either."""
    args = ["--ckpt_path", str(weights_x2), "--test_data_dir", str(crops), "--no_save", "--quiet"]
    plain = sample.main(args + ["--protocol", "basicsr"])[0]
    restated = sample.main(args + ["--protocol", "basicsr", "--quantize", "round"])[0]
    assert [i.psnr for i in plain.images] == [i.psnr for i in restated.images]
    with pytest.raises(InputError, match="--quantize truncate contradicts it"):
        sample.main(args + ["--protocol", "basicsr", "--quantize", "truncate", "--report", str(tmp_path / "r.json")])
    assert list(tmp_path.iterdir()) == []
    proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), *args, "--protocol", "basicsr",
                           "--quantize", "truncate"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --protocol basicsr"), proc.stderr
