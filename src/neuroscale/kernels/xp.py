"""The array namespace of a block: one kernel, run by NumPy, CuPy or any array-API library.

Kernels in :mod:`neuroscale.kernels` take the namespace of their input
(``array_api_compat.array_namespace``, the Python array API standard,
https://data-apis.org/array-api/) instead of calling ``numpy`` directly, so that a CuPy block
on a GPU worker is reduced on that GPU, and a NumPy block exactly as before.  The few
operations outside the standard (``einsum``, ``nan_to_num``) go through the helpers here,
which use the library's own function where it has one (NumPy and CuPy do) and the standard's
composition otherwise (``array_api_strict`` in the tests).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_cupy_namespace, is_numpy_namespace

__all__ = ["array_namespace", "asarray_like", "device", "is_cupy_namespace", "is_gpu",
           "nan_to_num", "sum_of_squares", "to_numpy"]


def sum_of_squares(xp: Any, x: Any) -> Any:
    """Column sums of squares of a 2D array, ``(n, m) -> (m,)`` in ``x``'s dtype.

    ``einsum("ij,ij->j")`` where the library has it (one pass, no ``x * x`` temporary: the
    NumPy path's numbers are those of the kernels before they took a namespace), else
    ``sum(x * x, axis=0)``.
    """
    einsum = getattr(xp, "einsum", None)
    if einsum is not None:
        return einsum("ij,ij->j", x, x)
    return xp.sum(x * x, axis=0)


def nan_to_num(xp: Any, x: Any) -> Any:
    """``numpy.nan_to_num``: NaN -> 0, +-inf -> the dtype's largest finite value."""
    fn = getattr(xp, "nan_to_num", None)
    if fn is not None:
        return fn(x)
    big = xp.finfo(x.dtype).max
    x = xp.where(xp.isnan(x), xp.zeros_like(x), x)
    return xp.clip(x, -big, big)


def asarray_like(values: Any, like: Any, dtype: Any = None) -> Any:
    """``values`` (NumPy or a Python scalar/sequence) as an array of ``like``'s library and
    device (a small constant: a design matrix, a seed time series)."""
    xp = array_namespace(like)
    return xp.asarray(values, dtype=dtype, device=device(like))


def is_gpu(x: Any) -> bool:
    """``x`` is a CuPy array (its kernels run on the GPU)."""
    return bool(is_cupy_namespace(array_namespace(x)))


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of an array of any supported library (a no-op view for NumPy)."""
    xp = array_namespace(x)
    if is_numpy_namespace(xp):
        return np.asarray(x)
    if is_cupy_namespace(xp):
        return np.asarray(x.get())
    return np.from_dlpack(x)  # a CPU array of another library (array_api_strict)
