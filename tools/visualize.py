"""Figures from any run: paper-style visual comparisons (Figures 2-3), training curves, the gate's routing.

    python -m tools.visualize compare --report results/x2.json                 # from `sample.py --bicubic --report`
    python -m tools.visualize compare --report run.json --image butterfly --box 120 40 64 64 --out fig.png
    python -m tools.visualize compare --report demo.json authors.json --label demo authors
    python -m tools.visualize curves --log checkpoint/dsrnet_x2/log.csv
    python -m tools.visualize curves --log runs/a/log.csv runs/b/log.csv --label selected learned
    python -m tools.visualize branches --report results/learned.json

`compare` reads only what `sample.py` left behind: the report JSON (which names the test-set folders and
the SR image folder), its per-image CSV and the saved SR PNGs; the HR is read the way sample.py read it.
Without --image it shows the image where the model gains most over bicubic, and without --box a
quarter-side region with a large gain and the most texture, so the figure shows something worth seeing.
`curves` draws bicubic's PSNR on each validation set as a dashed line (the sets the run's checkpoint
recorded, or --valid_data_dir). `branches` needs the per-image CSV's branch column (the gate's choice).
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
from matplotlib.patches import Rectangle

from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.data.images import read_image
from dsrnet.data.imresize import imresize
from dsrnet.data.layouts import TestSet, find_test_set, load_pair
from dsrnet.errors import InputError
from dsrnet.evaluation import evaluate_set, method_sr_folder, per_image_csv_beside, sr_image_path
from dsrnet.files import atomic_write_bytes
from dsrnet.metrics import rgb_to_y
from model import CheckpointError, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]

BICUBIC = "Bicubic"
# The SelfExSR benchmark files are numbered; these are the pictures' usual names, in file order (checked by eye).
IMAGE_NAMES = {
    "set5": ("baby", "bird", "butterfly", "head", "woman"),
    "set14": ("baboon", "barbara", "bridge", "coastguard", "comic", "face", "flowers", "foreman", "lenna", "man",
              "monarch", "pepper", "ppt3", "zebra"),
}
CROP_INCHES = 2.3      # displayed width of one zoomed crop
MIN_CROP_PIXELS = 320  # crops are enlarged (nearest neighbour) to at least this many pixels across


@dataclass
class Panel:
    """One method's SR of the compared image with its whole-image scores."""

    label: str
    image: np.ndarray  # uint8 HxWx3, the same size as the HR
    psnr: float
    ssim: float


@dataclass
class Comparison:
    """One test image: its HR and every method's SR from one or more reports (Bicubic first)."""

    dataset: str
    scale: int
    name: str
    shave: int
    hr: np.ndarray
    panels: list[Panel]


def display_name(dataset: str, image: str) -> str:
    """The picture's usual name for a numbered benchmark file (Set5 img_003 -> butterfly), else ``image``."""
    names = IMAGE_NAMES.get(dataset.lower(), ())
    stem = image.removeprefix("img_")
    if stem.isdigit() and 1 <= int(stem) <= len(names) and image == f"img_{int(stem):03d}":
        return names[int(stem) - 1]
    return image


def _file_name(dataset: str, image: str) -> str:
    """The inverse of :func:`display_name`, so ``--image butterfly`` finds Set5's img_003."""
    names = IMAGE_NAMES.get(dataset.lower(), ())
    return f"img_{names.index(image) + 1:03d}" if image in names else image


# --------------------------------------------------------------------------- reading reports

@dataclass(frozen=True)
class _Row:
    """One line of a per-image CSV, with the report that produced it."""

    report: int
    dataset: str
    scale: int
    method: str
    image: str
    psnr: float
    ssim: float


def _read_report(path: Path, images: bool = True) -> dict:
    """The report's JSON, checked to name its test sets (and, when ``images``, its saved SR images)."""
    if not path.is_file():
        raise InputError(f"report {path} not found: write one with `python sample.py --bicubic --report {path}`")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"report {path} is not valid JSON ({err}); rerun sample.py --report") from None
    settings = doc.get("settings") if isinstance(doc, dict) else None
    if not isinstance(settings, dict) or "sr_dir" not in settings or "test_data_dirs" not in settings:
        raise InputError(f"report {path} does not say where its images are (written by an older sample.py?): "
                         "rerun sample.py --report to write a fresh one")
    if images and settings["sr_dir"] is None:
        raise InputError(f"report {path} comes from a run with --no_save, so there are no SR images to show: "
                         "rerun sample.py without --no_save")
    return doc


