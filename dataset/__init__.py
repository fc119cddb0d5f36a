"""Data handling: image I/O, MATLAB-style resize, test-set layouts and the HDF5 training set."""
