"""The learned gate (--gate learned): gradients, per-sample routing, deterministic evaluation, tiles and
self-ensemble, bit-exact resume, DDP without a batch vote, report branch counts, ONNX, and the CLI path
train (--init_from the authors' x2) -> sample.py report."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
from conftest import write_pack
from dsrnet.data.images import read_image, write_image
from dsrnet.errors import InputError
from dsrnet.train.schedule import get_gate_tau
from model import GATE_MODES, GateRouter, Net, load_checkpoint, read_checkpoint
from model.flops import count_flops, flops_per_lr_pixel, meta_net
from model.inference import learned_decision, super_resolve
from solver import Solver, parse_args

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--patch_size", "8", "--batch_size", "4", "--num_workers", "0", "--log_interval", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def split_gate(net: Net, x: torch.Tensor) -> torch.Tensor:
    """Shift the gate's fixed logit so that about half of ``x``'s samples choose each branch; their picks.

    The fixed branch's weights are scaled up first: in a random net both branches barely reach the output.
    """
    we = net.wide_enhancement
    with torch.no_grad():
        for layer in we.fixed_branch.convs:
            layer.weight.mul_(10)
        logits = we.gate_logits(net.gate_features(x))
        diff = logits[:, 1] - logits[:, 0]
        we.gate.fc2.bias[1] -= diff.median() + 1e-3 * (diff.max() - diff.min())
        return we.gate_logits(net.gate_features(x)).argmax(dim=1)


def varied_batch(n: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * torch.linspace(0.2, 1.0, n).view(n, 1, 1, 1)


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory) -> Path:
    """Four 64x64 training images in the div2h5 layout (x2)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64

    def image(k: int) -> np.ndarray:
        img = np.stack([np.sin((xx * (k + 1) + yy * (c + 1)) * 5) for c in range(3)], -1) * 90 + 128
        return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return write_pack(tmp_path_factory.mktemp("gate_data") / "tiny.h5", (image(k) for k in range(4)))


def make(h5: Path, ckpt_dir: Path, *args: str) -> Solver:
    return Solver(parse_args(["--train_data_path", str(h5), "--ckpt_dir", str(ckpt_dir), *TINY, *args]))


# ------------------------------------------------------------------------------------------ the model

def test_the_router_returns_from_evaluation_as_it_was():
    """Mode, noise stream (not reseeded) and the open interval's routing count come back after the block."""
    router = GateRouter("learned", seed=3)
    router.learned_route(torch.zeros(4, 2), training=True)
    router.count_routes(1, 4)
    noise = router.generator.get_state()
    with router.evaluating("selected"):
        assert router.mode == "selected" and not router.routed
        router.count("selected", 2)
    assert router.mode == "learned" and dict(router.routed) == {"selected": 3, "fixed": 1}
    assert torch.equal(router.generator.get_state(), noise)


def test_only_the_learned_gate_gets_gradients():
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    for mode in GATE_MODES:
        torch.manual_seed(0)
        net = Net(scale=2, gate_mode=mode).train()
        net(x, 2).mean().backward()
        gate = net.wide_enhancement.gate
        grads = [p.grad for p in gate.parameters()]
        if mode == "learned":
            assert all(g is not None and g.abs().sum() > 0 for g in grads), mode
        else:
            assert all(g is None for g in grads), mode


def test_each_sample_routes_itself_as_if_alone():
    torch.manual_seed(0)
    net = Net(scale=2, gate_mode="learned").eval()
    x = varied_batch()
    picks = split_gate(net, x)
    assert 0 < int(picks.sum()) < len(picks)  # both branches in one batch
    with torch.no_grad():
        batch = net(x, 2)
        alone = torch.cat([net(x[i:i + 1], 2) for i in range(len(x))])
    assert (batch - alone).abs().max().item() <= 1e-5
    n_fixed = int(picks.sum())
    assert dict(net.router.routed) == {"selected": 2 * (len(x) - n_fixed), "fixed": 2 * n_fixed}
    for i, k in enumerate(picks.tolist()):  # each sample got exactly its branch's output
        with torch.no_grad(), net.router.force(("selected", "fixed")[k]):
            assert (net(x[i:i + 1], 2) - batch[i:i + 1]).abs().max().item() <= 1e-5
        with torch.no_grad(), net.router.force(("fixed", "selected")[k]):
            assert (net(x[i:i + 1], 2) - batch[i:i + 1]).abs().max().item() > 1e-3


