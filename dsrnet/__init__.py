"""Library code shared by the entry points: metrics, evaluation, provenance, errors, training-run plumbing.

The network itself lives in ``model/`` (self-contained: it depends on torch alone), and image I/O,
MATLAB-style resizing and dataset layouts in ``dataset/``.
"""
