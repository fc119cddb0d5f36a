"""The whole pipeline in one command, on photographs that ship inside scikit-image (nothing to download).

    python demo.py                     # about 4 minutes on 2 idle CPU cores, half an hour on 2 busy ones
    python demo.py --authors_ckpt PATH/DSRNet_x2_600000.pth   # the authors' weights from another folder as a row
    python demo.py --quick             # a reduced budget (small crops, 40 steps): what the tests run

1. export scikit-image's bundled colour photos to OUT/photos/{train,test} (the test photos are never trained on);
2. pack the training photos into an HDF5 file (dataset/div2h5.py, LR by MATLAB-style bicubic, x2);
3. train DSRNet x2 from scratch with the real Solver, validating on the held-out photos as it goes;
4. evaluate the final checkpoint (and the authors' weights, when found) against bicubic with sample.py;
5. write OUT/results.md, OUT/comparison.png and OUT/curves.png.

OUT (default results/demo) is ignored by git, so a run leaves `git status` clean; the example kept in git,
docs/figures/demo/, is a copy of results.md, comparison.png and curves.png from the command in its "Reproduce".

The learning rate is 1e-3, not the paper's 1e-4: a few minutes of training is far too short for 1e-4
(the measurements behind that choice are in README.md, "The demo").
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import sample
from dsrnet import AUTHORS_WEIGHTS, ROOT
from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.data.images import write_image
from dsrnet.data.pack import pack_hr_folder
from dsrnet.errors import InputError
from dsrnet.evaluation import SetResult
from dsrnet.files import atomic_write_bytes
from dsrnet.provenance import environment, git_description
from dsrnet.train.rng import NUMPY_MAX_SEED
from model import read_checkpoint, scale_name
from solver import Solver
from solver import parse_args as solver_args
from tools import visualize


SCALE = 2
CKPT_NAME = "dsrnet_x2_demo"
# Held-out photos: classic test pictures, never trained on.
TEST_PHOTOS = ("astronaut", "chelsea", "coffee")
# Colour photos bundled in the scikit-image wheel (those needing pooch/network are not listed).
TRAIN_PHOTOS = ("rocket", "motorcycle", "immunohistochemistry", "retina", "hubble_deep_field")
# What the demo owns under --out: removed before each run so a re-run never mixes old and new files.
OWNED = ("photos", "train_x2.h5", "checkpoint", "sr", "report.json", "report.md", "report_per_image.csv",
         "authors.json", "authors.md", "authors_per_image.csv", "results.md", "comparison.png", "curves.png")
FULL = {"steps": 500, "batch_size": 16, "patch_size": 32, "valid_every": 50, "crop": None}
QUICK = {"steps": 40, "batch_size": 8, "patch_size": 16, "valid_every": 20, "crop": 160}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / "demo"), help="output folder (default results/demo)")
    p.add_argument("--steps", type=int, help=f"training steps (default {FULL['steps']}, --quick {QUICK['steps']})")
    p.add_argument("--batch_size", type=int, help=f"patches per step (default {FULL['batch_size']})")
    p.add_argument("--patch_size", type=int, help=f"LR patch side (default {FULL['patch_size']})")
    p.add_argument("--valid_every", type=int,
                   help=f"validate and checkpoint every N steps (default {FULL['valid_every']})")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate at step 0 (default 1e-3)")
    p.add_argument("--decay", type=int, help="halve the lr every N steps (default: never within the run)")
    p.add_argument("--seed", type=int, default=0, help="seeds the init, the patches and the gate")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (0: patches cut in-process)")
    p.add_argument("--quick", action="store_true",
                   help=f"reduced budget for tests: photos cropped to {QUICK['crop']} px, {QUICK['steps']} steps")
    p.add_argument("--authors_ckpt", help="the authors' x2 weights to add as a row "
                   f"(default {AUTHORS_WEIGHTS.relative_to(ROOT)} when it exists)")
    cfg = p.parse_args(argv)
    budget = QUICK if cfg.quick else FULL
    for key in ("steps", "batch_size", "patch_size", "valid_every", "decay"):
        if getattr(cfg, key) is None:
            setattr(cfg, key, budget[key] if key != "decay" else cfg.steps)
        if getattr(cfg, key) < 1:
            raise InputError(f"--{key} must be at least 1, got {getattr(cfg, key)}")
    if not cfg.lr > 0:
        raise InputError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.seed < 0 or cfg.num_workers < 0:
        raise InputError(f"--seed ({cfg.seed}) and --num_workers ({cfg.num_workers}) must be >= 0")
    if cfg.seed > NUMPY_MAX_SEED:
        raise InputError(f"--seed {cfg.seed} is above {NUMPY_MAX_SEED}, the largest seed numpy takes: "
                         "pass a smaller one")
    cfg.crop = budget["crop"]
    cfg.argv = sys.argv[1:] if argv is None else list(argv)
    return cfg


# --------------------------------------------------------------------------- 1. photos

def _skimage_photos() -> dict[str, Callable[[], np.ndarray]]:
    from skimage import data

    return {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee, "rocket": data.rocket,
            "motorcycle": lambda: data.stereo_motorcycle()[0], "immunohistochemistry": data.immunohistochemistry,
            "retina": data.retina, "hubble_deep_field": data.hubble_deep_field}


def _center_crop(img: np.ndarray, side: int | None) -> np.ndarray:
    if side is None:
        return img
    h, w = img.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return img[y:y + side, x:x + side]


def export_photos(folder: Path, crop: int | None) -> dict[str, dict[str, str]]:
    """Write the bundled photos as PNG into folder/train and folder/test; returns {split: {name: "WxH"}}.

    A photo the installed scikit-image cannot load offline is skipped with a note.
    """
    loaders = _skimage_photos()
    exported: dict[str, dict[str, str]] = {"train": {}, "test": {}}
    for split, names in (("test", TEST_PHOTOS), ("train", TRAIN_PHOTOS)):
        for name in names:
            try:
                img = np.asarray(loaders[name]())
            except (OSError, ModuleNotFoundError, ConnectionError, ValueError) as err:
                print(f"  skipped {name}: not loadable offline ({type(err).__name__})")
                continue
            img = _center_crop(img[..., :3], crop)
            write_image(folder / split / f"{name}.png", img)
            exported[split][name] = f"{img.shape[1]}x{img.shape[0]}"
    for split, names in exported.items():
        if not names:
            raise InputError(f"no {split} photo could be loaded from scikit-image's bundled data "
                             f"(tried {', '.join(TEST_PHOTOS if split == 'test' else TRAIN_PHOTOS)}): "
                             "reinstall scikit-image")
    return exported


# --------------------------------------------------------------------------- 3. training

def train(cfg: argparse.Namespace, h5: Path, test_dir: Path, ckpt_dir: Path) -> Path:
    """Train through the real Solver; keeps only the final checkpoint (and log.csv) in ``ckpt_dir``."""
    flags = ["--scale", str(SCALE), "--train_data_path", str(h5), "--max_steps", str(cfg.steps),
             "--batch_size", str(cfg.batch_size), "--patch_size", str(cfg.patch_size), "--lr", str(cfg.lr),
             "--decay", str(cfg.decay),
             "--print_interval", str(cfg.valid_every), "--log_interval", str(max(1, cfg.steps // 40)),
             "--valid_data_dir", str(test_dir), "--ckpt_dir", str(ckpt_dir), "--ckpt_name", CKPT_NAME,
             "--num_workers", str(cfg.num_workers), "--seed", str(cfg.seed)]
    Solver(solver_args(flags, default_scale=SCALE)).fit()
    final = ckpt_dir / f"{CKPT_NAME}_{cfg.steps}.pth"
    for old in ckpt_dir.glob(f"{CKPT_NAME}_*.pth"):
        if old != final:
            old.unlink()
    return final


# --------------------------------------------------------------------------- 5. results.md

@dataclass
class Row:
    """One column of the results table: a method and its scores on the held-out photos."""

    label: str  # the table's column header
    short: str  # the curves' legend
    result: SetResult


def results_table(rows: list[Row], sizes: dict[str, str]) -> str:
    """Per-photo PSNR / SSIM, one column per method, and the mean."""
    lines = ["| photo | " + " | ".join(r.label for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for i, im in enumerate(rows[0].result.images):
        cells = (f"{r.result.images[i].psnr:.2f} / {r.result.images[i].ssim:.4f}" for r in rows)
        lines.append(f"| {im.name} ({sizes[im.name]}) | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{r.result.psnr:.2f} / {r.result.ssim:.4f}**" for r in rows) + " |")
    return "\n".join(lines)


def results_markdown(cfg: argparse.Namespace, rows: list[Row], photos: dict[str, dict[str, str]],
                     timings: dict[str, float], authors_note: str) -> str:
    gain = rows[1].result.psnr - rows[0].result.psnr
    verdict = f"gains **{gain:.2f} dB** over" if gain >= 0 else f"is still **{-gain:.2f} dB** below"
    schedule = "constant" if cfg.decay >= cfg.steps else f"halved every {cfg.decay} steps"
    quick = f"; --quick budget (photos centre-cropped to {cfg.crop} px)" if cfg.quick else ""
    env = environment()
    total = sum(timings.values())
    command = "python demo.py" + "".join(f" {a}" for a in cfg.argv)
    stage_times = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    return f"""# DSRNet demo: x2, trained from scratch for {cfg.steps} steps on bundled photos