def test_training_output_is_the_taken_branchs():
    """Straight-through: the forward value is exactly the chosen branch's, whatever the soft sample."""
    torch.manual_seed(0)
    net = Net(scale=2, gate_mode="learned")
    x = varied_batch()
    split_gate(net, x)
    net.train()
    out = net(x, 2)
    route = net.router.route
    assert set(route.detach().flatten().tolist()) == {0.0, 1.0} and route.requires_grad
    net.eval()
    with torch.no_grad():
        each = {}
        for branch in ("selected", "fixed"):
            with net.router.force(branch):
                each[branch] = net(x, 2)
    picks = route.detach().argmax(dim=1)
    assert 0 < int(picks.sum()) < len(picks)
    for i, k in enumerate(picks.tolist()):
        assert torch.equal(each[("selected", "fixed")[k]][i], out[i].detach())


def test_learned_decision_at_evaluation_is_deterministic():
    torch.manual_seed(0)
    net = Net(scale=2, gate_mode="learned", gate_seed=3).eval()
    x = varied_batch()
    split_gate(net, x)
    state = net.router.generator.get_state()
    with torch.no_grad():
        first, second = net(x, 2), net(x, 2)
    assert torch.equal(first, second)
    assert torch.equal(state, net.router.generator.get_state())  # no noise drawn
    again = Net(scale=2, gate_mode="learned", gate_seed=99).eval()
    again.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(again(x, 2), first)


def test_tiles_and_self_ensemble_route_with_the_whole_image():
    torch.manual_seed(0)
    net = Net(scale=2, gate_mode="learned").eval()
    ramp = torch.linspace(0.05, 1.0, 90).view(1, 90, 1)  # dark left, bright right: tiles see different content
    lr = (torch.rand(100, 90, 3, generator=torch.Generator().manual_seed(4)) * ramp * 255).byte().numpy()
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():  # a gate that notices content, with the whole image just on its 'fixed' side
        net.wide_enhancement.gate.fc1.weight.mul_(30)
        for layer in net.wide_enhancement.fixed_branch.convs:  # a wrong route would show in the output
            layer.weight.mul_(10)
        net.wide_enhancement.gate.fc2.weight.mul_(30)
        diff = net.wide_enhancement.gate_logits(net.gate_features(x))[0]
        net.wide_enhancement.gate.fc2.bias[1] -= (diff[1] - diff[0]) - 1e-4
    assert learned_decision(net, x) == "fixed"
    with torch.no_grad():
        tiles = [x[:, :, y:y + 60, x0:x0 + 60] for y in (0, 20, 40) for x0 in (0, 20, 30)]  # forward_tiled's
        alone = {net.wide_enhancement.gate_logits(net.gate_features(t)).argmax().item() for t in tiles}
    assert alone == {0, 1}  # on their own, the tiles would not agree
    assert learned_decision(net, x, tile=60, overlap=20) == "fixed"
    whole = super_resolve(net, lr, 2)
    net.router.routed.clear()
    tiled = super_resolve(net, lr, 2, tile=60, tile_overlap=20)  # overlap >= the receptive radius (18)
    assert set(net.router.routed) == {"fixed"}
    assert (tiled - whole).abs().max().item() <= 1e-4
    net.router.routed.clear()
    super_resolve(net, lr[:30, :30], 2, self_ensemble=True)
    assert list(net.router.routed.values()) == [8]  # the 8 transforms took one branch


def test_flops_per_branch_are_counted():
    h, w = 37, 29
    for branch in ("selected", "fixed"):
        assert count_flops(meta_net(2, branch), (h, w), 2)[0] == flops_per_lr_pixel(2, branch) * h * w
    assert flops_per_lr_pixel(2, "selected") == 1_582_042
    assert flops_per_lr_pixel(2, "fixed") - flops_per_lr_pixel(2, "selected") == 2 * 64 * 64 * (4 * 9 - 2 * 9 - 2)