def _read_rows(report: Path, index: int) -> list[_Row]:
    path = per_image_csv_beside(report)
    if not path.is_file():
        raise InputError(f"{path} not found: sample.py writes it beside {report.name}; rerun sample.py --report")
    try:
        with open(path, newline="") as f:
            return [_Row(index, r["dataset"], int(r["scale"]), r["method"], r["image"], float(r["psnr"]),
                         float(r["ssim"])) for r in csv.DictReader(f)]
    except (KeyError, ValueError, TypeError, csv.Error) as err:
        reason = ascii(str(err))[1:-1][:80]  # the file's own bytes may be binary
        raise InputError(f"{path} is not a sample.py per-image CSV ({type(err).__name__}: {reason}); "
                         "rerun sample.py --report") from None


def _check_labels(labels: Sequence[str] | None, items: Sequence[Path], flag: str) -> None:
    if labels is not None and len(labels) != len(items):
        raise InputError(f"{len(labels)} labels for {len(items)} {flag.removeprefix('--')}s: "
                         f"pass one --label per {flag}")


def _pick_image(rows: list[_Row], image: str | None, dataset: str | None,
                scale: int | None) -> tuple[str, int, str]:
    """(dataset, scale, image) matching the filters; by default the one with the largest gain over bicubic."""
    keys = list(dict.fromkeys((r.dataset, r.scale, r.image) for r in rows))
    chosen = [k for k in keys if (dataset is None or k[0] == dataset) and (scale is None or k[1] == scale)
              and (image is None or k[2] == _file_name(k[0], image))]
    if not chosen:
        wanted = ", ".join(f"{n} {v}" for n, v in (("--image", image), ("--dataset", dataset), ("--scale", scale))
                           if v is not None)
        shown = ", ".join(f"{d}/x{s}/{n}" for d, s, n in keys[:12]) + (" ..." if len(keys) > 12 else "")
        raise InputError(f"no image matches {wanted}; the report has {shown}")
    if image is not None and len(chosen) > 1:
        raise InputError(f"image {image} is in several sets/scales ({', '.join(f'{d} x{s}' for d, s, _ in chosen)}): "
                         "add --dataset and/or --scale")

    def gain(key: tuple[str, int, str]) -> float:
        scores = [r for r in rows if (r.dataset, r.scale, r.image) == key]
        base = [r.psnr for r in scores if r.method == BICUBIC]
        other = [r.psnr for r in scores if r.method != BICUBIC]
        return other[0] - base[0] if base and other else 0.0
    return max(chosen, key=gain)


def _label(row: _Row, rows: list[_Row], reports: list[dict], labels: Sequence[str] | None) -> str:
    """The method's name, qualified by its report's label (or checkpoint) when several reports are shown."""
    if row.method == BICUBIC:
        return BICUBIC
    if labels is not None:
        return f"{row.method} ({labels[row.report]})"
    if sum(r.method == row.method for r in rows) > 1:
        return f"{row.method} ({Path(reports[row.report]['settings']['checkpoint']).stem})"
    return row.method


@functools.lru_cache(maxsize=32)
def _test_set(folder: str, scale: int) -> TestSet:
    """find_test_set once per folder and scale, for figures that read many HR images."""
    return find_test_set(folder, scale)


def _read_hr(settings: dict, dataset: str, scale: int, name: str) -> np.ndarray:
    problems = []
    for folder in settings["test_data_dirs"]:
        try:  # a folder of another set may lack this scale: only the one named `dataset` matters
            test_set = _test_set(folder, scale)
        except InputError as err:
            problems.append(str(err))
            continue
        pair = next((p for p in test_set.pairs if p.name == name), None)
        if test_set.name == dataset and pair is not None:
            return load_pair(test_set, pair)[0]
    raise InputError(f"the HR of {dataset}/{name} is no longer in {', '.join(settings['test_data_dirs'])}"
                     + (f" ({problems[0]})" if problems else "") + ": put the test set back or rerun sample.py")


