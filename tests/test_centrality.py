"""Degree centrality (tile by tile) against a full-matrix numpy reference and planted truth."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from tests.utils import raise_on_compute

from neuroscale.analysis.centrality import default_block_size, degree_centrality
from neuroscale.errors import AnalysisError, ConfigurationError
from neuroscale.image import Series, open_image
from neuroscale.testing import synthetic_series


def _full_r(x: np.ndarray) -> np.ndarray:
    """Full Pearson matrix in float64 via z-scored products (small N only)."""
    x = x.astype(np.float64)
    z = x - x.mean(axis=0)
    norm = np.sqrt((z**2).sum(axis=0))
    z = z / np.where(norm > 0, norm, np.inf)
    return z.T @ z


def _check_against_reference(r: np.ndarray, dcb: np.ndarray, dcw: np.ndarray,
                             thr: float) -> None:
    """C-PAC definitions; pairs within 2e-6 of the threshold may go either way (float32)."""
    np.fill_diagonal(r, -np.inf)
    eps = 2e-6  # float32 GEMM of unit vectors: |error| ~ 1e-7 sqrt(T)
    lo_b = (r > thr + eps).sum(axis=1)
    hi_b = (r > thr - eps).sum(axis=1)
    lo_w = np.where(r > thr + eps, r, 0).sum(axis=1)
    hi_w = np.where(r > thr - eps, r, 0).sum(axis=1)
    assert np.all(dcb >= lo_b) and np.all(dcb <= hi_b)
    tol = 1e-4 * np.maximum(np.abs(hi_w), 1.0)
    assert np.all(dcw >= np.minimum(lo_w, hi_w) - tol)
    assert np.all(dcw <= np.maximum(lo_w, hi_w) + tol)
    # almost everywhere there is no borderline pair: exact agreement there
    exact = lo_b == hi_b
    assert exact.mean() > 0.9
    np.testing.assert_array_equal(dcb[exact], lo_b[exact])
    np.testing.assert_allclose(dcw[exact], lo_w[exact], rtol=1e-4, atol=1e-4)


def test_small_case_matches_full_matrix_and_is_lazy() -> None:
    series, _ = synthetic_series(150, (12, 14, 10), within_corr=0.4, chunks=130, seed=3)
    with dask.config.set(scheduler=raise_on_compute):
        dcb, dcw = degree_centrality(series, threshold=0.2, block_size=97)
    assert dcb.shape == dcw.shape == (series.n_voxels,)
    assert dcb.dtype == dcw.dtype == np.float32
    # only the symmetric half of the tiles is formed
    nb = -(-series.n_voxels // 97)
    graph = dict(dcb.__dask_graph__())
    n_tiles = sum(1 for k in graph if "_tile_one_blas_thread" in str(k))
    assert n_tiles == nb * (nb + 1) // 2
    got_b, got_w = dask.compute(dcb, dcw)
    r = _full_r(series.data.compute())
    _check_against_reference(r, got_b, got_w, 0.2)
    # negative threshold and one block give the same definitions
    b2, w2 = dask.compute(*degree_centrality(series, threshold=-0.05))
    _check_against_reference(_full_r(series.data.compute()), b2, w2, -0.05)


def test_planted_networks_have_their_expected_degree() -> None:
    series, truth = synthetic_series(300, (16, 18, 12), within_corr=0.5, seed=11)
    dcb, dcw = dask.compute(*degree_centrality(series, block_size=500))
    lab = truth.labels_in_mask
    exp_b = truth.expected_degree(0.25)
    exp_w = truth.expected_degree(0.25, weighted=True)
    net = lab > 0
    assert net.sum() > 50
    # network voxels: all n_k - 1 network partners pass r > 0.25 (r ~ 0.5 +- 0.04)
    np.testing.assert_allclose(dcb[net], exp_b[net], rtol=0.02, atol=1)
    np.testing.assert_allclose(dcw[net], exp_w[net], rtol=0.15)  # voxel-wise sampling noise
    assert dcw[net].mean() == pytest.approx(exp_w[net].mean(), rel=0.02)
    # others: only chance edges (r > 0.25 is > 4 sd of the null with 300 time points)
    assert dcb[~net].mean() < 0.02 * dcb[net].mean()
    assert dcb[net].min() > dcb[~net].max()


def test_default_block_size_and_errors() -> None:
    assert default_block_size(1200) == 4096  # 4096**2 float32 = 64 MiB
    assert default_block_size(10000) == 64 * 2**20 // 40000
    assert default_block_size(156) ** 2 * 4 <= 64 * 2**20
    x = da.from_array(np.ones((2, 8), np.float32), chunks=(2, 4))
    s = Series(data=x, mask=np.ones((2, 2, 2), bool), affine=np.eye(4))
    with pytest.raises(AnalysisError):
        degree_centrality(s)
    series, _ = synthetic_series(10, (6, 6, 6), n_networks=1)
    with pytest.raises(ConfigurationError):
        degree_centrality(series, threshold=1.0)
    with pytest.raises(ConfigurationError):
        degree_centrality(series, block_size=0)


def test_real_run_sub_mask(studyforrest_bold: Path, cache_dir: Path) -> None:
    from nilearn.masking import compute_epi_mask

    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    mean = img.mean().compute_volume()
    mask = compute_epi_mask(nib.Nifti1Image(mean, img.affine)).get_fdata().astype(bool)
    sub = mask.copy()
    sub[:38] = False
    sub[42:] = False  # 4 central x-planes, a few thousand voxels
    series = img.to_series(sub)
    assert 1000 < series.n_voxels < 8000
    with dask.config.set(scheduler=raise_on_compute):
        dcb, dcw = degree_centrality(series, block_size=1000)
    got_b, got_w = dask.compute(dcb, dcw)
    data = np.asarray(nib.load(studyforrest_bold).dataobj, dtype=np.float32)
    r = _full_r(data[sub].T)
    _check_against_reference(r, got_b, got_w, 0.25)
