"""visualize.py: comparison figures from real sample.py runs, the default zoom box, curves, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import sample
from dsrnet.data.images import write_image
from dsrnet.errors import InputError
from model import Net
from tools import visualize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def lr_cache(tmp_path_factory):
    """Generated LR images go to a temp folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSRNET_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """``sample.py --bicubic --report`` on two small photos with a freshly initialised DSRNet x2."""
    root = tmp_path_factory.mktemp("vis")
    write_image(root / "Photos" / "astronaut.png", data.astronaut()[40:136, 160:288])
    write_image(root / "Photos" / "coffee.png", data.coffee()[100:196, 200:328])
    torch.manual_seed(0)
    torch.save(Net(scale=2).state_dict(), root / "fresh_x2.pth")
    sample.main(["--ckpt_path", str(root / "fresh_x2.pth"), "--bicubic", "--test_data_dir", str(root / "Photos"),
                 "--sample_dir", str(root / "sr"), "--report", str(root / "run.json"), "--quiet"])
    return root


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
        return im.size


def test_compare_cli_defaults(run):
    out = visualize.main(["compare", "--report", str(run / "run.json")])
    assert out == run / "run_compare.png"
    w, h = png_size(out)
    assert 800 < w < 2500 and 250 < h < 1200


def test_load_comparison_reads_hr_sr_and_scores(run):
    cmp = visualize.load_comparison([run / "run.json"], image="coffee", labels=["fresh"])
    assert (cmp.dataset, cmp.scale, cmp.name, cmp.shave) == ("Photos", 2, "coffee", 2)
    assert cmp.hr.shape == (96, 128, 3)
    assert [p.label for p in cmp.panels] == ["Bicubic", "DSRNet (fresh)"]
    report = {r["method"]: r for r in json.loads((run / "run.json").read_text())["results"]}
    scores = [line.split(",") for line in (run / "run_per_image.csv").read_text().splitlines()[1:]]
    assert {(m, n): float(p) for _, _, m, n, p, *_ in scores}[("Bicubic", "coffee")] == pytest.approx(
        cmp.panels[0].psnr)
    assert report["Bicubic"]["n_images"] == 2
    out = visualize.comparison_figure(cmp, run / "box.png", box=(10, 10, 30, 20))
    assert png_size(out)[0] > 500


def test_best_box_is_where_the_method_gains():
    rng = np.random.default_rng(0)
    hr = rng.integers(100, 140, (64, 80, 3)).astype(np.uint8)
    hr[32:48, 40:60] = rng.integers(40, 200, (16, 20, 3))  # the detail
    noise = rng.normal(0, 8, hr.shape)
    noise[32:48, 40:60] *= 2  # bicubic-like: errs most where there is detail...
    base = np.clip(hr + noise, 0, 255).astype(np.uint8)
    better = np.clip(hr + noise / 2, 0, 255).astype(np.uint8)
    better[32:48, 40:60] = np.clip(hr + noise / 8, 0, 255)[32:48, 40:60]  # ...and the model gains most there
    better[0:16, 0:20] = hr[0:16, 0:20]  # exact where bicubic is fine too: a larger ratio, nothing to see
    assert visualize.best_box(hr, base, better) == (40, 32, 20, 16)
    x, y, w, h = visualize.best_box(hr, base, better, shave=4)  # the box never reaches into the shaved border
    assert x >= 4 and y >= 4 and x + w <= 76 and y + h <= 60


def test_authors_weights_next_to_another_report(run, weights_x2, tmp_path):
    sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", str(run / "Photos"), "--bicubic",
                 "--sample_dir", str(tmp_path / "sr"), "--report", str(tmp_path / "authors.json"), "--quiet"])
    cmp = visualize.load_comparison([run / "run.json", tmp_path / "authors.json"])
    assert [p.label for p in cmp.panels] == ["Bicubic", "DSRNet (fresh_x2)", "DSRNet (DSRNet_x2_600000)"]
    assert cmp.panels[2].psnr > cmp.panels[0].psnr + 1
    out = visualize.main(["compare", "--report", str(tmp_path / "authors.json"), "--out", str(tmp_path / "a.png")])
    assert png_size(out)[0] > 500