def load_comparison(reports: Sequence[str | Path], image: str | None = None, dataset: str | None = None,
                    scale: int | None = None, labels: Sequence[str] | None = None) -> Comparison:
    """Gather the HR and every method's SR of one image from ``sample.py`` reports.

    A method present in several reports (e.g. DSRNet from two checkpoints) appears once per report,
    labelled with ``labels[i]`` (one per report) or else its checkpoint's name; Bicubic appears once.
    """
    paths = [Path(r) for r in reports]
    _check_labels(labels, paths, "--report")
    docs = [_read_report(p) for p in paths]
    rows = [row for i, p in enumerate(paths) for row in _read_rows(p, i)]
    if not rows:
        raise InputError(f"{', '.join(map(str, paths))}: no per-image results; was the test set empty?")
    key = _pick_image(rows, image, dataset, scale)
    rows = [r for r in rows if (r.dataset, r.scale, r.image) == key]
    bicubic = [r for r in rows if r.method == BICUBIC][:1]
    rows = bicubic + [r for r in rows if r.method != BICUBIC]
    hr = _read_hr(docs[rows[0].report]["settings"], *key)
    panels = []
    for r in rows:
        sr_path = sr_image_path(method_sr_folder(docs[r.report]["settings"]["sr_dir"], r.dataset, r.scale, r.method),
                                r.image)
        if not sr_path.is_file():
            raise InputError(f"SR image {sr_path} is missing: rerun sample.py for {paths[r.report]}")
        sr = read_image(sr_path)
        if sr.shape != hr.shape:
            raise InputError(f"{sr_path} is {sr.shape[1]}x{sr.shape[0]} but its HR is {hr.shape[1]}x{hr.shape[0]}: "
                             "the SR images and the test set no longer belong together; rerun sample.py")
        panels.append(Panel(_label(r, rows, docs, labels), sr, r.psnr, r.ssim))
    shave = next((res["shave"] for res in docs[rows[0].report]["results"]
                  if (res["dataset"], res["scale"]) == key[:2]), key[1])
    return Comparison(dataset=key[0], scale=key[1], name=key[2], shave=int(shave), hr=hr, panels=panels)


# --------------------------------------------------------------------------- the zoom box

