"""tools/benchmarks/complexity.py: parameter and FLOP counts against hand arithmetic, and a --quick report."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsrnet.errors import InputError
from model import Net, load_checkpoint
from model.precision import bf16_supported
from tools.benchmarks import complexity
from tools.benchmarks.complexity import (
    closest_combinations,
    count_flops,
    count_parameters,
    meta_net,
    parameter_rows,
    used_parameter_names,
)

ROOT = Path(__file__).resolve().parents[1]

# Parameters, written out: every body conv is 64->64 without bias; the upsampler convs have a bias.
C = 64
CONV3 = C * C * 9                      # a 3x3 body conv
CONV1 = C * C                          # a 1x1 body conv
RGB = 3 * C * 9                        # conv1 (3->64) and conv17 (64->3), 3x3
SHIFT = 3 * 3 + 3                      # one mean shift: 1x1 conv 3->3 with bias
GATE = (C * 16 + 16) + (16 * 2 + 2)    # fc1 64->16, fc2 16->2
ALWAYS = 2 * RGB + 13 * CONV3          # conv1, conv17; conv2-conv8 and conv11-conv16
UNUSED = 2 * CONV3                     # conv9, conv10
BRANCH = {"selected": 2 * CONV3 + 2 * CONV1, "fixed": 4 * CONV3}
UP = {2: C * 4 * C * 9 + 4 * C, 3: C * 9 * C * 9 + 9 * C, 4: 2 * (C * 4 * C * 9 + 4 * C)}


def test_released_file_total(weights_x2):
    net = load_checkpoint(weights_x2)
    total = ALWAYS + UNUSED + BRANCH["selected"] + BRANCH["fixed"] + GATE + 2 * SHIFT + UP[2]
    assert count_parameters(net) == total == 934_602
    assert count_parameters(net, trainable_only=True) == total - 2 * SHIFT
    rows = dict(parameter_rows(net, 2))
    assert rows["selected-branch network + gate"] == 713_418
    assert rows["fixed-branch network + gate"] == 778_954


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_used_parameters_per_branch(scale):
    net = meta_net(scale)
    for branch, size in BRANCH.items():
        net.set_gate(branch)
        used = used_parameter_names(net, scale)
        assert count_parameters(net, used) == ALWAYS + size + 2 * SHIFT + UP[scale]
        assert not any(".conv9." in n or ".conv10." in n or ".gate." in n for n in used)
    rows = dict(parameter_rows(net, scale))
    assert rows["selected-branch network + gate − mean shift"] == ALWAYS + BRANCH["selected"] + GATE + UP[scale]


def test_the_gate_counts_when_it_decides():
    net = Net(scale=2, gate_mode="argmax").eval()
    gate = {n for n, _ in net.named_parameters() if ".gate." in n}
    assert gate <= used_parameter_names(net, 2)


def macs_per_lr_pixel(scale: int, branch: str) -> int:
    """Multiply-accumulates per LR pixel, by hand (biases are not counted)."""
    body = (3 + 2 + 1 + 3 + 6) * CONV3         # conv2-4, conv5-6, conv7, conv8 three times, conv11-16
    lr_side = 9 + RGB + body + BRANCH[branch]   # sub_mean, conv1, body, the branch
    if scale == 4:                              # two 2x stages, the second on a 2x larger map
        up = C * 4 * C * 9 + 4 * (C * 4 * C * 9)
    else:
        up = C * scale * scale * C * 9
    hr_side = scale * scale * (RGB + 9)         # conv17 and add_mean on every HR pixel
    return lr_side + up + hr_side


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("branch", ["selected", "fixed"])
def test_flops_match_the_per_pixel_formula(scale, branch):
    h, w = 5, 7
    macs = macs_per_lr_pixel(scale, branch) * h * w
    assert count_flops(meta_net(scale, branch), (h, w), scale) == (2 * macs, macs)


def test_flops_on_a_real_net_equal_the_meta_count():
    assert count_flops(Net(scale=2).eval(), (6, 4), 2) == count_flops(meta_net(2), (6, 4), 2)


def test_closest_combinations_finds_an_exact_count():
    nets = {s: meta_net(s) for s in (2, 3, 4)}
    target = ALWAYS + UP[3] + GATE + BRANCH["fixed"]
    (n, desc), *_ = closest_combinations(nets, target)
    assert n == target and desc == "core + x3 upsampler + fixed branch + gate"


def test_quick_report(tmp_path):
    out = tmp_path / "complexity.md"
    proc = subprocess.run([sys.executable, "-m", "tools.benchmarks.complexity", "--quick", "--threads", "1",
                           "--output", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    for section in ("## Side by side", "## Parameters", "## FLOPs and MACs", "## Peak memory of one forward",
                    "## Runtime", "Command: `"):
        assert section in text
    assert "934,602" in text and "0.7461M" in text and "49.25G" in text
    assert "| x2 | 48² | 24² |" in text
    assert ("| x4 bf16 |" in text) == bf16_supported(torch.device("cpu"))


@pytest.mark.parametrize("args, match", [
    (["--threads", "-1"], "--threads must be an integer >= 1, got -1"), (["--threads", "0"], "--threads must be"),
    (["--repeats", "0"], "--repeats must be an integer >= 1"), (["--warmup", "-1"], "--warmup must be"),
    (["--sizes", "48", "2"], "--sizes must each be >= 4"), (["--output", "{tmp}"], "it is a folder"),
    (["--ckpt_path", "{tmp}/x3.pth"], "holds a x3 model; complexity.py reads only x2 weights"),
])
def test_bad_arguments_fail_first(tmp_path, args, match):
    torch.save(Net(scale=3).state_dict(), tmp_path / "x3.pth")
    threads = torch.get_num_threads()
    with pytest.raises(InputError, match=match):
        complexity.main(["--quick", "--output", str(tmp_path / "c.md"), *(a.format(tmp=tmp_path) for a in args)])
    assert torch.get_num_threads() == threads and not (tmp_path / "c.md").exists()


def test_bad_arguments_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.benchmarks.complexity", "--sizes", "2",
                           "--output", str(tmp_path / "c.md")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --sizes")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.md").exists()
