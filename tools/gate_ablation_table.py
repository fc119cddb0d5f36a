"""The markdown tables of the gate ablation (tools/gate_ablation.sh) from its reports and training logs.

    python -m tools.gate_ablation_table runs/gate_ablation > table.md

Reads OUT/eval/<run>_<gate>.json (sample.py reports) and OUT/<run>/log.csv (training logs).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from pathlib import Path

from dsrnet.cli import run_cli
from dsrnet.errors import InputError

SETS = ("Set5", "Set14", "BSD100")


def read_reports(out: Path) -> dict[tuple[str, str], dict[str, dict]]:
    """{(run, eval gate): {dataset: its report row}} for every report under OUT/eval."""
    found = {}
    for path in sorted((out / "eval").glob("*.json")):
        doc = json.loads(path.read_text())
        gate = doc["settings"]["gate_mode"]
        run = path.stem.removesuffix(f"_{gate}")
        found[(run, gate)] = {r["dataset"]: r for r in doc["results"]}
    if not found:
        raise InputError(f"no reports in {out / 'eval'}: run tools/gate_ablation.sh {out} eval-... first")
    return found


def last_log_row(out: Path, run: str) -> dict[str, str]:
    path = out / run / "log.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def scores_table(reports: dict[tuple[str, str], dict[str, dict]], out: Path) -> str:
    lines = ["| run | eval gate | " + " | ".join(f"{s} PSNR / SSIM" for s in SETS)
             + " | branches sel/fix (Set5, Set14, B100) | GFLOPs/image (Set5, Set14, B100) | last train loss "
             "| last fixed share |",
             "|---|---|" + "---|" * (len(SETS) + 4)]
    for (run, gate), rows in reports.items():
        cells = [f"{rows[s]['psnr']:.4f} / {rows[s]['ssim']:.4f}" if s in rows else "" for s in SETS]
        branches = ", ".join(f"{rows[s]['branches']['selected']}/{rows[s]['branches']['fixed']}"
                             for s in SETS if s in rows)
        gflops = ", ".join(f"{rows[s]['gflops_per_image']:.1f}" for s in SETS if s in rows)
        log = last_log_row(out, run)
        lines.append(f"| {run} | {gate} | " + " | ".join(cells) + f" | {branches} | {gflops} | "
                     f"{log.get('loss', '')} | {log.get('fixed_share', '')} |")
    return "\n".join(lines)


def by_recipe(reports: dict[tuple[str, str], dict[str, dict]]) -> dict[tuple[str, str], dict[int, dict[str, dict]]]:
    """{(recipe, eval gate): {seed: the run's rows}} (a run named without ``_s<seed>`` is seed 0)."""
    groups: dict[tuple[str, str], dict[int, dict[str, dict]]] = {}
    for (run, gate), rows in reports.items():
        match = re.fullmatch(r"(.+?)(?:_s(\d+))?", run)
        groups.setdefault((match[1], gate), {})[int(match[2] or 0)] = rows
    return groups


def _psnrs(runs: dict[int, dict[str, dict]], dataset: str) -> list[float]:
    return [r[dataset]["psnr"] for r in runs.values() if dataset in r]


def seed_table(reports: dict[tuple[str, str], dict[str, dict]]) -> str:
    """Mean and spread (max - min) over the seeds of each recipe and evaluation gate."""
    groups = by_recipe(reports)
    lines = ["| recipe | eval gate | seeds | " + " | ".join(f"{s} PSNR mean (spread)" for s in SETS) + " |",
             "|---|---|---|" + "---|" * len(SETS)]
    for (recipe, gate), runs in groups.items():
        cells = []
        for s in SETS:
            values = _psnrs(runs, s)
            cells.append(f"{statistics.mean(values):.4f} ({max(values) - min(values):.4f})" if values else "")
        lines.append(f"| {recipe} | {gate} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def difference_table(reports: dict[tuple[str, str], dict[str, dict]]) -> str:
    """Each recipe of a group (``ft_``, ``scratch_``) under its own gate against the group's static
    ``<group>_selected``: the difference of seed means beside the larger of the two seed spreads, whether it
    exceeds that spread, and the range of the same-seed differences (same data order, same initialisation)."""
    groups = by_recipe(reports)
    lines = ["| recipe (own gate) | against | seeds | "
             + " | ".join(f"{s} mean diff (spread; same-seed diffs)" for s in SETS)
             + " | beyond the seed spread? |", "|---|---|---|" + "---|" * (len(SETS) + 1)]
    for (recipe, gate), runs in groups.items():
        group = recipe.split("_", 1)[0] + "_"
        base = groups.get((group + "selected", "selected"))
        if base is None or recipe == group + "selected" or gate != recipe.removeprefix(group).removesuffix("_penalty"):
            continue
        cells, beyond = [], []
        for s in SETS:
            a, b = _psnrs(runs, s), _psnrs(base, s)
            if not (a and b):
                cells.append("")
                continue
            diff = statistics.mean(a) - statistics.mean(b)
            spread = max(max(a) - min(a), max(b) - min(b))
            paired = [runs[k][s]["psnr"] - base[k][s]["psnr"] for k in sorted(runs.keys() & base.keys())
                      if s in runs[k] and s in base[k]]
            cells.append(f"{diff:+.4f} ({spread:.4f}" + (f"; same seed {min(paired):+.3f}..{max(paired):+.3f})"
                                                          if paired else ")"))
            verdict = "one seed, no spread" if min(len(a), len(b)) < 2 else "yes" if abs(diff) > spread else "no"
            beyond.append(f"{s} {verdict}")
        lines.append(f"| {recipe} ({gate}) | {group}selected | {len(runs)}/{len(base)} | " + " | ".join(cells)
                     + f" | {', '.join(beyond)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the folder tools/gate_ablation.sh wrote")
    out = Path(p.parse_args(argv).out)
    reports = read_reports(out)
    print(scores_table(reports, out) + "\n\n" + seed_table(reports) + "\n\n" + difference_table(reports))


if __name__ == "__main__":
    run_cli(main)
