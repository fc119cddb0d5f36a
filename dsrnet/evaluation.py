"""Evaluating an upscaler on a test set: the loop shared by `sample.py` and training validation.

Decoding the next images and scoring/saving the previous ones run on worker threads, so the
model's forward is the only thing on the critical path.
"""
from __future__ import annotations

import csv
import io
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from dsrnet.data.images import write_image
from dsrnet.data.layouts import ImagePair, TestSet, load_pair
from dsrnet.errors import InputError
from dsrnet.files import atomic_write_bytes
from dsrnet.metrics import check_scorable, psnr_y, ssim_y
from model.dsrnet import Net
from model.flops import flops_per_lr_pixel, upsampler_groups

Upscaler = Callable[[np.ndarray], np.ndarray]  # LR uint8 HWC -> SR uint8 HWC


def method_sr_folder(root: str | Path, dataset: str, scale: int, method: str) -> Path:
    """Where ``sample.py`` saves one method's SR images of one test set; ``tools/visualize.py`` reads them back."""
    return Path(root) / dataset / f"x{scale}" / method.lower()


def sr_image_path(folder: Path, image: str) -> Path:
    """The SR PNG of test image ``image`` inside a folder given to :func:`evaluate_set` as ``save_dir``."""
    return folder / f"{image}_SR.png"


@dataclass
class ImageResult:
    name: str
    psnr: float
    ssim: float
    seconds: float  # time spent in the upscaler alone
    branch: str | None = None  # the gate branch this image took: selected, fixed, or mixed (DSRNet rows only)
    gflops: float | None = None  # FLOPs of the forward passes that made it, whole image (DSRNet rows only)


@dataclass
class SetResult:
    dataset: str
    scale: int
    method: str
    psnr: float
    ssim: float
    n_images: int
    seconds: float  # wall time for the whole set: decoding, upscaling, scoring, saving
    layout: str
    shave: int
    images: list[ImageResult] = field(default_factory=list)
    gate_branches: dict[str, int] | None = None  # forward passes that ran each branch (DSRNet rows only)
    branches: dict[str, int] | None = None  # images per branch; they add up to n_images (DSRNet rows only)
    gflops_per_image: float | None = None  # mean over the images (DSRNet rows only)

    def summary(self) -> dict:
        """The JSON row: everything but the per-image list."""
        row = asdict(self)
        row.pop("images")
        return row


def evaluate_set(upscale: Upscaler, test_set: TestSet, method: str, shave: int | None = None,
                 save_dir: Path | None = None, workers: int = 2, progress: bool = False,
                 round_y: bool = True) -> SetResult:
    """Upscale every LR image of ``test_set`` and score it on Y against its HR (``shave`` defaults to the scale;
    Y rounded to integers unless ``round_y`` is False, see :mod:`dsrnet.metrics`).

    SR images are written as PNG under ``save_dir`` when given, with a per-image CSV beside them.
    """
    result = _score_set(upscale, test_set, method, shave, save_dir, workers, progress, round_y)
    if save_dir is not None:
        write_per_image_csv(save_dir / "per_image.csv", [result])
    return result


def _score_set(upscale: Upscaler, test_set: TestSet, method: str, shave: int | None, save_dir: Path | None,
               workers: int, progress: bool, round_y: bool) -> SetResult:
    """:func:`evaluate_set` short of its per-image CSV."""
    shave = test_set.scale if shave is None else shave
    start = time.perf_counter()
    bar = _progress(len(test_set.pairs), f"{method} {test_set.name} x{test_set.scale}", progress)
    try:
        images = _run_pipelined(upscale, test_set, shave, save_dir, workers, bar, round_y)
    finally:
        bar.close()
    return SetResult(dataset=test_set.name, scale=test_set.scale, method=method,
                     psnr=float(np.mean([r.psnr for r in images])), ssim=float(np.mean([r.ssim for r in images])),
                     n_images=len(images), seconds=time.perf_counter() - start,
                     layout=test_set.layout, shave=shave, images=images)


def evaluate_routed(upscale: Upscaler, net: Net, test_set: TestSet, method: str, passes: int = 1,
                    shave: int | None = None, save_dir: Path | None = None, workers: int = 2,
                    progress: bool = False, round_y: bool = True) -> SetResult:
    """:func:`evaluate_set` for a DSRNet upscaler, adding how often each branch ran (``gate_branches``), each
    image's branch and GFLOPs, and the branch counts over the images (``branches``); ``passes`` forwards
    make one image (8 with self-ensemble)."""
    net.router.branch_counts.clear()
    routed = RoutedUpscaler(upscale, net, test_set.scale, passes)
    result = _score_set(routed, test_set, method, shave, save_dir, workers, progress, round_y)
    result.gate_branches = dict(net.router.branch_counts)
    routed.attach(result)
    if save_dir is not None:  # once the branches are known
        write_per_image_csv(save_dir / "per_image.csv", [result])
    return result


