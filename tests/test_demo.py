"""demo.py --quick end to end: every output, finite scores, validation PSNR rising, clean re-runs, errors."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from PIL import Image

import demo
from conftest import WEIGHTS_X2
from dsrnet.errors import InputError
from model import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One quick demo run (with the authors' weights when ../shared has them), over a stale earlier run."""
    out = tmp_path_factory.mktemp("demo")
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "dsrnet_x2_demo_999.pth").write_bytes(b"stale")
    (out / "photos" / "test").mkdir(parents=True)
    (out / "photos" / "test" / "stale.png").write_bytes(b"stale")
    args = ["--quick", "--out", str(out)]
    if WEIGHTS_X2.is_file():
        args += ["--authors_ckpt", str(WEIGHTS_X2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two intra-op threads on a busy two-core box spin against each other
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DSRNET_CACHE", str(out / "lr_cache"))
            assert demo.main(args) == out / "results.md"
    finally:
        torch.set_num_threads(threads)
    return out


def test_every_output_is_written(out):
    for name in ("results.md", "comparison.png", "curves.png", "report.json", "report_per_image.csv",
                 "checkpoint/log.csv", "checkpoint/dsrnet_x2_demo_40.pth"):
        assert (out / name).is_file(), name
    for name in ("comparison.png", "curves.png"):
        with Image.open(out / name) as im:
            assert im.width > 800 and im.height > 300
    assert sorted(p.name for p in (out / "checkpoint").glob("*.pth")) == ["dsrnet_x2_demo_40.pth"]


def test_scores_are_finite_and_held_out_photos_never_trained_on(out):
    doc = json.loads((out / "report.json").read_text())
    assert [r["method"] for r in doc["results"]] == ["Bicubic", "DSRNet"]
    with open(out / "report_per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["image"] for r in rows} == set(demo.TEST_PHOTOS)
    assert all(math.isfinite(float(r["psnr"])) and 0 < float(r["ssim"]) <= 1 for r in rows)
    train = {p.stem for p in (out / "photos" / "train").glob("*.png")}
    assert train == set(demo.TRAIN_PHOTOS) and not train & {p.stem for p in (out / "photos" / "test").iterdir()}
    with h5py.File(out / "train_x2.h5") as f:
        assert len(f["HR"]) == len(train) and set(f) == {"HR", "X2"}


def test_validation_psnr_rises(out):
    with open(out / "checkpoint" / "log.csv", newline="") as f:
        psnr = [float(r["test_x2_psnr"]) for r in csv.DictReader(f) if r["test_x2_psnr"]]
    assert len(psnr) == 2 and psnr[-1] > psnr[0]


def test_results_md(out):
    md = (out / "results.md").read_text()
    for name in (*demo.TEST_PHOTOS, "**mean**"):
        assert f"| {name}" in md
    assert "python demo.py --quick --out" in md and "torch " + torch.__version__ in md
    assert "![visual comparison](comparison.png)" in md


def test_authors_weights_column(out, weights_x2):
    md = (out / "results.md").read_text()
    assert "authors' weights (600k steps" in md
    ours, authors = (json.loads((out / f"{n}.json").read_text())["results"] for n in ("report", "authors"))
    assert authors[0]["psnr"] > ours[0]["psnr"] + 1  # the released net beats bicubic clearly


def test_bad_flags_fail_before_any_work(tmp_path):
    with pytest.raises(InputError, match="--steps must be at least 1"):
        demo.main(["--steps", "0", "--out", str(tmp_path)])
    proc = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--quick", "--out", str(tmp_path),
                           "--authors_ckpt", str(tmp_path / "absent.pth")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --authors_ckpt") and len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"\x00 not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged.pth"):
        demo.main(["--quick", "--authors_ckpt", str(damaged), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    for flag in ("--seed", "--num_workers"):
        with pytest.raises(InputError, match="must be >= 0"):
            demo.main(["--quick", flag, "-1", "--out", str(tmp_path)])


def test_refuses_an_out_folder_it_did_not_make(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    kept = tmp_path / "checkpoint" / "my_weights.pth"
    kept.write_bytes(b"precious")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt, which demo.py did not make"):
        demo.main(["--quick", "--out", str(tmp_path)])
    assert kept.read_bytes() == b"precious"
    with pytest.raises(InputError, match="did not make"):
        demo.main(["--quick", "--out", str(ROOT)])  # the repository itself: its checkpoint/ must survive
