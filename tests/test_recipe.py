"""The training recipe as the running loop applies it, not as its helpers compute it: the lr Adam gets at
each step, the clipped gradients it sees, the loss it minimises, its betas and eps, the learned gate's
penalty, temperature and logged routing share, the gate validation scores with, the best checkpoint
across a resume, and the BT.601 weights gray images are scored and written with.

Hooks on the optimizer and the net record what each step did; the expected values are written from
the paper's recipe and the BT.601 standard, never from the code under test. Tiny HDF5 packs, 8-pixel
patches, batch 2, one intra-op thread.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from conftest import write_pack, write_valid_set
from dsrnet.data.layouts import find_test_set
from dsrnet.evaluation import evaluate_set
from dsrnet.metrics import luma
from dsrnet.train.loss import build_loss
from model import GateRouter, Net, read_checkpoint
from solver import Solver, parse_args

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("--patch_size", "8", "--batch_size", "2", "--num_workers", "0")


def _smooth(size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth colour image with a little noise: a net can do better or worse on it than on pure noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin((xx * (k + 1) + yy * (c + 1)) * 4) for c in range(3)], -1) * 90 + 128
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    """Three 40x40 HR images with their x2 LR, in div2h5's layout."""
    rng = np.random.default_rng(0)
    return write_pack(tmp_path_factory.mktemp("recipe_pack") / "tiny.h5", (_smooth(40, k, rng) for k in range(3)))


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    """A two-image SelfExSR-style x2 validation set of 24x24 HR images."""
    rng = np.random.default_rng(1)
    return write_valid_set(tmp_path_factory.mktemp("recipe_valid") / "Tiny", (_smooth(24, k + 4, rng) for k in (1, 2)))


def make(pack: Path, ckpt_dir: Path, *args: str) -> Solver:
    return Solver(parse_args(["--train_data_path", str(pack), "--ckpt_dir", str(ckpt_dir), *TINY, *args]))


def log_rows(ckpt_dir: Path) -> list[dict]:
    with open(ckpt_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


class Recorder:
    """What the loop hands Adam at each ``optimizer.step()``: each group's lr and, with ``tensors``, every
    parameter's gradient and its value before and after the update; plus each training forward's batch,
    SR and gate temperature."""

    def __init__(self, solver: Solver, tensors: bool = False):
        self.tensors = tensors
        self.lrs: list[list[float]] = []
        self.grads: list[list[torch.Tensor | None]] = []
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []
        self.taus: list[float] = []
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.srs: list[torch.Tensor] = []
        self.params = [p for group in solver.optim.param_groups for p in group["params"]]
        solver.optim.register_step_pre_hook(self._pre)
        solver.optim.register_step_post_hook(self._post)
        we = solver.net.wide_enhancement
        we.register_forward_pre_hook(lambda m, args: self.taus.append(m.router.tau) if m.training else None)
        solver.net.register_forward_hook(
            lambda m, args, out: self.srs.append(out.detach().clone()) if m.training else None)
        get_batch = solver.get_batch

        def recorded(pairs, step):
            scale, lr, hr = get_batch(pairs, step)
            self.batches.append((lr.clone(), hr.clone()))
            return scale, lr, hr
        solver.get_batch = recorded

    def _pre(self, optim, args, kwargs) -> None:
        self.lrs.append([group["lr"] for group in optim.param_groups])
        if self.tensors:
            self.grads.append([None if p.grad is None else p.grad.detach().clone() for p in self.params])
            self.before.append([p.detach().clone() for p in self.params])

    def _post(self, optim, args, kwargs) -> None:
        if self.tensors:
            self.after.append([p.detach().clone() for p in self.params])

    def grad_norm(self, step: int) -> float:
        return math.sqrt(sum(float(g.double().pow(2).sum()) for g in self.grads[step] if g is not None))


# ------------------------------------------------------------------ lr schedule and gate temperature

@pytest.fixture(scope="module")
def scheduled(pack, tmp_path_factory) -> tuple[Recorder, list[dict]]:
    """7 steps of a learned-gate run with --decay 3: the lr halves after steps 3 and 6, the temperature
    falls from 1 to its floor 0.25 by step 3."""
    ck = tmp_path_factory.mktemp("scheduled")
    s = make(pack, ck, "--gate", "learned", "--gate_lr_mult", "4", "--lr", "1e-3", "--decay", "3",
             "--gate_tau", "1", "--gate_tau_min", "0.25", "--max_steps", "7", "--log_interval", "1",
             "--print_interval", "100")
    rec = Recorder(s)
    s.fit()
    return rec, log_rows(ck)


def test_lr_is_halved_every_decay_steps_in_adam_and_in_the_log(scheduled):
    rec, rows = scheduled
    expected = [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4]  # --lr 1e-3 halved after every 3 steps
    assert len(rec.lrs) == 7
    for applied, lr in zip(rec.lrs, expected):  # what Adam's groups held when it stepped; the gate's group x4
        assert applied == pytest.approx([lr, 4 * lr], rel=1e-12)
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5)


