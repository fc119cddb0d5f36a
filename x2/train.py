"""Train DSRNet x2, e.g. the paper's run (from the repository root):

    python x2/train.py --patch_size 64 --batch_size 64 --max_steps 600000 --decay 400000 \\
        --model dsrnet --ckpt_name dsrnet_x2 --ckpt_dir checkpoint/dsrnet_x2 --scale 2 --num_gpu 1

Flags: `python x2/train.py --help`; the loop lives in solver.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver import main  # noqa: E402

if __name__ == "__main__":
    main(default_scale=2)
