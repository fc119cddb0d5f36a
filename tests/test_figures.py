"""Figures and the demo around them: a clean git after documented commands, the demo's startup checks,
the comparison crop and captions, curves with a bicubic line and several runs, the gate's branches figure."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import demo
import sample
from dsrnet.errors import InputError
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


def test_demo_refuses_multi_scale_authors_weights_at_startup(tmp_path):
    """sample.py would need --scale for them, after training: refused first (a x4 file: test_reliability)."""
    torch.save(Net(scale=2, multi_scale=True).state_dict(), tmp_path / "ms.pth")
    with pytest.raises(InputError, match="holds a multi-scale model"):
        demo.main(["--quick", "--authors_ckpt", str(tmp_path / "ms.pth"), "--out", str(tmp_path / "out")])
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


# --------------------------------------------------------------------------- curves and branches

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A two-image validation set named Photos (LR made by the MATLAB-style bicubic, cached in a temp folder)."""
    from skimage import data

    from dsrnet.data.images import write_image

    root = tmp_path_factory.mktemp("valid")
    write_image(root / "Photos" / "astronaut.png", data.astronaut()[40:136, 160:288])
    write_image(root / "Photos" / "coffee.png", data.coffee()[100:196, 200:328])
    return root / "Photos"


@pytest.fixture()
def figures(monkeypatch) -> list:
    """The matplotlib figures the CLI would have saved, kept for inspection (and still written)."""
    kept: list = []
    save = visualize._save
    monkeypatch.setattr(visualize, "_save", lambda fig, out: kept.append(fig) or save(fig, out))
    return kept