def _run_pipelined(upscale: Upscaler, test_set: TestSet, shave: int, save_dir: Path | None, workers: int,
                   bar, round_y: bool) -> list[ImageResult]:
    """Decode ahead and score/save behind on a thread pool; only ``upscale`` runs on this thread."""
    scored: list[Future] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pairs = iter(test_set.pairs)
        pending: deque[tuple[ImagePair, Future]] = deque(
            (p, pool.submit(load_pair, test_set, p)) for p in islice(pairs, workers + 1))
        while pending:
            pair, loaded = pending.popleft()
            nxt = next(pairs, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_pair, test_set, nxt)))
            hr, lr = loaded.result()
            require_scorable(pair.name, hr, shave)  # before the model runs on it
            t0 = time.perf_counter()
            sr = upscale(lr)
            seconds = time.perf_counter() - t0
            scored.append(pool.submit(_score_and_save, pair.name, sr, hr, shave, seconds, save_dir, round_y))
            bar.update(1)
        return [f.result() for f in scored]


def _score_and_save(name: str, sr: np.ndarray, hr: np.ndarray, shave: int, seconds: float,
                    save_dir: Path | None, round_y: bool) -> ImageResult:
    if sr.shape != hr.shape:
        raise ValueError(f"{name}: SR is {sr.shape[:2]} but HR is {hr.shape[:2]}")
    scores = psnr_y(sr, hr, shave, round_y), ssim_y(sr, hr, shave, round_y)
    if save_dir is not None:
        write_image(sr_image_path(save_dir, name), sr)
    return ImageResult(name, *scores, seconds)


def require_scorable(name: str, hr: np.ndarray, shave: int) -> None:
    """Refuse, naming the image, an HR image too small for SSIM's window once shaved."""
    try:
        check_scorable(hr.shape[:2], shave)
    except ValueError as err:
        raise InputError(f"{name}: {err}: use larger test images or a smaller --shave") from None


def per_image_csv_beside(report: Path) -> Path:
    """The per-image CSV that ``sample.py --report REPORT.json`` writes next to its JSON."""
    return report.with_name(report.stem + "_per_image.csv")


def write_per_image_csv(path: Path, results: list[SetResult]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["dataset", "scale", "method", "image", "psnr", "ssim", "seconds", "branch", "gflops"])
    for r in results:
        for im in r.images:
            writer.writerow([r.dataset, r.scale, r.method, im.name, f"{im.psnr:.4f}", f"{im.ssim:.6f}",
                             f"{im.seconds:.4f}", im.branch or "", "" if im.gflops is None else f"{im.gflops:.3f}"])
    atomic_write_bytes(path, buf.getvalue().encode())


def markdown_table(results: list[SetResult]) -> str:
    """Rows of dataset x scale, one PSNR/SSIM column per method, as in the paper's tables, then the mean
    GFLOPs per image of each method that counts them (DSRNet's, by the branch each image took)."""
    methods = list(dict.fromkeys(r.method for r in results))
    counted = list(dict.fromkeys(r.method for r in results if r.gflops_per_image is not None))
    keys = list(dict.fromkeys((r.dataset, r.scale) for r in results))
    cell = {(r.dataset, r.scale, r.method): f"{r.psnr:.2f} / {r.ssim:.4f}" for r in results}
    cell.update({(r.dataset, r.scale, f"{r.method} GFLOPs/image"): f"{r.gflops_per_image:.1f}"
                 for r in results if r.gflops_per_image is not None})
    columns = methods + [f"{m} GFLOPs/image" for m in counted]
    lines = ["| dataset | scale | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for ds, s in keys:
        lines.append(f"| {ds} | x{s} | " + " | ".join(cell.get((ds, s, m), "") for m in columns) + " |")
    return "\n".join(lines)


class RoutedUpscaler:
    """Wraps a DSRNet upscaler and records, per image, the gate branch it took and the FLOPs it cost.

    The branch is read from the net's count of samples routed to each branch during the image: one branch,
    or 'mixed' when its tiles or self-ensemble transforms went different ways (possible only in the
    batch-wide 'sample'/'argmax' modes; the learned gate routes a whole image once). FLOPs are those of
    whole-image forwards through that branch (x8 with self-ensemble; tiles' overlap not counted).
    """

    def __init__(self, upscale: Upscaler, net: Net, scale: int, passes: int = 1):
        self.upscale, self.routed, self.passes = upscale, net.router.routed, passes
        group = upsampler_groups(net)
        self.per_pixel = {b: flops_per_lr_pixel(scale, b, net.multi_scale, group) for b in ("selected", "fixed")}
        self.images: list[tuple[str, float]] = []

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        before = dict(self.routed)
        sr = self.upscale(lr)
        took = {b: self.routed[b] - before.get(b, 0) for b in self.per_pixel if self.routed[b] > before.get(b, 0)}
        per_pixel = sum(self.per_pixel[b] * n for b, n in took.items()) / max(1, sum(took.values()))
        branch = next(iter(took)) if len(took) == 1 else "mixed"
        self.images.append((branch, per_pixel * lr.shape[0] * lr.shape[1] * self.passes / 1e9))
        return sr

    def attach(self, result: SetResult) -> None:
        """Write the recorded branch and GFLOPs into ``result``'s images and its totals."""
        for im, (branch, gflops) in zip(result.images, self.images, strict=True):
            im.branch, im.gflops = branch, gflops
        counts = Counter(branch for branch, _ in self.images)
        result.branches = {"selected": counts.pop("selected", 0), "fixed": counts.pop("fixed", 0), **counts}
        result.gflops_per_image = float(np.mean([g for _, g in self.images])) if self.images else 0.0
        self.images = []


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    """A progress bar while a terminal watches; none at all unless ``enabled``."""
    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=None if enabled else True)
