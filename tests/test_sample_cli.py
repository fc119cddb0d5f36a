"""sample.py's flags as a user meets them: --input modes and names, --output, --device, help with defaults,
contradictory or out-of-range flags refused in one line before any work, a full disk, an unwritable LR cache."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from dsrnet.data.images import read_planes, write_image
from dsrnet.data.imresize import imresize
from dsrnet.errors import InputError
from dsrnet.metrics import luma, to_uint8
from model import Net, load_checkpoint
from model.inference import super_resolve

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(1)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env)


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


@pytest.fixture
def photo(tmp_path) -> Path:
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "in" / name, RNG.integers(0, 256, (14, 18, 3), dtype=np.uint8))
    return tmp_path / "in" / "a.png"


def test_help_shows_defaults_and_device():
    out = run_cli("--help", env={**os.environ, "COLUMNS": "250"}).stdout  # one option per line
    for text in ("(default: 24)", "(default: selected)", "(default: results/sr)", "(default: 2)",
                 "--device DEVICE", "cpu, cuda or cuda:N", "--output OUTPUT", "at least 18"):
        assert text in out, text


@pytest.mark.parametrize("extra, message", [
    (["--input", "{photo}", "--no_save"], "--no_save has nothing to act on"),
    (["--input", "{photo}", "--report", "{tmp}/r.json"], "--report has nothing to act on"),
    (["--input", "{photo}", "--test_data_dir", "{tmp}"], "--test_data_dir has nothing to act on"),
    (["--input", "{photo}", "--shave", "2"], "--shave has nothing to act on"),
    (["--input", "{photo}", "--bicubic"], "upscales with one method"),
    (["--input", "{tmp}/in", "--output", "{tmp}/one.png"], "is one file but there are 2 images"),
    (["--output", "{tmp}/x.png"], "--output names where --input's images go"),
    (["--scale", "2", "2"], "repeats a scale"),
    (["--group", "0"], "--group must be an integer >= 1"),
    (["--seed", str(2**64), "--gate", "sample"], "--seed 18446744073709551616 is out of range"),
    (["--seed", "-1"], "out of range"),
    (["--tile_overlap", "17"], "below DSRNet's receptive radius (18"),
    (["--tile", "1"], "--tile 1 is too small"),
    (["--tile", "51", "--tile_overlap", "18"], "pass --tile 52 or more"),
    (["--device", "tpu"], "--device tpu: pass cpu, cuda or cuda:N"),
    (["--cuda", "--device", "cpu"], "contradict"),
])
def test_contradictory_and_out_of_range_flags_are_refused_before_work(weights_x2, photo, tmp_path, extra, message):
    args = [a.format(photo=photo, tmp=tmp_path) for a in extra]
    if "--input" not in args and "--output" not in args:
        args += ["--test_data_dir", str(tmp_path / "none")]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        sample.main(["--ckpt_path", str(weights_x2), "--quiet", "--sample_dir", str(tmp_path / "sr"), *args])
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_cli_refusals_are_one_line(weights_x2, photo):
    one_line_error(run_cli("--ckpt_path", str(weights_x2), "--gate", "sample", "--seed", str(10**23),
                           "--input", str(photo)), "--seed")
    one_line_error(run_cli("--ckpt_path", str(weights_x2), "--input", str(photo), "--no_save"), "--no_save")


def test_same_stem_inputs_keep_distinct_outputs(weights_x2, tmp_path):
    folder = tmp_path / "in"
    for name in ("a.png", "a.jpg", "b.png"):
        write_image(folder / name, RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    sample.main(["--ckpt_path", str(weights_x2), "--input", str(folder), "--output", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_jpg_x2_SR.png", "a_png_x2_SR.png",
                                                                   "b_x2_SR.png"]
    assert not np.array_equal(read_planes(tmp_path / "out" / "a_jpg_x2_SR.png").rgb,
                              read_planes(tmp_path / "out" / "a_png_x2_SR.png").rgb)


def test_output_file_and_folder(weights_x2, photo, tmp_path, capsys):
    dst = tmp_path / "my" / "photo_x2.png"
    sample.main(["--ckpt_path", str(weights_x2), "--input", str(photo), "--output", str(dst)])
    assert capsys.readouterr().out.strip() == str(dst)
    assert read_planes(dst).rgb.shape == (28, 36, 3)
    sample.main(["--ckpt_path", str(weights_x2), "--input", str(photo), "--output", str(tmp_path / "folder")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "folder" / "a_x2_SR.png")

def test_an_output_never_overwrites_an_input(photo):
    """A rerun on a folder that already holds its results would overwrite a_x2_SR.png, one of its inputs."""
    (photo.parent / "a_x2_SR.png").write_bytes(photo.read_bytes())
    with pytest.raises(InputError, match="would overwrite the input"):
        sample.main(["--bicubic", "--scale", "2", "--input", str(photo.parent), "--output", str(photo.parent)])
    linked = photo.parent.parent / "linked"  # the same file under another name: a hard link
    linked.mkdir()
    os.link(photo, linked / "a_x2_SR.png")
    with pytest.raises(InputError, match=rf"linked/a_x2_SR.png would overwrite the input .*{photo.name}"):
        sample.main(["--bicubic", "--scale", "2", "--input", str(photo), "--output", str(linked)])


def test_gray_stays_gray_and_alpha_is_kept(weights_x2, tmp_path):
    rgb = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    gray, alpha = rgb[..., 1], rgb[..., 2]
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([gray, alpha])).save(tmp_path / "la.png")
    for name in ("g", "rgba", "la"):
        sample.main(["--ckpt_path", str(weights_x2), "--input", str(tmp_path / f"{name}.png"),
                     "--output", str(tmp_path / f"{name}_sr.png")])
    net = load_checkpoint(weights_x2)
    expected_gray = to_uint8(luma(super_resolve(net, np.dstack([gray] * 3), 2)))[..., 0]
    with Image.open(tmp_path / "g_sr.png") as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), expected_gray)
    with Image.open(tmp_path / "rgba_sr.png") as im:
        assert im.mode == "RGBA"
        out = np.asarray(im)
    np.testing.assert_array_equal(out[..., :3], to_uint8(super_resolve(net, rgb, 2)))
    np.testing.assert_array_equal(out[..., 3], imresize(alpha, 2))
    with Image.open(tmp_path / "la_sr.png") as im:
        assert im.mode == "LA"
        np.testing.assert_array_equal(np.asarray(im), np.dstack([expected_gray, imresize(alpha, 2)]))
    sample.main(["--bicubic", "--scale", "2", "--input", str(tmp_path / "g.png"), "--output", str(tmp_path / "b.png")])
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), imresize(gray, 2))


def test_alpha_into_jpeg_is_refused_before_work(weights_x2, tmp_path):
    Image.fromarray(RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="cannot hold RGBA images"):
        sample.main(["--ckpt_path", str(weights_x2), "--input", str(tmp_path / "a.png"),
                     "--output", str(tmp_path / "a.jpg")])
    assert not (tmp_path / "a.jpg").exists()


def test_device_flag_and_cuda_alias():
    assert sample.device_from_flags(sample.parse_args(["--device", "cpu"])) == torch.device("cpu")
    if torch.cuda.is_available():
        assert sample.device_from_flags(sample.parse_args(["--cuda"])) == torch.device("cuda")
        assert sample.device_from_flags(sample.parse_args(["--device", "cuda:0"])) == torch.device("cuda:0")
    else:
        with pytest.raises(InputError, match="--cuda was given but no CUDA device is available"):
            sample.device_from_flags(sample.parse_args(["--cuda"]))
        with pytest.raises(InputError, match="--device cuda:0 .*asks for CUDA"):
            sample.device_from_flags(sample.parse_args(["--device", "cuda:0"]))


def test_checkpoint_group_is_the_default(tmp_path, photo):
    """--group used to default to 1, so a group-2 checkpoint failed unless --group 2 was repeated."""
    torch.save({"model": Net(2, group=2).state_dict(), "group": 2}, tmp_path / "g2.pth")
    sample.main(["--ckpt_path", str(tmp_path / "g2.pth"), "--input", str(photo), "--output", str(tmp_path / "o")])
    assert (tmp_path / "o" / "a_x2_SR.png").is_file()


def test_full_disk_is_one_line(weights_x2, photo, tmp_path):
    code = ("import errno, os, pathlib, sys\n"
            "def full(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "pathlib.Path.write_bytes = full\n"
            "import sample\nfrom dsrnet.cli import run_cli\n"
            "run_cli(lambda: sample.main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "--ckpt_path", str(weights_x2), "--input", str(photo),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    one_line_error(proc, "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []  # no temp file left behind


def test_hr_only_evaluation_with_unwritable_cache(tmp_path):
    write_image(tmp_path / "Set" / "HR" / "a.png", RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    (tmp_path / "a_file").write_text("")
    env = {**os.environ, "DSRNET_CACHE": str(tmp_path / "a_file" / "cache")}
    proc = run_cli("--bicubic", "--scale", "2", "--test_data_dir", str(tmp_path / "Set"), "--no_save", "--quiet",
                   env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Bicubic" in proc.stdout and "not cached" in proc.stderr


def test_the_readmes_b100_path_finds_the_downloaded_bsd100(tmp_path):
    """README's command names dataset/benchmark/B100; the SelfExSR download names it BSD100: it runs, saying so."""
    d = tmp_path / "benchmark" / "BSD100" / "image_SRF_2"
    hr = RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    write_image(d / "img_001_SRF_2_HR.png", hr)
    write_image(d / "img_001_SRF_2_LR.png", imresize(hr, 0.5))
    proc = run_cli("--bicubic", "--scale", "2", "--test_data_dir", str(tmp_path / "benchmark" / "B100"),
                   "--no_save", "--quiet", "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "B100" in line]
    assert len(notes) == 1 and str(tmp_path / "benchmark" / "BSD100") in notes[0], proc.stderr
    assert "Bicubic  BSD100" in proc.stdout


def test_neither_b100_nor_bsd100_is_one_line_naming_bsd100(tmp_path):
    one_line_error(run_cli("--bicubic", "--scale", "2", "--test_data_dir", str(tmp_path / "B100"), "--no_save"),
                   "BSD100")