# ---------------------------------------------------------------------------------------------- ONNX

def test_onnx_exports_the_noise_free_per_image_decision(tmp_path):
    from tools.export_onnx import TOLERANCE, _session, export

    torch.manual_seed(0)
    net = Net(scale=2, gate_mode="learned").eval()
    x = varied_batch(size=16)
    picks = split_gate(net, x)
    assert 0 < int(picks.sum()) < len(picks)
    path = export(net, 2, tmp_path / "learned.onnx")
    (got,) = _session(path).run(["sr"], {"lr": x.numpy()})
    with torch.no_grad():
        want = net(x, 2).numpy()
    assert np.abs(got - want).max() <= TOLERANCE


# ------------------------------------------------------------------------------------------- training

def test_temperature_schedule():
    assert get_gate_tau(0, 1.0, 0.5, 100) == 1.0
    assert get_gate_tau(50, 1.0, 0.25, 100) == pytest.approx(0.5)
    assert get_gate_tau(100, 1.0, 0.5, 100) == get_gate_tau(10 ** 6, 1.0, 0.5, 100) == pytest.approx(0.5)


def test_learned_gate_trains_logs_and_resumes_bit_exactly(tiny_h5, tmp_path):
    common = ("--gate", "learned", "--gate_penalty", "1e-3", "--gate_lr_mult", "10", "--max_steps", "8",
              "--print_interval", "4", "--decay", "6")
    straight = make(tiny_h5, tmp_path / "a", *common)
    gate0 = {k: v.clone() for k, v in straight.net.wide_enhancement.gate.state_dict().items()}
    straight.fit()
    assert all(not torch.equal(v, straight.net.wide_enhancement.gate.state_dict()[k]) for k, v in gate0.items())
    assert straight.optim.param_groups[1]["lr"] == pytest.approx(10 * straight.optim.param_groups[0]["lr"])
    resumed = make(tiny_h5, tmp_path / "a", *common, "--resume", str(tmp_path / "a" / "dsrnet_x2_4.pth"))
    resumed.fit()
    for (name, p), q in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(p, q), name
    assert torch.equal(straight.net.router.generator.get_state(),
                       resumed.net.router.generator.get_state())
    with open(tmp_path / "a" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4", "6", "8"]
    assert all(0.0 <= float(r["fixed_share"]) <= 1.0 for r in rows)


def test_a_validation_or_a_stop_mid_interval_changes_no_learned_gate_run(tiny_h5, x2_valid, tmp_path):
    """Validating at step 2 neither draws nor reseeds the gate's noise; a SIGINT in step 3 saves the open log
    interval's routing count, so the resumed run logs step 4's fixed_share as the straight run does."""
    torch.manual_seed(0)
    start = Net(scale=2)
    with torch.no_grad():
        start.wide_enhancement.gate.fc2.bias.zero_()  # an even split: a lost count would change the share
    torch.save({"model": start.state_dict()}, tmp_path / "start.pth")
    common = ("--gate", "learned", "--max_steps", "4", "--log_interval", "4",
              "--init_from", str(tmp_path / "start.pth"))
    straight = make(tiny_h5, tmp_path / "a", *common, "--print_interval", "4")
    straight.fit()
    validated = make(tiny_h5, tmp_path / "v", *common, "--print_interval", "2", "--valid_data_dir", str(x2_valid))
    validated.fit()
    stopped = make(tiny_h5, tmp_path / "s", *common, "--print_interval", "4")
    loss_fn, calls = stopped.loss_fn, []

    def sigint_in_step_3(sr, hr):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss_fn(sr, hr)
    stopped.loss_fn = sigint_in_step_3
    with pytest.raises(SystemExit):
        stopped.fit()
    resumed = make(tiny_h5, tmp_path / "s", *common, "--print_interval", "4", "--resume")
    assert resumed.step == 3
    resumed.fit()
    for other in (validated, resumed):
        for (name, p), q in zip(straight.net.state_dict().items(), other.net.state_dict().values()):
            assert torch.equal(p, q), name

    def share_at_4(folder: Path) -> float:
        with open(folder / "log.csv", newline="") as f:
            return next(float(r["fixed_share"]) for r in csv.DictReader(f) if r["step"] == "4")
    assert 0.0 < share_at_4(tmp_path / "a") < 1.0
    assert share_at_4(tmp_path / "s") == share_at_4(tmp_path / "a")


def test_learned_only_flags_are_refused_elsewhere(tiny_h5, tmp_path):
    with pytest.raises(InputError, match="--gate_penalty acts on the learned gate, but --gate is sample"):
        make(tiny_h5, tmp_path, "--gate_penalty", "0.1")
    with pytest.raises(InputError, match="--gate_lr_mult acts on the learned gate"):
        make(tiny_h5, tmp_path, "--gate", "selected", "--gate_lr_mult", "10")


DDP_SCRIPT = """
import os, sys, torch
from solver import Solver, parse_args
solver = Solver(parse_args(sys.argv[1:]))
we, picks = solver.net.wide_enhancement, []
we.register_forward_hook(lambda m, i, o: picks.append(m.router.route.detach().argmax(dim=1).tolist()))
solver.fit()
torch.save({"model": solver.net.state_dict(), "picks": picks, "no_vote": we.router.combine_votes is None},
           os.path.join(os.environ["DUMP"], "rank%s.pt" % os.environ["RANK"]))
"""


def test_ddp_routes_per_sample_without_a_vote(tiny_h5, tmp_path):
    """gloo, 2 CPU ranks x batch 2: no batch-wide vote is installed, the samples of one global batch take
    different branches, and the weights (the gate's included) stay in sync."""
    script = tmp_path / "ddp_learned.py"
    script.write_text(DDP_SCRIPT)
    dump = tmp_path / "dump"
    dump.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DUMP": str(dump), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    torch.manual_seed(0)
    start = Net(scale=2)
    with torch.no_grad():
        start.wide_enhancement.gate.fc2.bias.zero_()  # an even split, not the authors' 'fixed'-leaning one
    torch.save({"model": start.state_dict()}, tmp_path / "start.pth")
    args = ["--train_data_path", str(tiny_h5), "--ckpt_dir", str(tmp_path / "ck"), *TINY, "--gate", "learned",
            "--gate_lr_mult", "10", "--max_steps", "4", "--print_interval", "4", "--num_gpu", "2",
            "--init_from", str(tmp_path / "start.pth")]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), *args], capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["no_vote"] for r in ranks)
    steps = [a + b for a, b in zip(ranks[0]["picks"], ranks[1]["picks"], strict=True)]
    assert len(steps) == 4 and all(len(s) == 4 for s in steps)
    assert any(len(set(s)) == 2 for s in steps)  # one global batch, both branches
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    assert ranks[0]["model"]["wide_enhancement.gate.fc2.bias"].abs().sum() > 0  # the gate learned


