"""The data folder: training files, test sets and ``div2h5.py``, the packing command line (code in dsrnet/data)."""
