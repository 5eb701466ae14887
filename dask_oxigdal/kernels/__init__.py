"""Private numba kernels: pure functions over numpy arrays, wrapped by the public modules."""
