"""DSRNet's complexity next to the paper's Table 7 (x2, "256x256") and Table 8 (x4 runtime).

    python -m tools.benchmarks.complexity                          # CPU, HR 256/512/1024 -> results/complexity.md
    python -m tools.benchmarks.complexity --device cuda            # GPU runtime and memory
    python -m tools.benchmarks.complexity --quick --report /tmp/c.md   # seconds (tests)

Parameters are counted from the modules a forward really calls (forward hooks), so the never-used
conv9/conv10 and the branch a gate mode skips drop out. FLOPs come from torch.utils.flop_counter on the
meta device (shapes only, no arithmetic). Memory and runtime follow the default inference path:
load_checkpoint, torch.inference_mode, sample.py's memory layout, batch 1.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch

from dsrnet.cli import HelpFormatter, pick_device, run_cli
from dsrnet.errors import InputError
from dsrnet.files import atomic_write_bytes, ensure_writable
from dsrnet.provenance import environment, git_description
from model import SCALES, Net, file_sha256, load_checkpoint, read_checkpoint, scale_name
from model.flops import count_flops, meta_net
from model.precision import bf16_supported, fast_memory_format, memory_format_of, set_tf32
from tools.benchmarks.report import WEIGHTS_CANDIDATES, require_at_least
from tools.benchmarks.timing import interleaved

ROOT = Path(__file__).resolve().parents[2]

BRANCHES = ("selected", "fixed")
# The paper: Table 7 (x2, "256x256") and Table 8 (x4 runtime in ms at HR 256/512/1024, their GPU).
PAPER_PARAMS = 746_100
PAPER_FLOPS = 49.25e9
PAPER_MEMORY_MB = 710.8
PAPER_RUNTIME_MS = {256: 5.971, 512: 22.96, 1024: 105.3}
TABLE7_SIZE = 256

# Parameter groups by name prefix; every other parameter (conv1-conv8, conv11-conv17) runs in all modes.
GROUPS = {
    "conv9/conv10 (never used)": ("wide_enhancement.conv9.", "wide_enhancement.conv10."),
    "fixed branch": ("wide_enhancement.fixed_branch.",),
    "selected branch": ("wide_enhancement.selected_branch.",),
    "gate": ("wide_enhancement.gate.",),
    "mean shift (frozen)": ("sub_mean.", "construction.add_mean."),
    "upsampler": ("construction.upsample.",),
}
CORE = "always-run convs (conv1-8, conv11-17)"


# ----------------------------------------------------------------------------------------- counting

def count_parameters(net: torch.nn.Module, names: Iterable[str] | None = None, trainable_only: bool = False) -> int:
    """Elements of the parameters called ``names`` (all when None), optionally only those with requires_grad."""
    chosen = None if names is None else set(names)
    return sum(p.numel() for n, p in net.named_parameters()
               if (chosen is None or n in chosen) and (p.requires_grad or not trainable_only))


def group_names(net: torch.nn.Module, group: str) -> set[str]:
    """Parameter names of one of :data:`GROUPS`, or of :data:`CORE` (everything outside them)."""
    names = {n for n, _ in net.named_parameters()}
    if group == CORE:
        return {n for n in names if not n.startswith(sum(GROUPS.values(), ()))}
    return {n for n in names if n.startswith(GROUPS[group])}


def used_parameter_names(net: Net, scale: int | None = None) -> set[str]:
    """Parameters of the modules one forward in the net's current gate mode calls.

    Found with forward hooks rather than a list of names, so what is counted is what runs: conv8 once
    although it is applied three times, conv9/conv10 never, the gate only in the sample/argmax modes
    (where the branch is whichever this forward's decision picks).
    """
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda *_, name=name: called.add(name)) for name, m in net.named_modules()]
    p = next(net.parameters())
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, 8, 8, device=p.device, dtype=p.dtype), scale)
    finally:
        for h in hooks:
            h.remove()
    return {f"{m}.{n}".lstrip(".") for m in called for n, _ in net.get_submodule(m).named_parameters(recurse=False)}


def parameter_rows(net: Net, scale: int) -> list[tuple[str, int]]:
    """The candidate parameter counts of one net: the whole module, and each branch's network as run."""
    gate, shift = group_names(net, "gate"), group_names(net, "mean shift (frozen)")
    total = count_parameters(net)
    rows = [("all tensors (the released file)", total),
            ("trainable (requires_grad)", count_parameters(net, trainable_only=True))]
    mode = net.gate_mode
    for branch in BRANCHES:
        net.set_gate(branch)
        used = used_parameter_names(net, scale)
        rows += [(f"{branch}-branch network as run (mean shift, no gate)", count_parameters(net, used)),
                 (f"{branch}-branch network + gate", count_parameters(net, used | gate)),
                 (f"{branch}-branch network − mean shift", count_parameters(net, used - shift)),
                 (f"{branch}-branch network + gate − mean shift", count_parameters(net, (used | gate) - shift))]
    net.set_gate(mode)
    for other in BRANCHES:
        rows.append((f"file without the {other} branch (keeps conv9/conv10, gate)",
                     total - count_parameters(net, group_names(net, f"{other} branch"))))
    return rows


def closest_combinations(nets: dict[int, Net], target: int, k: int = 3) -> list[tuple[int, str]]:
    """Search every subset of the optional groups on top of the always-run convs, with each scale's
    upsampler or none, for the counts nearest ``target``: (count, description), nearest first."""
    optional = [g for g in GROUPS if g != "upsampler"]
    any_net = next(iter(nets.values()))
    sizes = {g: count_parameters(any_net, group_names(any_net, g)) for g in optional + [CORE]}
    uppers = {f"x{s} upsampler": count_parameters(n, group_names(n, "upsampler")) for s, n in nets.items()}
    uppers["no upsampler"] = 0
    found = []
    for (up, up_size), r in itertools.product(uppers.items(), range(len(optional) + 1)):
        for subset in itertools.combinations(optional, r):
            n = sizes[CORE] + up_size + sum(sizes[g] for g in subset)
            found.append((abs(n - target), n, " + ".join(["core", up, *subset])))
    found.sort()
    return [(n, desc) for _, n, desc in found[:k]]


# ----------------------------------------------------------------------------------------- measuring

def inference_net(scale: int, device: str, ckpt: Path | None = None, precision: str = "fp32") -> Net:
    """sample.py's inference setup (eval, the layout ``precision`` runs fastest in on ``device``); the x2
    authors' weights when given, else random."""
    memory_format = fast_memory_format(device, precision)
    if ckpt:
        return load_checkpoint(ckpt, scale=scale, device=device, memory_format=memory_format)
    return Net(scale=scale).to(device, memory_format=memory_format).eval()


def lr_input(lr: int, net: Net) -> torch.Tensor:
    """A random LR image on ``net``'s device, in its layout."""
    device = next(net.parameters()).device
    return torch.rand(1, 3, lr, lr, device=device).contiguous(memory_format=memory_format_of(net))


def _proc_status_mib(field: str) -> float:
    """A VmRSS/VmHWM line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _memory_probe(scale: int, lr: int, autograd: bool) -> float:
    """Runs inside a fresh interpreter: peak RSS growth (MiB) of one steady-state forward."""
    net = inference_net(scale, "cpu")
    x = lr_input(lr, net)

    def forward() -> None:
        with nullcontext() if autograd else torch.inference_mode():
            net(x, scale)

    forward()  # pages in the kernels and builds oneDNN's primitives for this shape: one-time costs
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    base = _proc_status_mib("VmRSS")
    forward()
    return _proc_status_mib("VmHWM") - base


def peak_memory_cpu(scale: int, lr: int, autograd: bool = False, threads: int | None = None) -> float:
    """Peak RSS growth (MiB) of one CPU forward at LR ``lr``x``lr`` (NaN off Linux).

    Each runs in a fresh subprocess whose glibc returns every allocation over 64 KiB to the OS when freed
    (MALLOC_MMAP_THRESHOLD_), so RSS follows the live memory instead of what earlier runs left cached.
    Random weights: memory does not depend on their values.
    """
    if not Path("/proc/self/clear_refs").exists():
        return math.nan
    cmd = [sys.executable, "-m", "tools.benchmarks.complexity", "--memory-probe", str(scale), str(lr)]
    cmd += (["--autograd"] if autograd else []) + (["--threads", str(threads)] if threads else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        raise RuntimeError(f"memory probe {cmd[3:]} failed: {out.stderr.strip()[-500:]}")
    return float(out.stdout.split()[-1])


def peak_memory_cuda(net: Net, x: torch.Tensor, scale: int, autograd: bool = False) -> float:
    """torch.cuda.max_memory_allocated growth (MiB) during one steady-state forward (after a warm-up one):
    tensors and cuDNN workspace, not the weights, the input or the CUDA context."""
    def forward() -> None:
        with nullcontext() if autograd else torch.inference_mode():
            net(x, scale)

    forward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    forward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def time_forward(net: Net, x: torch.Tensor, scale: int, repeats: int, warmup: int, bf16: bool = False) -> float:
    """Median wall time (ms) of ``net(x, scale)`` under inference_mode (and bf16 autocast if asked, as
    ``sample.py --bf16``), synchronising the GPU around each run."""
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        return interleaved({"forward": lambda: net(x, scale)}, repeats, warmup, x.device)["forward"] * 1e3


# ----------------------------------------------------------------------------------------- report

def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _pct(value: float, ref: float) -> str:
    return f"{100 * (value - ref) / ref:+.1f}%"


def render(params: dict[int, list[tuple[str, int]]], groups: dict[int, dict[str, int]],
           closest: list[tuple[int, str]], flops: dict[tuple[int, str, str], tuple[int, int]],
           memory: dict[tuple[int, int, bool], float], runtime: dict[tuple[int, int, bool], float],
           cfg: argparse.Namespace, env: dict, ckpt: Path | None) -> str:
    """The whole markdown report; every number in it comes from the arguments."""
    p2 = dict(params[2])
    sel, fix = p2["selected-branch network + gate"], p2["fixed-branch network + gate"]
    total, trainable = p2["all tensors (the released file)"], p2["trainable (requires_grad)"]
    best_n = closest[0][0]
    hr_lr = {"HR": TABLE7_SIZE // 2, "LR": TABLE7_SIZE}  # x2 LR side for each reading of "256x256"
    flop_candidates = sorted(
        (abs(v - PAPER_FLOPS), v, f"{kind} of the {b} branch with {side} {TABLE7_SIZE}×{TABLE7_SIZE}")
        for (s, b, side), (f, m) in flops.items() if s == 2 for kind, v in (("FLOPs", f), ("MACs", m)))
    _, best_flops, best_flops_desc = flop_candidates[0]
    sizes = sorted({hr for _, hr, _ in runtime})
    mem_best = min(((abs(v - PAPER_MEMORY_MB), v, f"{'autograd' if ag else 'inference'} at LR {lr}²")
                    for lr in hr_lr.values() for ag in (False, True)
                    if not math.isnan(v := memory.get((2, lr, ag), math.nan))), default=None)
    mem_unit = "RSS growth" if cfg.device == "cpu" else "allocated growth"
    weights = (f"the authors' x2 file `{ckpt.name}` (sha256 `{file_sha256(ckpt)[:16]}…`)" if ckpt
               else "random x2 weights (no authors' file found: pass --ckpt_path)")

    def mem(scale: int, lr: int, autograd: bool = False) -> str:
        v = memory.get((scale, lr, autograd), math.nan)
        return "n/a" if math.isnan(v) else f"{v:.1f}"

    def ms(scale: int, hr: int, bf16: bool = False) -> str:
        return f"{runtime[(scale, hr, bf16)]:.1f}" if (scale, hr, bf16) in runtime else "n/a"

    out = [
        "# DSRNet complexity: ours vs the paper (Tables 7 and 8)", "",
        f"Written by `tools/benchmarks/complexity.py`. Command: `{env['command']}`  ",
        f"Device: {cfg.device} ({env['device_name'] or 'unknown CPU'}), {env['threads']} torch threads, "
        f"torch {env['torch']}, Python {env['python']}, {env['platform']}, git {git_description(env)}.  ",
        f"Weights: {weights}; x3/x4 are randomly initialised nets of the right shape (counts and timings do "
        "not depend on weight values).", "",
        "## Side by side", "",
        _table(["quantity", "paper", "ours"], [
            ["parameters (x2)", "0.7461M",
             f"{total:,} in the released file; {sel:,} run by the selected-branch network (+ gate), "
             f"{fix:,} by the fixed-branch one"],
            [f"FLOPs (x2, \"{TABLE7_SIZE}x{TABLE7_SIZE}\")", f"{PAPER_FLOPS / 1e9:.2f}G",
             f"{best_flops / 1e9:.2f}G = {best_flops_desc} (closest reading, {_pct(best_flops, PAPER_FLOPS)})"],
            [f"memory (x2, \"{TABLE7_SIZE}x{TABLE7_SIZE}\")", f"{PAPER_MEMORY_MB} MB",
             f"inference {mem(2, hr_lr['HR'])} / {mem(2, hr_lr['LR'])} MiB, with autograd "
             f"{mem(2, hr_lr['HR'], True)} / {mem(2, hr_lr['LR'], True)} MiB (LR {hr_lr['HR']} / LR {hr_lr['LR']}; "
             f"{mem_unit})"],
            ["runtime x4, HR " + "/".join(map(str, PAPER_RUNTIME_MS)),
             " / ".join(map(str, PAPER_RUNTIME_MS.values())) + " ms (their GPU)",
             " / ".join(ms(4, hr) for hr in PAPER_RUNTIME_MS) + f" ms ({cfg.device}, this machine)"],
        ]), "",
        "## Parameters", "",
        "Counted per gate branch from the modules one forward calls (forward hooks): conv8 counts once although "
        "it runs three times; conv9/conv10 never run; the gate runs only in the `sample`/`argmax` modes.", "",
        _table(["count", *(f"x{s}" for s in SCALES), f"x2 vs paper {PAPER_PARAMS:,}"],
               [[name, *(f"{dict(params[s])[name]:,}" for s in SCALES), _pct(n, PAPER_PARAMS)]
                for name, n in params[2]]), "",
        "Groups (add up to the file total):", "",
        _table(["group", *(f"x{s}" for s in SCALES)],
               [[g, *(f"{groups[s][g]:,}" for s in SCALES)] for g in groups[2]]), "",
        f"**Why {total:,} and not 0.7461M.** The released x2 file holds {total:,} parameters ({trainable:,} "
        f"trainable; the {total - trainable} others are the frozen mean shift), which is what "
        "`sum(p.numel() for p in net.parameters())` reports. It holds both gate branches and "
        "the never-used conv9/conv10, so a forward runs fewer: "
        f"{sel:,} (selected branch + gate) or {fix:,} (fixed branch + gate). None of the candidates above "
        f"is 746,100 (0.7461M means 746,050-746,149). Searching every combination of the optional groups "
        "(conv9/conv10, either branch, gate, mean shift) on top of the always-run convs, with the x2, x3, x4 "
        "or no upsampler, the nearest counts are: "
        + "; ".join(f"{n:,} = {d} ({_pct(n, PAPER_PARAMS)})" for n, d in closest) + ". "
        + ("That matches the paper's figure. " if abs(best_n - PAPER_PARAMS) <= 50 else
           f"So no count of the released architecture gives 0.7461M; the nearest is {abs(best_n - PAPER_PARAMS):,} "
           "parameters away. ")
        + f"The mean of the two single-branch networks, {(sel + fix) / 2:,.0f}, lies close to it but rounds to "
        f"{(sel + fix) / 2e6:.4f}M and is not a network that exists; we take it as coincidence. Where the paper's "
        "figure comes from cannot be recovered from the released code and weights.", "",
        "## FLOPs and MACs", "",
        "`torch.utils.flop_counter.FlopCounterMode` counts FLOPs = 2 × MACs for convolutions and matmuls "
        "(biases, ReLU, additions and pixel shuffle are not counted). \"256x256\" in the paper is read two ways: "
        f"as the HR output (LR = 256/s) and as the LR input. The paper gives {PAPER_FLOPS / 1e9:.2f}G for x2 "
        "without saying which, nor whether it counts FLOPs or MACs.", "",
        _table(["scale", "branch", f"HR {TABLE7_SIZE}² GFLOPs", f"HR {TABLE7_SIZE}² GMACs",
                f"LR {TABLE7_SIZE}² GFLOPs", f"LR {TABLE7_SIZE}² GMACs", "MACs per LR pixel"],
               [[f"x{s}", b, f"{flops[(s, b, 'HR')][0] / 1e9:.2f}", f"{flops[(s, b, 'HR')][1] / 1e9:.2f}",
                 f"{flops[(s, b, 'LR')][0] / 1e9:.2f}", f"{flops[(s, b, 'LR')][1] / 1e9:.2f}",
                 f"{flops[(s, b, 'LR')][1] // TABLE7_SIZE ** 2:,}"] for s in SCALES for b in BRANCHES]), "",
        f"(x3 at HR {TABLE7_SIZE}: LR {TABLE7_SIZE // 3}², HR {TABLE7_SIZE // 3 * 3}².) Closest to the paper's "
        f"{PAPER_FLOPS / 1e9:.2f}G: " + "; ".join(f"{d} = {v / 1e9:.2f}G ({_pct(v, PAPER_FLOPS)})"
                                                   for _, v, d in flop_candidates[:3]) + ". "
        "The paper's \"FLOPs\" therefore look like MACs of a 256×256 LR input (HR 512×512 at x2); counted as "
        "true FLOPs that input costs twice as much, and a 256×256 HR output a quarter as much. None matches "
        "exactly.", "",
        "## Peak memory of one forward", "",
        ("CPU: each number comes from a fresh interpreter (glibc told to return every allocation over 64 KiB "
         "to the OS when freed: `MALLOC_MMAP_THRESHOLD_=65536`) that runs one warm-up forward at the same size "
         "(pages in the kernels, builds oneDNN's primitives), resets the peak RSS (`/proc/self/clear_refs`), "
         "and reports VmHWM minus VmRSS around the measured forward: the steady-state peak of live memory "
         "including the output and oneDNN buffers, not the weights or the input." if cfg.device == "cpu" else
         "CUDA: `torch.cuda.max_memory_allocated()` minus `memory_allocated()` around a forward that follows a "
         "warm-up one: tensors and cuDNN workspace, not the weights, the input or the CUDA context.")
        + " *Inference* is the default float32 path (inference_mode, the layout `sample.py` picks); *autograd* "
        "is the same forward "
        "with gradients enabled, keeping the activations for a backward pass as in training. The paper does "
        "not say which it measured.", "",
        _table(["scale", "HR size", "LR size", f"inference MiB ({mem_unit})", "autograd MiB"],
               [[f"x{s}", f"{hr // s * s}²", f"{hr // s}²", mem(s, hr // s), mem(s, hr // s, True)]
                for s in SCALES for hr in sizes]), "",
        f"Paper (x2, \"{TABLE7_SIZE}x{TABLE7_SIZE}\"): {PAPER_MEMORY_MB} MB, device and method unstated. "
        + (f"Nearest of our x2 readings of that size: {mem_best[2]} = {mem_best[1]:.1f} MiB "
           f"({_pct(mem_best[1], PAPER_MEMORY_MB)}); a loose comparison, since what their number includes "
           "(CUDA context, cached blocks, a training step?) is unknown." if mem_best else
           "Our x2 readings of that size were not measured (HR 256 and 512 not in --sizes)."), "",
        "## Runtime", "",
        f"Median of {cfg.repeats} timed runs after {cfg.warmup} warm-up(s), batch 1, random LR input, "
        "`torch.inference_mode()`, each precision in the memory layout `sample.py` picks for it (channels_last on "
        "CPUs; on CUDA NCHW for float32 and channels_last for bf16: `tools/benchmarks/memory_format.py`)"
        + (", `torch.cuda.synchronize()` after each run" if cfg.device.startswith("cuda") else "")
        + ". LR = HR // scale. "
        "float32 is the evaluation protocol; the bf16 rows (opt-in `sample.py --bf16`, measured only where "
        "bfloat16 is native) trade a little accuracy for speed: the authors' x2 weights score within 0.015 dB "
        "of float32 on Set5/Set14/B100 (docs/evaluation.md#precision).", "",
        _table(["scale", *(f"HR {hr} ms" for hr in sizes)],
               [[f"x{s}{' bf16' if bf16 else ''}", *(ms(s, hr, bf16) for hr in sizes)]
                for bf16 in sorted({b for _, _, b in runtime}) for s in SCALES]
               + [["x4 (paper, their GPU)", *(str(PAPER_RUNTIME_MS.get(hr, "")) for hr in sizes)]]), "",
    ]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--repeats", type=int, help="timed runs per size (default 5 on CPU, 50 on CUDA, 1 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed runs first (default 1 on CPU, 10 on CUDA)")
    p.add_argument("--sizes", type=int, nargs="+", help="HR sizes (default 256 512 1024; 48 with --quick)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="one small size, one repeat: a smoke run for tests")
    p.add_argument("--ckpt_path", help="the authors' x2 weights (default: checkpoint/ or ../shared/weights/ "
                                       "DSRNet_x2_600000.pth; random weights when neither exists)")
    p.add_argument("--report", "--output", dest="report", default="results/complexity.md",
                   help="write the markdown report here (--output: the older name)")
    p.add_argument("--memory-probe", nargs=2, type=int, metavar=("SCALE", "LR"), help=argparse.SUPPRESS)
    p.add_argument("--autograd", action="store_true", help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    require_at_least(cfg, repeats=1, warmup=0, threads=1)
    if cfg.sizes and min(cfg.sizes) < max(SCALES):
        raise InputError(f"--sizes must each be >= {max(SCALES)} (HR sides; LR = HR // scale, up to "
                         f"x{max(SCALES)}), got {min(cfg.sizes)}")
    cfg.device = str(pick_device(cfg.device))
    cuda = cfg.device.startswith("cuda")
    cfg.sizes = cfg.sizes or ([48] if cfg.quick else [256, 512, 1024])
    cfg.repeats = cfg.repeats if cfg.repeats is not None else (1 if cfg.quick else 50 if cuda else 5)
    cfg.warmup = cfg.warmup if cfg.warmup is not None else (1 if cfg.quick or not cuda else 10)
    return cfg


def main(argv: list[str] | None = None) -> Path | None:
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.memory_probe:
        print(_memory_probe(*cfg.memory_probe, cfg.autograd))
        return None
    if cfg.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(cfg.device))  # the memory figures and synchronize() follow it
    set_tf32(False)  # "fp32" rows are IEEE float32, not cuDNN's default TF32
    ensure_writable(cfg.report)
    ckpt = Path(cfg.ckpt_path) if cfg.ckpt_path else next((c for c in WEIGHTS_CANDIDATES if c.is_file()), None)
    if ckpt and (held := read_checkpoint(ckpt)["scale"]) != 2:
        raise InputError(f"{ckpt} holds a {scale_name(held)} model; complexity.py reads only x2 weights "
                         "(x3/x4 are counted on random ones): pass --ckpt_path to DSRNet_x2_600000.pth")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    nets = {2: load_checkpoint(ckpt, scale=2) if ckpt else Net(scale=2).eval(), 3: meta_net(3), 4: meta_net(4)}
    params = {s: parameter_rows(n, s) for s, n in nets.items()}
    groups = {s: {g: count_parameters(n, group_names(n, g)) for g in (CORE, *GROUPS)} for s, n in nets.items()}
    closest = closest_combinations(nets, PAPER_PARAMS)
    flops = {(s, b, side): count_flops(meta_net(s, b), (lr, lr), s)
             for s in SCALES for b in BRANCHES
             for side, lr in (("HR", TABLE7_SIZE // s), ("LR", TABLE7_SIZE))}

    # (scale, LR side, autograd): the autograd forward only at x2, Table 7's scale
    jobs = [(s, hr // s, autograd) for s in SCALES for hr in cfg.sizes
            for autograd in ((False, True) if s == 2 else (False,))]
    memory: dict[tuple[int, int, bool], float] = {}
    if cfg.device == "cpu":  # separate processes that each measure only themselves: run them side by side
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            memory = dict(zip(jobs, pool.map(lambda job: peak_memory_cpu(*job, threads=cfg.threads), jobs)))
    runtime: dict[tuple[int, int, bool], float] = {}  # (scale, HR side, bf16)
    precisions = (False, True) if bf16_supported(torch.device(cfg.device)) else (False,)
    for s in SCALES:
        nets = {bf16: inference_net(s, cfg.device, ckpt if s == 2 else None, "bf16" if bf16 else "fp32")
                for bf16 in precisions}
        for hr in cfg.sizes:
            lr = hr // s
            if cfg.device.startswith("cuda"):
                for job in (j for j in jobs if j[:2] == (s, lr)):
                    memory[job] = peak_memory_cuda(nets[False], lr_input(lr, nets[False]), s, autograd=job[2])
            for bf16, net in nets.items():
                runtime[(s, hr, bf16)] = time_forward(net, lr_input(lr, net), s, cfg.repeats, cfg.warmup, bf16)
            log(f"x{s} HR {hr}: {runtime[(s, hr, False)]:.1f} ms, {memory[(s, lr, False)]:.1f} MiB")
        del nets

    text = render(params, groups, closest, flops, memory, runtime, cfg, environment(), ckpt)
    out = Path(cfg.report)
    atomic_write_bytes(out, (text + "\n").encode())
    log(f"wrote {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