PSNR (dB) / SSIM on Y, {SCALE} border pixels shaved, on photos held out from training (LR made from them
with MATLAB-style bicubic). The model trained here {verdict} bicubic.
{authors_note}

{results_table(rows, photos["test"])}

![visual comparison](comparison.png)

![training curves](curves.png)

## Settings

- training photos ({len(photos['train'])}): {', '.join(f"{n} ({size})" for n, size in photos['train'].items())}
- held-out photos ({len(photos['test'])}): {', '.join(photos['test'])} (scikit-image `skimage.data`)
- DSRNet x{SCALE} from scratch, Solver defaults otherwise (MSE loss, Adam, gradient clip 10, authors' sampled gate
  while training, `selected` gate for evaluation); {cfg.steps} steps, batch {cfg.batch_size}, LR patch
  {cfg.patch_size} px, lr {cfg.lr:g} {schedule}, seed {cfg.seed}, {cfg.num_workers} DataLoader workers,
  validation every {cfg.valid_every} steps{quick}
- wall time {total:.0f} s ({stage_times})

## Reproduce

```bash
{command}
```

Environment: Python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, {env['platform']},
{env['device_name'] or 'CPU'}, {env['threads']} torch threads, git commit {git_description(env)}.
Files: `report.json` (+ `.md`, `_per_image.csv`) from sample.py, SR images under `sr/`, the checkpoint and
`log.csv` under `checkpoint/`.
"""


# --------------------------------------------------------------------------- the pipeline

def check_out_folder(out: Path) -> None:
    """Refuse a --out that holds anything demo.py did not make: the demo clears its own files there."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: name a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OWNED) if out.is_dir() else []
    if foreign:
        raise InputError(f"--out {out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
                         "which demo.py did not make: pick a new or empty folder")


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_args(argv)
    out = Path(cfg.out).resolve()
    authors = Path(cfg.authors_ckpt) if cfg.authors_ckpt else AUTHORS_WEIGHTS
    if cfg.authors_ckpt and not authors.is_file():
        raise InputError(f"--authors_ckpt {authors}: no such file")
    if authors.is_file():  # a damaged file or another scale fails now, not after training
        held = read_checkpoint(authors)["scale"]
        if held != SCALE:
            raise InputError(f"--authors_ckpt {authors} holds a {scale_name(held)} model; the demo compares x{SCALE} "
                             f"models: pass x{SCALE} weights, e.g. the authors' DSRNet_x2_600000.pth")
    check_out_folder(out)
    for name in OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    print(f"[1/5] exporting scikit-image photos to {out / 'photos'}", flush=True)
    photos = export_photos(out / "photos", cfg.crop)
    test_dir, train_dir = out / "photos" / "test", out / "photos" / "train"
    print(f"  train: {', '.join(photos['train'])}; held out: {', '.join(photos['test'])}")
    stage("export")

    print(f"[2/5] packing the training photos (x{SCALE}) into {out / 'train_x2.h5'}", flush=True)
    h5 = out / "train_x2.h5"
    pack_hr_folder(train_dir, h5, scales=(SCALE,), workers=2)
    stage("pack")

    print(f"[3/5] training {cfg.steps} steps (batch {cfg.batch_size}, patch {cfg.patch_size}, lr {cfg.lr:g})",
          flush=True)
    final = train(cfg, h5, test_dir, out / "checkpoint")
    stage("train")

    print("[4/5] evaluating on the held-out photos with sample.py", flush=True)
    common = ["--test_data_dir", str(test_dir), "--sample_dir", str(out / "sr"), "--quiet"]
    results = sample.main(["--ckpt_path", str(final), "--bicubic", "--report", str(out / "report.json"), *common])
    rows = [Row("Bicubic", "Bicubic", results[0]),
            Row(f"DSRNet, this demo ({cfg.steps} steps)", "this demo", results[1])]
    reports, labels = [out / "report.json"], ["this demo"]
    if authors.is_file():
        authors_result = sample.main(["--ckpt_path", str(authors), "--report", str(out / "authors.json"), *common])
        rows.append(Row("DSRNet, authors' weights (600k steps, DIV2K)", "authors' weights", authors_result[0]))
        reports.append(out / "authors.json")
        labels.append("authors")
        authors_note = f"The authors' released weights ({authors.name}) are shown for reference."
    else:
        authors_note = (f"The authors' weights were not found at {authors}; pass `--authors_ckpt PATH` to add "
                        "them as a column.")
    stage("evaluate")

    print("[5/5] writing results.md, comparison.png, curves.png", flush=True)
    cmp = visualize.load_comparison(reports, labels=labels)
    visualize.comparison_figure(cmp, out / "comparison.png",
                                title=f"x{SCALE} on a held-out photo: DSRNet after {cfg.steps} steps vs bicubic "
                                      "(PSNR/SSIM on Y of the whole image)")
    references = {r.short: r.result.psnr for r in rows if r is not rows[1]}
    visualize.training_curves(out / "checkpoint" / "log.csv", out / "curves.png", references=references,
                              title=f"DSRNet x{SCALE} from scratch on {len(photos['train'])} photos, "
                                    f"validated on {len(photos['test'])} held-out photos")
    stage("report")
    atomic_write_bytes(out / "results.md", results_markdown(cfg, rows, photos, timings, authors_note).encode())
    print(f"\n{results_table(rows, photos['test'])}\n\ndone in {sum(timings.values()):.0f} s: {out / 'results.md'}")
    return out / "results.md"


if __name__ == "__main__":
    run_cli(main)
