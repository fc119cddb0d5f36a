"""sample.py as a user runs it: reports, SR images, tiles, self-ensemble, HR-less input, error paths."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
from dsrnet.cli import USER_ERRORS
from dsrnet.data.images import read_image, write_image
from dsrnet.errors import InputError
from dsrnet.metrics import psnr_y
from model import Net, load_checkpoint
from model.inference import super_resolve
from model.precision import tf32

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env, check=False)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, benchmark_dir):
    """Two Set5 images in the EDSR layout, cropped small to keep the CLI tests quick."""
    root = tmp_path_factory.mktemp("data") / "Mini"
    for name in ("img_001", "img_003"):
        hr = read_image(benchmark_dir / "Set5" / "image_SRF_2" / f"{name}_SRF_2_HR.png")[:96, :120]
        lr = read_image(benchmark_dir / "Set5" / "image_SRF_2" / f"{name}_SRF_2_LR.png")[:48, :60]
        write_image(root / "HR" / f"{name}.png", hr)
        write_image(root / "LR_bicubic" / "X2" / f"{name}x2.png", lr)
    return root


def test_report_csv_markdown_and_images(weights_x2, small_set, tmp_path):
    report = tmp_path / "rep.json"
    results = sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", str(small_set), "--bicubic",
                           "--sample_dir", str(tmp_path / "sr"), "--report", str(report), "--quiet"])
    doc = json.loads(report.read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"Bicubic", "DSRNet"}
    assert rows["DSRNet"]["psnr"] > rows["Bicubic"]["psnr"] + 1
    assert rows["DSRNet"]["n_images"] == 2 and rows["DSRNet"]["layout"] == "edsr"
    assert rows["DSRNet"]["gate_branches"] == {"selected": 2}
    s = doc["settings"]
    assert s["gate_mode"] == "selected" and s["quantize"] == "truncate" and s["shave"] == "scale"
    assert s["group"] == 1
    assert s["checkpoint_sha256"] == "a3ecaa491d8200676d6ae80295786c60724d1f2504d64cb7fff35d38745b7bc3"
    assert doc["environment"]["torch"] == torch.__version__
    assert "| Mini | x2 |" in report.with_suffix(".md").read_text()
    csv_lines = (tmp_path / "rep_per_image.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4
    folder = tmp_path / "sr" / "DSRNet_x2_600000" / "Mini" / "x2" / "dsrnet"
    beside = folder.joinpath("per_image.csv").read_text().splitlines()  # with the branch each image took
    assert "branch" in beside[0].split(",") and len(beside) == 3 and all(",selected," in r for r in beside[1:])
    sr = read_image(folder / "img_001_SR.png")
    assert sr.shape == (96, 120, 3)
    assert results[1].psnr == rows["DSRNet"]["psnr"]


def test_report_records_the_upsampler_group_the_net_was_built_with(small_set, tmp_path):
    torch.save({"model": Net(2, group=2).state_dict(), "group": 2}, tmp_path / "g2.pth")
    sample.main(["--ckpt_path", str(tmp_path / "g2.pth"), "--test_data_dir", str(small_set), "--no_save",
                 "--report", str(tmp_path / "g2.json"), "--quiet"])
    assert json.loads((tmp_path / "g2.json").read_text())["settings"]["group"] == 2  # the checkpoint's, no flag
    sample.main(["--bicubic", "--scale", "2", "--test_data_dir", str(small_set), "--no_save",
                 "--report", str(tmp_path / "bic.json"), "--quiet"])
    assert json.loads((tmp_path / "bic.json").read_text())["settings"]["group"] is None


def test_deterministic_default(weights_x2, small_set, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # PyTorch's default; restored afterwards
    args = ["--ckpt_path", str(weights_x2), "--test_data_dir", str(small_set), "--no_save", "--quiet"]
    first, second = sample.main(args), sample.main(args)
    assert [(i.psnr, i.ssim) for i in first[0].images] == [(i.psnr, i.ssim) for i in second[0].images]
    assert torch.backends.cudnn.allow_tf32 is False  # on an Ampere+ GPU, float32 convs must not be TF32
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--tf32 needs an Ampere or newer GPU"):
            sample.main(args + ["--tf32"])
    monkeypatch.setattr(sample, "tf32_supported", lambda device: True)  # as on an Ampere+ GPU
    sample.main(args + ["--tf32"])
    assert torch.backends.cudnn.allow_tf32 is True


def test_quantisation_end_to_end(weights_x2, small_set, tmp_path):
    """Saved SR images and scores are the float output truncated (the authors' ``.byte()``) by default and
    with --quantize truncate, rounded with --quantize round, and the two differ on these images."""
    device = "cuda" if torch.cuda.is_available() else "cpu"  # sample.py's default device
    net = load_checkpoint(weights_x2, device=device)
    lr, hr = read_image(small_set / "LR_bicubic" / "X2" / "img_001x2.png"), read_image(small_set / "HR" / "img_001.png")
    with tf32(False):
        sr = super_resolve(net, lr, 2).mul(255).clamp(0, 255).permute(1, 2, 0).cpu()
    want = {"truncate": sr.floor().byte().numpy(), "round": sr.add(0.5).floor().byte().numpy()}
    assert (want["truncate"] != want["round"]).mean() > 0.1
    assert psnr_y(want["truncate"], hr, 2) != psnr_y(want["round"], hr, 2)
    for mode in (None, "truncate", "round"):
        out = tmp_path / str(mode)
        [r] = sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", str(small_set), "--sample_dir",
                           str(out), "--quiet", *(["--quantize", mode] if mode else [])])
        [saved] = [p for p in out.rglob("*_SR.png") if p.name.startswith("img_001")]
        assert np.array_equal(read_image(saved), want[mode or "truncate"]), mode
        assert r.images[0].name == "img_001" and r.images[0].psnr == psnr_y(want[mode or "truncate"], hr, 2)


def test_tiles_match_whole_image(weights_x2, small_set):
    args = ["--ckpt_path", str(weights_x2), "--test_data_dir", str(small_set), "--no_save", "--quiet"]
    whole = sample.main(args)[0]
    tiled = sample.main(args + ["--tile", "56", "--tile_overlap", "20"])[0]
    assert abs(whole.psnr - tiled.psnr) < 0.01


def test_self_ensemble_runs_and_helps(weights_x2, small_set):
    args = ["--ckpt_path", str(weights_x2), "--test_data_dir", str(small_set), "--no_save", "--quiet"]
    plain = sample.main(args)[0]
    plus = sample.main(args + ["--self_ensemble"])[0]
    assert plus.method == "DSRNet+" and plus.psnr > plain.psnr


def test_bf16_is_close_to_float32_and_refused_where_emulated(weights_x2, small_set, monkeypatch):
    args = ["--ckpt_path", str(weights_x2), "--test_data_dir", str(small_set), "--no_save", "--quiet"]
    if sample.bf16_supported(sample.pick_device(False)):
        fp32, bf16 = sample.main(args)[0], sample.main(args + ["--bf16"])[0]
        assert bf16.psnr != fp32.psnr and abs(bf16.psnr - fp32.psnr) < 0.15  # 2 small crops: noisy
    monkeypatch.setattr(sample, "bf16_supported", lambda device: False)
    with pytest.raises(InputError, match="--bf16 needs native bfloat16"):
        sample.main(args + ["--bf16"])


def test_input_without_hr(weights_x2, tmp_path):
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    write_image(tmp_path / "in" / "a.png", img)
    sample.main(["--ckpt_path", str(weights_x2), "--input", str(tmp_path / "in"), "--sample_dir",
                 str(tmp_path / "out"), "--quiet"])
    out = read_image(tmp_path / "out" / "DSRNet_x2_600000" / "in" / "x2" / "a_x2_SR.png")
    assert out.shape == (40, 60, 3)


def test_bicubic_only_needs_scale(small_set):
    with pytest.raises(InputError, match="--scale"):
        sample.main(["--bicubic", "--test_data_dir", str(small_set), "--quiet"])
    (r,) = sample.main(["--bicubic", "--scale", "2", "--test_data_dir", str(small_set), "--no_save", "--quiet"])
    assert r.method == "Bicubic" and r.psnr > 20


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for n in needles:
        assert n in lines[0]


def test_cli_errors(weights_x2, small_set, tmp_path):
    _one_line_error(run_cli("--ckpt_path", str(weights_x2), "--test_data_dir", str(tmp_path / "nope")), "nope")
    _one_line_error(run_cli("--ckpt_path", str(tmp_path / "none.pth"), "--test_data_dir", str(small_set)),
                    "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    _one_line_error(run_cli("--ckpt_path", str(junk), "--test_data_dir", str(small_set)), "junk.pth")
    x4 = tmp_path / "x4.pth"
    torch.save(Net(scale=4).state_dict(), x4)
    _one_line_error(run_cli("--ckpt_path", str(x4), "--scale", "2", "--test_data_dir", str(small_set)),
                    "x4", "--scale 4")
    _one_line_error(run_cli("--ckpt_path", str(weights_x2), "--scale", "3", "--test_data_dir", str(small_set)),
                    "x2")
    no_gpu = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    _one_line_error(run_cli("--cuda", "--bicubic", "--scale", "2", "--test_data_dir", str(small_set), env=no_gpu),
                    "--cuda", "no CUDA device")
    _one_line_error(run_cli("--model", "edsr", "--bicubic", "--scale", "2", "--test_data_dir", str(small_set)),
                    "unknown --model 'edsr'")


def test_no_test_sets_found(tmp_path):
    """Without --test_data_dir, sample.py looks under the checkout's dataset/benchmark/: a copy of the code
    where that is absent must say so rather than report nothing."""
    code = [ROOT / "sample.py", *(f for pkg in ("dataset", "dsrnet", "model") for f in (ROOT / pkg).rglob("*.py"))]
    for path in code:
        (tmp_path / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / path.relative_to(ROOT))
    proc = subprocess.run([sys.executable, str(tmp_path / "sample.py"), "--bicubic", "--scale", "2", "--no_save"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    _one_line_error(proc, "no test sets: pass --test_data_dir")


def test_cli_corrupt_image(weights_x2, small_set, tmp_path):
    bad = tmp_path / "Bad"
    for sub in ("HR", "LR_bicubic/X2"):
        (bad / sub).mkdir(parents=True)
    write_image(bad / "HR" / "a.png", np.zeros((16, 16, 3), np.uint8))
    (bad / "LR_bicubic" / "X2" / "ax2.png").write_bytes(b"\x89PNG broken")
    _one_line_error(run_cli("--ckpt_path", str(weights_x2), "--test_data_dir", str(bad), "--no_save"), "ax2.png")


@pytest.fixture
def tiny_set(tmp_path, small_set) -> Path:
    """One 12x12 HR image: too small for SSIM's 11x11 window once x2 shaves 2 pixels per side."""
    root = tmp_path / "Tiny"
    write_image(root / "HR" / "a.png", read_image(small_set / "HR" / "img_001.png")[:12, :12])
    lr = read_image(small_set / "LR_bicubic" / "X2" / "img_001x2.png")[:6, :6]
    write_image(root / "LR_bicubic" / "X2" / "ax2.png", lr)
    return root


@pytest.mark.parametrize("extra, message", [
    (["--report", "{tmp}"], "is a folder"),
    (["--report", "{tmp}/r.json"], "r.md: it is a folder"),
    (["--sample_dir", "{tmp}/a_file/sr"], "a_file"),
    (["--group", "2"], "group 2"),
    (["--group", "-1"], "--group"),
    (["--tile", "64", "--tile_overlap", "-5"], "--tile_overlap"),
    (["--workers", "-1"], "--workers"),
    (["--shave", "-1"], "--shave"),
    (["--bicubic", "--scale", "1"], "must be 2 or more"),
])
def test_bad_settings_are_refused_before_work(weights_x2, small_set, tmp_path, extra, message):
    (tmp_path / "r.md").mkdir()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(USER_ERRORS, match=message):
        sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", str(small_set), "--quiet",
                     "--sample_dir", str(tmp_path / "sr"), *[a.format(tmp=tmp_path) for a in extra]])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / "a_file"]  # nothing written


def test_images_too_small_for_ssim_are_named(weights_x2, tiny_set):
    with pytest.raises(InputError, match=r"a: SSIM needs at least 11x11.*smaller --shave"):
        sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", str(tiny_set), "--no_save", "--quiet"])
