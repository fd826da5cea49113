"""Test helpers: counting Dask computes (laziness is a tested property)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask


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
