"""The training library: what ``solver.py`` builds a run from, starting with its settings (:mod:`.config`)."""
