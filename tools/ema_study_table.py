"""The markdown tables of the EMA study (tools/ema_study.sh) from its sample.py reports.

    python -m tools.ema_study_table runs/ema_study > table.md

Reads OUT/eval/<prefix>_ema<digits>_s<seed>_<ema|raw>.json. A run's raw weights are the "no EMA" result of its
seed (the average never feeds back into training), so each seed has one raw score per decay run: the table
says whether they agree, and uses the first.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from dsrnet.cli import run_cli
from dsrnet.errors import InputError

SETS = ("Set5", "Set14")
NAME = re.compile(r"(?P<prefix>[a-z]+)_ema(?P<decay>\d+)_s(?P<seed>\d+)_(?P<weights>ema|raw)")


def read_scores(out: Path) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """{prefix: {recipe: {seed: {set: PSNR}}}}; recipe 'raw' (no EMA) or 'ema 0.<digits>'. Raw scores of one seed
    that differ between its decay runs are refused: the trajectory would not be the same."""
    found: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted((out / "eval").glob("*.json")):
        m = NAME.fullmatch(path.stem)
        if not m:
            continue
        report = json.loads(path.read_text())
        scored = report.get("settings", {}).get("weights")
        if scored != m["weights"]:  # the name says which weights; the report says which sample.py scored
            raise InputError(f"{path.name} is named for the {m['weights']} weights, but its report scored "
                             f"{scored or 'unrecorded'} weights: rename it or score it again with --weights")
        psnr = {r["dataset"]: r["psnr"] for r in report["results"]}
        recipe = "raw" if m["weights"] == "raw" else f"ema 0.{m['decay']}"
        seed = int(m["seed"])
        earlier = found[m["prefix"]][recipe].get(seed)
        if earlier is not None and earlier != psnr:
            raise InputError(f"{path.name}: the raw weights of seed {seed} score {psnr} here and {earlier} in another "
                             "decay's run; the runs did not train the same trajectory")
        found[m["prefix"]][recipe][seed] = psnr
    if not found:
        raise InputError(f"no reports in {out / 'eval'}: run tools/ema_study.sh {out} eval-ft (or eval-scratch) first")
    return found


def spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def study_table(recipes: dict[str, dict[int, dict[str, float]]]) -> str:
    """Mean PSNR and seed spread per recipe, and each EMA against the raw weights of the same seeds: the mean
    difference, the same-seed differences, and whether the difference exceeds the larger seed spread."""
    lines = ["| weights | seeds | " + " | ".join(f"{s} PSNR mean (spread)" for s in SETS)
             + " | " + " | ".join(f"{s} − raw: mean, per seed, beyond spread?" for s in SETS) + " |",
             "|---|---|" + "---|" * (2 * len(SETS))]
    raw = recipes.get("raw", {})
    for recipe in ["raw"] + sorted((r for r in recipes if r != "raw"), reverse=True):
        seeds = sorted(recipes[recipe])
        cells, diffs = [], []
        for s in SETS:
            values = [recipes[recipe][k][s] for k in seeds]
            cells.append(f"{statistics.mean(values):.4f} ({spread(values):.3f})")
            common = [k for k in seeds if k in raw]
            if recipe == "raw" or not common:
                diffs.append("–")
                continue
            d = [recipes[recipe][k][s] - raw[k][s] for k in common]
            bound = max(spread([recipes[recipe][k][s] for k in common]), spread([raw[k][s] for k in common]))
            beyond = "one seed, no spread" if len(common) < 2 else ("yes" if abs(statistics.mean(d)) > bound else "no")
            diffs.append(f"{statistics.mean(d):+.4f}, {' / '.join(f'{x:+.3f}' for x in d)}, {beyond}")
        lines.append(f"| {recipe} | {len(seeds)} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the OUT folder of tools/ema_study.sh")
    cfg = p.parse_args(argv)
    for prefix, recipes in sorted(read_scores(Path(cfg.out)).items()):
        print(f"### {prefix}\n\n{study_table(recipes)}\n")


if __name__ == "__main__":
    run_cli(main)
