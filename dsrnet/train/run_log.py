"""The training log: ``log.csv`` in the checkpoint folder, plus TensorBoard under ``tb/`` when installed."""
from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

from dsrnet.errors import InputError
from dsrnet.files import atomic_write_bytes


class RunLog:
    """``log.csv`` (one row per logged step) plus TensorBoard under ``tb/`` when it is installed.

    On resume the CSV keeps the complete rows up to the resumed step, dropping later ones and any line a
    crash cut short (power loss, full disk), and TensorBoard purges events from that step on, so a run
    resumed any number of times logs each step once. An earlier log is read (and refused if damaged) at
    once, but nothing is written before the first row: a run that fails before it leaves the folder as
    it found it.
    """

    BASE_FIELDS = ["step", "loss", "lr", "samples_per_s"]

    def __init__(self, ckpt_dir: Path, valid_fields: list[str], start: int):
        self.ckpt_dir, self.start, self.path = ckpt_dir, start, ckpt_dir / "log.csv"
        self.rows, fields = [], self.BASE_FIELDS + valid_fields
        if start > 0 and self.path.is_file():
            try:
                with open(self.path, newline="") as f:
                    text = f.read()
                reader = csv.DictReader(io.StringIO(text[:text.rfind("\n") + 1], newline=""))  # no torn last line
                self.rows = [r for r in reader if _complete(r) and int(r["step"]) <= start]
                fields = list(reader.fieldnames or []) + [k for k in fields if k not in (reader.fieldnames or [])]
            except (UnicodeDecodeError, csv.Error) as err:
                raise InputError(f"cannot continue {self.path} ({err}): move it aside and resume again") from None
        self.fields = fields
        self.opened, self.tb = False, None

    def open(self) -> None:
        """Write the CSV header (and kept rows) and start TensorBoard, once."""
        if self.opened:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.fields, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.ckpt_dir / "tb"), purge_step=self.start)
        except ImportError:
            self.tb = None
        self.opened = True

    def has_row(self, step: int) -> bool:
        """Whether the kept log holds a complete row for ``step`` (the last one a resumed run kept)."""
        return any(int(r["step"]) == step for r in self.rows)

    def write(self, row: dict) -> None:
        self.open()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))  # never through a link
        with open(fd, "a", newline="") as f:
            csv.DictWriter(f, self.fields, restval="", extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key if key in self.BASE_FIELDS else f"valid/{key}", value, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _complete(row: dict) -> bool:
    """A row with every field (short rows read as None, surplus ones under the key None) and a step."""
    return None not in row and None not in row.values() and row.get("step", "").isdigit()


class Throughput:
    """Training samples per second since the last restart (validating and saving are not training)."""

    def __init__(self, step: int, batch_size: int):
        self.batch_size = batch_size
        self.restart(step)

    def restart(self, step: int) -> None:
        self.since, self.step = time.perf_counter(), step

    def samples_per_s(self, step: int) -> float:
        return (step - self.step) * self.batch_size / (time.perf_counter() - self.since)
