"""GPUs: find one, move a Dask array's chunks onto it and back.

The kernels of :mod:`neuroscale.kernels` take the array namespace of their block
(:mod:`neuroscale.kernels.xp`), so a graph whose chunks are CuPy arrays runs them on the GPU
that holds the chunk; nothing else about the graph changes.  :func:`to_device` is the one
place where chunks move to the GPU (one host-to-device copy per chunk, inside the task that
uses it) and :func:`to_host` the one place where they come back (maps are written from the
host).  Without a GPU the kernels' array-API paths are tested under ``array_api_strict``
(tests/test_kernels_array_api.py); these two functions run only where CuPy is.

Install: ``pip install "neuroscale[gpu]"`` (CuPy for CUDA 12, dask-cuda).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import dask.array as da
import numpy as np

from neuroscale.errors import ConfigurationError
from neuroscale.kernels.xp import to_numpy

__all__ = ["GPUInfo", "gpu_info", "require_gpu", "to_device", "to_host"]


@dataclass(frozen=True)
class GPUInfo:
    """What :func:`gpu_info` found.

    Attributes
    ----------
    count : int
        CUDA devices visible to this process.
    name : str
        Device 0's name (``"NVIDIA H200"``), or ``""``.
    memory_bytes : int
        Device 0's memory, bytes.
    library : str
        ``"cupy <version>"``.
    """

    count: int
    name: str
    memory_bytes: int
    library: str

    def describe(self) -> str:
        """One line for the terminal: ``1 x NVIDIA H200 (140 GiB), cupy 13.3.0``."""
        return (f"{self.count} x {self.name} ({self.memory_bytes / 2**30:.0f} GiB), "
                f"{self.library}")


def gpu_info() -> GPUInfo | None:
    """The CUDA devices CuPy sees, or ``None`` (CuPy missing, no driver, no device)."""
    try:
        cupy = importlib.import_module("cupy")
        count = int(cupy.cuda.runtime.getDeviceCount())
        if count < 1:
            return None
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return GPUInfo(count=count, name=name, memory_bytes=int(props["totalGlobalMem"]),
                       library=f"cupy {cupy.__version__}")
    except Exception:  # ImportError, CUDARuntimeError (no driver / no device)
        return None


def require_gpu() -> GPUInfo:
    """:func:`gpu_info`, or one clear error.

    Raises
    ------
    ConfigurationError
        No CUDA GPU is usable here (CuPy not installed, or no device / driver).
    """
    info = gpu_info()
    if info is not None:
        return info
    try:
        importlib.import_module("cupy")
    except ImportError:
        raise ConfigurationError(
            "--gpu: CuPy is not installed (pip install 'neuroscale[gpu]')") from None
    raise ConfigurationError("--gpu: no CUDA GPU is visible to this process "
                             "(CuPy found no device or no driver)")


def to_device(data: da.Array) -> da.Array:
    """``data`` with every chunk moved to the GPU (lazily: one copy per chunk, in its task).

    Parameters
    ----------
    data : dask array of NumPy chunks

    Returns
    -------
    dask array
        Same shape, chunks and dtype; chunks are CuPy arrays.

    Raises
    ------
    ImportError
        CuPy is not installed (check first with :func:`require_gpu`).
    """
    cupy = importlib.import_module("cupy")
    meta = cupy.empty((0,) * data.ndim, dtype=data.dtype)
    moved: da.Array = da.map_blocks(cupy.asarray, data, dtype=data.dtype, meta=meta)
    return moved


def to_host(data: da.Array) -> da.Array:
    """``data`` with every chunk copied back to a NumPy array (lazily).

    Parameters
    ----------
    data : dask array of CuPy (or other array-API) chunks

    Returns
    -------
    dask array of NumPy chunks, same shape, chunks and dtype.
    """
    back: da.Array = da.map_blocks(to_numpy, data, dtype=data.dtype,
                                   meta=np.empty((0,) * data.ndim, dtype=data.dtype))
    return back
