"""MATLAB-compatible bicubic imresize: benchmark LR images, a slow reference, and edge cases.

Run as a script to print the table of differences against the MATLAB-made benchmark LR:
    /work/venv/bin/python tests/test_imresize.py
"""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

if __name__ == "__main__":  # script mode: make the repo root importable, as pytest.ini does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import need_set  # noqa: E402
from dsrnet.data.images import read_image  # noqa: E402
from dsrnet.data.imresize import imresize, modcrop  # noqa: E402
from dsrnet.errors import InputError  # noqa: E402

SETS = ("Set5", "Set14", "BSD100")
SCALES = (2, 3, 4)


# --------------------------------------------------------------------------------------
# Against the MATLAB-made benchmark LR images
# --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def measure(benchmark_dir: str, set_name: str, scale: int) -> dict:
    """Compare ``imresize(HR, 1/scale)`` with the stored LR of every image in one set/scale.

    Interior = LR pixels off the outermost row/column on each side; border = those pixels.
    Returns counts, % exact and max |diff| for both, and the images that differ anywhere.
    """
    folder = Path(benchmark_dir) / set_name / f"image_SRF_{scale}"
    hr_paths = sorted(folder.glob(f"img_*_SRF_{scale}_HR.png"))
    assert hr_paths, f"no HR images in {folder}"
    stats = {"images": len(hr_paths), "in_n": 0, "in_exact": 0, "in_max": 0,
             "bd_n": 0, "bd_exact": 0, "bd_max": 0, "differing": []}
    for hr_path in hr_paths:
        hr = read_image(hr_path)
        lr = read_image(hr_path.with_name(hr_path.name.replace("_HR.", "_LR.")))
        out = imresize(hr, 1 / scale)
        assert out.shape == lr.shape, f"{hr_path.name}: shape {out.shape} != LR {lr.shape}"
        diff = np.abs(out.astype(np.int16) - lr.astype(np.int16))
        interior = np.zeros(diff.shape[:2], dtype=bool)
        interior[1:-1, 1:-1] = True
        for key, part in (("in", diff[interior]), ("bd", diff[~interior])):
            stats[f"{key}_n"] += part.size
            stats[f"{key}_exact"] += int(np.count_nonzero(part == 0))
            stats[f"{key}_max"] = max(stats[f"{key}_max"], int(part.max()))
        if diff.any():
            stats["differing"].append(hr_path.name)
    stats["in_pct"] = 100.0 * stats["in_exact"] / stats["in_n"]
    stats["bd_pct"] = 100.0 * stats["bd_exact"] / stats["bd_n"]
    return stats


def difference_table(benchmark_dir: str | Path) -> str:
    """The measured differences for every set and scale, as a small text table."""
    lines = [f"{'set':8s}{'scale':>6s}{'images':>7s}  {'interior exact':>14s}{'max':>4s}"
             f"  {'border exact':>12s}{'max':>4s}"]
    for set_name in SETS:
        for scale in SCALES:
            s = measure(str(benchmark_dir), set_name, scale)
            lines.append(f"{set_name:8s}{'x' + str(scale):>6s}{s['images']:>7d}  "
                         f"{s['in_pct']:>13.3f}%{s['in_max']:>4d}  "
                         f"{s['bd_pct']:>11.3f}%{s['bd_max']:>4d}")
    return "\n".join(lines)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("set_name", SETS)
def test_matches_matlab_benchmark_lr(benchmark_dir: Path, set_name: str, scale: int) -> None:
    # Measured: every pixel of every image, interior and border, at x2, x3 and x4 is
    # bit-identical, so anything short of an exact match is a regression. (Mirrored
    # borders break the border; rounding only at the end breaks ~12% of all pixels.)
    need_set(benchmark_dir, set_name)
    s = measure(str(benchmark_dir), set_name, scale)
    assert s["images"] == {"Set5": 5, "Set14": 14, "BSD100": 100}[set_name]
    summary = (f"{set_name} x{scale}: interior {s['in_pct']:.3f}% exact (max {s['in_max']}), "
               f"border {s['bd_pct']:.3f}% exact (max {s['bd_max']}); "
               f"differing: {s['differing'][:5]}")
    assert s["in_exact"] == s["in_n"] and s["in_max"] == 0, summary
    assert s["bd_exact"] == s["bd_n"] and s["bd_max"] == 0, summary


def test_difference_table(benchmark_dir: Path) -> None:
    for set_name in SETS:
        need_set(benchmark_dir, set_name)
    table = difference_table(benchmark_dir)  # measured once per set and scale (cached) for all tests here
    print("\n" + table)  # shown with `pytest -s`; `python tests/test_imresize.py` prints it too
    images = {"Set5": 5, "Set14": 14, "BSD100": 100}
    assert table.splitlines()[1:] == [f"{n:8s}{'x' + str(s):>6s}{images[n]:>7d}  {'100.000%':>14s}{0:>4d}"
                                      f"  {'100.000%':>12s}{0:>4d}" for n in SETS for s in SCALES]


# --------------------------------------------------------------------------------------
# An independent, deliberately naive implementation of MATLAB's imresize.m formulas
# --------------------------------------------------------------------------------------

