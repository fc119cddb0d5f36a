"""export_onnx.py: the exported graph runs in ONNX Runtime like PyTorch at any size; what cannot export is refused."""
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from dsrnet.cli import USER_ERRORS
from dsrnet.errors import InputError
from model import Net, load_checkpoint
from tools import export_onnx
from tools.export_onnx import TOLERANCE, check, export

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((20, 28), (33, 17))  # two LR sizes, neither the 16x16 the graph was traced with


def test_authors_x2(weights_x2, tmp_path):
    net = load_checkpoint(weights_x2)
    path = export(net, 2, tmp_path / "x2.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    (lr,), (sr,) = model.graph.input, model.graph.output
    assert (lr.name, sr.name) == ("lr", "sr")
    assert [d.dim_param or d.dim_value for d in lr.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert check(path, net, 2, SIZES) <= TOLERANCE
    assert check(path, net, 2, ((12, 9),), batch=2) <= TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["x2.onnx"]  # no temp file left behind


@pytest.mark.parametrize("scale", [3, 4])
def test_random_x3_x4(scale, tmp_path):
    torch.manual_seed(scale)
    net = Net(scale=scale).eval()
    assert check(export(net, scale, tmp_path / f"x{scale}.onnx"), net, scale, SIZES) <= TOLERANCE


def test_fixed_gate_and_multi_scale(tmp_path):
    net = Net(multi_scale=True, gate_mode="fixed").eval()
    assert check(export(net, 3, tmp_path / "ms_x3.onnx"), net, 3, SIZES[:1]) <= TOLERANCE
    with pytest.raises(InputError, match="not x5"):
        export(net, 5, tmp_path / "ms_x5.onnx")


@pytest.mark.parametrize("mode", ["sample", "argmax"])
def test_host_side_gates_are_refused(mode, tmp_path):
    with pytest.raises(InputError, match="cannot be exported"):
        export(Net(scale=2, gate_mode=mode), 2, tmp_path / "g.onnx")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def random_ckpts(tmp_path_factory):
    """Our-format checkpoints of random nets: a x2 and a multi-scale one."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.save({"model": Net(scale=2).state_dict()}, root / "x2.pth")
    torch.save({"model": Net(multi_scale=True).state_dict()}, root / "ms.pth")
    return root


def test_cli_check_on_a_multi_scale_checkpoint(random_ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = export_onnx.main(["--ckpt_path", str(random_ckpts / "ms.pth"), "--scale", "4", "--check",
                           "--speed_size", "16", "--report", "onnx.md"])
    assert out == Path("ms_x4.onnx") and out.is_file()
    printed = capsys.readouterr().out
    assert "max |onnxruntime - pytorch|" in printed and "onnxruntime / pytorch =" in printed
    report = Path("onnx.md").read_text()
    assert report.startswith("# ") and "threads, git " in report and report in printed


@pytest.mark.parametrize("args, message", [
    (["--scale", "3"], "holds a x2 model"),
    (["--opset", "9"], "--opset 9"),
    (["--gate", "maybe"], "unknown --gate"),
    (["--report", "onnx.md"], "add --check"),
    (["--check", "--report", "/proc/onnx.md"], "cannot write /proc/onnx.md"),
])
def test_cli_bad_input(random_ckpts, tmp_path, args, message):
    with pytest.raises(USER_ERRORS, match=message):
        export_onnx.main(["--ckpt_path", str(random_ckpts / "x2.pth"), "--output", str(tmp_path / "o.onnx"), *args])
    assert not list(tmp_path.iterdir())


def test_multi_scale_needs_a_scale(random_ckpts, tmp_path):
    with pytest.raises(USER_ERRORS, match="multi-scale checkpoint: pass --scale 2, 3 or 4"):
        export_onnx.main(["--ckpt_path", str(random_ckpts / "ms.pth"), "--output", str(tmp_path / "o.onnx")])
    assert not list(tmp_path.iterdir())


def test_check_over_tolerance_exits_1(random_ckpts, tmp_path, monkeypatch, capsys):
    """--check measures, prints, and fails the command when ONNX Runtime strays past the tolerance."""
    monkeypatch.setattr(export_onnx, "check", lambda *args, **kwargs: 2 * TOLERANCE)
    monkeypatch.setattr(export_onnx, "compare_speed", lambda *args, **kwargs: (1.0, 1.0))  # not timed here
    with pytest.raises(SystemExit) as stop:
        export_onnx.main(["--ckpt_path", str(random_ckpts / "x2.pth"), "--output", str(tmp_path / "o.onnx"),
                          "--check", "--speed_size", "8"])
    assert stop.value.code == 1
    out, err = capsys.readouterr()
    assert f"max |onnxruntime - pytorch| = {2 * TOLERANCE:.2e}" in out
    assert err == f"error: ONNX Runtime differs from PyTorch by {2 * TOLERANCE:.2e} > {TOLERANCE:g}\n"


@pytest.mark.parametrize("args, message", [
    (["--ckpt_path", "missing.pth"], "error: checkpoint not found"),
    (["--ckpt_path", "any.pth", "--gate", "sample"], "error: gate mode 'sample' cannot be exported"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "tools.export_onnx", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
