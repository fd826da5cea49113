"""Tests for neuroscale.testing: planted structure, header, streaming memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuroscale.errors import ConfigurationError
from neuroscale.testing import (
    SyntheticTruth,
    make_network_timeseries,
    synthetic_series,
    write_synthetic_bold,
)


def _corr(x: np.ndarray) -> np.ndarray:
    """Plain Pearson correlation of the columns of a small (T, n) array, float64."""
    x = x.astype(np.float64)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    return z.T @ z / x.shape[0]


def _pair_means(data_tn: np.ndarray, truth: SyntheticTruth, n_per: int = 150):
    lab = truth.labels_in_mask
    within, across = [], []
    picks = [np.flatnonzero(lab == k)[:n_per] for k in range(1, truth.n_networks + 1)]
    for k, idx in enumerate(picks):
        c = _corr(data_tn[:, idx])
        within.append(c[np.triu_indices(len(idx), 1)].mean())
        other = picks[(k + 1) % len(picks)]
        across.append(_corr(data_tn[:, np.r_[idx, other]])[: len(idx), len(idx):].mean())
    noise = np.flatnonzero(lab == 0)[:n_per]
    c = _corr(data_tn[:, noise])
    return np.array(within), np.array(across), c[np.triu_indices(len(noise), 1)].mean()


def test_make_network_timeseries_orthonormal_and_band_limited() -> None:
    s = make_network_timeseries(300, 5, seed=3, t_r=2.0)
    assert s.shape == (300, 5)
    np.testing.assert_allclose(s.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(s.T @ s / 300, np.eye(5), atol=1e-10)
    spec = np.abs(np.fft.rfft(s, axis=0)) ** 2
    f = np.fft.rfftfreq(300, 2.0)
    out_band = (f < 0.01) | (f > 0.1)
    assert spec[out_band].sum() < 1e-10 * spec.sum()
    # too short for the band: falls back to white noise, still orthonormal
    s2 = make_network_timeseries(8, 3, seed=0)
    np.testing.assert_allclose(s2.T @ s2 / 8, np.eye(3), atol=1e-10)
    with pytest.raises(ConfigurationError):
        make_network_timeseries(3, 3)


@pytest.mark.parametrize(("suffix", "dtype"), [(".nii.gz", "int16"), (".nii", "float32")])
def test_written_file_has_planted_structure(tmp_path: Path, suffix: str, dtype: str) -> None:
    path = tmp_path / f"bold{suffix}"
    truth = write_synthetic_bold(path, (24, 28, 20, 400), t_r=1.5, within_corr=0.4,
                                 dtype=dtype, seed=7, block_volumes=33)
    img = nib.load(path)
    assert img.shape == (24, 28, 20, 400)
    assert img.get_data_dtype() == np.dtype(dtype)
    assert img.header.get_zooms() == pytest.approx((3.0, 3.0, 3.0, 1.5))
    assert img.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(img.affine, truth.affine)
    if dtype == "int16":
        assert img.dataobj.slope == pytest.approx(truth.scl_slope)
        assert truth.scl_slope != 1.0
    data = np.asarray(img.dataobj, dtype=np.float32)
    x = data[truth.mask].T
    # intensities: brain ~ baseline, background ~ 2 % of it
    assert abs(x.mean() - 1000.0) < 2.0
    assert abs(data[~truth.mask].mean() - 20.0) < 2.0
    within, across, noise = _pair_means(x, truth)
    # mean of ~11k pairwise r per network: sd of the mean ~ 0.05 / sqrt(150) ~ 0.005
    np.testing.assert_allclose(within, 0.4, atol=0.03)
    np.testing.assert_allclose(across, 0.0, atol=0.03)
    assert abs(noise) < 0.03
    # the file holds the in-memory model's values (same seed), up to int16 quantisation
    series, truth2 = synthetic_series(400, (24, 28, 20), t_r=1.5, within_corr=0.4, seed=7)
    np.testing.assert_array_equal(truth2.labels, truth.labels)
    ref = series.data.compute()
    tol = truth.scl_slope if dtype == "int16" else 1e-3
    np.testing.assert_allclose(x, ref, atol=tol)


def test_truth_expected_degree() -> None:
    series, truth = synthetic_series(50, (20, 22, 16), n_networks=3, within_corr=0.6)
    sizes = truth.network_sizes()
    assert sizes.sum() == truth.mask.sum() == series.n_voxels
    assert (sizes[1:] > 10).all()
    lab = truth.labels_in_mask
    deg = truth.expected_degree(0.25)
    np.testing.assert_array_equal(deg[lab == 0], 0)
    for k in range(1, 4):
        np.testing.assert_array_equal(deg[lab == k], sizes[k] - 1)
    np.testing.assert_allclose(truth.expected_degree(0.25, weighted=True), deg * 0.6)
    assert not truth.expected_degree(0.7).any()
    cm = truth.correlation_matrix()
    assert cm.shape == (4, 4) and cm[2, 2] == 0.6 and cm[1, 2] == 0 and cm[0, 0] == 0
    assert truth.expected_correlation(np.array([1, 1]), np.array([1, 2])).tolist() == [0.6, 0.0]


def test_synthetic_series_structure_and_chunks() -> None:
    series, truth = synthetic_series(500, (20, 22, 16), within_corr=0.5, seed=2)
    assert series.data.dtype == np.float32
    assert series.t_r == 2.0
    assert len(series.data.chunks[0]) == 1
    # default chunks are slabs of whole x-planes
    per_x = truth.mask.reshape(20, -1).sum(axis=1)
    edges = np.cumsum(per_x)
    assert set(np.cumsum(series.data.chunks[1])) <= set(edges.tolist())
    within, across, noise = _pair_means(series.data.compute(), truth)
    np.testing.assert_allclose(within, 0.5, atol=0.03)
    np.testing.assert_allclose(across, 0.0, atol=0.03)
    assert abs(noise) < 0.03
    # a given mask is used as is
    mask = np.zeros((10, 10, 10), bool)
    mask[2:8, 3:9, 1:9] = True
    s2, t2 = synthetic_series(20, mask, chunks=50)
    assert s2.n_voxels == mask.sum() and np.array_equal(t2.mask, mask)
    assert s2.data.chunks[1][0] == 50


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        write_synthetic_bold(tmp_path / "x.nii.gz", (8, 8, 8, 10), within_corr=1.0)
    with pytest.raises(ConfigurationError):
        write_synthetic_bold(tmp_path / "x.mgz", (8, 8, 8, 10))
    with pytest.raises(ConfigurationError):
        write_synthetic_bold(tmp_path / "x.nii", (8, 8, 8, 10), dtype="uint8")
    assert not list(tmp_path.iterdir())


def test_streaming_write_memory_is_small(tmp_path: Path) -> None:
    shape = (60, 60, 40, 600)
    full_bytes = int(np.prod(shape)) * 2  # the whole int16 run: 173 MB
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        write_synthetic_bold(tmp_path / "big.nii.gz", shape, block_volumes=50)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # one 50-volume int16 block is 14.4 MB; allow generous slack but far below the full run
    assert peak < 50e6, peak
    assert peak < full_bytes / 3
    img = nib.load(tmp_path / "big.nii.gz")
    assert img.shape == shape
    last = np.asarray(img.dataobj[..., -1])
    assert np.isfinite(last).all() and last.std() > 0