def _cubic_scalar(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
    if x <= 2:
        return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
    return 0.0


def _reference_pass(img: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    """One MATLAB resize pass, one output sample at a time (float64, no rounding)."""
    src = np.moveaxis(img.astype(np.float64), axis, 0)
    in_len, rest = src.shape[0], src.shape[1:]
    lines = src.reshape(in_len, -1)
    out = np.zeros((out_len, lines.shape[1]))
    width = 4.0 / scale if scale < 1 else 4.0
    for x in range(1, out_len + 1):  # MATLAB's 1-based output coordinate
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = []
        for j in range(left, left + math.ceil(width) + 2):
            w = scale * _cubic_scalar(scale * (u - j)) if scale < 1 else _cubic_scalar(u - j)
            taps.append((min(max(j, 1), in_len) - 1, w))  # clamp to the edge pixel
        total = sum(w for _, w in taps)
        for m in range(lines.shape[1]):
            acc = 0.0
            for j, w in taps:
                acc += (w / total) * lines[j, m]
            out[x - 1, m] = acc
    return np.moveaxis(out.reshape((out_len,) + rest), 0, axis)


def _matlab_round_uint8(a: np.ndarray) -> np.ndarray:
    rounded = np.sign(a) * np.floor(np.abs(a) + 0.5)  # round half away from zero
    return np.clip(rounded, 0, 255).astype(np.uint8)


def reference_imresize(img: np.ndarray, scale: float | None = None,
                       output_shape: tuple[int, int] | None = None) -> np.ndarray:
    if output_shape is None:
        output_shape = (math.ceil(img.shape[0] * scale), math.ceil(img.shape[1] * scale))
        scales = [scale, scale]
    else:
        scales = [output_shape[0] / img.shape[0], output_shape[1] / img.shape[1]]
    order = [0, 1] if scales[0] <= scales[1] else [1, 0]
    out = img
    for axis in order:
        out = _reference_pass(out, axis, output_shape[axis], scales[axis])
        if img.dtype == np.uint8:
            out = _matlab_round_uint8(out)
    return out


CROSS_CASES = [
    ((13, 11, 3), 0.5, None), ((13, 11, 3), 1 / 3, None), ((17, 10, 3), 0.25, None),
    ((12, 9, 3), 0.6, None), ((7, 6, 3), 2, None), ((5, 7, 3), 3, None),
    ((6, 5), 1.7, None), ((9, 8, 3), None, (5, 19)), ((8, 12), None, (20, 3)),
]


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
@pytest.mark.parametrize("shape,scale,output_shape", CROSS_CASES)
def test_matches_naive_reference(shape, scale, output_shape, dtype) -> None:
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape).astype(dtype)
    if dtype == np.float64:
        img /= 255.0
    got = imresize(img, scale=scale, output_shape=output_shape)
    want = reference_imresize(img, scale=scale, output_shape=output_shape)
    assert got.dtype == dtype and got.shape == want.shape
    if dtype == np.uint8:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_known_values_by_hand() -> None:
    # imresize([1 2 3 4], [1 8]): output 1 sits at u = 0.75, taps at 1-based -1..2 with
    # weights cubic(1.75), cubic(0.75), cubic(0.25), cubic(1.25) =
    # -0.0234375, 0.2265625, 0.8671875, -0.0703125; -1 and 0 clamp to pixel 1, so
    # 1*(-0.0234375 + 0.2265625 + 0.8671875) + 2*(-0.0703125) = 0.9296875.
    # Output 2 (u = 1.25): 1*(-0.0703125 + 0.8671875) + 2*0.2265625 + 3*(-0.0234375).
    # A mirrored border would give 0.90625 for output 1. The rest follows by symmetry.
    out = imresize(np.array([[1.0, 2.0, 3.0, 4.0]]), output_shape=(1, 8))
    first, second = 0.9296875, 1.1796875
    assert out[0, 0] == first and out[0, 1] == second
    assert out[0, -1] == 5 - first and out[0, -2] == 5 - second


# --------------------------------------------------------------------------------------
# Unit tests
# --------------------------------------------------------------------------------------

@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 18, 3), dtype=np.uint8)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_identity_at_scale_one(rgb: np.ndarray, dtype) -> None:
    img = rgb.astype(dtype)
    for out in (imresize(img, 1), imresize(img, output_shape=img.shape[:2])):
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, img)
        assert not np.shares_memory(out, img)


@pytest.mark.parametrize("in_shape,scale,expected", [
    ((10, 7), 0.5, (5, 4)),            # ceil(3.5) = 4
    ((101, 55), 0.3, (31, 17)),        # ceil(30.3), ceil(16.5)
    ((13, 9), 2.7, (36, 25)),          # ceil(35.1), ceil(24.3)
    ((10, 7), 1.5, (15, 11)),
    ((480, 320), 1 / 3, (160, 107)),   # 320/3 = 106.67
    ((4, 4), 0.01, (1, 1)),
    ((3, 5), 4, (12, 20)),
])
def test_output_shape_ceil_rule(in_shape, scale, expected) -> None:
    img = np.zeros(in_shape, dtype=np.uint8)
    assert imresize(img, scale).shape == expected
    assert imresize(np.zeros(in_shape + (3,)), scale).shape == expected + (3,)


