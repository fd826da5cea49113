"""Test helpers: counting Dask computes (laziness is a tested property)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np


class ComputeCounter:
    """A Dask scheduler that counts how often it is asked to compute."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.count += 1
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def count_computes() -> Iterator[ComputeCounter]:
    """Within the block, every ``compute`` goes through a counting synchronous scheduler."""
    counter = ComputeCounter()
    with dask.config.set(scheduler=counter):
        yield counter


def raise_on_compute(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """A Dask scheduler that fails the test: use where nothing may compute."""
    raise AssertionError("a Dask computation was triggered where none was expected")


@contextlib.contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail the test if anything computes inside the block (as xarray's helper)."""
    with dask.config.set(scheduler=raise_on_compute):
        yield


def block_mean(data: np.ndarray, affine: np.ndarray, target_mm: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Average (x, y, z, t) data over blocks of about ``target_mm`` (whole voxels per axis);
    the affine of the block grid (voxel centres at the blocks' centres)."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    f = np.maximum(1, np.round(target_mm / zooms)).astype(int)
    shape = [data.shape[i] // f[i] for i in range(3)]
    cut = data[: shape[0] * f[0], : shape[1] * f[1], : shape[2] * f[2]]
    out = cut.reshape(shape[0], f[0], shape[1], f[1], shape[2], f[2], -1).mean(axis=(1, 3, 5))
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * f
    new[:3, 3] = affine[:3, :3] @ ((f - 1) / 2.0) + affine[:3, 3]
    return out.astype(np.float32), new
