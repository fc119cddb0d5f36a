"""sample.py's report, written in one place: results JSON (settings, provenance), markdown summary, per-image CSV."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dsrnet.errors import InputError
from dsrnet.evaluation import SetResult, per_image_csv_beside, write_per_image_csv
from dsrnet.files import atomic_write_bytes, ensure_writable
from dsrnet.provenance import environment
from model import file_sha256


def report_paths(report: Path) -> tuple[Path, Path, Path]:
    """The JSON, its markdown summary and its per-image CSV. The extension of ``report`` says which of the first
    two it is (.json or .md); the others go beside it under the same stem, so neither format is ever written
    into a file named for the other."""
    kind = report.suffix.lower()
    if kind not in (".json", ".md"):
        raise InputError(f"--report {report}: name a .json file (results, with the markdown summary and the "
                         "per-image CSV beside it) or a .md file (the summary, with the JSON and CSV beside it)")
    json_path = report if kind == ".json" else report.with_suffix(".json")
    return json_path, report if kind == ".md" else report.with_suffix(".md"), per_image_csv_beside(json_path)


def check_report_writable(report: Path) -> None:
    """All three files, before any work, so that a report is never left in part."""
    ensure_writable(report)  # a folder named as the report says so before its extension is judged
    for path in report_paths(report):
        ensure_writable(path)


# sample.py's flags that cannot change a score or an image, left out of a report's settings. Every other flag
# is recorded, under its own name or the key below; tests/test_reports.py holds sample.py's parser to this, so
# a new flag must be recorded or listed here with its reason.
UNRECORDED_FLAGS = {
    "help": "prints the help and exits",
    "report": "where the report goes",
    "workers": "threads for decoding, scoring and saving: the same images and scores",
    "quiet": "progress bars",
    "input": "images without HR: nothing is scored and --report is refused",
    "output": "where --input's images go (--input only)",
}
SETTING_OF_FLAG = {"ckpt_path": "checkpoint", "test_data_dir": "test_data_dirs", "sample_dir": "sr_dir",
                   "no_save": "sr_dir", "scale": "scales", "gate": "gate_mode", "cuda": "device"}


def report_settings(cfg: argparse.Namespace, ckpt: Path | None, test_dirs: list[str], group: int | None,
                    scales: list[int], device: torch.device, weights: str | None) -> dict:
    """How the results were made: every flag that can change a score or an image, as resolved (the checkpoint's
    group and scale, the protocol's quantisation, the device), and where the images are. ``group`` is the
    upsampler's conv groups the net was built with (``--group`` or the checkpoint's; None for bicubic alone);
    ``weights`` which of the checkpoint's weights were scored ('ema' or 'raw'; None for bicubic alone)."""
    return {
        "checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_sha256": file_sha256(ckpt) if ckpt else None, "group": group,
        "gate_mode": cfg.gate, "seed": cfg.seed, "quantize": cfg.quantize,
        "shave": "scale" if cfg.shave is None else cfg.shave,
        "self_ensemble": cfg.self_ensemble, "bf16": cfg.bf16, "tf32": cfg.tf32,
        "tile": cfg.tile, "tile_overlap": cfg.tile_overlap,
        "protocol": cfg.protocol, "model": cfg.model, "scales": list(scales), "bicubic": cfg.bicubic,
        "device": str(device), "weights": weights,
        # Where the HR and the saved SR images are, so tools/visualize.py can draw from the report alone.
        "test_data_dirs": [str(Path(d).resolve()) for d in test_dirs],
        "sr_dir": None if cfg.no_save else str((Path(cfg.sample_dir) / (ckpt.stem if ckpt else "bicubic")).resolve()),
    }


def write_report(report: Path, results: list[SetResult], settings: dict, table: str) -> None:
    """JSON with results + settings + provenance, a markdown summary and a per-image CSV, each atomic."""
    json_path, md_path, csv_path = report_paths(report)
    doc = {"results": [r.summary() for r in results], "settings": settings, "environment": environment()}
    atomic_write_bytes(json_path, (json.dumps(doc, indent=2) + "\n").encode())
    atomic_write_bytes(md_path, (table + "\n").encode())
    write_per_image_csv(csv_path, results)