@pytest.mark.parametrize("out_shape", [(7, 13), (40, 2), (1, 1), (20, 5)])
@pytest.mark.parametrize("channels", [None, 1, 4])
def test_explicit_output_shape(out_shape, channels) -> None:
    shape = (20, 5) if channels is None else (20, 5, channels)
    img = np.random.default_rng(1).random(shape)
    out = imresize(img, output_shape=out_shape)
    assert out.shape == tuple(out_shape) + shape[2:]
    assert out.flags.c_contiguous


@pytest.mark.parametrize("scale", [0.37, 0.5, 1 / 3, 2, 3.3])
def test_constant_image_stays_constant(scale) -> None:
    out = imresize(np.full((21, 16, 3), 173, dtype=np.uint8), scale)
    assert out.dtype == np.uint8 and np.all(out == 173)
    out = imresize(np.full((21, 16), 0.3), scale)
    np.testing.assert_allclose(out, 0.3, rtol=0, atol=1e-14)


def _float_pass_then_round(img: np.ndarray, output_shape: tuple[int, int]) -> np.ndarray:
    return _matlab_round_uint8(imresize(img.astype(np.float64), output_shape=output_shape))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_uint8_rounds_after_each_pass(rgb: np.ndarray, scale: int) -> None:
    h, w = rgb.shape[:2]
    rows_first = _float_pass_then_round(_float_pass_then_round(rgb, (h * scale, w)),
                                        (h * scale, w * scale))
    got = imresize(rgb, scale)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, rows_first)
    # The check has teeth: rounding once at the end, or columns first, would differ.
    once = _matlab_round_uint8(imresize(rgb.astype(np.float64), scale))
    cols_first = _float_pass_then_round(_float_pass_then_round(rgb, (h, w * scale)),
                                        (h * scale, w * scale))
    assert np.any(once != got) and np.any(cols_first != got)


def test_float_input_gives_unclipped_float_output() -> None:
    step = np.zeros((12, 12))
    step[:, 6:] = 1.0
    out = imresize(step, 3)
    assert out.dtype == np.float64
    assert out.min() < 0 and out.max() > 1  # cubic overshoot is kept: no clipping
    assert np.any(out != np.round(out))     # and no rounding
    assert imresize(step.astype(np.float32), 0.5).dtype == np.float32
    assert imresize(step.astype(np.float16), 0.5).dtype == np.float64


def test_modcrop() -> None:
    img = np.arange(10 * 13 * 3).reshape(10, 13, 3)
    out = modcrop(img, 3)
    assert out.shape == (9, 12, 3)
    np.testing.assert_array_equal(out, img[:9, :12])  # top-left kept
    assert modcrop(img[:, :, 0], 2).shape == (10, 12)
    assert modcrop(img, 1).shape == img.shape
    assert modcrop(img[:8, :12], 4).shape == (8, 12, 3)


@pytest.mark.parametrize("bad_scale", [0, -2, 2.5, True, None])
def test_modcrop_rejects_bad_scale(bad_scale) -> None:
    with pytest.raises(InputError):
        modcrop(np.zeros((8, 8)), bad_scale)


def test_modcrop_rejects_image_smaller_than_scale() -> None:
    with pytest.raises(InputError, match="smaller than scale"):
        modcrop(np.zeros((3, 10, 3)), 4)


@pytest.mark.parametrize("img,kwargs", [
    (np.zeros((8, 8)), {"scale": 0}),
    (np.zeros((8, 8)), {"scale": -0.5}),
    (np.zeros((8, 8)), {"scale": float("nan")}),
    (np.zeros((8, 8)), {"scale": float("inf")}),
    (np.zeros((8, 8)), {"scale": "half"}),
    (np.zeros((8, 8)), {}),
    (np.zeros((8, 8)), {"scale": 2, "output_shape": (16, 16)}),
    (np.zeros((8, 8)), {"output_shape": (0, 4)}),
    (np.zeros((8, 8)), {"output_shape": (4,)}),
    (np.zeros((8, 8)), {"output_shape": (4.5, 4)}),
    (np.zeros((8, 8)), {"scale": 1e-9}),
    (np.zeros((8, 8)), {"scale": 1e12}),
    (np.zeros((0, 8)), {"scale": 2}),
    (np.zeros(8), {"scale": 2}),
    (np.zeros((2, 8, 8, 3)), {"scale": 2}),
    (np.zeros((8, 8), dtype=bool), {"scale": 2}),
    (np.zeros((8, 8), dtype=complex), {"scale": 2}),
])
def test_impossible_requests_raise_input_error(img, kwargs) -> None:
    with pytest.raises(InputError) as err:
        imresize(img, **kwargs)
    assert "\n" not in str(err.value)


if __name__ == "__main__":
    bench = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmark"
    if not bench.exists():
        sys.exit(f"{bench} is absent")
    print(difference_table(bench))
