"""The Series read from a Zarr working copy and the Series written to Zarr: same numbers,
slab chunks kept, and memory bounded by a few chunks, not by the run."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest
import zarr

import neuroscale.image as image_mod
from neuroscale.analysis.parcellate import SUM_COLUMNS, _parcel_sums_kernel
from neuroscale.image import _mask_slab, open_image, series_store_width
from neuroscale.io.zarr_cache import ingest_nifti
from neuroscale.testing import write_synthetic_bold


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    root = tmp_path_factory.mktemp("series_store")
    path = root / "run_bold.nii.gz"
    truth = write_synthetic_bold(path, shape=(18, 20, 14, 90), seed=3)
    return path, root / "cache", truth.mask


def _reference(path: Path, mask: np.ndarray) -> np.ndarray:
    """(t, voxel) in-mask values straight from nibabel (float64, scaling applied)."""
    data = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float64)
    return data[mask].T


@pytest.mark.parametrize("direct", [True, False], ids=["direct-shards", "through-zarr"])
@pytest.mark.parametrize("read_block_bytes", [1, 40_000, 2**40])
def test_series_from_store_equals_nibabel(run: tuple[Path, Path, np.ndarray],
                                          read_block_bytes: int, direct: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading each slab in one or many time blocks, through zarr or straight from the shards,
    gives nibabel's scaled values."""
    path, cache, mask = run
    monkeypatch.setitem(dask.config.config.setdefault("neuroscale", {}), "read-block-bytes", read_block_bytes)
    monkeypatch.setitem(dask.config.config["neuroscale"], "direct-reads", direct)
    img = open_image(path, cache_dir=cache)
    series = img.to_series(mask)
    # one chunk per stored x-slab holding in-mask voxels, all time points in each
    assert img._raw_txyz is not None
    edges = np.cumsum((0, *img._raw_txyz.chunks[1]))
    counts = [int(mask[a:b].sum()) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    assert len(counts) > 2
    assert series.data.chunks == ((90,), tuple(c for c in counts if c))
    got = series.data.compute()
    assert got.dtype == np.float32
    ref = _reference(path, mask)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-4)


def test_mask_slab_matches_boolean_indexing() -> None:
    """More volumes than one masking block, with slope and intercept."""
    rng = np.random.default_rng(0)
    block = rng.integers(-300, 3000, size=(image_mod._MASK_ROWS * 2 + 7, 3, 5, 4)).astype(
        np.int16)
    mask_slab = rng.random((3, 5, 4)) < 0.6
    got = _mask_slab(block, mask_slab, 0.5, 10.0)
    ref = block.reshape(block.shape[0], -1)[:, mask_slab.reshape(-1)].astype(np.float32)
    ref = ref * np.float32(0.5) + np.float32(10.0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_to_zarr_round_trip_keeps_values_and_slab_chunks(
        run: tuple[Path, Path, np.ndarray], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path, cache, mask = run
    series = open_image(path, cache_dir=cache).to_series(mask)
    # narrow stored chunks: several per slab for this small run
    monkeypatch.setitem(dask.config.config.setdefault("neuroscale", {}), "series-store-chunk-bytes", 90 * 4 * 100)
    back = series.to_zarr(tmp_path / "den.zarr")
    assert back.data.chunks == series.data.chunks
    stored = zarr.open_array(str(tmp_path / "den.zarr"), mode="r")
    width = series_store_width(90, series.n_voxels)
    assert width == 100
    assert stored.chunks == (90, width)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(back.data.compute(), series.data.compute())


def test_to_zarr_holds_a_few_chunks_not_the_run(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading, masking and writing a Series: the traced peak is about two slab chunks (the
    one being split into stored chunks and its neighbour), with small reads and writes, not
    the run (synchronous scheduler: one task at a time)."""
    monkeypatch.setitem(dask.config.config.setdefault("neuroscale", {}), "read-block-bytes", 2**18)
    monkeypatch.setitem(dask.config.config["neuroscale"], "series-store-chunk-bytes", 2**18)
    path = tmp_path / "big_bold.nii.gz"
    truth = write_synthetic_bold(path, shape=(48, 40, 30, 150), seed=4)
    # a working copy in shards of 10 volumes (as an HCP-sized run gets 18), so that a slab
    # can be read in several time blocks; open_image reuses it
    ingest_nifti(path, tmp_path / "cache", t_chunk=10)
    series = open_image(path, cache_dir=tmp_path / "cache").to_series(truth.mask)
    total = series.data.nbytes
    biggest = 4 * 150 * max(series.data.chunks[1])
    assert len(series.data.chunks[1]) >= 8
    with dask.config.set(scheduler="synchronous"):
        tracemalloc.start()
        try:
            series.to_zarr(tmp_path / "den.zarr")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    print(f'traced peak {peak / 1e6:.2f} MB, biggest chunk {biggest / 1e6:.2f} MB, '
          f'data {total / 1e6:.2f} MB')
    assert peak < 3.5 * biggest
    assert peak < 0.6 * total


@pytest.mark.parametrize("n_voxels", [7, SUM_COLUMNS, 2 * SUM_COLUMNS + 333])
def test_parcel_sums_kernel_in_pieces_equals_loop(n_voxels: int) -> None:
    rng = np.random.default_rng(n_voxels)
    block = rng.standard_normal((50, n_voxels)).astype(np.float32)
    columns = rng.integers(-1, 12, n_voxels)
    ref = np.zeros((50, 15))
    for v in range(n_voxels):
        if columns[v] >= 0:
            ref[:, columns[v]] += block[:, v].astype(np.float64)
    got = _parcel_sums_kernel(block, columns, 15)
    assert got.shape == (50, 15) and got.dtype == np.float64 and got.flags.c_contiguous
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9)
    none = _parcel_sums_kernel(block, np.full(n_voxels, -1), 15)
    assert none.shape == (50, 15) and not none.any()
