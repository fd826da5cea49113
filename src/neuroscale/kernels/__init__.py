"""Pure per-chunk NumPy kernels: no Dask, no I/O, no globals."""
