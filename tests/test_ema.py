"""Averaged weights (--ema): the recurrence, what checkpoints hold, exact resume (one process and DDP),
what validation, sample.py and --init_from take, and checkpoints without an average as before.

Tiny HDF5 pack (three 40x40 images), 8-pixel patches, a handful of steps, one intra-op thread.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

import sample
from dsrnet.errors import InputError
from dsrnet.train.ema import WeightAverage
from model import CheckpointError, Net, load_checkpoint, read_checkpoint
from model.precision import bf16_supported
from solver import Solver, parse_args
from tools import ema_study_table

ROOT = Path(__file__).resolve().parents[1]
DECAY = 0.6  # far from 1, so that a step moves the average visibly
TINY = ("--patch_size", "8", "--batch_size", "2", "--num_workers", "0", "--print_interval", "2", "--log_interval", "2",
        "--lr", "1e-2", "--seed", "3")

pytestmark = pytest.mark.usefixtures("one_thread")


def make(x2_pack: Path, ckpt_dir: Path, *args: str) -> Solver:
    return Solver(parse_args(["--train_data_path", str(x2_pack), "--ckpt_dir", str(ckpt_dir), "--ckpt_name", "run",
                              *TINY, *args]))


def snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def log_rows(ckpt_dir: Path) -> tuple[list[str], list[dict]]:
    with open(ckpt_dir / "log.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def ema_run(x2_pack, x2_valid, tmp_path_factory) -> dict:
    """Six steps with --ema, validated every 2: the initial weights, and at every optimizer step the raw weights
    just after it and the average just before its update."""
    folder = tmp_path_factory.mktemp("ema_run")
    solver = make(x2_pack, folder, "--max_steps", "6", "--ema", str(DECAY), "--valid_data_dir", str(x2_valid))
    start = snapshot(solver.net.state_dict())
    raw, before = [], []
    solver.optim.register_step_post_hook(lambda *_: (raw.append(snapshot(solver.net.state_dict())),
                                                     before.append(snapshot(solver.ema.state_dict()))))
    solver.fit()
    return {"dir": folder, "start": start, "raw": raw, "average": before[1:] + [snapshot(solver.ema.state_dict())]}


def test_ema_is_refused_outside_0_to_1_at_parsing(capsys):
    for bad in ("1", "1.5", "-0.1", "nan", "inf", "1e400"):
        with pytest.raises(SystemExit) as stop:
            parse_args(["--ema", bad])
        assert stop.value.code == 2
        assert "argument --ema: must be a finite number in [0, 1)" in capsys.readouterr().err
    assert parse_args([]).ema == 0.0 and parse_args(["--ema", "0.999"]).ema == 0.999
    with pytest.raises(InputError, match="--init_weights raw picks the weights --init_from copies"):
        parse_args(["--init_weights", "raw"])


def test_average_follows_the_recurrence_from_the_initial_weights(ema_run):
    """After steps 1, 2, 3: average = d * previous + (1 - d) * the weights after the step, in float64 by hand."""
    trainable = {n for n, p in Net().named_parameters() if p.requires_grad}
    hand = {k: v.double() for k, v in ema_run["start"].items()}
    for step in range(3):
        raw, average = ema_run["raw"][step], ema_run["average"][step]
        hand = {k: DECAY * v + (1 - DECAY) * raw[k].double() for k, v in hand.items()}
        trained = [k for k in trainable if not torch.equal(raw[k], ema_run["start"][k])]  # not the gate, a branch
        assert len(trained) > len(trainable) // 2, step
        for k in trainable:
            assert average[k].dtype == torch.float32
            assert torch.allclose(average[k].double(), hand[k], rtol=0, atol=2e-7), (step, k)
        for k in trained:  # the average is neither the weights nor where they started
            assert not torch.equal(average[k], raw[k]) and not torch.equal(average[k], ema_run["start"][k]), (step, k)
    saved = read_checkpoint(ema_run["dir"] / "run_6.pth")
    for k, v in saved["model_ema"].items():  # what the step checkpoint holds: the average and the raw weights
        assert torch.equal(v, ema_run["average"][-1][k]) and torch.equal(saved["model"][k], ema_run["raw"][-1][k])


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no native bfloat16 for --amp")
def test_the_average_stays_float32_under_amp(x2_pack, tmp_path):
    make(x2_pack, tmp_path, "--max_steps", "2", "--amp", "bf16", "--ema", "0.9").fit()
    saved = read_checkpoint(tmp_path / "run_2.pth")
    assert all(v.dtype == torch.float32 for v in saved["model_ema"].values())
    assert not torch.equal(saved["model_ema"]["residual_enhancement.conv1.weight"],
                           saved["model"]["residual_enhancement.conv1.weight"])


def test_frozen_mean_shift_is_copied_not_averaged():
    net = Net()
    average = WeightAverage(net, 0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # the frozen mean shift too: a constant the net holds, never a value to average
    average.update(net)
    state = net.state_dict()
    for k, v in average.state_dict().items():
        frozen = k.startswith(("sub_mean.", "construction.add_mean."))
        assert torch.equal(v, state[k]) == frozen, k
    assert sum(k.startswith(("sub_mean.", "construction.add_mean.")) for k in state) == 4


def test_validation_and_best_final_use_the_average_and_the_log_says_so(ema_run, x2_valid, tmp_path):
    folder = ema_run["dir"]
    fields, rows = log_rows(folder)
    assert fields == ["step", "loss", "lr", "samples_per_s", "ema_decay", "Tiny_x2_psnr", "Tiny_x2_ssim"]
    assert [r["ema_decay"] for r in rows] == [str(DECAY)] * 3
    final = read_checkpoint(folder / "run_final.pth")
    assert final["weights"] == "ema" and "model_ema" not in final
    assert all(torch.equal(v, ema_run["average"][-1][k]) for k, v in final["model"].items())
    args = ["--test_data_dir", str(x2_valid), "--no_save", "--quiet"]
    assert sample.main(["--ckpt_path", str(folder / "run_6.pth"), *args])[0].psnr == pytest.approx(
        float(rows[-1]["Tiny_x2_psnr"]), abs=1e-4)  # the logged score is the average's
    with pytest.raises(CheckpointError, match="holds only averaged weights"):
        sample.main(["--ckpt_path", str(folder / "run_final.pth"), "--weights", "raw", *args])


def test_sample_scores_the_average_by_default_and_raw_on_request(ema_run, x2_valid, tmp_path):
    step6 = read_checkpoint(ema_run["dir"] / "run_6.pth")
    scores = {}
    for name, extra in (("default", []), ("raw", ["--weights", "raw"]), ("ema", ["--weights", "ema"])):
        report = tmp_path / f"{name}.json"
        sample.main(["--ckpt_path", str(ema_run["dir"] / "run_6.pth"), "--test_data_dir", str(x2_valid), "--no_save",
                     "--quiet", "--report", str(report), *extra])
        doc = json.loads(report.read_text())
        scores[name] = doc["results"][0]["psnr"], doc["settings"]["weights"]
    for name, key in (("ema_only", "model_ema"), ("raw_only", "model")):  # the tensors alone, in a plain file
        torch.save({"model": step6[key]}, tmp_path / f"{name}.pth")
        scores[name] = sample.main(["--ckpt_path", str(tmp_path / f"{name}.pth"), "--test_data_dir", str(x2_valid),
                                    "--no_save", "--quiet"])[0].psnr
    assert scores["default"] == scores["ema"] == (scores["ema_only"], "ema")
    assert scores["raw"] == (scores["raw_only"], "raw")
    assert scores["raw"][0] != scores["ema"][0]
    assert load_checkpoint(ema_run["dir"] / "run_6.pth").weights == "ema"


def test_a_checkpoint_without_an_average_behaves_as_before(x2_pack, x2_valid, tmp_path):
    plain = tmp_path / "plain"
    make(x2_pack, plain, "--max_steps", "2", "--valid_data_dir", str(x2_valid)).fit()
    step2, final = read_checkpoint(plain / "run_2.pth"), read_checkpoint(plain / "run_final.pth")
    assert "model_ema" not in step2 and "model_ema" not in final and "weights" not in final
    assert log_rows(plain)[0] == ["step", "loss", "lr", "samples_per_s", "Tiny_x2_psnr", "Tiny_x2_ssim"]
    net = load_checkpoint(plain / "run_2.pth")
    assert net.weights == "raw" and all(torch.equal(v, step2["model"][k]) for k, v in net.state_dict().items())
    args = ["--ckpt_path", str(plain / "run_2.pth"), "--test_data_dir", str(x2_valid), "--no_save", "--quiet"]
    assert sample.main(args)[0].psnr == sample.main([*args, "--weights", "raw"])[0].psnr
    with pytest.raises(CheckpointError, match="holds no averaged weights .* drop --weights ema"):
        sample.main([*args, "--weights", "ema"])


def test_resume_with_ema_is_exact(ema_run, x2_pack, x2_valid, tmp_path):
    """A run resumed at step 2 ends with the straight run's raw weights, average, Adam state and final file."""
    a, b = ema_run["dir"], tmp_path / "b"
    b.mkdir()
    shutil.copy(a / "run_2.pth", b / "run_2.pth")
    Solver(parse_args(["--resume", str(b / "run_2.pth")])).fit()
    straight, resumed = read_checkpoint(a / "run_6.pth"), read_checkpoint(b / "run_6.pth")
    for key in ("model", "model_ema"):
        assert straight[key].keys() == resumed[key].keys()
        assert all(torch.equal(v, resumed[key][k]) for k, v in straight[key].items()), key
    sa, sb = straight["train_state"]["optimizer"]["state"], resumed["train_state"]["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    fa, fb = read_checkpoint(a / "run_final.pth"), read_checkpoint(b / "run_final.pth")
    assert fa["valid"] == fb["valid"] and all(torch.equal(v, fb["model"][k]) for k, v in fa["model"].items())


def test_turning_ema_on_at_resume_starts_from_the_resumed_weights(x2_pack, tmp_path, capsys):
    make(x2_pack, tmp_path / "c", "--max_steps", "2").fit()
    capsys.readouterr()
    Solver(parse_args(["--resume", str(tmp_path / "c" / "run_2.pth"), "--ema", "0.5", "--max_steps", "3",
                       "--print_interval", "1"])).fit()
    out = capsys.readouterr().out
    assert "note: resuming with changed --ema 0.0 -> 0.5: the run no longer matches an uninterrupted one" in out
    assert "holds no averaged weights: the --ema average starts from its weights at step 2" in out
    w2, step3 = read_checkpoint(tmp_path / "c" / "run_2.pth")["model"], read_checkpoint(tmp_path / "c" / "run_3.pth")
    for k, v in step3["model_ema"].items():
        assert torch.allclose(v, 0.5 * w2[k] + 0.5 * step3["model"][k], rtol=0, atol=1e-7), k


def test_init_from_takes_the_average_unless_told_otherwise(ema_run, x2_pack, tmp_path, capsys):
    source = read_checkpoint(ema_run["dir"] / "run_6.pth")
    for weights, key in (("ema", "model_ema"), ("raw", "model")):
        solver = make(x2_pack, tmp_path / weights, "--init_from", str(ema_run["dir"] / "run_6.pth"),
                      "--init_weights", weights, "--ema", "0.9")
        own = solver.net.state_dict()
        assert all(torch.equal(own[k], v) for k, v in source[key].items()), weights
        assert all(torch.equal(own[k], v) for k, v in solver.ema.state_dict().items())  # the average starts there
    out = capsys.readouterr().out
    assert "(its averaged weights, model_ema; --init_weights raw takes the raw ones): copied 35 tensors" in out
    assert "(its raw weights, model): copied 35 tensors" in out
    final = ema_run["dir"] / "run_final.pth"  # weights-only: the average under 'model'
    only = make(x2_pack, tmp_path / "final", "--init_from", str(final))
    assert all(torch.equal(only.net.state_dict()[k], v) for k, v in read_checkpoint(final)["model"].items())
    assert "(its averaged weights, the only ones it holds): copied 35 tensors" in capsys.readouterr().out
    with pytest.raises(InputError, match="holds only averaged weights .* drop --init_weights raw"):
        make(x2_pack, tmp_path / "final_raw", "--init_from", str(final), "--init_weights", "raw")


DDP_SCRIPT = """
import os, sys, torch
from solver import Solver, parse_args
from tools import ema_study_table
solver = Solver(parse_args(sys.argv[1:]))
solver.fit()
torch.save(solver.ema.state_dict(), os.path.join(os.environ["DUMP"], "rank%s.pt" % os.environ["RANK"]))
"""


def test_ddp_ranks_hold_the_same_average_and_resume_exactly(x2_pack, tmp_path, torchrun):
    """gloo, 2 ranks x 1 sample: straight to step 4, then resumed from step 2 (the straight step 4 is set aside)."""
    script = tmp_path / "ddp_ema.py"
    script.write_text(DDP_SCRIPT)
    ck = tmp_path / "ck"
    common = ["--train_data_path", str(x2_pack), "--ckpt_dir", str(ck), "--ckpt_name", "run", *TINY,
              "--max_steps", "4", "--num_gpu", "2", "--ema", str(DECAY)]
    first = torchrun(script, tmp_path / "straight", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(script, tmp_path / "resumed", *common, "--resume", str(ck / "run_2.pth"))
    assert second.returncode == 0, second.stderr[-3000:]
    straight, resumed = read_checkpoint(ck / "abandoned_after_step_2" / "run_4.pth"), read_checkpoint(ck / "run_4.pth")
    assert straight["train_state"]["world_size"] == 2
    ranks = [torch.load(tmp_path / run / f"rank{r}.pt", weights_only=True) for run in ("straight", "resumed")
             for r in (0, 1)]
    for k, v in straight["model_ema"].items():
        assert all(torch.equal(v, rank[k]) for rank in ranks), k  # every rank's average is the saved one
        assert torch.equal(v, resumed["model_ema"][k]) and torch.equal(straight["model"][k], resumed["model"][k]), k


# ---------------------------------------------------------------------------------------- the study's table

def _report(path: Path, psnr: dict[str, float], weights: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.stem.rsplit("_", 1)[1] if weights is None else weights
    path.write_text(json.dumps({"settings": {"weights": weights},
                                "results": [{"dataset": s, "psnr": v} for s, v in psnr.items()]}))


def test_the_study_table_compares_each_average_with_the_raw_weights_of_the_same_seeds(tmp_path):
    raw = {0: (37.30, 33.10), 1: (37.40, 33.00), 2: (37.20, 33.05)}
    for seed, (a, b) in raw.items():
        for decay, gain in (("999", 0.5), ("99", 0.01)):
            _report(tmp_path / "eval" / f"ft_ema{decay}_s{seed}_raw.json", {"Set5": a, "Set14": b})
            _report(tmp_path / "eval" / f"ft_ema{decay}_s{seed}_ema.json", {"Set5": a + gain, "Set14": b + gain})
    table = ema_study_table.study_table(ema_study_table.read_scores(tmp_path)["ft"])
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert list(rows) == ["raw", "ema 0.999", "ema 0.99"]
    assert "| 37.3000 (0.200) | 33.0500 (0.100) |" in rows["raw"]
    assert "+0.5000, +0.500 / +0.500 / +0.500, yes" in rows["ema 0.999"]  # beyond the 0.2 dB spread
    assert "+0.0100, +0.010 / +0.010 / +0.010, no" in rows["ema 0.99"]
    _report(tmp_path / "eval" / "ft_ema99_s1_raw.json", {"Set5": 37.41, "Set14": 33.0})
    with pytest.raises(InputError, match="did not train the same trajectory"):
        ema_study_table.read_scores(tmp_path)
    _report(tmp_path / "eval" / "ft_ema99_s1_raw.json", {"Set5": 37.40, "Set14": 33.0}, weights="ema")
    with pytest.raises(InputError, match="named for the raw weights, but its report scored ema weights"):
        ema_study_table.read_scores(tmp_path)