def test_curves(tmp_path):
    log = tmp_path / "log.csv"
    rows = ["step,loss,lr,samples_per_s,Set5_x2_psnr,Set5_x2_ssim,Set14_x2_psnr,Set14_x2_ssim"]
    for step in range(10, 210, 10):
        valid = f"{30 + step / 100},0.9,{28 + step / 100},0.8" if step % 50 == 0 else ",,,"
        rows.append(f"{step},{0.01 / step ** 0.5},{1e-3 * 0.5 ** (step // 100)},40.0,{valid}")
    log.write_text("\n".join(rows) + "\n")
    out = visualize.main(["curves", "--log", str(log)])
    assert out == tmp_path / "curves.png"
    w, h = png_size(out)
    assert 800 < w < 2000 and 300 < h < 800
    visualize.training_curves(log, tmp_path / "ref.png", references={"Bicubic": 29.0}, title="t")
    assert (tmp_path / "ref.png").stat().st_size > 10_000


def _edited_report(run: Path, tmp_path: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of the run's report (and its CSV) with ``edit`` applied to its settings."""
    doc = json.loads((run / "run.json").read_text())
    edit(doc["settings"])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    (tmp_path / "edited_per_image.csv").write_text((run / "run_per_image.csv").read_text())
    return path


@pytest.mark.parametrize("case, message", [
    ("missing report", "not found"),
    ("not json", "not valid JSON"),
    ("older report", "older sample.py"),
    ("no_save", "--no_save"),
    ("sr gone", "is missing"),
    ("unknown image", "no image matches --image nope"),
    ("box outside", "does not fit"),
    ("labels", "one --label per --report"),
    ("binary csv", r"not a sample.py per-image CSV \(ValueError: .*\\x00"),
])
def test_compare_errors(run, tmp_path, case, message):
    report = run / "run.json"
    extra: list[str] = []
    if case == "missing report":
        report = tmp_path / "absent.json"
    elif case == "not json":
        report = tmp_path / "bad.json"
        report.write_text("{")
    elif case == "older report":
        report = _edited_report(run, tmp_path, lambda s: s.pop("sr_dir"))
    elif case == "no_save":
        report = _edited_report(run, tmp_path, lambda s: s.update(sr_dir=None))
    elif case == "sr gone":
        report = _edited_report(run, tmp_path, lambda s: s.update(sr_dir=str(tmp_path / "nowhere")))
    elif case == "binary csv":
        report = _edited_report(run, tmp_path, lambda s: None)
        (tmp_path / "edited_per_image.csv").write_bytes(b"dataset,scale,method,image,psnr,ssim\nA,2,m,i,3\x001,1\n")
    elif case == "unknown image":
        extra = ["--image", "nope"]
    elif case == "box outside":
        extra = ["--image", "coffee", "--box", "100", "80", "40", "40"]
    else:
        extra = ["--label", "a", "b"]
    with pytest.raises(InputError, match=message):
        visualize.main(["compare", "--report", str(report), "--out", str(tmp_path / "f.png"), *extra])
    assert not (tmp_path / "f.png").exists()


def test_bicubic_only_needs_a_box(run, tmp_path):
    sample.main(["--bicubic", "--scale", "2", "--test_data_dir", str(run / "Photos"),
                 "--sample_dir", str(tmp_path / "sr"), "--report", str(tmp_path / "bic.json"), "--quiet"])
    with pytest.raises(InputError, match="pass --box"):
        visualize.main(["compare", "--report", str(tmp_path / "bic.json")])
    out = visualize.main(["compare", "--report", str(tmp_path / "bic.json"), "--box", "0", "0", "32", "32"])
    assert png_size(out)[0] > 300


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("a,b\n1,2\n", "no step, loss, lr column"),
    ("step,loss,lr\n", "no rows yet"),
    ("step,loss,lr\n1,x,0.1\n", "not a number"),
    (b"step,loss,lr\n1,\xff\xfe,0.1\n", "not a readable CSV"),
])
def test_curves_errors(tmp_path, content, message):
    log = tmp_path / "log.csv"
    if isinstance(content, bytes):
        log.write_bytes(content)
    elif content is not None:
        log.write_text(content)
    with pytest.raises(InputError, match=message):
        visualize.training_curves(log, tmp_path / "c.png")


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.visualize", "curves", "--log", str(tmp_path / "no.csv")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
