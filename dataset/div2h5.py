"""Pack training images into one HDF5 file, in the format of the authors' ``div2h5.py``: the command line of
:mod:`dsrnet.data.pack` (the format, the two sources and what a failed run leaves are described there).

Run it as the README does (``cd dataset && python div2h5.py``) or from the repository
root (``python dataset/div2h5.py``).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __name__ == "__main__":  # run as a script, maybe from dataset/: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsrnet.cli import HelpFormatter, run_cli
from dsrnet.data.pack import check_scales, pack_div2k, pack_hr_folder
from dsrnet.errors import InputError
from model import SCALES


# --------------------------------------------------------------------------- CLI

def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pack DIV2K (or any folder of HR images with --hr_dir) into an HDF5 "
                    "training file in the authors' format.", formatter_class=HelpFormatter)
    parser.add_argument("--dataset_dir", default="DIV2K",
                        help="folder holding DIV2K_{type}_HR and DIV2K_{type}_LR_bicubic")
    parser.add_argument("--dataset_type", default="train", choices=("train", "valid"),
                        help="which DIV2K split to pack: its 800 training or 100 validation images")
    parser.add_argument("--hr_dir", default=None,
                        help="pack this folder of HR images instead, making LR with MATLAB-style bicubic")
    parser.add_argument("--output", default=None,
                        help="output file (default: DIV2K_{type}.h5, or HR_DIR_NAME.h5 with --hr_dir)")
    parser.add_argument("--scales", type=int, nargs="+", default=list(SCALES),
                        help="the LR groups X{s} to store beside HR; training at scale s needs X{s}")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="images decoded in parallel (default: CPU cores, at most 8)")
    parser.add_argument("--compression", default="none", choices=("none", "gzip", "lzf"),
                        help="HDF5 compression; none (the authors' choice) reads fastest")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.workers < 1:
        raise InputError(f"--workers {args.workers} must be at least 1")
    compression = None if args.compression == "none" else args.compression
    if args.hr_dir is not None:
        output = Path(args.output or f"{Path(args.hr_dir).resolve().name}.h5")
        n = pack_hr_folder(args.hr_dir, output, args.scales, args.workers, compression)
    else:
        output = Path(args.output or f"DIV2K_{args.dataset_type}.h5")
        n = pack_div2k(args.dataset_dir, output, args.dataset_type, args.scales, args.workers,
                       compression)
    groups = " ".join(f"X{s}" for s in check_scales(args.scales))
    print(f"wrote {output}: {n} images, groups HR {groups}, "
          f"{output.stat().st_size / 2**30:.2f} GiB")


if __name__ == "__main__":
    run_cli(main)
