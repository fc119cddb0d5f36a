"""Evaluating an upscaler on a test set: the loop shared by `sample.py` and training validation.

Decoding the next images and scoring/saving the previous ones run on worker threads, so the
model's forward is the only thing on the critical path.
"""
from __future__ import annotations

import csv
import io
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np

from dataset.io import atomic_write_bytes, write_image
from dataset.layouts import ImagePair, TestSet, load_pair
from dsrnet.errors import InputError
from dsrnet.metrics import check_scorable, psnr_y, ssim_y

Upscaler = Callable[[np.ndarray], np.ndarray]  # LR uint8 HWC -> SR uint8 HWC


def method_sr_folder(root: str | Path, dataset: str, scale: int, method: str) -> Path:
    """Where ``sample.py`` saves one method's SR images of one test set; ``visualize.py`` reads them back."""
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
    gate_branches: dict[str, int] | None = None  # how often each branch ran (DSRNet rows only)

    def summary(self) -> dict:
        """The JSON row: everything but the per-image list."""
        row = asdict(self)
        row.pop("images")
        return row


def evaluate_set(upscale: Upscaler, test_set: TestSet, method: str, shave: int | None = None,
                 save_dir: Path | None = None, workers: int = 2, progress: bool = False) -> SetResult:
    """Upscale every LR image of ``test_set`` and score it on Y against its HR (``shave`` defaults to the scale).

    SR images are written as PNG under ``save_dir`` when given, with a per-image CSV beside them.
    """
    shave = test_set.scale if shave is None else shave
    start = time.perf_counter()
    bar = _progress(len(test_set.pairs), f"{method} {test_set.name} x{test_set.scale}", progress)
    try:
        images = _run_pipelined(upscale, test_set, shave, save_dir, workers, bar)
    finally:
        bar.close()
    result = SetResult(dataset=test_set.name, scale=test_set.scale, method=method,
                       psnr=float(np.mean([r.psnr for r in images])),
                       ssim=float(np.mean([r.ssim for r in images])),
                       n_images=len(images), seconds=time.perf_counter() - start,
                       layout=test_set.layout, shave=shave, images=images)
    if save_dir is not None:
        write_per_image_csv(save_dir / "per_image.csv", [result])
    return result


def _run_pipelined(upscale: Upscaler, test_set: TestSet, shave: int, save_dir: Path | None, workers: int,
                   bar) -> list[ImageResult]:
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
            scored.append(pool.submit(_score_and_save, pair.name, sr, hr, shave, seconds, save_dir))
            bar.update(1)
        return [f.result() for f in scored]


def _score_and_save(name: str, sr: np.ndarray, hr: np.ndarray, shave: int, seconds: float,
                    save_dir: Path | None) -> ImageResult:
    if sr.shape != hr.shape:
        raise ValueError(f"{name}: SR is {sr.shape[:2]} but HR is {hr.shape[:2]}")
    scores = psnr_y(sr, hr, shave), ssim_y(sr, hr, shave)
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
    writer.writerow(["dataset", "scale", "method", "image", "psnr", "ssim", "seconds"])
    for r in results:
        for im in r.images:
            writer.writerow([r.dataset, r.scale, r.method, im.name, f"{im.psnr:.4f}", f"{im.ssim:.6f}",
                             f"{im.seconds:.4f}"])
    atomic_write_bytes(path, buf.getvalue().encode())


def markdown_table(results: list[SetResult]) -> str:
    """Rows of dataset x scale, one PSNR/SSIM column per method, as in the paper's tables."""
    methods = list(dict.fromkeys(r.method for r in results))
    keys = list(dict.fromkeys((r.dataset, r.scale) for r in results))
    cell = {(r.dataset, r.scale, r.method): f"{r.psnr:.2f} / {r.ssim:.4f}" for r in results}
    lines = ["| dataset | scale | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for ds, s in keys:
        lines.append(f"| {ds} | x{s} | " + " | ".join(cell.get((ds, s, m), "") for m in methods) + " |")
    return "\n".join(lines)


class _NoBar:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=None)
