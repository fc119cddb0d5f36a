"""Mutation check: break the code on purpose, one mutation at a time, and see whether the tests notice.

    python -m tools.mutate                      # every mutation below, on this checkout
    python -m tools.mutate --repo ../old         # on another checkout (e.g. an older commit's worktree)
    python -m tools.mutate --only tile --list   # names matching 'tile', without running anything

Not part of CI (it runs the matching test files once per mutation: minutes). The tracked files of the
checkout are copied into a scratch folder beside the checkout, next to a ``shared`` link, so that the
tests still find ``../shared``; each mutation replaces one exact text in one file of that copy, runs its
test files with ``-x``, and puts the file back. A mutation whose old text is not found exactly once is
reported as ``stale`` (the code moved on: update the list); test files the checkout lacks are left out.

Outcomes: ``caught`` (a test failed), ``SURVIVED`` (all passed), ``error`` (pytest could not even
collect: caught, but by an import error rather than an assertion), ``timeout``, ``stale``, ``no tests``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    select: str | None = None  # a pytest -k expression, to keep long test files bounded
    why: str = field(default="", compare=False)


# Test files run in the order given, with -x: the likeliest to catch a mutation first.
INFERENCE_TESTS = ("tests/test_inference.py", "tests/test_model.py", "tests/test_sample.py")
RECIPE = ("tests/test_recipe.py",)
RUN_FOLDER = ("tests/test_run_folder.py",)
SEAM = "bounds = [0] + [(nxt + cur + window) // 2 for cur, nxt in zip(starts, starts[1:])] + [length]"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation("tile seam 6 px inside each tile", "model/inference.py", SEAM,
             SEAM.replace("// 2 for", "// 2 + 6 for"), INFERENCE_TESTS),
    Mutation("tile seam 1 px inside each tile", "model/inference.py", SEAM,
             SEAM.replace("// 2 for", "// 2 + 1 for"), INFERENCE_TESTS),
    Mutation("tile overlap counted once, not per side", "model/inference.py",
             "stride = window - 2 * overlap", "stride = window - overlap", INFERENCE_TESTS),
    Mutation("self-ensemble uses 2 of the 8 transforms", "model/inference.py",
             "for k in range(8))", "for k in (0, 1) * 4)", INFERENCE_TESTS),
    Mutation("self-ensemble drops the 8th transform", "model/inference.py",
             "for k in range(8))", "for k in (0, 1, 2, 3, 4, 5, 6, 6))", INFERENCE_TESTS),
    Mutation("self-ensemble inverts in the wrong order", "model/inference.py",
             "x = x.transpose(2, 3) if k & 4 else x\n        return x.flip(flips) if flips else x",
             "x = x.flip(flips) if flips else x\n        return x.transpose(2, 3) if k & 4 else x",
             INFERENCE_TESTS),
    Mutation("sample.py rounds instead of truncating", "dsrnet/upscale.py",
             "else levels(sr, quantize)", 'else levels(sr, "round")',
             ("tests/test_sample.py",)),
    Mutation("sample.py truncates when asked to round", "dsrnet/upscale.py",
             "else levels(sr, quantize)", 'else levels(sr, "truncate")',
             ("tests/test_sample.py",)),
    Mutation("--protocol basicsr rounds Y", "dsrnet/metrics.py",
             '"basicsr": Protocol(quantize="round", round_y=False)',
             '"basicsr": Protocol(quantize="round", round_y=True)', ("tests/test_protocol.py",)),
    Mutation("--protocol basicsr truncates the SR", "dsrnet/metrics.py",
             '"basicsr": Protocol(quantize="round", round_y=False)',
             '"basicsr": Protocol(quantize="truncate", round_y=False)', ("tests/test_protocol.py",)),
    Mutation("a report forgets the gate seed", "dsrnet/reports.py",
             '"gate_mode": cfg.gate, "seed": cfg.seed,', '"gate_mode": cfg.gate,', ("tests/test_reports.py",)),
    Mutation("resume skips the global torch RNG", "dsrnet/train/rng.py",
             '    torch.set_rng_state(states["torch"])\n', "", ("tests/test_solver.py",), select="resume or rng"),
    Mutation("resume skips the numpy RNG", "dsrnet/train/rng.py",
             "    np.random.set_state((", "    _ = ((", ("tests/test_solver.py",), select="resume or rng"),
    Mutation("resume skips the python RNG", "dsrnet/train/rng.py",
             "    random.setstate((version, tuple(state), gauss_next))", "    pass",
             ("tests/test_solver.py",), select="resume or rng"),
    Mutation("resume skips the gate generator", "model/routing.py",
             '        self.generator.set_state(state["gate_generator"])\n', "",
             ("tests/test_solver.py",), select="resume or rng"),
    Mutation("resume never notes a changed setting", "dsrnet/train/resume.py",
             "    if math:\n", "    if False:\n", ("tests/test_solver.py",), select="resume or rng"),
    Mutation("authors' multi-scale upsamplers not renamed", "model/dsrnet.py",
             'where = f"upsample.x{scale}" if scale else "upsample"', 'where = "upsample"',
             ("tests/test_model.py",)),
    Mutation("authors' second upsampler stage (x4) not renamed", "model/dsrnet.py",
             r'_AUTHORS_UPSAMPLE = re.compile(r"^upsample\.up(\d?)\.body\.(\d+)\.(weight|bias)$")',
             r'_AUTHORS_UPSAMPLE = re.compile(r"^upsample\.up(\d?)\.body\.(0)\.(weight|bias)$")',
             ("tests/test_model.py",)),
    Mutation("scale inferred from the last upsampler stage's width only", "model/dsrnet.py",
             "return r ** len(stage_channels)", "return r", ("tests/test_model.py",)),
    Mutation("sample.py --cuda silently runs on CPU", "sample.py",
             '    if cfg.cuda and not torch.cuda.is_available():\n        raise InputError("--cuda was given but no '
             'CUDA device is available; drop --cuda to run on CPU")\n    return pick_device(cfg.device or '
             '("cuda" if cfg.cuda else None))', "    return pick_device(cfg.device)", ("tests/test_sample.py",)),
    Mutation("sample.py accepts an unknown --model", "sample.py",
             'if cfg.model != "dsrnet":', "if False:", ("tests/test_sample.py",)),
    Mutation("sample.py without test sets exits 0", "sample.py",
             "    if not found:\n        raise InputError", "    if False:\n        raise InputError",
             ("tests/test_sample.py",)),
    Mutation("training SIGTERM exits 130, not 143", "dsrnet/stopping.py",
             "signal.SIGTERM: 128 + signal.SIGTERM", "signal.SIGTERM: 128 + signal.SIGINT",
             ("tests/test_solver.py",), select="signal or sigterm or exit"),
    Mutation("a SIGTERM'd command leaves its temp file", "dsrnet/cli.py",
             "with sigterm_unwinds(), _worker_deaths_left_to_the_loader():",
             "with _worker_deaths_left_to_the_loader():",
             ("tests/test_reliability.py", "tests/test_div2h5.py"), select="sigterm"),
    Mutation("a read-only file is replaced by any writer", "dsrnet/files.py",
             "    path = Path(path)\n    check_replaceable(path)\n", "    path = Path(path)\n", ("tests/test_io.py",),
             select="writability"),
    Mutation("an output that is an input is overwritten", "dsrnet/files.py",
             "            if (st.st_dev, st.st_ino) in existing:", "            if False:",
             ("tests/test_sample_cli.py", "tests/test_div2h5.py"), select="overwrites_an_input or is_an_input"),
    Mutation("a refused training run leaves an empty --ckpt_dir", "dsrnet/files.py",
             "    try:\n        _probe_folder(folder)\n",
             "    try:\n        folder.mkdir(parents=True, exist_ok=True)\n",
             ("tests/test_solver.py",), select="corrupt_validation or one_line"),
    Mutation("an unexpected error leaves the process joining deaf workers", "dsrnet/cli.py",
             "    except BaseException:\n        _kill_workers()\n        raise\n",
             "    except BaseException:\n        raise\n",
             ("tests/test_reliability.py",), select="waiting_on_its_workers"),
    Mutation("a batch lost in transit is not named a worker death", "dsrnet/cli.py",
             'elif isinstance(err, (OSError, EOFError)) and passes_through(err.__traceback__, '
             '"multiprocessing/reductions.py"):', "elif False:", ("tests/test_reliability.py",),
             select="waiting_on_its_workers"),
    Mutation("a data worker prints the handover its reader abandoned", "dsrnet/stopping.py",
             "    ignore_stop_signals()\n    quiet_abandoned_handovers()\n", "    ignore_stop_signals()\n",
             ("tests/test_reliability.py",), select="abandoned"),
    Mutation("the training loader's workers get no init", "dsrnet/data/train_data.py",
             "worker_init_fn=data_worker_init", "worker_init_fn=None", ("tests/test_reliability.py",),
             select="abandoned"),
    Mutation("the training loader's workers stop on Ctrl-C", "dsrnet/stopping.py",
             "    ignore_stop_signals()\n    quiet_abandoned_handovers()\n", "    quiet_abandoned_handovers()\n",
             ("tests/test_reliability.py",), select="abandoned"),
    Mutation("--init_from --init_weights raw copies an --ema run's average", "dsrnet/train/checkpoints.py",
             '    if weights not in sets and weights == "raw":', "    if False:", ("tests/test_ema.py",),
             select="init_from"),
    Mutation("the EMA study table trusts a report's file name", "tools/ema_study_table.py",
             '        if scored != m["weights"]:', "        if False:", ("tests/test_ema.py",), select="study_table"),
    Mutation("--resume: a flag at its default counts as given", "solver.py",
             "if value is not unset}", "if value is not None}", ("tests/test_config.py",)),
    Mutation("a worker death raised in a finalizer prints its traceback", "dsrnet/cli.py",
             "with sigterm_unwinds(), _worker_deaths_left_to_the_loader():", "with sigterm_unwinds():",
             ("tests/test_reliability.py",), select="finalizer"),
    Mutation("export_onnx --check passes over tolerance", "tools/export_onnx.py",
             "            sys.exit(1)\n", "            pass\n", ("tests/test_onnx.py",)),
    Mutation("git_dirty: failed git reads as clean", "dsrnet/provenance.py",
             "return None if status is None else bool(status)", "return bool(status)",
             ("tests/test_benchmarks.py",), select="provenance"),
    # The recipe as the running loop applies it (tests/test_recipe.py).
    Mutation("recipe: Adam's lr never halved in the loop", "dsrnet/train/schedule.py",
             'group["lr"] = lr * mult', 'group["lr"] = cfg.lr * mult', RECIPE, select="lr_is_halved"),
    Mutation("recipe: lr halved one step early in the loop", "solver.py",
             "lr = set_schedules(self.optim, self.net.router, cfg, self.step)",
             "lr = set_schedules(self.optim, self.net.router, cfg, self.step + 1)", RECIPE, select="lr_is_halved"),
    Mutation("recipe: lr schedule halves one step early", "dsrnet/train/schedule.py",
             "return lr * 0.5 ** (step // decay)", "return lr * 0.5 ** ((step + 1) // decay)", RECIPE,
             select="lr_is_halved"),
    Mutation("recipe: gate group's lr not multiplied", "dsrnet/train/schedule.py",
             "(1.0, cfg.gate_lr_mult)", "(1.0, 1.0)", RECIPE, select="lr_is_halved"),
    Mutation("recipe: gradients not clipped", "solver.py",
             "nn.utils.clip_grad_norm_(self.net.parameters(), cfg.clip)", "pass", RECIPE, select="clipped"),
    Mutation("recipe: gradients clipped to a fixed 10", "solver.py",
             "nn.utils.clip_grad_norm_(self.net.parameters(), cfg.clip)",
             "nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)", RECIPE, select="clipped"),
    Mutation("recipe: gradients clipped before unscaling", "solver.py",
             "self.scaler.unscale_(self.optim)",
             "nn.utils.clip_grad_norm_(self.net.parameters(), cfg.clip); self.scaler.unscale_(self.optim)",
             RECIPE, select="clipped"),
    Mutation("recipe: L1 and SmoothL1 swapped", "dsrnet/train/loss.py",
             '"L1": nn.L1Loss, "SmoothL1": nn.SmoothL1Loss', '"L1": nn.SmoothL1Loss, "SmoothL1": nn.L1Loss',
             RECIPE, select="loss_fn"),
    Mutation("recipe: MSE is SmoothL1", "dsrnet/train/loss.py", '"MSE": nn.MSELoss', '"MSE": nn.SmoothL1Loss', RECIPE,
             select="loss_fn"),
    Mutation("recipe: Adam beta2 0.99", "solver.py", "betas=(0.9, 0.999))", "betas=(0.9, 0.99))", RECIPE,
             select="adam"),
    Mutation("recipe: Adam beta1 0.8", "solver.py", "betas=(0.9, 0.999))", "betas=(0.8, 0.999))", RECIPE,
             select="adam"),
    Mutation("recipe: Adam eps 1e-6", "solver.py", "betas=(0.9, 0.999))", "betas=(0.9, 0.999), eps=1e-6)",
             RECIPE, select="adam"),
    Mutation("recipe: gate penalty sign flipped", "model/routing.py",
             "return self.route[:, 1].mean()", "return -self.route[:, 1].mean()",
             RECIPE, select="penalty"),
    Mutation("recipe: gate penalty on the selected branch", "model/routing.py",
             "return self.route[:, 1].mean()", "return self.route[:, 0].mean()",
             RECIPE, select="penalty"),
    Mutation("recipe: gate penalty never backpropagated", "solver.py",
             "self.scaler.scale(loss).backward()", "self.scaler.scale(data_loss).backward()", RECIPE,
             select="penalty"),
    Mutation("recipe: gate temperature anneals upwards", "dsrnet/train/schedule.py",
             "get_gate_tau(step, cfg.gate_tau, cfg.gate_tau_min, cfg.decay)",
             "get_gate_tau(step, cfg.gate_tau_min, cfg.gate_tau, cfg.decay)", RECIPE, select="temperature"),
    Mutation("recipe: fixed_share counts the selected branch", "model/routing.py",
             'share = self.routed["fixed"] /', 'share = self.routed["selected"] /', RECIPE, select="fixed_share"),
    Mutation("recipe: validation with the training gate", "dsrnet/train/validation.py",
             'net.router.evaluating("learned" if cfg.gate == "learned" else "selected")',
             "net.router.evaluating(cfg.gate)", RECIPE,
             select="validation_scores"),
    Mutation("recipe: validation in training mode", "dsrnet/train/validation.py", "net.eval()", "net.train()", RECIPE,
             select="validation_scores"),
    Mutation("router: validation loses the training log's routing count", "model/routing.py",
             "            self.routed.update(routed)\n", "", ("tests/test_gate.py",), select="returns_from_evaluation"),
    Mutation("router: validation reseeds the training gate's noise", "model/routing.py",
             "            self.set_mode(before)\n", "            self.set_mode(before, 0)\n",
             ("tests/test_gate.py",), select="returns_from_evaluation or mid_interval"),
    Mutation("router: resume drops the open interval's routing count", "model/routing.py",
             '        self.routed.update(state.get("routed", {}))\n', "", ("tests/test_gate.py",),
             select="mid_interval"),
    Mutation("precision: in_float32 keeps the input's dtype", "model/precision.py",
             "        return fn(x.float())", "        return fn(x)", ("tests/test_model.py", "tests/test_sample.py"),
             select="bf16 or autocast or mean"),
    Mutation("config: --gate tagged as a plain run setting", "dsrnet/train/config.py",
             'gate: str = _setting("sample", "recipe")', 'gate: str = _setting("sample")', ("tests/test_config.py",)),
    Mutation("recipe: keep_last deletes _best", "dsrnet/train/checkpoints.py",
             "(self.folder / name).unlink(missing_ok=True)",
             "(self.folder / name).unlink(missing_ok=True); self.best_path.unlink(missing_ok=True)", RECIPE,
             select="best_checkpoint"),
    Mutation("recipe: best PSNR not restored on resume", "dsrnet/train/checkpoints.py",
             'self.best_psnr = best.get("mean_psnr")', "self.best_psnr = None", RECIPE,
             select="best_checkpoint"),
    Mutation("recipe: luma weights of R and B swapped", "dsrnet/metrics.py",
             "BT601 = (0.299, 0.587, 0.114)", "BT601 = (0.114, 0.587, 0.299)", RECIPE, select="gray"),
    Mutation("recipe: Y weights of R and B swapped", "dsrnet/metrics.py",
             "[65.481, 128.553, 24.966]", "[24.966, 128.553, 65.481]", RECIPE, select="gray"),
    Mutation("recipe: gray output is the SR's red channel", "dsrnet/upscale.py",
             "levels(luma(sr), quantize)[..., 0]", "levels(sr, quantize)[..., 0]", RECIPE, select="gray"),
    Mutation("run folder: a new run takes over an occupied folder", "dsrnet/train/checkpoints.py",
             "        if found:\n            listed", "        if False:\n            listed", RUN_FOLDER,
             select="new_run or another_name or users_file"),
    Mutation("run folder: a file the run did not write is replaced", "dsrnet/train/checkpoints.py",
             "if path not in self.owned and os.path.lexists(path):", "if False:", RUN_FOLDER, select="users_file"),
    Mutation("run folder: another run's file under a resumed run's name is replaced", "dsrnet/train/checkpoints.py",
             "        if foreign:\n", "        if False:\n", RUN_FOLDER, select="users_file"),
    Mutation("run folder: the lock is written through a link", "dsrnet/train/run_lock.py",
             'os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)', "os.O_RDWR | os.O_CREAT", RUN_FOLDER,
             select="users_file"),
    Mutation("run folder: checkpoints a kill left beyond --keep_last stay", "dsrnet/train/checkpoints.py",
             "            p.unlink(missing_ok=True)\n            self.owned.discard(p)",
             "            self.owned.discard(p)", RUN_FOLDER, select="keep_last"),
    Mutation("run folder: non-finite weights are saved", "solver.py",
             "        if not all_finite(self.net):", "        if False:", RUN_FOLDER, select="non_finite"),
    Mutation("run folder: lr inf accepted", "solver.py",
             "math.isfinite(value) and (value > low", "(value > low", RUN_FOLDER, select="refused"),
    Mutation("run folder: a step killed before its validation is never validated", "solver.py",
             "if log is not None and self.pending_row and not log.has_row(self.step):",
             "if False:", RUN_FOLDER, select="kill_while or interrupted"),
    Mutation("run folder: the pending row is not saved", "solver.py",
             "self.save(self.step, row)", "self.save(self.step)", RUN_FOLDER, select="kill_while or interrupted"),
    Mutation("run folder: the best compares across validation sets", "dsrnet/train/checkpoints.py",
             "if basis[0] and before != basis:", "if False:", RUN_FOLDER, select="one_validation_set"),
    Mutation("run folder: Adam's state not regrouped on a --gate change", "solver.py",
             "regroup = None if saved_groups == groups else", "regroup = None if True else", RUN_FOLDER,
             select="change_the_gate"),
    Mutation("run folder: a changed training file goes unnoticed", "dsrnet/train/checkpoints.py",
             "    if not saved or (saved.get", "    if True or (saved.get", RUN_FOLDER, select="training_file"),
    Mutation("run folder: a closed stdout stops training", "solver.py",
             "    output_never_stops_the_run()\n", "", RUN_FOLDER, select="nobody_reads"),
    Mutation("run folder: --amp none keeps a recorded --amp", "solver.py",
             '                  amp=None if cfg.amp == "none" else cfg.amp)', "                  )", RUN_FOLDER,
             select="off_form"),
    Mutation("run folder: no progress line without a terminal", "solver.py",
             "        elif bar.disable:", "        elif False:", RUN_FOLDER, select="terminal"),
)


def copy_tracked(repo: Path, dst: Path) -> None:
    """The checkout's tracked files (as they are on disk) into ``dst``."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    for name in filter(None, names.decode().split("\0")):
        src = repo / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def run_tests(copy: Path, m: Mutation, timeout: float) -> tuple[str, float]:
    tests = [t for t in m.tests if (copy / t).is_file()]
    if not tests:
        return "no tests", 0.0
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    cmd += ["-k", m.select] if m.select else []
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    try:
        rc = subprocess.run(cmd, check=False, cwd=copy, env=env, capture_output=True, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start
    outcome = {0: "SURVIVED", 1: "caught", 5: "no tests"}.get(rc, f"error (pytest exit {rc})")
    return outcome, time.monotonic() - start


def apply_and_run(copy: Path, m: Mutation, timeout: float) -> tuple[str, float]:
    path = copy / m.file
    if not path.is_file():
        return "stale", 0.0
    original = path.read_text()
    if original.count(m.old) != 1:
        return "stale", 0.0
    path.write_text(original.replace(m.old, m.new))
    try:
        return run_tests(copy, m, timeout)
    finally:
        path.write_text(original)


def table(rows: list[tuple[Mutation, str, float, list[str]]]) -> str:
    lines = ["| mutation | file | tests run | outcome | s |", "|---|---|---|---|---|"]
    for m, outcome, seconds, tests in rows:
        ran = ", ".join(Path(t).name for t in tests) + (f" -k '{m.select}'" if m.select and tests else "")
        lines.append(f"| {m.name} | {m.file} | {ran or '-'} | {outcome} | {seconds:.0f} |")
    caught = sum(o == "caught" for _, o, _, _ in rows)
    lines.append(f"\n{caught} of {len(rows)} caught")
    return "\n".join(lines)


def load(path: str | None) -> tuple[Mutation, ...]:
    if path is None:
        return MUTATIONS
    entries = json.loads(Path(path).read_text())
    return tuple(Mutation(**{**e, "tests": tuple(e["tests"])}) for e in entries)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(ROOT), help="checkout to mutate (default: this one)")
    p.add_argument("--mutations", help="JSON list of {name, file, old, new, tests[, select]} (default: built in)")
    p.add_argument("--only", help="run only mutations whose name contains this text")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutation (default 600)")
    p.add_argument("--list", action="store_true", help="print the mutations and exit")
    cfg = p.parse_args(argv)
    mutations = [m for m in load(cfg.mutations) if not cfg.only or cfg.only in m.name]
    if cfg.list:
        for m in mutations:
            print(f"{m.name}: {m.file}: {m.old.strip()!r} -> {m.new.strip()!r}  [{', '.join(m.tests)}]")
        return 0
    repo = Path(cfg.repo).resolve()
    shared = repo.parent / "shared"
    scratch = Path(tempfile.mkdtemp(prefix=".mutate-", dir=repo.parent))
    try:
        if shared.exists():
            (scratch / "shared").symlink_to(shared.resolve())
        copy = scratch / repo.name
        copy_tracked(repo, copy)
        rows = []
        for m in mutations:
            outcome, seconds = apply_and_run(copy, m, cfg.timeout)
            rows.append((m, outcome, seconds, [t for t in m.tests if (copy / t).is_file()]))
            print(f"{outcome:10s} {seconds:5.0f} s  {m.name}", flush=True)
        print("\n" + table(rows))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all(o == "caught" for _, o, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