def test_gate_temperature_anneals_down_to_its_floor_in_the_loop(scheduled):
    rec, _ = scheduled
    # 1 * (0.25 / 1) ** (step / 3) until step 3, then the floor
    expected = [1.0, 0.25 ** (1 / 3), 0.25 ** (2 / 3), 0.25, 0.25, 0.25, 0.25]
    assert rec.taus == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ loss, clipping and Adam

def _hand_loss(name: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    d = sr.double() - hr.double()
    if name == "L1":
        return d.abs().mean()
    if name == "MSE":
        return d.pow(2).mean()
    a = d.abs()  # SmoothL1 with beta 1 (PyTorch's default): quadratic below 1, linear above
    return torch.where(a < 1, 0.5 * a * a, a - 0.5).mean()


def _reference_grads(init: dict, lr: torch.Tensor, hr: torch.Tensor, name: str) -> tuple[torch.Tensor, dict]:
    """SR and parameter gradients of ``name``'s loss, written out by hand, on a fresh 'selected' CPU net."""
    net = Net(scale=2, gate_mode="selected").train()
    net.load_state_dict(init)
    sr = net(lr.cpu().contiguous(), 2)
    _hand_loss(name, sr, hr.cpu().contiguous()).backward()
    return sr.detach(), {n: p.grad for n, p in net.named_parameters()}


def _tolerance(solver: Solver) -> float:
    """Relative error allowed between two computations of one step: a GPU trains with TF32 convolutions."""
    return 1e-4 if solver.device.type == "cpu" else 1e-2


def _relative_error(got: list, expected: list) -> float:
    num = sum(float((g.double() - e.double()).pow(2).sum()) for g, e in zip(got, expected))
    den = sum(float(e.double().pow(2).sum()) for e in expected)
    return math.sqrt(num / den)


@pytest.mark.parametrize("loss_fn", ["L1", "SmoothL1", "MSE"])
def test_loss_fn_is_the_loss_logged_and_minimised(pack, tmp_path, loss_fn):
    s = make(pack, tmp_path, "--gate", "selected", "--loss_fn", loss_fn, "--clip", "1e9", "--max_steps", "1",
             "--log_interval", "1")
    init = {k: v.cpu().clone() for k, v in s.net.state_dict().items()}
    rec = Recorder(s, tensors=True)
    name_of = {id(p): n for n, p in s.net.named_parameters()}
    s.fit()
    [(lr, hr)], [sr] = rec.batches, rec.srs
    assert float(log_rows(tmp_path)[0]["loss"]) == pytest.approx(float(_hand_loss(loss_fn, sr, hr)), rel=2e-5)
    ref_sr, ref = _reference_grads(init, lr, hr, loss_fn)
    assert _relative_error([sr.cpu()], [ref_sr]) < _tolerance(s)
    got = [(g, ref[name_of[id(p)]]) for p, g in zip(rec.params, rec.grads[0])]
    got = [(g, e) for g, e in got if g is not None or e is not None]
    assert all(g is not None and e is not None for g, e in got)
    assert _relative_error([g.cpu() for g, _ in got], [e for _, e in got]) < _tolerance(s)


def test_gradients_are_clipped_to_clip_after_unscaling(pack, tmp_path):
    """One step, three clips: far above the norm (the reference), above it (nothing changes) and an
    eighth of it (scaled down to exactly --clip, same direction). The clipped run's loss is scaled by 4096
    as fp16 training does: clipping must act on the unscaled gradients."""
    def first_step(tag: str, clip: float, loss_scale: float | None = None) -> tuple[Recorder, float]:
        s = make(pack, tmp_path / tag, "--gate", "selected", "--clip", repr(clip), "--max_steps", "1")
        if loss_scale:
            s.scaler = torch.amp.GradScaler(s.device.type, init_scale=loss_scale)
        rec = Recorder(s, tensors=True)
        s.fit()
        return rec, _tolerance(s)

    ref, tol = first_step("ref", 1e9)
    norm = ref.grad_norm(0)
    above, _ = first_step("above", 1.5 * norm)
    clipped, _ = first_step("clipped", norm / 8, loss_scale=4096.0)
    assert clipped.grad_norm(0) == pytest.approx(norm / 8, rel=1e-4)
    pairs = [(g, r) for g, r in zip(clipped.grads[0], ref.grads[0]) if r is not None]
    assert _relative_error([g for g, _ in pairs], [r / 8 for _, r in pairs]) < tol
    pairs = [(g, r) for g, r in zip(above.grads[0], ref.grads[0]) if r is not None]
    assert _relative_error([g for g, _ in pairs], [r for _, r in pairs]) < tol


def _adam_deltas(grads: list[list[torch.Tensor | None]], lr: float, betas: tuple[float, float],
                 eps: float) -> list[list[torch.Tensor | None]]:
    """Adam (Kingma & Ba, Algorithm 1) by hand, in float64: each step's parameter change."""
    b1, b2 = betas
    m = [None if g is None else torch.zeros_like(g, dtype=torch.float64) for g in grads[0]]
    v = [None if g is None else torch.zeros_like(g, dtype=torch.float64) for g in grads[0]]
    deltas = []
    for t, step_grads in enumerate(grads, start=1):
        out = []
        for i, g in enumerate(step_grads):
            if g is None:
                out.append(None)
                continue
            g = g.double()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            out.append(-lr * (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + eps))
        deltas.append(out)
    return deltas


def test_adam_runs_with_the_authors_betas_and_eps(pack, tmp_path):
    """Two steps' updates equal a hand-written Adam with betas (0.9, 0.999) and eps 1e-8; the same check
    rejects eps 1e-7 and betas (0.8, 0.999) or (0.9, 0.99), so it can tell them apart."""
    s = make(pack, tmp_path, "--gate", "selected", "--lr", "1e-2", "--clip", "1e9", "--max_steps", "2")
    assert type(s.optim) is torch.optim.Adam
    assert all(g["weight_decay"] == 0 and not g["amsgrad"] for g in s.optim.param_groups)
    rec = Recorder(s, tensors=True)
    s.fit()
    actual = [[a.double() - b.double() for a, b in zip(after, before)] for after, before in zip(rec.after, rec.before)]
    assert all(not d.any() for step, gs in zip(actual, rec.grads) for d, g in zip(step, gs) if g is None)

    def worst(betas: tuple[float, float], eps: float) -> float:
        """The largest difference from the hand-written update, in units of the lr."""
        expected = _adam_deltas(rec.grads, 1e-2, betas, eps)
        return max(float((a - e).abs().max()) / 1e-2 for step_a, step_e in zip(actual, expected)
                   for a, e in zip(step_a, step_e) if e is not None)

    assert worst((0.9, 0.999), 1e-8) < 2e-5
    for betas, eps in (((0.9, 0.999), 1e-7), ((0.8, 0.999), 1e-8), ((0.9, 0.99), 1e-8)):
        assert worst(betas, eps) > 1e-3, (betas, eps)


# ------------------------------------------------------------------ the learned gate

def _fixed_probability(net: Net, x: torch.Tensor) -> float:
    """The learned gate's mean noise-free probability of the 'fixed' branch over ``x``."""
    with torch.no_grad():
        logits = net.wide_enhancement.gate_logits(net.gate_features(x))
    return float(logits.softmax(dim=1)[:, 1].mean())


def test_gate_penalty_pushes_the_gate_away_from_the_fixed_branch(pack, tmp_path):
    """Same seed, same batches: three steps with --gate_penalty 1 leave the gate less inclined to 'fixed'
    than it started and than the run without a penalty (the authors' initial bias prefers 'fixed')."""
    probe = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    common = ("--gate", "learned", "--gate_lr_mult", "100", "--lr", "1e-3", "--max_steps", "3")
    free = make(pack, tmp_path / "free", *common)
    start = _fixed_probability(free.net, probe)
    free.fit()
    penalised = make(pack, tmp_path / "penalised", *common, "--gate_penalty", "1")
    penalised.fit()
    without, with_penalty = _fixed_probability(free.net, probe), _fixed_probability(penalised.net, probe)
    assert start > 0.5
    assert with_penalty < start - 0.1 and with_penalty < without - 0.1, (start, without, with_penalty)


@pytest.mark.parametrize("branch", ["fixed", "selected"])
def test_fixed_share_counts_the_fixed_branch(pack, tmp_path, branch):
    """A gate whose bias overwhelms the Gumbel noise routes every sample one way: log.csv's fixed_share is
    1 when that way is 'fixed', 0 when it is 'selected'."""
    s = make(pack, tmp_path, "--gate", "learned", "--max_steps", "2", "--log_interval", "2")
    with torch.no_grad():
        fc2 = s.net.wide_enhancement.gate.fc2
        fc2.weight.zero_()
        fc2.bias.copy_(torch.tensor([-40.0, 40.0] if branch == "fixed" else [40.0, -40.0]))
    s.fit()
    [row] = log_rows(tmp_path)
    assert float(row["fixed_share"]) == (1.0 if branch == "fixed" else 0.0)


# ------------------------------------------------------------------ validation and the best checkpoint

@pytest.mark.parametrize("gate, scored_with", [("sample", "selected"), ("learned", "learned")])
def test_validation_scores_the_reported_gate_without_drawing_noise(pack, valid, tmp_path, gate, scored_with):
    """Training forwards run the training gate; validation forwards run sample.py's gate in eval mode and
    draw no gate noise; the logged PSNR is what sample.py gives the saved checkpoint with that gate."""
    s = make(pack, tmp_path, "--gate", gate, "--max_steps", "2", "--print_interval", "2",
             "--valid_data_dir", str(valid))
    we, seen = s.net.wide_enhancement, []

    def before(m, args):
        seen.append([m.training, m.router.mode, m.router.generator.get_state()])

    def after(m, args, out):
        seen[-1][2] = torch.equal(seen[-1][2], m.router.generator.get_state())  # no draw in this forward
    we.register_forward_pre_hook(before)
    we.register_forward_hook(after)
    s.fit()
    training = [mode for is_training, mode, _ in seen if is_training]
    evaluation = [(mode, untouched) for is_training, mode, untouched in seen if not is_training]
    assert training == [gate, gate]
    assert evaluation == [(scored_with, True)] * 2  # one forward per validation image
    logged = float(log_rows(tmp_path)[-1]["Tiny_x2_psnr"])
    [result] = sample.main(["--ckpt_path", str(tmp_path / "dsrnet_x2_2.pth"), "--test_data_dir", str(valid),
                            "--gate", scored_with, "--no_save", "--quiet"])
    assert result.psnr == pytest.approx(logged, abs=1e-3)


def test_keep_last_and_resume_keep_the_best_checkpoint(pack, valid, tmp_path):
    """--keep_last 1 deletes the older numbered checkpoints, never _best/_final; after a resume a worse
    validation (the resumed net's output layer is wrecked on purpose) does not replace _best."""
    common = ("--valid_data_dir", str(valid), "--print_interval", "2", "--keep_last", "1", "--lr", "1e-3")
    make(pack, tmp_path, *common, "--max_steps", "4").fit()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["dsrnet_x2_4.pth", "dsrnet_x2_best.pth",
                                                              "dsrnet_x2_final.pth"]
    resumed = make(pack, tmp_path, *common, "--max_steps", "6", "--resume")
    with torch.no_grad():
        resumed.net.construction.conv17.weight.mul_(50)
    resumed.fit()
    psnr = {int(r["step"]): float(r["Tiny_x2_psnr"]) for r in log_rows(tmp_path)}
    assert sorted(psnr) == [2, 4, 6] and psnr[6] < max(psnr[2], psnr[4]) - 1  # the later validation is worse
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["dsrnet_x2_6.pth", "dsrnet_x2_best.pth",
                                                              "dsrnet_x2_final.pth"]
    best = read_checkpoint(tmp_path / "dsrnet_x2_best.pth")
    assert best["step"] == max(psnr, key=psnr.get) and best["mean_psnr"] == pytest.approx(max(psnr.values()),
                                                                                            abs=1e-4)
    assert read_checkpoint(tmp_path / "dsrnet_x2_final.pth")["step"] == 6


# ------------------------------------------------------------------ gray images and BT.601

# BT.601 by hand (MATLAB rgb2ycbcr's studio range): Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255.
# Pure red, green and blue at 255 give 81.481, 144.553 and 40.966; a gray level g gives 16 + 219 g / 255,
# which for g = 100 is 101.882.
PURE = {"red": ((255, 0, 0), 81), "green": ((0, 255, 0), 145), "blue": ((0, 0, 255), 41)}
GRAY, GRAY_Y = 100, 102


def test_gray_test_images_are_scored_on_bt601_luma(tmp_path):
    """A gray (mode L) test set read and scored as evaluation does, against SR images of pure primaries."""
    root = tmp_path / "Gray" / "image_SRF_2"
    root.mkdir(parents=True)
    Image.fromarray(np.full((24, 24), GRAY, np.uint8)).save(root / "img_001_SRF_2_HR.png")
    Image.fromarray(np.full((12, 12), GRAY, np.uint8)).save(root / "img_001_SRF_2_LR.png")
    test_set = find_test_set(tmp_path / "Gray", 2)
    for colour, y in PURE.values():
        result = evaluate_set(lambda lr, c=colour: np.broadcast_to(np.array(c, np.uint8), (24, 24, 3)).copy(),
                              test_set, "pure", workers=0)
        assert result.psnr == pytest.approx(20 * math.log10(255 / abs(y - GRAY_Y)), abs=1e-9), colour


def test_gray_outputs_are_the_bt601_luma_of_the_sr(tmp_path):
    """sample.py --input on a gray image writes the SR's luma: for a net whose output is a pure primary,
    255 times its BT.601 weight, truncated (0.299 -> 76, 0.587 -> 149, 0.114 -> 29)."""
    primaries = torch.eye(3, dtype=torch.float64).view(3, 1, 3)  # one pixel each of pure R, G, B
    studio = 16 + 219 * luma(primaries)[0, 0]  # the full-range luma in rgb_to_y's studio range
    assert studio.tolist() == pytest.approx([81.481, 144.553, 40.966], abs=1e-9)
    Image.fromarray(np.full((8, 8), GRAY, np.uint8)).save(tmp_path / "gray.png")
    for name, (colour, _) in PURE.items():
        net = Net(scale=2)
        with torch.no_grad():  # conv17 silent: the SR is add_mean's bias alone
            net.construction.conv17.weight.zero_()
            net.construction.add_mean.shifter.bias.copy_(torch.tensor(colour, dtype=torch.float32) / 255)
        torch.save({"model": net.state_dict(), "scale": 2}, tmp_path / f"{name}.pth")
        out = tmp_path / f"{name}_x2.png"
        sample.main(["--ckpt_path", str(tmp_path / f"{name}.pth"), "--input", str(tmp_path / "gray.png"),
                     "--output", str(out), "--quiet"])
        with Image.open(out) as im:
            assert im.mode == "L" and im.size == (16, 16)
            values = set(np.asarray(im).flatten().tolist())
        assert values == {{"red": 76, "green": 149, "blue": 29}[name]}, name


def test_build_loss_adds_the_penalty_to_the_loss_it_backpropagates_not_to_the_logged_one():
    """(loss, data loss): --gate_penalty times the router's share of 'fixed', only when the weight is non-zero."""
    router = GateRouter("learned")
    router.route = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    sr, hr = torch.full((1, 3, 2, 2), 0.5), torch.zeros(1, 3, 2, 2)
    loss, data = build_loss(parse_args(["--loss_fn", "L1", "--gate", "learned"]), router)(sr, hr)
    assert loss is data and float(data) == 0.5
    penalised = parse_args(["--loss_fn", "MSE", "--gate", "learned", "--gate_penalty", "0.2"])
    loss, data = build_loss(penalised, router)(sr, hr)
    assert float(data) == 0.25 and loss.item() == pytest.approx(0.25 + 0.2 * 0.75)
    loss.backward()
    assert router.route.grad[:, 1].tolist() == pytest.approx([0.05] * 4) and router.route.grad[:, 0].abs().sum() == 0
