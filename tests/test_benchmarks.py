"""The speed benchmarks run end to end on tiny inputs: tables, reports, provenance, fast paths equal to eager.

Speed itself is never asserted here (see benchmarks/); only that every float32 path computes what the
authors' eager forward computes, and that the reports hold what was printed.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from dsrnet.cli import USER_ERRORS
from dsrnet.data.images import read_image, write_image
from dsrnet.data.pack import pack_hr_folder
from dsrnet.errors import InputError
from model import Net
from tools.benchmarks import alternatives, inference, memory_format, training
from tools.benchmarks.report import cpu_flags_line


def _rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


@pytest.mark.parametrize("branch", ["selected", "fixed"])
def test_forward_benchmark_paths_agree_and_report(weights_x2, tmp_path, capsys, branch):
    report = tmp_path / "speed.md"
    inference.main(["--ckpt_path", str(weights_x2), "--size", "24", "--rounds", "1", "--warmup", "0",
                    "--branch", branch, "--report", str(report)])
    printed = capsys.readouterr().out
    assert f", {branch} branch: " in printed
    assert report.read_text() == printed
    rows = _rows(printed)
    assert {"authors' code as written (autograd on)", "authors' forward under no_grad",
            "default path (fp32)"} <= rows.keys()
    for name, cells in rows.items():
        diff = float(cells[-1])
        assert diff <= 1e-4 if "bf16" not in name else 1e-4 < diff < 0.1, (name, diff)
    assert re.search(r"roof: a 2048\^3 matmul, \d+ GFLOP/s in fp32", printed)


def fake_roofs(monkeypatch, before: dict[str, float], after: dict[str, float]) -> None:
    """inference.matmul_roof answers ``before`` at each precision's first measurement, ``after`` at its second."""
    asked: list[str] = []

    def roof(device, precision="fp32", n=2048, rounds=5):
        asked.append(precision)
        return (before if asked.count(precision) == 1 else after)[precision]
    monkeypatch.setattr(inference, "matmul_roof", roof)


@pytest.mark.parametrize("after_fp32, warned", [(0.95e6, False), (0.5e6, True)])
def test_a_roof_that_moves_during_the_run_is_reported(weights_x2, tmp_path, capsys, monkeypatch, after_fp32, warned):
    """Roofs far above what a 24x24 forward reaches (so no path nears 100 %): 5 % apart passes, 50 % is named."""
    fake_roofs(monkeypatch, {"fp32": 1e6, "bf16": 2e6}, {"fp32": after_fp32, "bf16": 2e6})
    report = tmp_path / "speed.md"
    inference.main(["--ckpt_path", str(weights_x2), "--size", "24", "--rounds", "1", "--warmup", "0",
                    "--report", str(report)])
    printed = capsys.readouterr().out
    assert report.read_text() == printed
    assert "roof: a 2048^3 matmul, 1000000 GFLOP/s in fp32" in printed
    assert f"(before the timed runs; {after_fp32:.0f} GFLOP/s in fp32" in printed
    warnings = [line for line in printed.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: % of roof is unreliable (machine busy or CPU frequency changed): the fp32 roof "
                        "measured 1000000 GFLOP/s before the timed runs and 500000 after, 50 % apart "
                        "(tolerance 10 %)"] * warned
    assert printed.splitlines()[2] == cpu_flags_line()  # the CPU flags the timings ran with
    assert f"# CPU kernels {torch.backends.cpu.get_cpu_capability()}; CPU flags " in printed


def test_roof_warnings_name_both_measurements():
    stable = {"fp32": 188.0, "bf16": 421.0}
    assert inference.roof_warnings(stable, {"fp32": 180.0, "bf16": 430.0},
                                   {"default path (fp32)": ("fp32", 99.0), "bf16": ("bf16", 89.0)}) == []
    over = inference.roof_warnings({"fp32": 120.0}, {"fp32": 125.0}, {"default path (fp32)": ("fp32", 149.4)})
    assert over == ["warning: % of roof is unreliable (machine busy or CPU frequency changed): default path (fp32) "
                    "ran at 149 % of the fp32 roof, more than the machine can (120 GFLOP/s before the timed runs, "
                    "125 after)"]
    moved = inference.roof_warnings({"fp32": 120.0}, {"fp32": 188.0}, {"default path (fp32)": ("fp32", 149.4)})
    assert len(moved) == 2 and "the fp32 roof measured 120 GFLOP/s before the timed runs and 188 after, 36 % apart" \
        in moved[0]
    assert inference.roof_warnings({"fp32": 100.0}, {"fp32": 90.0}, {}, tolerance=0.1) == []  # at the tolerance
    assert inference.roof_warnings({"fp32": 100.0}, {"fp32": 89.0}, {}, tolerance=0.1) != []


