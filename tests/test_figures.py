"""Figures and the demo around them: a clean git after documented commands, the demo's startup checks,
the comparison crop and captions, curves with a bicubic line and several runs, the gate's branches figure."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import Net
from tools import visualize

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, **env})


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def _clone_of_this_tree(dest: Path) -> Path:
    """A clone holding this working tree as its HEAD (uncommitted edits included), as a user's fresh clone."""
    _git(dest.parent, "clone", "-q", "--no-checkout", str(ROOT), dest.name)
    files = _git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "--allow-empty", "-m", "working tree")
    return dest


# The documented commands, run as their CLIs would (from the clone's root), in one interpreter to import torch once.
DOCUMENTED_COMMANDS = """
import runpy, sys
for argv in (
    ["demo.py", "--quick", "--steps", "4", "--valid_every", "2"],
    ["sample.py", "--bicubic", "--scale", "2", "--test_data_dir", "results/demo/photos/test",
     "--report", "results/x2.json", "--quiet"],
    ["x2/train.py", "--train_data_path", "results/demo/train_x2.h5", "--max_steps", "2", "--batch_size", "2",
     "--patch_size", "16", "--print_interval", "1", "--log_interval", "1"],
):
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
"""


def test_documented_commands_leave_git_clean(tmp_path):
    """The demo, sample.py --report results/x2.json and training into checkpoint/ leave `git status` empty."""
    repo = _clone_of_this_tree(tmp_path / "repo")
    if (ROOT.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    assert _git(repo, "status", "--porcelain") == ""
    proc = _run(["-c", DOCUMENTED_COMMANDS], repo, DSRNET_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for made in ("results/demo/comparison.png", "results/x2.md", "results/x2_per_image.csv", "checkpoint/dsrnet_x2"):
        assert (repo / made).exists(), made
    assert _git(repo, "status", "--porcelain", "--untracked-files=all") == ""


def test_demo_refuses_wrong_scale_authors_weights_at_startup(tmp_path):
    torch.save(Net(scale=4).state_dict(), tmp_path / "x4.pth")
    proc = _run(["demo.py", "--quick", "--authors_ckpt", str(tmp_path / "x4.pth"), "--out", str(tmp_path / "out")],
                ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --authors_ckpt") and "x4" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_best_box_prefers_texture_among_large_gains():
    """A dark flat patch with the largest gain loses to a textured one with a large gain: there it shows."""
    rng = np.random.default_rng(0)
    hr = np.full((96, 96, 3), 128.0)
    hr[0:24, 0:24] = 20  # dark and smooth
    hr[48:72, 48:72] = rng.integers(40, 220, (24, 24, 3))  # texture
    noise = rng.normal(0, 4, hr.shape)
    base, better = hr + noise, hr + noise
    for y, x, gain in ((0, 0, 8), (48, 48, 4)):  # ~18 dB on the dark patch, ~12 dB on the texture
        patch = rng.normal(0, 12, (24, 24, 3))
        base[y:y + 24, x:x + 24] = hr[y:y + 24, x:x + 24] + patch
        better[y:y + 24, x:x + 24] = hr[y:y + 24, x:x + 24] + patch / gain
    as_uint8 = [np.clip(a, 0, 255).round().astype(np.uint8) for a in (hr, base, better)]
    assert visualize.best_box(*as_uint8) == (48, 48, 24, 24)


def _rows(dataset: str) -> list:
    return [visualize._Row(0, dataset, 2, method, f"img_{i:03d}", psnr + i, 0.9)
            for i in (1, 2, 3) for method, psnr in (("Bicubic", 30.0), ("DSRNet", 31.0))]


@pytest.mark.parametrize("dataset, image, shown", [
    ("Set5", "img_003", "butterfly"), ("Set5", "img_001", "baby"), ("Set14", "img_014", "zebra"),
    ("set14", "img_011", "monarch"), ("Set5", "img_006", "img_006"), ("BSD100", "img_003", "img_003"),
    ("Photos", "coffee", "coffee"),
])
def test_benchmark_images_show_their_names(dataset, image, shown):
    assert visualize.display_name(dataset, image) == shown


def test_image_by_name_and_captions_on_scored_panels():
    assert visualize._pick_image(_rows("Set5"), "butterfly", None, None) == ("Set5", 2, "img_003")
    assert visualize._pick_image(_rows("Set5"), "img_002", None, None) == ("Set5", 2, "img_002")
    hr = np.random.default_rng(0).integers(0, 255, (40, 48, 3)).astype(np.uint8)
    panels = [visualize.Panel("Bicubic", hr, 30.12, 0.9), visualize.Panel("DSRNet", hr, 31.5, 0.95)]
    fig = visualize.comparison_plot(visualize.Comparison("Set5", 2, "img_003", 2, hr, panels), box=(4, 4, 16, 16))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("butterfly (Set5 img_003, x2)")
    assert titles[1].startswith("HR") and "PSNR" not in titles[1]
    assert "PSNR/SSIM 30.12 dB / 0.9000" in titles[2] and "PSNR/SSIM 31.50 dB / 0.9500" in titles[3]
