"""The paper's numbers, reproduced on real data with the authors' x2 weights (CI runs these: ~2 min).

Each row asserts two things: the value we reproduce (to 0.005 dB, so any change in the protocol
shows up) and the acceptance band around the paper's published value.
"""
import pytest

import sample
from model.precision import bf16_supported

PAPER_X2 = {"Set5": (37.61, 0.9584), "Set14": (33.30, 0.9145), "BSD100": (31.96, 0.8965)}
OURS_X2 = {"Set5": (37.4862, 0.9583), "Set14": (33.2808, 0.9148), "BSD100": (31.9229, 0.8966)}
# `--protocol basicsr` (SR rounded, Y unrounded: docs/evaluation.md#basicsrs-protocol), Set5 only to stay quick.
OURS_X2_BASICSR = {"Set5": (37.7484, 0.9596)}
# The paper's bicubic rows (PSNR, SSIM), the values the SR literature has carried since VDSR.
PAPER_BICUBIC = {("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
                 ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
                 ("BSD100", 2): (29.56, 0.8431), ("BSD100", 3): (27.21, 0.7385), ("BSD100", 4): (25.96, 0.6675)}
OURS_BICUBIC = {("Set5", 2): (33.6404, 0.9292), ("Set5", 3): (30.3864, 0.8678), ("Set5", 4): (28.4177, 0.8101),
                ("Set14", 2): (30.3138, 0.8691), ("Set14", 3): (27.6268, 0.7751), ("Set14", 4): (26.0874, 0.7041),
                ("BSD100", 2): (29.5480, 0.8425), ("BSD100", 3): (27.2024, 0.7382), ("BSD100", 4): (25.9565, 0.6672)}
# Set14's bicubic rows are 0.07-0.09 dB and up to 0.0014 SSIM above the paper's at every scale, where Set5's and
# B100's agree to 0.02 dB; Set14's LR files match our imresize bit for bit (test_imresize.py), so the gap is in
# the images, a different version of Set14 than the paper's, not in the protocol.
BICUBIC_BAND = {"Set5": ((-0.03, 0.03), (-0.001, 0.001)), "BSD100": ((-0.03, 0.03), (-0.001, 0.001)),
                "Set14": ((0.06, 0.10), (0.0, 0.002))}


def _present(benchmark_dir, names) -> list[str]:
    """The test sets of ``names`` that ../shared holds (a GPU machine may carry only Set5 and Set14)."""
    return [str(benchmark_dir / n) for n in names if (benchmark_dir / n).is_dir()]


def _scored(results: dict, key):
    if key not in results:
        pytest.skip(f"{key} is absent from ../shared/data/benchmark (CI always has it)")
    return results[key]


@pytest.fixture(scope="module")
def dsrnet_x2(weights_x2, benchmark_dir):
    dirs = _present(benchmark_dir, PAPER_X2)
    results = sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", *dirs, "--no_save", "--quiet"])
    return {r.dataset: r for r in results}


@pytest.fixture(scope="module")
def bicubic(benchmark_dir):
    dirs = _present(benchmark_dir, ("Set5", "Set14", "BSD100"))
    results = sample.main(["--bicubic", "--scale", "2", "3", "4", "--test_data_dir", *dirs, "--no_save", "--quiet"])
    return {(r.dataset, r.scale): r for r in results}


@pytest.mark.parametrize("dataset", list(PAPER_X2))
def test_dsrnet_x2_matches_paper(dsrnet_x2, dataset):
    r = _scored(dsrnet_x2, dataset)
    paper_psnr, paper_ssim = PAPER_X2[dataset]
    ours_psnr, ours_ssim = OURS_X2[dataset]
    assert r.psnr == pytest.approx(ours_psnr, abs=0.005)
    assert r.ssim == pytest.approx(ours_ssim, abs=0.0005)
    assert -0.15 <= r.psnr - paper_psnr <= 0.10
    assert abs(r.ssim - paper_ssim) < 0.001
    assert r.gate_branches == {"selected": r.n_images}


def test_dsrnet_x2_under_basicsrs_protocol(weights_x2, benchmark_dir):
    dirs = _present(benchmark_dir, OURS_X2_BASICSR)
    results = sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", *dirs, "--protocol", "basicsr",
                           "--no_save", "--quiet"])
    r = _scored({r.dataset: r for r in results}, "Set5")
    assert r.psnr == pytest.approx(OURS_X2_BASICSR["Set5"][0], abs=0.005)
    assert r.ssim == pytest.approx(OURS_X2_BASICSR["Set5"][1], abs=0.0005)


@pytest.mark.parametrize("key", list(OURS_BICUBIC), ids=lambda k: f"{k[0]}-x{k[1]}")
def test_bicubic_matches_paper(bicubic, key):
    r = _scored(bicubic, key)
    (ours_psnr, ours_ssim), (paper_psnr, paper_ssim) = OURS_BICUBIC[key], PAPER_BICUBIC[key]
    assert r.psnr == pytest.approx(ours_psnr, abs=0.005)
    assert r.ssim == pytest.approx(ours_ssim, abs=0.0005)
    (psnr_low, psnr_high), (ssim_low, ssim_high) = BICUBIC_BAND[key[0]]
    assert psnr_low <= r.psnr - paper_psnr <= psnr_high
    assert ssim_low <= r.ssim - paper_ssim <= ssim_high


@pytest.mark.skipif(not bf16_supported(sample.pick_device(False)), reason="no native bfloat16 on this machine")
def test_bf16_scores_within_three_hundredths_of_a_db(weights_x2, benchmark_dir, dsrnet_x2):
    """bf16 runs the body at half the cost; with the mean shift kept in float32 the scores barely move."""
    dirs = [str(benchmark_dir / name) for name in ("Set5", "Set14")]
    for r in sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", *dirs, "--bf16", "--no_save", "--quiet"]):
        assert abs(r.psnr - dsrnet_x2[r.dataset].psnr) < 0.03
        assert abs(r.ssim - dsrnet_x2[r.dataset].ssim) < 0.0005