def _log(folder: Path, psnr: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["step,loss,lr,samples_per_s,Photos_x2_psnr,Photos_x2_ssim"]
    rows += [f"{s},{0.01 / s},{1e-3},40.0," + (f"{psnr + s / 100},0.9" if s % 20 == 0 else ",")
             for s in range(10, 90, 10)]
    (folder / "log.csv").write_text("\n".join(rows) + "\n")
    return folder / "log.csv"


def _legend(fig, panel: int) -> list[str]:
    return [t.get_text() for t in fig.axes[panel].get_legend().get_texts()]


def test_curves_draw_bicubic_on_the_validation_set_the_checkpoint_records(tmp_path, photos, figures, monkeypatch):
    monkeypatch.setenv("DSRNET_CACHE", str(tmp_path / "cache"))
    log = _log(tmp_path / "run", 20.0)
    torch.save({"model": Net(scale=2).state_dict(), "config": {"valid_data_dir": [str(photos)], "shave": None}},
               tmp_path / "run" / "run_80.pth")
    bicubic = visualize.bicubic_references([log])
    sample_report = tmp_path / "bic.json"
    sample.main(["--bicubic", "--scale", "2", "--test_data_dir", str(photos), "--no_save", "--report",
                 str(sample_report), "--quiet"])
    expected = json.loads(sample_report.read_text())["results"][0]["psnr"]
    assert bicubic == {"Photos x2 bicubic": pytest.approx(expected, abs=1e-9)}
    visualize.main(["curves", "--log", str(log)])
    assert f"Photos x2 bicubic {expected:.2f}" in _legend(figures[-1], 1)  # axes: loss, psnr, lr twin
    visualize.main(["curves", "--log", str(log), "--no_bicubic", "--out", str(tmp_path / "plain.png")])
    assert not any("bicubic" in t for t in _legend(figures[-1], 1))


def test_curves_draw_the_learned_gates_fixed_share_in_a_third_panel(tmp_path, figures):
    plain = _log(tmp_path / "static", 20.0)
    gated = tmp_path / "learned" / "log.csv"
    gated.parent.mkdir()
    shares = [0.8, 0.5, 0.2, 0.05]
    gated.write_text("step,loss,lr,samples_per_s,fixed_share\n"
                     + "".join(f"{10 * (i + 1)},{0.01},{1e-3},40.0,{v}\n" for i, v in enumerate(shares)))
    visualize.main(["curves", "--log", str(plain), "--no_bicubic", "--out", str(tmp_path / "plain.png")])
    assert len(figures[-1].axes) == 3  # loss, psnr, lr twin: no gate panel without the column
    visualize.main(["curves", "--log", str(plain), str(gated), "--no_bicubic", "--out", str(tmp_path / "both.png")])
    gate_panel = figures[-1].axes[2]
    assert "fixed" in gate_panel.get_title()
    assert [t.get_text() for t in gate_panel.get_legend().get_texts()] == ["learned"]
    assert list(gate_panel.get_lines()[0].get_ydata()) == shares
    visualize.main(["curves", "--log", str(gated), "--no_bicubic", "--out", str(tmp_path / "gated.png")])
    assert [ax.get_title() for ax in figures[-1].axes][:2] == ["Training loss and learning rate",
                                                               "Learned gate: share of patches to 'fixed'"]


def test_curves_of_several_runs_side_by_side(tmp_path, photos, figures, monkeypatch, capsys):
    monkeypatch.setenv("DSRNET_CACHE", str(tmp_path / "cache"))
    logs = [str(_log(tmp_path / name, psnr)) for name, psnr in (("a", 20.0), ("b", 22.0))]
    with pytest.raises(InputError, match="1 labels for 2 logs: pass one --label per --log"):
        visualize.main(["curves", "--log", *logs, "--label", "only"])
    out = visualize.main(["curves", "--log", *logs, "--label", "static", "learned", "--valid_data_dir", str(photos),
                          "--out", str(tmp_path / "both.png")])
    assert out.is_file()
    legend = _legend(figures[-1], 1)
    assert legend[:2] == ["static Photos_x2", "learned Photos_x2"] and legend[2].startswith("Photos x2 bicubic")
    assert [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()][:2] == ["static loss", "learned loss"]
    visualize.main(["curves", "--log", *logs, "--no_bicubic", "--out", str(tmp_path / "names.png")])
    assert _legend(figures[-1], 1) == ["a Photos_x2", "b Photos_x2"]  # default labels: the runs' folders
    visualize.main(["curves", "--log", logs[0], "--out", str(tmp_path / "none.png")])  # no checkpoint: a note
    assert "no bicubic line for Photos_x2_psnr" in capsys.readouterr().err


def _routed_report(tmp_path: Path, photos: Path, header: str, rows: list[str]) -> Path:
    """A sample.py-style report (saved without images) whose per-image CSV is ``header`` + ``rows``."""
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"settings": {"sr_dir": None, "test_data_dirs": [str(photos)]}, "results": []}))
    (tmp_path / "r_per_image.csv").write_text("\n".join([header, *rows]) + "\n")
    return report


def test_branches_groups_images_by_the_branch_they_took(tmp_path, photos, figures, monkeypatch):
    monkeypatch.setenv("DSRNET_CACHE", str(tmp_path / "cache"))
    header = "dataset,scale,method,image,psnr,ssim,seconds,branch,gflops"
    report = _routed_report(tmp_path, photos, header, [
        "Photos,2,Bicubic,astronaut,30.1,0.9,0.1,,", "Photos,2,Bicubic,coffee,31.2,0.9,0.1,,",
        "Photos,2,DSRNet,astronaut,32.5,0.95,0.2,fixed,3.1", "Photos,2,DSRNet,coffee,33.5,0.95,0.2,selected,2.4"])
    out = visualize.main(["branches", "--report", str(report)])
    assert out == tmp_path / "r_branches.png" and out.stat().st_size > 10_000
    titles = [ax.get_title(loc="left") for ax in figures[-1].axes]
    assert titles[1].startswith("selected: 1 image") and titles[1].endswith("mean 2.4 GFLOPs per image")
    assert titles[2].startswith("fixed: 1 image") and titles[2].endswith("mean 3.1 GFLOPs per image")
    texts = {t.get_text() for ax in figures[-1].axes for t in ax.texts}
    assert {"coffee\n33.50 dB", "astronaut\n32.50 dB"} <= texts
    routed = visualize.load_routing(report)
    assert [(r.name, r.branch) for r in routed] == [("astronaut", "fixed"), ("coffee", "selected")]
    assert all(r.texture > 0 and max(r.thumb.shape[:2]) <= visualize.THUMB for r in routed)


