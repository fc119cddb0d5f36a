"""Data handling: image files, MATLAB-style resize, test-set layouts, the HDF5 training set and its packing."""
