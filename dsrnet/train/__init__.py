"""The training library: what a run is made of, apart from its loop (``solver.py``).

Settings (``config``), loss, schedules, validation, checkpoints and resuming, the run folder's lock and
log, DDP, RNG states and the averaged weights. Imports ``model`` and the rest of ``dsrnet`` only.
"""
