"""Library code shared by the entry points: metrics, evaluation, provenance, errors, training-run plumbing.

The network itself lives in ``model/`` (self-contained: it depends on torch alone), and image I/O,
MATLAB-style resizing and dataset layouts in ``dataset/``.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where checkpoint/README.md tells users to put the authors' released x2 weights: every tool's default.
AUTHORS_WEIGHTS = ROOT / "checkpoint" / "DSRNet_x2_600000.pth"