def test_cpu_flags_line_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse2 avx2 fma avx512f\n")
    kernels = f"# CPU kernels {torch.backends.cpu.get_cpu_capability()}; CPU flags "
    assert cpu_flags_line(info) == kernels + "avx2 avx512f, no avx512_bf16, no amx_bf16"
    assert cpu_flags_line(tmp_path / "absent") == kernels + f"unknown ({tmp_path / 'absent'} unreadable)"


def test_end_to_end_loops_agree(weights_x2, benchmark_dir, tmp_path, capsys):
    inference.main(["--ckpt_path", str(weights_x2), "--end_to_end", str(benchmark_dir / "Set5"),
                    "--report", str(tmp_path / "e2e.md")])
    rows = _rows((tmp_path / "e2e.md").read_text())
    psnrs = {name: cells[-1] for name, cells in rows.items()}
    # the loops agree with each other; the value itself is pinned once, in test_paper.py
    assert psnrs["authors' loop as written (autograd on)"] == psnrs["authors' loop under no_grad"] == \
        psnrs["sample.py"] != "-"
    assert any(name.startswith("the default path's forwards alone") and p == "-" for name, p in psnrs.items())


def test_alternatives_compute_the_same(weights_x2, tmp_path, capsys):
    alternatives.main(["--ckpt_path", str(weights_x2), "--size", "24", "--rounds", "1", "--warmup", "0",
                       "--skip_compile", "--report", str(tmp_path / "alt.md")])
    rows = _rows((tmp_path / "alt.md").read_text())
    assert float(rows["oneDNN fused conv+ReLU"][-1]) <= 1e-4
    assert 0 < float(rows["Winograd F(4x4, 3x3)"][-1]) < 1e-3