def _window_means(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mean of ``a`` over every h x w window (top-left corners), from one integral image."""
    c = np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]) / (h * w)


def _gradient_magnitude(y: np.ndarray) -> np.ndarray:
    """Per-pixel |gradient| of a luma image: how much texture (edges, detail) it holds."""
    return np.hypot(*np.gradient(y.astype(np.float64)))


def best_box(hr: np.ndarray, base: np.ndarray, better: np.ndarray, shave: int = 0,
             gain_share: float = 0.5) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a quarter-side region where ``better`` visibly gains over ``base`` (local PSNR on Y).

    Regions compete where ``base`` errs at least as much as on average (in flat areas both are near-perfect)
    and the gain in dB is at least ``gain_share`` of the best region's; among those the one with the most
    texture (mean HR gradient magnitude) wins, because a gain on texture is what the eye can see, while the
    largest gain alone often sits on a dark, smooth patch.
    """
    inner = (slice(shave, hr.shape[0] - shave or None), slice(shave, hr.shape[1] - shave or None))
    y_hr = rgb_to_y(hr)[inner]
    if y_hr.size == 0:
        raise InputError(f"the image ({hr.shape[1]}x{hr.shape[0]}) is empty after shaving {shave} pixels")
    H, W = y_hr.shape
    h, w = min(H, max(8, H // 4)), min(W, max(8, W // 4))
    mse_base = _window_means((rgb_to_y(base)[inner] - y_hr) ** 2, h, w)
    mse_better = _window_means((rgb_to_y(better)[inner] - y_hr) ** 2, h, w)
    gain = np.where(mse_base >= mse_base.mean(), 10 * np.log10((mse_base + 1e-6) / (mse_better + 1e-6)), -np.inf)
    score = gain
    if gain.max() > 0 and min(H, W) > 1:  # np.gradient needs two pixels a side
        texture = _window_means(_gradient_magnitude(y_hr), h, w)
        score = np.where(gain >= gain_share * gain.max(), texture, -np.inf)
    y, x = np.unravel_index(np.argmax(score), score.shape)
    return int(x) + shave, int(y) + shave, w, h


def _check_box(box: Sequence[int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in box)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > shape[1] or y + h > shape[0]:
        raise InputError(f"--box {x} {y} {w} {h} does not fit in the {shape[1]}x{shape[0]} image: "
                         "pass x y w h with x + w <= width and y + h <= height")
    return x, y, w, h


# --------------------------------------------------------------------------- figures

def _save(fig: Figure, out: str | Path) -> Path:
    """PNG written atomically: a figure is either complete or absent."""
    out = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _zoom(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box, enlarged by an integer factor with nearest neighbour so pixels stay visible as pixels."""
    x, y, w, h = box
    k = max(1, math.ceil(MIN_CROP_PIXELS / max(w, h)))
    return img[y:y + h, x:x + w].repeat(k, axis=0).repeat(k, axis=1)


def comparison_figure(cmp: Comparison, out: str | Path, box: Sequence[int] | None = None,
                      title: str | None = None) -> Path:
    """The paper's Figures 2-3 style: the HR with the zoom box drawn, then the zoomed HR and every method.

    The default box is :func:`best_box` of the first non-bicubic method against Bicubic.
    """
    return _save(comparison_plot(cmp, box, title), out)


def comparison_plot(cmp: Comparison, box: Sequence[int] | None = None, title: str | None = None) -> Figure:
    """The figure :func:`comparison_figure` saves; each scored panel's title carries its PSNR / SSIM."""
    if box is None:
        others = [p for p in cmp.panels if p.label != BICUBIC]
        base = next((p for p in cmp.panels if p.label == BICUBIC), None)
        if base is None or not others:
            raise InputError("the default zoom box compares a model with Bicubic: run sample.py with --bicubic "
                             "and a checkpoint, or pass --box x y w h")
        box = best_box(cmp.hr, base.image, others[0].image, cmp.shave)
    box = _check_box(box, cmp.hr.shape)
    x, y, w, h = box
    crops = [("HR", _zoom(cmp.hr, box), "(ground truth)")]
    crops += [(p.label, _zoom(p.image, box), f"PSNR/SSIM {p.psnr:.2f} dB / {p.ssim:.4f}") for p in cmp.panels]
    rows = 1 if len(crops) <= 3 else 2
    cols = math.ceil(len(crops) / rows)
    crop_h = CROP_INCHES * h / w + 0.55  # + two title lines
    full_h = rows * crop_h
    full_w = min(full_h * cmp.hr.shape[1] / cmp.hr.shape[0], 2.2 * CROP_INCHES)
    fig = Figure(figsize=(full_w + cols * CROP_INCHES + 0.4, full_h + 0.6), layout="constrained")
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[full_w] + [CROP_INCHES] * cols)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(cmp.hr, interpolation="antialiased")
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="red", linewidth=1.8))
    name = display_name(cmp.dataset, cmp.name)
    where = f"{cmp.dataset} {cmp.name}" if name != cmp.name else cmp.dataset
    ax.set_title(f"{name} ({where}, x{cmp.scale})\nbox x={x} y={y} {w}x{h}", fontsize=10)
    ax.set_axis_off()
    for i, (label, crop, scores) in enumerate(crops):
        ax = fig.add_subplot(grid[i // cols, 1 + i % cols])
        ax.imshow(crop, interpolation="nearest")
        ax.set_title(f"{label}\n{scores}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"Visual comparison, x{cmp.scale} (PSNR/SSIM on Y of the whole image)", fontsize=11)
    return fig


def _read_log(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Columns of a Solver ``log.csv`` as float arrays (blank cells NaN) and its *_psnr column names."""
    if not path.is_file():
        raise InputError(f"training log {path} not found: Solver writes CKPT_DIR/log.csv")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path} is not a readable CSV ({err}); is it a Solver log.csv?") from None
    missing = [c for c in ("step", "loss", "lr") if c not in fields]
    if missing:
        raise InputError(f"{path} has no {', '.join(missing)} column: is it a Solver log.csv?")
    if not rows:
        raise InputError(f"{path} has no rows yet: train for at least --log_interval steps")
    try:
        cols = {k: np.array([float(r[k]) if r.get(k) not in (None, "") else math.nan for r in rows])
                for k in fields}
    except ValueError as err:
        raise InputError(f"{path} holds a value that is not a number ({err}); is it a Solver log.csv?") from None
    return cols, [k for k in fields if k.endswith("_psnr")]


@dataclass
class _Run:
    """One training log to draw: its label and columns."""

    label: str
    cols: dict[str, np.ndarray]
    psnr_fields: list[str]


def _run_label(log: Path, logs: Sequence[Path]) -> str:
    """A log's default label: its folder (the run's CKPT_DIR), or the whole path when folders repeat."""
    folders = [p.resolve().parent.name for p in logs]
    return log.resolve().parent.name if folders.count(log.resolve().parent.name) == 1 else str(log)


def _plot_loss(ax_loss, runs: list[_Run]) -> None:
    """Loss (log scale) per run, with each run's learning rate dotted on a twin axis."""
    ax_lr = ax_loss.twinx()
    handles = []
    for i, run in enumerate(runs):
        color = f"C{i}" if len(runs) > 1 else "tab:blue"
        line, = ax_loss.plot(run.cols["step"], run.cols["loss"], color=color, linewidth=1.2,
                             label=f"{run.label} loss" if len(runs) > 1 else "loss")
        lr, = ax_lr.plot(run.cols["step"], run.cols["lr"], color=color if len(runs) > 1 else "tab:orange",
                         linestyle=":" if len(runs) > 1 else "-", drawstyle="steps-post", label="learning rate")
        handles.append(line)
    handles.append(lr if len(runs) == 1 else ax_lr.plot([], [], color="gray", linestyle=":",
                                                        label="learning rate (dotted)")[0])
    ax_loss.set_yscale("log")
    ax_lr.set_yscale("log")
    ax_loss.set(title="Training loss and learning rate", xlabel="step", ylabel="loss (mean since the previous row)")
    ax_lr.set_ylabel("learning rate")
    ax_loss.legend(handles=handles, fontsize=8, loc="upper right")


def _set_of(field: str) -> str | None:
    """'Set5 x2' for the log column 'Set5_x2_psnr' (the Solver names them ``{set}_x{scale}_psnr``)."""
    match = re.fullmatch(r"(.+)_x(\d+)_psnr", field)
    return f"{match[1]} x{match[2]}" if match else None


def _plot_psnr(ax, runs: list[_Run], references: dict[str, float]) -> None:
    """Every run's *_psnr columns (colour per set for one run, per run for several) and the reference lines."""
    markers = "osD^vP*X"
    fields = list(dict.fromkeys(f for run in runs for f in run.psnr_fields))
    for i, run in enumerate(runs):
        for field in run.psnr_fields:
            ok = ~np.isnan(run.cols[field])
            k = fields.index(field)
            name = field.removesuffix("_psnr")
            ax.plot(run.cols["step"][ok], run.cols[field][ok], marker=markers[k % len(markers)], markersize=4,
                    color=f"C{i if len(runs) > 1 else k}", label=name if len(runs) == 1 else f"{run.label} {name}")
    colors = iter(["tab:gray", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive"])
    for label, value in references.items():  # one run: a set's bicubic line takes the colour of its curve
        same = [k for k, f in enumerate(fields) if len(runs) == 1 and label.startswith(f"{_set_of(f)} ")]
        ax.axhline(value, linestyle="--", linewidth=1, color=f"C{same[0]}" if same else next(colors, "black"),
                   label=f"{label} {value:.2f}")
    if fields or references:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no validation columns\n(train with --valid_data_dir)", ha="center", va="center",
                transform=ax.transAxes, color="gray")
    ax.set(title="Validation PSNR (Y)", xlabel="step", ylabel="PSNR (dB)")


def _plot_fixed_share(ax, runs: list[_Run]) -> None:
    """The learned gate's ``fixed_share`` column: the share of training patches routed to the costlier branch."""
    for i, run in enumerate(runs):
        if "fixed_share" in run.cols:
            ok = ~np.isnan(run.cols["fixed_share"])
            ax.plot(run.cols["step"][ok], run.cols["fixed_share"][ok], linewidth=1.2, label=run.label,
                    color=f"C{i}" if len(runs) > 1 else "tab:blue")
    ax.set_ylim(-0.03, 1.03)
    ax.set(title="Learned gate: share of patches to 'fixed'", xlabel="step", ylabel="fixed_share")
    ax.legend(fontsize=8, loc="best")


def training_curves(logs: str | Path | Sequence[str | Path], out: str | Path,
                    references: dict[str, float] | None = None, title: str | None = None,
                    labels: Sequence[str] | None = None) -> Path:
    """Loss (log scale) with the learning rate on a twin axis, every ``*_psnr`` validation column, and the learned
    gate's ``fixed_share`` in a panel of its own when a log has that column (then without the PSNR panel if
    no log has a validation column).

    Several logs are overlaid, one colour per run, labelled with ``labels`` (default: each log's folder).
    ``references`` draws labelled horizontal lines on the PSNR panel (e.g. bicubic on the validation set,
    see :func:`bicubic_references`), so a run below the baseline shows at once.
    """
    paths = [Path(logs)] if isinstance(logs, (str, Path)) else [Path(p) for p in logs]
    _check_labels(labels, paths, "--log")
    runs = [_Run(labels[i] if labels else _run_label(p, paths), *_read_log(p)) for i, p in enumerate(paths)]
    gated = any("fixed_share" in run.cols for run in runs)
    validated = bool(references) or any(run.psnr_fields for run in runs) or not gated  # else an empty panel
    panels = 1 + validated + gated
    fig = Figure(figsize=((11 if len(runs) == 1 else 12) * panels / 2, 4 if len(runs) == 1 else 4.6),
                 layout="constrained")
    axes = list(fig.subplots(1, panels))
    _plot_loss(axes[0], runs)
    if validated:
        _plot_psnr(axes[1], runs, references or {})
    if gated:
        _plot_fixed_share(axes[-1], runs)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, out)


def _valid_dirs_of(log: Path) -> tuple[list[str], int | None]:
    """--valid_data_dir and --shave as the run recorded them in the newest checkpoint beside its log.csv."""
    for ckpt in sorted(log.parent.glob("*.pth"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            config = read_checkpoint(ckpt).get("config") or {}
        except CheckpointError:
            continue
        if config.get("valid_data_dir"):
            return list(config["valid_data_dir"]), config.get("shave")
    return [], None


def bicubic_references(logs: Sequence[str | Path], valid_dirs: Sequence[str] | None = None) -> dict[str, float]:
    """Bicubic PSNR on each validation set the logs name (``{set}_x{s}_psnr`` columns), by sample.py's protocol.

    The sets are found in ``valid_dirs``, else in what each run's checkpoint recorded (its config's
    valid_data_dir); a column whose set cannot be found is noted on stderr and gets no line.
    """
    found: dict[str, float] = {}
    for log in map(Path, logs):
        dirs, shave = (list(valid_dirs), None) if valid_dirs else _valid_dirs_of(log)
        for field in _read_log(log)[1]:
            name = _set_of(field)
            if name is None or f"{name} bicubic" in found:
                continue
            test_set, scale = name.rsplit(" x", 1)
            sets = [ts for ts in (_find_quietly(d, int(scale)) for d in dirs) if ts and ts.name == test_set]
            if not sets:
                print(f"note: no bicubic line for {field}: its set is not in "
                      f"{', '.join(dirs) or 'the checkpoints beside ' + str(log)}; pass --valid_data_dir",
                      file=sys.stderr)
                continue
            found[f"{name} bicubic"] = evaluate_set(lambda lr, s=int(scale): imresize(lr, s), sets[0], "Bicubic",
                                                    shave=shave).psnr
    return found


def _find_quietly(folder: str, scale: int) -> TestSet | None:
    try:
        return _test_set(folder, scale)
    except InputError:
        return None


# --------------------------------------------------------------------------- the gate's routing

BRANCH_ORDER = ("selected", "fixed", "mixed")
BRANCH_NOTES = {"selected": "3x3/1x1 branch, cheaper", "fixed": "all-3x3 branch, costlier",
                "mixed": "tiles or self-ensemble passes took different branches"}
THUMB = 112  # thumbnail side in pixels


@dataclass
class Routed:
    """One test image and the branch the gate sent it through."""

    dataset: str
    scale: int
    name: str
    branch: str
    psnr: float
    texture: float      # mean |gradient| of the HR's Y
    thumb: np.ndarray   # uint8, at most (THUMB - 6) pixels a side
    gflops: float | None = None  # the forward's cost, when the CSV records it


def _thumbnail(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((THUMB - 6, THUMB - 6), Image.Resampling.LANCZOS)  # a white gap between neighbours
    return np.asarray(im)


def load_routing(report: str | Path, dataset: str | None = None, scale: int | None = None) -> list[Routed]:
    """The images of a ``sample.py`` report with the branch each took (the per-image CSV's ``branch`` column)."""
    report = Path(report)
    settings = _read_report(report, images=False)["settings"]
    path = per_image_csv_beside(report)
    if not path.is_file():
        raise InputError(f"{path} not found: sample.py writes it beside {report.name}; rerun sample.py --report")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = reader.fieldnames or []
        if "branch" not in fields:
            raise InputError(f"{path} has no branch column (an older sample.py): rerun sample.py --report with a "
                             "checkpoint to record the branch each image took")
        picked = [(r["dataset"], int(r["scale"]), r["image"], r["branch"], float(r["psnr"]),
                   float(r["gflops"]) if r.get("gflops") else None) for r in rows
                  if r["branch"] and (dataset is None or r["dataset"] == dataset)
                  and (scale is None or int(r["scale"]) == scale)]
    except (KeyError, ValueError, TypeError, csv.Error, UnicodeDecodeError) as err:
        reason = ascii(str(err))[1:-1][:80]
        raise InputError(f"{path} is not a sample.py per-image CSV ({type(err).__name__}: {reason}); "
                         "rerun sample.py --report") from None
    if not picked:
        wanted = "".join(f" {n} {v}" for n, v in (("--dataset", dataset), ("--scale", scale)) if v is not None)
        raise InputError(f"{path} has no image with a branch{' for' + wanted if wanted else ''}: "
                         "branches are recorded for the model's rows; run sample.py with a checkpoint")
    routed = []
    for ds, s, name, branch, psnr, gflops in picked:
        hr = _read_hr(settings, ds, s, name)
        routed.append(Routed(ds, s, name, branch, psnr, float(_gradient_magnitude(rgb_to_y(hr)).mean()),
                             _thumbnail(hr), gflops))
    return routed


def _mosaic(images: list[Routed], cols: int) -> np.ndarray:
    """The thumbnails on a white grid of THUMB-pixel cells, row by row."""
    rows = math.ceil(len(images) / cols)
    sheet = np.full((rows * THUMB, cols * THUMB, 3), 255, np.uint8)
    for i, im in enumerate(images):
        h, w = im.thumb.shape[:2]
        y, x = (i // cols) * THUMB + (THUMB - h) // 2, (i % cols) * THUMB + (THUMB - w) // 2
        sheet[y:y + h, x:x + w] = im.thumb[..., :3] if im.thumb.ndim == 3 else im.thumb[..., None]
    return sheet


def branches_figure(images: list[Routed], out: str | Path, cols: int = 10, title: str | None = None) -> Path:
    """The gate's decision against image content: HR texture per image by branch, then the images by branch."""
    taken = {im.branch for im in images}
    order = [b for b in BRANCH_ORDER if b in taken] + sorted(taken - set(BRANCH_ORDER))
    groups = {b: [im for im in images if im.branch == b] for b in order}
    cols = min(cols, max(len(g) for g in groups.values()))
    cell = 1.25  # inches per thumbnail
    heights = [0.6 + 0.45 * len(groups)] + [math.ceil(len(g) / cols) * cell + 0.3 for g in groups.values()]
    fig = Figure(figsize=(max(7.0, cols * cell + 1.2), sum(heights) + 0.6), layout="constrained")
    axes = fig.subplots(len(heights), 1, height_ratios=heights)
    sets = list(dict.fromkeys(im.dataset for im in images))
    for k, ds in enumerate(sets):
        pts = [(im.texture, list(groups).index(im.branch)) for im in images if im.dataset == ds]
        jitter = np.random.default_rng(k).uniform(-0.15, 0.15, len(pts))
        axes[0].scatter([t for t, _ in pts], np.array([g for _, g in pts]) + jitter, s=14, alpha=0.7, label=ds)
    axes[0].set_yticks(range(len(groups)), [f"{b} ({len(g)})" for b, g in groups.items()])
    axes[0].set_ylim(len(groups) - 0.5, -0.5)
    axes[0].set_xlabel("HR texture: mean |gradient| of Y (grey levels per pixel)")
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[0].grid(alpha=0.3, axis="x")
    for ax, (branch, group) in zip(axes[1:], groups.items()):
        ax.imshow(_mosaic(group, cols), interpolation="antialiased")
        for i, im in enumerate(group):
            label = display_name(im.dataset, im.name) + (f" ({im.dataset})" if len(sets) > 1 else "")
            ax.text((i % cols + 0.5) * THUMB, (i // cols + 1) * THUMB - 2, f"{label}\n{im.psnr:.2f} dB",
                    ha="center", va="bottom", fontsize=6, color="white",
                    bbox={"facecolor": "black", "alpha": 0.55, "pad": 1, "linewidth": 0})
        cost = [im.gflops for im in group if im.gflops is not None]
        ax.set_title(f"{branch}: {len(group)} image{'s' * (len(group) != 1)}"
                     + (f" ({BRANCH_NOTES[branch]})" if branch in BRANCH_NOTES else "")
                     + (f", mean {np.mean(cost):.1f} GFLOPs per image" if cost else ""), fontsize=10, loc="left")
        ax.set_axis_off()
    scales = sorted({im.scale for im in images})
    fig.suptitle(title or f"The gate's decision against image content (x{', x'.join(map(str, scales))}; "
                 f"PSNR on Y under each image)", fontsize=11)
    return _save(fig, out)


# --------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", formatter_class=HelpFormatter,
                       help="zoomed visual comparison from sample.py reports")
    c.add_argument("--report", nargs="+", required=True, help="sample.py --report JSON file(s), Bicubic taken once")
    c.add_argument("--label", nargs="+", help="one name per report for its model rows (default: checkpoint names)")
    c.add_argument("--image", help="image name (default: the one with the largest gain over bicubic)")
    c.add_argument("--dataset", help="test set, when the report holds several")
    c.add_argument("--scale", type=int, help="scale, when the report holds several")
    c.add_argument("--box", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="zoom region in HR pixels (default: where the model gains most over bicubic)")
    c.add_argument("--out", help="PNG to write (default: REPORT_compare.png beside the first report)")
    k = sub.add_parser("curves", formatter_class=HelpFormatter,
                       help="loss, lr, validation PSNR (and the learned gate's fixed_share) against step "
                            "from Solver log.csv files")
    k.add_argument("--log", nargs="+", required=True, help="CKPT_DIR/log.csv of one run, or of several to overlay")
    k.add_argument("--label", nargs="+", help="one name per log (default: each log's folder)")
    k.add_argument("--valid_data_dir", nargs="+",
                   help="validation set folder(s) for the bicubic line (default: as the run's checkpoint records)")
    k.add_argument("--no_bicubic", action="store_true", help="draw no bicubic line (it costs one bicubic pass)")
    k.add_argument("--out", help="PNG to write (default: curves.png beside the first log)")
    b = sub.add_parser("branches", formatter_class=HelpFormatter,
                       help="test images grouped by the gate branch each took, from a sample.py report")
    b.add_argument("--report", required=True, help="sample.py --report JSON (its per-image CSV has a branch column)")
    b.add_argument("--dataset", help="only this test set (default: every set in the report)")
    b.add_argument("--scale", type=int, help="only this scale (default: every scale in the report)")
    b.add_argument("--out", help="PNG to write (default: REPORT_branches.png beside the report)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_args(argv)
    if cfg.command == "compare":
        first = Path(cfg.report[0])
        cmp = load_comparison(cfg.report, cfg.image, cfg.dataset, cfg.scale, cfg.label)
        out = comparison_figure(cmp, cfg.out or first.with_name(first.stem + "_compare.png"), cfg.box)
    elif cfg.command == "curves":
        _check_labels(cfg.label, cfg.log, "--log")
        references = {} if cfg.no_bicubic else bicubic_references(cfg.log, cfg.valid_data_dir)
        out = training_curves(cfg.log, cfg.out or Path(cfg.log[0]).with_name("curves.png"), references,
                              labels=cfg.label)
    else:
        report = Path(cfg.report)
        out = branches_figure(load_routing(report, cfg.dataset, cfg.scale),
                              cfg.out or report.with_name(report.stem + "_branches.png"))
    print(out)
    return out


if __name__ == "__main__":
    run_cli(main)
