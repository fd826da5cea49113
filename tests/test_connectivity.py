"""Tests for neuroscale.analysis.connectivity: correlation matrices, Fisher z, TSV writers."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neuroscale.analysis.connectivity import (
    correlation_matrices,
    fisher_z,
    usable_columns,
)
from neuroscale.bids.tables import write_relmat_tsv, write_timeseries_tsv
from neuroscale.errors import AnalysisError

RTOL = 1e-4


def _gaussian(n_t: int, precision: np.ndarray, seed: int = 0) -> np.ndarray:
    """Samples with a known precision matrix (hence known partial correlations)."""
    cov = np.linalg.inv(precision)
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(np.zeros(len(cov)), cov, size=n_t)
    return x * np.arange(1, len(cov) + 1) * 10 + 500  # parcel-specific units and offsets


def _chain_precision(n: int) -> np.ndarray:
    """A tridiagonal precision: partial correlation 0.4 between neighbours, 0 elsewhere."""
    prec = np.eye(n)
    for i in range(n - 1):
        prec[i, i + 1] = prec[i + 1, i] = -0.4
    return prec


def _ledoit_wolf_by_hand(x: np.ndarray) -> np.ndarray:
    """Ledoit & Wolf (2004) shrunk covariance of centred data, written out in NumPy.

    S = X'X / n, mu = tr(S) / p, target mu I; shrinkage = min(b2, d2) / d2 with
    d2 = ||S - mu I||_F^2 and b2 = (1/n^2) sum_k ||x_k x_k' - S||_F^2 (Frobenius norms; the
    common 1/p factor of the paper cancels in the ratio).
    """
    n, p = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    d2 = np.sum((s - mu * np.eye(p)) ** 2)
    b2 = sum(np.sum((np.outer(row, row) - s) ** 2) for row in xc) / n**2
    shrink = min(b2, d2) / d2
    return (1 - shrink) * s + shrink * mu * np.eye(p)


def _partial_from_cov(cov: np.ndarray) -> np.ndarray:
    prec = np.linalg.inv(cov)
    d = np.sqrt(np.diag(prec))
    partial = -prec / np.outer(d, d)
    np.fill_diagonal(partial, 1.0)
    return partial


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)


def test_pearson_is_numpy_corrcoef():
    x = _gaussian(300, _chain_precision(8))
    out = correlation_matrices(x)
    np.testing.assert_allclose(out["pearson"], np.corrcoef(x.T), rtol=1e-10, atol=1e-12)
    assert out["pearson"].dtype == np.float64
    np.testing.assert_array_equal(out["pearson"], out["pearson"].T)


def test_partial_ledoit_wolf_matches_independent_computation():
    x = _gaussian(120, _chain_precision(12), seed=1)
    out = correlation_matrices(x)  # default: Ledoit-Wolf on z-scored columns
    expected = _partial_from_cov(_ledoit_wolf_by_hand(_zscore(x)))
    np.testing.assert_allclose(out["partial"], expected, rtol=RTOL, atol=1e-6)
    np.testing.assert_array_equal(out["partial"], out["partial"].T)
    # units do not matter (we z-score before the scale-dependent shrinkage)
    rescaled = correlation_matrices(x * np.geomspace(1e-3, 1e3, 12))
    np.testing.assert_allclose(rescaled["partial"], out["partial"], rtol=1e-8, atol=1e-10)


def test_partial_empirical_matches_inverse_covariance_and_ground_truth():
    prec = _chain_precision(6)
    x = _gaussian(20000, prec, seed=2)
    out = correlation_matrices(x, partial_estimator="empirical")
    expected = _partial_from_cov(np.cov(x.T))
    np.testing.assert_allclose(out["partial"], expected, rtol=RTOL, atol=1e-8)
    truth = _partial_from_cov(np.linalg.inv(prec))
    np.testing.assert_allclose(out["partial"], truth, atol=0.03)  # sampling error ~ 1/sqrt(n)


def test_nan_and_constant_columns_are_excluded_and_put_back():
    x = _gaussian(200, _chain_precision(5), seed=3)
    full = np.column_stack([x[:, :2], np.full(200, np.nan), x[:, 2:], np.full(200, 7.0)])
    np.testing.assert_array_equal(usable_columns(full), [1, 1, 0, 1, 1, 1, 0])
    out = correlation_matrices(full)
    sub = correlation_matrices(x)
    keep = [0, 1, 3, 4, 5]
    for key in ("pearson", "partial"):
        assert out[key].shape == (7, 7)
        assert np.isnan(out[key][[2, 6], :]).all() and np.isnan(out[key][:, [2, 6]]).all()
        np.testing.assert_allclose(out[key][np.ix_(keep, keep)], sub[key], rtol=1e-12)


def test_correlation_errors():
    rng = np.random.default_rng(4)
    with pytest.raises(AnalysisError, match="at least 2 parcels"):
        correlation_matrices(np.column_stack([rng.standard_normal(50), np.full(50, np.nan)]))
    with pytest.raises(AnalysisError, match="3 time points"):
        correlation_matrices(rng.standard_normal((2, 4)))
    with pytest.raises(AnalysisError, match="ledoit_wolf"):
        correlation_matrices(rng.standard_normal((10, 20)), partial_estimator="empirical")
    wide = correlation_matrices(rng.standard_normal((10, 20)))  # Ledoit-Wolf copes with L > T
    assert np.isfinite(wide["partial"]).all()


def test_fisher_z():
    r = np.array([[1.0, 0.5, -1.0], [0.5, 1.0, np.nan], [-1.0, np.nan, 1.0]])
    z = fisher_z(r)
    assert np.isnan(np.diag(z)).all()
    assert z[0, 1] == pytest.approx(np.arctanh(0.5), rel=1e-12)
    assert np.isfinite(z[0, 2]) and z[0, 2] == pytest.approx(-np.arctanh(1 - 1e-7), rel=1e-12)
    assert np.isnan(z[1, 2])
    np.testing.assert_array_equal(np.diag(fisher_z(r, diagonal=0.0)), 0.0)
    np.testing.assert_allclose(fisher_z(np.array([0.1, -0.9])), np.arctanh([0.1, -0.9]))
    assert r[0, 0] == 1.0  # input untouched


def test_write_timeseries_tsv_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    ts = rng.standard_normal((40, 4)).astype(np.float32) * 1e3
    ts[:, 2] = np.nan
    names = ["Left Frontal Pole", "b", "empty parcel", "d-1"]
    path = write_timeseries_tsv(tmp_path / "sub-01_atlas-X_timeseries.tsv", ts, names)
    text = path.read_text()
    assert text.splitlines()[0] == "\t".join(names)
    assert "n/a" in text.splitlines()[1]
    back = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
    assert list(back.columns) == names and back.shape == (40, 4)  # no index column
    np.testing.assert_array_equal(back.to_numpy(np.float32), ts)  # exact float32 round trip
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_write_relmat_tsv_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    m = np.corrcoef(rng.standard_normal((4, 30)))
    m[1, :] = m[:, 1] = np.nan
    names = ["a", "b", "c", "d"]
    path = write_relmat_tsv(tmp_path / "x_stat-pearsoncorrelation_relmat.tsv", m, names)
    lines = path.read_text().splitlines()
    assert lines[0] == "Node\ta\tb\tc\td"  # XCP-D layout
    assert lines[2].startswith("b\tn/a\tn/a")
    back = pd.read_csv(path, sep="\t", index_col="Node", na_values="n/a", keep_default_na=False)
    assert list(back.index) == names and list(back.columns) == names
    np.testing.assert_array_equal(back.to_numpy(), m)  # exact float64 round trip
    plain = write_relmat_tsv(tmp_path / "plain_relmat.tsv", m, names, index_label=None)
    back2 = pd.read_csv(plain, sep="\t", na_values="n/a", keep_default_na=False)
    assert list(back2.columns) == names and back2.shape == (4, 4)
    np.testing.assert_array_equal(back2.to_numpy(), m)


def test_writers_refuse_bad_names(tmp_path):
    m = np.eye(2)
    with pytest.raises(AnalysisError, match="unique"):
        write_relmat_tsv(tmp_path / "a.tsv", m, ["x", "x"])
    with pytest.raises(AnalysisError, match="tabs"):
        write_relmat_tsv(tmp_path / "a.tsv", m, ["x", "y\tz"])
    with pytest.raises(AnalysisError, match="3 names for 2"):
        write_timeseries_tsv(tmp_path / "a.tsv", m, ["x", "y", "z"])
    with pytest.raises(AnalysisError, match="square"):
        write_relmat_tsv(tmp_path / "a.tsv", np.ones((2, 3)), ["x", "y"])
    assert not list(tmp_path.iterdir())


def test_real_run_connectivity(studyforrest_bold, cache_dir, tmp_path):
    """Parcel time series of the studyforrest run -> matrices checked against numpy."""
    from nilearn.masking import compute_epi_mask

    from neuroscale.analysis.parcellate import load_atlas, parcel_timeseries
    from neuroscale.image import open_image

    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    mean = img.mean().compute_volume()
    mask = compute_epi_mask(nib.Nifti1Image(mean, img.affine)).get_fdata().astype(bool)
    x, y, z = np.indices(img.shape[:3])
    labels = (1 + x // 20 + 4 * (y // 20) + 16 * (z // 12)).astype(np.int16)
    path = tmp_path / "quads.nii.gz"
    nib.save(nib.Nifti1Image(labels, img.affine), str(path))
    atlas = load_atlas(path, img.affine, img.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ts = parcel_timeseries(img.to_series(mask), atlas).compute()
    out = correlation_matrices(ts)
    good = usable_columns(ts)
    assert good.sum() >= 20 and (~good).sum() >= 1  # some corner blocks miss the brain
    g = np.flatnonzero(good)
    ref = np.corrcoef(ts[:, good].astype(np.float64).T)
    np.testing.assert_allclose(out["pearson"][np.ix_(g, g)], ref, rtol=RTOL, atol=1e-6)
    lw = _partial_from_cov(_ledoit_wolf_by_hand(_zscore(ts[:, good].astype(np.float64))))
    np.testing.assert_allclose(out["partial"][np.ix_(g, g)], lw, rtol=RTOL, atol=1e-6)
    rel = write_relmat_tsv(tmp_path / "sub-02_atlas-quads_stat-pearson_relmat.tsv",
                           fisher_z(out["pearson"]), atlas.names)
    back = pd.read_csv(rel, sep="\t", index_col=0, na_values="n/a", keep_default_na=False)
    assert back.shape == (atlas.n_parcels, atlas.n_parcels)


def test_planted_networks_recovered_from_synthetic_series() -> None:
    """Parcels that halve each planted network: within-network r matches the model, across ~0."""
    from neuroscale.analysis.parcellate import Atlas, parcel_timeseries
    from neuroscale.testing import synthetic_series

    series, truth = synthetic_series(400, (20, 22, 16), n_networks=3, within_corr=0.3, seed=5)
    labels = np.zeros(truth.shape[:3], dtype=np.int32)
    sizes = {}
    for k in range(1, truth.n_networks + 1):
        idx = np.argwhere(truth.labels == k)
        half = len(idx) // 2
        for part, rows in enumerate((idx[:half], idx[half:])):
            value = 2 * k - 1 + part
            labels[tuple(rows.T)] = value
            sizes[value] = len(rows)
    values = np.arange(1, 2 * truth.n_networks + 1)
    atlas = Atlas(labels=labels, values=values, names=tuple(f"p{v}" for v in values), name="halves")
    ts = np.asarray(parcel_timeseries(series, atlas).compute())
    r = correlation_matrices(ts)["pearson"]
    a2 = truth.signal_std**2
    for k in range(truth.n_networks):
        i, j = 2 * k, 2 * k + 1
        expected = a2 / np.sqrt((a2 + truth.noise_std**2 / sizes[i + 1])
                                * (a2 + truth.noise_std**2 / sizes[j + 1]))
        assert abs(r[i, j] - expected) < 0.05, (k, r[i, j], expected)
        for other in range(truth.n_networks):
            if other != k:
                assert abs(r[i, 2 * other]) < 0.2