def test_memory_format_benchmark_compares_equal_outputs(tmp_path, capsys):
    memory_format.main(["--scales", "2", "3", "--sizes", "24", "--rounds", "1", "--warmup", "0",
                        "--report", str(tmp_path / "layout.md")])
    printed = capsys.readouterr().out
    assert (tmp_path / "layout.md").read_text() == printed
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in printed.splitlines() if line.startswith("| x")]
    precisions = memory_format.precisions(torch.device("cpu"))
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(f"x{s}", "24", str(24 // s), p)
                                                        for s in (2, 3) for p in precisions]
    for r in rows:
        assert float(r[-1]) <= (1e-4 if r[3] == "fp32" else 1e-2), r
    with pytest.raises(InputError, match="HR 2 at x3 leaves no LR pixel"):
        memory_format.main(["--scales", "3", "--sizes", "2"])


def test_training_benchmark_reports_every_loop(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for k in range(2):
        write_image(tmp_path / "hr" / f"{k}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    pack_hr_folder(tmp_path / "hr", tmp_path / "tiny.h5", scales=(2,))
    report = tmp_path / "train.md"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        training.main(["--train_data_path", str(tmp_path / "tiny.h5"), "--batch_size", "2", "--patch_size", "8",
                       "--steps", "2", "--warmup", "1", "--num_workers", "0", "--report", str(report)])
    finally:
        torch.set_num_threads(before)
    printed = capsys.readouterr().out
    assert report.read_text() == printed
    rows = _rows(report.read_text())
    assert "naive (inline data, NCHW, fp32)" in rows and "Solver (0 workers, fp32)" in rows
    naive = float(rows["naive (inline data, NCHW, fp32)"][0])
    for name, (steps, samples, ratio) in rows.items():  # the columns agree (to their printed rounding)
        steps, samples, ratio = float(steps), float(samples), float(ratio.rstrip("x"))
        assert samples == pytest.approx(2 * steps, abs=0.011 + 0.05), name
        assert ratio == pytest.approx(steps / naive, abs=0.006 + 0.005 * (1 + ratio) / min(steps, naive)), name


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_provenance_reads_git(monkeypatch, tmp_path):
    """A clean checkout, one with a changed tracked file, a folder outside any repository, and no git at all."""
    from dsrnet import provenance

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path / "repo",
                       check=True, capture_output=True)

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "a.txt").write_text("a")
    git("init", "-q")
    git("add", "a.txt")
    git("commit", "-qm", "a")
    monkeypatch.setattr(provenance, "ROOT", tmp_path / "repo")
    assert len(provenance.git_commit()) == 40 and provenance.git_dirty() is False
    (tmp_path / "repo" / "a.txt").write_text("b")
    assert provenance.git_dirty() is True
    (tmp_path / "repo" / "new.txt").write_text("untracked files are not counted")
    git("checkout", "a.txt")
    assert provenance.git_dirty() is False
    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # not a repository (tmp_path lies outside this one)
    assert (provenance.git_commit(), provenance.git_dirty()) == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git command
    env = provenance.environment()
    assert (env["git_commit"], env["git_dirty"]) == (None, None)


def test_reports_name_the_commit_and_its_uncommitted_changes():
    from dsrnet.provenance import git_description
    from tools.benchmarks.report import provenance

    env = {"command": "python x.py", "torch": "2.14.1", "device_name": "", "platform": "Linux",
           "git_commit": "abc123", "git_dirty": True}
    assert git_description(env) == "abc123 (uncommitted changes)"
    assert git_description({**env, "git_dirty": False}) == "abc123"
    assert git_description({**env, "git_commit": None, "git_dirty": None}) == "unknown"
    assert provenance(env, 2) == "# python x.py\n# torch 2.14.1, Linux, 2 threads, git abc123 (uncommitted changes)"


@pytest.fixture
def bad_weights(weights_x2, tmp_path):
    """Checkpoints the baseline must refuse: cut short, random bytes, x3, and our trainer's format."""
    files = {name: tmp_path / f"{name}.pth" for name in ("truncated", "random", "x3", "trainer")}
    files["truncated"].write_bytes(weights_x2.read_bytes()[:5000])
    files["random"].write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save(Net(scale=3).state_dict(), files["x3"])
    torch.save({"model": Net(scale=2).state_dict(), "step": 1}, files["trainer"])
    return files


@pytest.mark.parametrize("ckpt, match", [("truncated", "cannot read checkpoint"), ("random", "cannot read checkpoint"),
                                         ("x3", "holds a x3 model"), ("trainer", "raw keys conv1.0.weight")])
def test_inference_refuses_other_weights(bad_weights, ckpt, match):
    with pytest.raises(USER_ERRORS, match=match):
        inference.main(["--ckpt_path", str(bad_weights[ckpt]), "--size", "16", "--rounds", "1", "--warmup", "0"])


@pytest.mark.parametrize("module, args, match", [
    (inference, ["--rounds", "0"], "--rounds must be an integer >= 1, got 0"),
    (inference, ["--size", "0"], "--size must be"),
    (inference, ["--warmup", "-1"], "--warmup must be an integer >= 0"),
    (inference, ["--threads", "-1"], "--threads must be an integer >= 1"),
    (inference, ["--report", "{tmp}"], "it is a folder"),
    (alternatives, ["--size", "18"], "--size must be a multiple of 4"),
    (alternatives, ["--size", "0"], "--size must be an integer >= 4"),
    (alternatives, ["--rounds", "0"], "--rounds must be"),
    (alternatives, ["--report", "{tmp}/a_file/alt.md"], "cannot write .*a_file/alt.md"),
])
def test_bad_flags_fail_before_timing(weights_x2, tmp_path, module, args, match):
    (tmp_path / "a_file").touch()
    with pytest.raises(USER_ERRORS, match=match):
        module.main(["--ckpt_path", str(weights_x2), "--size", "16", "--rounds", "1", "--warmup", "0",
                     *(a.format(tmp=tmp_path) for a in args)])


def test_end_to_end_names_an_image_too_small_to_score(weights_x2, benchmark_dir, tmp_path):
    hr = read_image(benchmark_dir / "Set5" / "image_SRF_2" / "img_001_SRF_2_HR.png")[:12, :12]
    write_image(tmp_path / "Tiny" / "HR" / "a.png", hr)
    write_image(tmp_path / "Tiny" / "LR_bicubic" / "X2" / "ax2.png", hr[::2, ::2])
    with pytest.raises(InputError, match="a: SSIM needs at least 11x11"):
        inference.main(["--ckpt_path", str(weights_x2), "--end_to_end", str(tmp_path / "Tiny")])


def test_alternatives_refuse_an_x3_file(bad_weights):
    with pytest.raises(USER_ERRORS, match="holds a x3 model"):
        alternatives.main(["--ckpt_path", str(bad_weights["x3"]), "--size", "16", "--skip_compile"])


@pytest.mark.parametrize("args, match", [
    (["--steps", "0"], "--steps must be an integer >= 1"), (["--batch_size", "0"], "--batch_size must be"),
    (["--scale", "0"], "--scale must be 2, 3 or 4"), (["--warmup", "0"], "--warmup must be an integer >= 1"),
    (["--report", "{tmp}"], "it is a folder"), (["--train_data_path", "{tmp}/junk.h5"], "not a readable HDF5"),
])
def test_training_refuses_bad_flags(args, match, tmp_path):
    (tmp_path / "junk.h5").write_text("not HDF5")
    with pytest.raises(USER_ERRORS, match=match):
        training.main(["--train_data_path", str(tmp_path / "absent.h5"), "--steps", "2", "--warmup", "1",
                       "--num_workers", "0", *(a.format(tmp=tmp_path) for a in args)])