# --------------------------------------------------------------------------------------- sample.py

@pytest.fixture(scope="module")
def small_set(tmp_path_factory, benchmark_dir):
    """Three Set5 images, cropped small, in the EDSR layout."""
    root = tmp_path_factory.mktemp("gate_sets") / "Mini"
    for name in ("img_001", "img_002", "img_003"):
        hr = read_image(benchmark_dir / "Set5" / "image_SRF_2" / f"{name}_SRF_2_HR.png")[:128, :160]
        lr = read_image(benchmark_dir / "Set5" / "image_SRF_2" / f"{name}_SRF_2_LR.png")[:64, :80]
        write_image(root / "HR" / f"{name}.png", hr)
        write_image(root / "LR_bicubic" / "X2" / f"{name}x2.png", lr)
    return root


@pytest.mark.parametrize(("gate", "extra"), [("learned", []), ("learned", ["--tile", "52", "--tile_overlap", "18"]),
                                           ("sample", ["--self_ensemble"])])
def test_report_branches_add_up_to_the_images(weights_x2, small_set, tmp_path, gate, extra):
    report = tmp_path / "r.json"
    sample.main(["--ckpt_path", str(weights_x2), "--test_data_dir", str(small_set), "--gate", gate, "--bicubic",
                 "--no_save", "--quiet", "--report", str(report), *extra])
    rows = {r["method"]: r for r in json.loads(report.read_text())["results"]}
    dsr = rows["DSRNet+" if extra == ["--self_ensemble"] else "DSRNet"]
    assert sum(dsr["branches"].values()) == dsr["n_images"] == 3
    assert {"selected", "fixed"} <= set(dsr["branches"])
    assert rows["Bicubic"]["branches"] is None and rows["Bicubic"]["gflops_per_image"] is None
    with open(tmp_path / "r_per_image.csv", newline="") as f:
        images = [r for r in csv.DictReader(f) if r["method"] != "Bicubic"]
    taken = {b: sum(r["branch"] == b for r in images) for b in dsr["branches"]}
    assert taken == dsr["branches"]
    passes = 8 if extra == ["--self_ensemble"] else 1
    expected = [flops_per_lr_pixel(2, r["branch"]) * 64 * 80 * passes / 1e9 for r in images if r["branch"] != "mixed"]
    assert [float(r["gflops"]) for r in images if r["branch"] != "mixed"] == pytest.approx(expected, rel=1e-3)
    assert "DSRNet" in report.with_suffix(".md").read_text().splitlines()[0].split("|")[-2]  # the GFLOPs column