@pytest.mark.parametrize("header, rows, message", [
    ("dataset,scale,method,image,psnr,ssim,seconds", ["Photos,2,DSRNet,coffee,33.5,0.95,0.2"], "no branch column"),
    ("dataset,scale,method,image,psnr,ssim,seconds,branch", ["Photos,2,Bicubic,coffee,30,0.9,0.1,"],
     "no image with a branch"),
    ("dataset,scale,method,image,psnr,ssim,seconds,branch", ["Photos,2,DSRNet,coffee,x,0.9,0.1,fixed"],
     "not a sample.py per-image CSV"),
])
def test_branches_errors(tmp_path, photos, header, rows, message):
    report = _routed_report(tmp_path, photos, header, rows)
    with pytest.raises(InputError, match=message):
        visualize.main(["branches", "--report", str(report)])
    assert not (tmp_path / "r_branches.png").exists()


# --------------------------------------------------------------------------- the tools' flags

def _help(module: str, argv: list[str], capsys) -> str:
    """The --help text of a CLI's parser, whitespace-normalised (argparse wraps to the terminal's width)."""
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main([*argv, "--help"])
    assert stop.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module, argv, shown", [
    ("demo", [], ["the gate (default: 0)", "DataLoader workers (0: patches cut in-process) (default: 0)"]),
    ("tools.visualize", ["curves"], ["(default: as the run's checkpoint records)"]),
    ("tools.export_onnx", [], ["ONNX opset version (default: 17)"]),
    ("tools.benchmarks.alternatives", [], ["(a multiple of 4) (default: 128)", "untimed rounds first (default: 2)"]),
    ("tools.benchmarks.complexity", [], ["cpu, cuda or cuda:N (default: cpu)", "(default: results/complexity.md)"]),
    ("tools.benchmarks.inference", [], ["cpu, cuda or cuda:N (default: cpu)", "(default: 10)", "(default: 128)"]),
    ("tools.benchmarks.memory_format", [], ["cpu, cuda or cuda:N (default: cpu)", "(default: [256, 512, 1024])"]),
    ("tools.benchmarks.training", [], ["patches per step (default: 16)", "timed steps per loop (default: 60)"]),
])
def test_help_shows_defaults(module, argv, shown, capsys):
    text = _help(module, argv, capsys)
    for phrase in shown:
        assert phrase in text


def test_report_is_the_one_name_and_output_still_works():
    complexity = importlib.import_module("tools.benchmarks.complexity")
    assert complexity.parse_args(["--report", "a.md"]).report == "a.md"
    assert complexity.parse_args(["--output", "b.md"]).report == "b.md"  # the older name, used by scripts


@pytest.mark.parametrize("module, argv", [
    ("tools.benchmarks.inference", ["--device", "cuda:0"]), ("tools.benchmarks.inference", ["--cuda"]),
    ("tools.benchmarks.memory_format", ["--device", "cuda:1"]), ("tools.benchmarks.complexity", ["--device", "cuda"]),
])
def test_device_flag_cuda_n_and_the_cuda_alias(module, argv):
    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    with pytest.raises(InputError, match="asks for CUDA but none is available"):
        importlib.import_module(module).main(argv)


def test_device_flag_refuses_other_devices_in_one_line(tmp_path):
    proc = _run(["-m", "tools.benchmarks.inference", "--device", "tpu", "--report", str(tmp_path / "r.md")], ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --device tpu: pass cpu, cuda or cuda:N")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.md").exists()