# ------------------------------------------------------------------------------------- the CLI path

def test_cli_train_learned_from_the_authors_weights_then_report(weights_x2, small_set, tiny_h5, tmp_path):
    """Acceptance: x2/train.py --init_from <authors' x2> --gate learned --max_steps 8 changes the gate; sample.py
    --gate learned reports per-image routing whose branches add up to the images."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    train = subprocess.run([sys.executable, str(ROOT / "x2" / "train.py"), "--train_data_path", str(tiny_h5),
                            "--init_from", str(weights_x2), "--gate", "learned", "--gate_lr_mult", "100",
                            "--max_steps", "8", "--print_interval", "8", "--ckpt_dir", str(tmp_path / "ck"), *TINY],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = tmp_path / "ck" / "dsrnet_x2_8.pth"
    before, after = read_checkpoint(weights_x2)["model"], read_checkpoint(ckpt)["model"]
    for key in ("wide_enhancement.gate.fc1.weight", "wide_enhancement.gate.fc2.bias"):
        assert not torch.equal(before[key], after[key]), key
    report = tmp_path / "r.json"
    run = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--ckpt_path", str(ckpt), "--gate", "learned",
                          "--test_data_dir", str(small_set), "--no_save", "--quiet", "--report", str(report)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = json.loads(report.read_text())["results"]
    assert sum(row["branches"].values()) == row["n_images"] == 3
    assert json.loads(report.read_text())["settings"]["gate_mode"] == "learned"
    with open(tmp_path / "r_per_image.csv", newline="") as f:
        assert all(r["branch"] in ("selected", "fixed") for r in csv.DictReader(f))
    net = load_checkpoint(ckpt, gate_mode="learned")
    assert net.gate_mode == "learned" and not net.training


def test_cli_learned_only_flag_error_is_one_line(tiny_h5, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "x2" / "train.py"), "--train_data_path", str(tiny_h5),
                          "--gate_penalty", "0.1", "--ckpt_dir", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("error: --gate_penalty")


# ------------------------------------------------------------------------------------ the ablation table

def test_ablation_table_reads_reports_and_logs(tmp_path, capsys):
    from tools import gate_ablation_table

    for gate, seed, psnr in (("learned", 0, 30.0), ("learned", 1, 30.5), ("selected", 0, 29.0), ("selected", 1, 29.2)):
        rows = [{"dataset": s, "psnr": psnr, "ssim": 0.9, "branches": {"selected": 3, "fixed": 2},
                 "gflops_per_image": 12.34} for s in gate_ablation_table.SETS]
        (tmp_path / "eval").mkdir(exist_ok=True)
        (tmp_path / "eval" / f"scratch_{gate}_s{seed}_{gate}.json").write_text(
            json.dumps({"results": rows, "settings": {"gate_mode": gate}}))
        (tmp_path / f"scratch_{gate}_s{seed}").mkdir()
        (tmp_path / f"scratch_{gate}_s{seed}" / "log.csv").write_text("step,loss,fixed_share\n10,0.5,0.25\n")
    gate_ablation_table.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| scratch_learned_s1 | learned | 30.5000 / 0.9000 |" in out
    assert "| 3/2, 3/2, 3/2 | 12.3, 12.3, 12.3 | 0.5 | 0.25 |" in out
    assert "| scratch_learned | learned | 2 | 30.2500 (0.5000) |" in out
    # learned - selected: means 30.25 - 29.1, spread the larger of 0.5 and 0.2, same-seed 1.0 and 1.3
    assert ("| scratch_learned (learned) | scratch_selected | 2/2 | +1.1500 (0.5000; same seed +1.000..+1.300) |"
            in out)
    assert out.rstrip().endswith("| Set5 yes, Set14 yes, BSD100 yes |")
    (tmp_path / "eval" / "scratch_selected_s1_selected.json").unlink()
    gate_ablation_table.main([str(tmp_path)])
    one = capsys.readouterr().out
    assert "| 2/1 | +1.2500 (0.5000; same seed +1.000..+1.000) |" in one  # selected: seed 0 only
    assert one.rstrip().endswith("| Set5 one seed, no spread, Set14 one seed, no spread, BSD100 one seed, no spread |")
    with pytest.raises(InputError, match="no reports"):
        gate_ablation_table.main([str(tmp_path / "empty")])


# --------------------------------------------------------------------------------- the block's activity

def test_gate_activity_measures_the_branches_and_what_swapping_them_changes(tmp_path, capsys):
    from tools import gate_activity

    torch.manual_seed(0)
    net = Net(2).eval()
    we = net.wide_enhancement
    rng = np.random.default_rng(0)
    lrs = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2)]
    last = we.fixed_branch.convs[-1].weight.detach().clone()
    with torch.no_grad():
        for branch in (we.selected_branch, we.fixed_branch):  # both silent: swapping them changes nothing
            branch.convs[-1].weight.zero_()
        we.gate.fc2.bias.copy_(torch.tensor([0.0, 30.0]))  # the gate wants 'fixed' for any input
    silent = gate_activity.block_activity(net, lrs)
    assert net.gate_mode == "selected"  # left as it was
    assert silent.selected == silent.fixed == 0 and silent.upper > 0
    assert silent.swap_psnr == 99.0 and silent.share_fixed == 1.0 and silent.p_fixed > 0.99
    with torch.no_grad():
        for layer in we.fixed_branch.convs:  # 'fixed' made loud, 'selected' still silent
            layer.weight.mul_(30)
        we.fixed_branch.convs[-1].weight.copy_(last * 30)
        we.gate.fc2.bias.copy_(torch.tensor([30.0, 0.0]))
    loud = gate_activity.block_activity(net, lrs)
    assert loud.fixed > 100 * loud.upper and loud.selected == 0
    assert loud.swap_psnr < 60 and loud.share_fixed == 0.0 and loud.p_fixed < 0.01

    for name in ("a", "b"):  # the CLI on a checkpoint and an HR-only folder (LR made by the MATLAB bicubic)
        write_image(tmp_path / "Tiny" / f"{name}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    torch.save({"model": net.state_dict(), "scale": 2}, tmp_path / "loud.pth")
    [cli] = gate_activity.main([str(tmp_path / "loud.pth"), "--test_data_dir", str(tmp_path / "Tiny")])
    assert cli.fixed > 100 * cli.upper and cli.selected == 0 and cli.swap_psnr < 60
    assert "| loud.pth |" in capsys.readouterr().out
    assert torch.is_grad_enabled()  # the CLI leaves autograd as it found it
