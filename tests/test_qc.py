"""Tests of the MRIQC-style QC metrics (neuroscale.analysis.qc, neuroscale.kernels.qc).

Every metric is checked against a plain in-memory reference written here, following the
reference implementation (nipype TSNR / compute_dvars / is_outlier, AFNI 3dToutcount,
3dTqual, @compute_gcor, MRIQC gsr), on synthetic data with planted artefacts and on the real
studyforrest run.
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from scipy import optimize, signal, stats

from neuroscale.analysis.qc import qc_arrays, qc_summary
from neuroscale.errors import AnalysisError, ConfigurationError, MissingMetadataError
from neuroscale.image import Series, open_image
from neuroscale.kernels import qc as kqc

RTOL = 1e-4


# --------------------------------------------------------------------------- references


def ref_tsnr(x: np.ndarray) -> np.ndarray:
    """nipype TSNR (no regress_poly): mean / std over time, 0 where std <= 1e-3."""
    x = np.nan_to_num(x.astype(np.float64))
    mean, std = x.mean(0), x.std(0)
    out = np.zeros_like(mean)
    out[std > 1e-3] = mean[std > 1e-3] / std[std > 1e-3]
    return out


def ref_dvars(x: np.ndarray, norm: float = 1000.0) -> tuple[np.ndarray, ...]:
    """nipype compute_dvars (remove_zerovariance=True, variance_tol=1e-7) on (T, N) data."""
    mfunc = x.T.astype(np.float32)
    if norm:
        mfunc = (mfunc / np.median(mfunc)) * norm
    func_sd = (np.percentile(mfunc, 75, axis=1, method="lower")
               - np.percentile(mfunc, 25, axis=1, method="lower")) / 1.349
    keep = func_sd > 1e-7
    mfunc, func_sd = mfunc[keep], func_sd[keep]
    y = (mfunc - mfunc.mean(axis=1, keepdims=True)).astype(np.float64)
    # nitime AR_est_YW order 1: autocovariance by FFT convolution, ak = r[1] / r[0]
    n = y.shape[1]
    xc = signal.fftconvolve(y, y[:, ::-1], axes=1, mode="full") / n
    ar1 = xc[:, n] / xc[:, n - 1]
    diff_sdhat = np.sqrt((1 - ar1) * 2) * func_sd
    func_diff = np.diff(mfunc.astype(np.float64), axis=1)
    dvars_nstd = np.sqrt(np.square(func_diff).mean(axis=0))
    dvars_std = dvars_nstd / diff_sdhat.mean()
    dvars_vstd = np.sqrt(np.square(func_diff / diff_sdhat[:, None]).mean(axis=0))
    return dvars_std, dvars_nstd, dvars_vstd


def ref_gcor_corrmatrix(x: np.ndarray) -> float:
    """Saad et al. 2013: the mean of the full voxel x voxel correlation matrix."""
    return float(np.corrcoef(x.T.astype(np.float64)).mean())


def ref_gcor_afni(x: np.ndarray) -> float:
    """@compute_gcor: 3dTnorm -polort 0, 3dmaskave, 3dTstat -sos."""
    y = x.astype(np.float64) - x.mean(0)
    norms = np.linalg.norm(y, axis=0)
    unit = np.divide(y, norms, out=np.zeros_like(y), where=norms > 0)
    return float(np.sum(unit.mean(axis=1) ** 2))


def ref_outlier_fraction(x: np.ndarray, qthr: float = 0.001) -> np.ndarray:
    """3dToutcount -fraction -polort 0, voxel by voxel as the C loop does."""
    nt, nv = x.shape
    alph = stats.norm.isf(qthr / nt) * math.sqrt(0.5 * math.pi)
    count = np.zeros(nt, dtype=int)
    for v in range(nv):
        col = x[:, v].astype(np.float64)
        resid = col - np.median(col)
        mad = np.median(np.abs(resid))
        if mad > 0:
            count += (resid < -alph * mad) | (resid > alph * mad)
    return count / nv


def ref_aqi(x: np.ndarray) -> np.ndarray:
    """3dTqual -spearman: 1 - Spearman correlation of each volume with the median volume."""
    med = np.median(x.astype(np.float64), axis=0)
    return np.array([1.0 - stats.spearmanr(x[t], med).statistic for t in range(x.shape[0])])


def ref_is_outlier(points: np.ndarray, thresh: float = 3.5) -> int:
    """nipype is_outlier, verbatim logic."""
    points = points[:, None]
    median = np.median(points, axis=0)
    diff = np.sqrt(np.sum((points - median) ** 2, axis=-1))
    med_abs_deviation = np.median(diff)
    modified_z_score = 0.6745 * diff / med_abs_deviation
    n = 0
    for i in range(len(modified_z_score)):
        if modified_z_score[i] <= thresh:
            break
        n += 1
    return n


def ref_gsr(epi: np.ndarray, mask: np.ndarray, direction: str) -> float:
    """MRIQC mriqc/qc/functional.py::gsr (even dimensions)."""
    mask = mask.astype(np.uint8)
    n2_mask = np.zeros_like(mask)
    if direction == "x":
        n2lim = mask.shape[0] // 2
        n2_mask[:n2lim] = mask[n2lim:]
        n2_mask[n2lim:] = mask[:n2lim]
    else:
        n2lim = mask.shape[1] // 2
        n2_mask[:, :n2lim] = mask[:, n2lim:]
        n2_mask[:, n2lim:] = mask[:, :n2lim]
    n2_mask = n2_mask * (1 - mask)
    n2_mask = n2_mask + 2 * (1 - n2_mask - mask)
    ghost = epi[n2_mask == 1].mean() - epi[n2_mask == 2].mean()
    return float(ghost / epi[n2_mask == 0].mean())


def check_all(c: dict, x: np.ndarray) -> None:
    """Compare every computed QC array with the references on in-memory data x (T, N)."""
    np.testing.assert_allclose(c["tsnr"], ref_tsnr(x), rtol=RTOL)
    std, nstd, vstd = ref_dvars(x)
    np.testing.assert_allclose(c["dvars_std"], std, rtol=RTOL)
    np.testing.assert_allclose(c["dvars_nstd"], nstd, rtol=RTOL)
    np.testing.assert_allclose(c["dvars_vstd"], vstd, rtol=RTOL)
    assert float(c["dvars_median"]) == pytest.approx(float(np.median(x)), rel=1e-7)
    np.testing.assert_allclose(c["global_signal"], x.astype(np.float64).mean(axis=1),
                               rtol=RTOL)
    assert float(c["gcor"]) == pytest.approx(ref_gcor_afni(x), rel=RTOL)
    np.testing.assert_allclose(c["outlier_fraction"], ref_outlier_fraction(x), rtol=RTOL,
                               atol=0)
    np.testing.assert_allclose(c["aqi"], ref_aqi(x), rtol=RTOL, atol=1e-9)


# ----------------------------------------------------------------------------- synthetic

T_SYN = 64
SPIKES = (20, 41)
N_NONSTEADY = 3


def synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, N) float32 data with planted spikes and non-steady volumes, its mask, mean EPI."""
    rng = np.random.default_rng(seed)
    shape = (12, 14, 6)
    mask = np.zeros(shape, dtype=bool)
    mask[3:9, 2:12, 1:5] = True
    nv = int(mask.sum())
    base = 800 + 200 * rng.random(nv)
    shared = np.cumsum(rng.standard_normal(T_SYN))[:, None]  # a global fluctuation
    x = base + 8 * rng.standard_normal((T_SYN, nv)) + 2.0 * shared
    x[:N_NONSTEADY] *= np.array([1.6, 1.35, 1.2])[:, None]  # T1 saturation decay
    for t in SPIKES:  # spikes: a big random perturbation of 60 % of the voxels
        hit = rng.random(nv) < 0.6
        x[t, hit] += 150 * rng.standard_normal(hit.sum())
    x[:, 5] = 900.0  # a zero-variance voxel
    epi = np.full(shape, 20.0)
    epi[mask] = x.mean(0)
    epi[:, :7][np.roll(mask, -7, axis=1)[:, :7] & ~mask[:, :7]] += 30.0  # a y ghost
    return x.astype(np.float32), mask, epi.astype(np.float32)


def syn_series(x: np.ndarray, mask: np.ndarray, block: int) -> Series:
    return Series(data=da.from_array(x, chunks=(x.shape[0], block)), mask=mask,
                  affine=np.eye(4), t_r=2.0)


@pytest.fixture(scope="module")
def syn() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    x, mask, epi = synthetic()
    q = qc_arrays(syn_series(x, mask, 70), mean_volume=epi, time_block=10)
    (computed,) = dask.compute(q)
    return x, mask, epi, computed


def test_synthetic_matches_references(syn: tuple) -> None:
    x, _, _, c = syn
    check_all(c, x)


def test_synthetic_gcor_is_mean_correlation(syn: tuple) -> None:
    x, _, _, c = syn
    y = np.delete(x, 5, axis=1)  # corrcoef is undefined for the constant voxel
    q = qc_arrays(syn_series(y, np.ones((1, 1, y.shape[1]), bool), 50))
    assert float(q["gcor"].compute()) == pytest.approx(ref_gcor_corrmatrix(y), rel=RTOL)


def test_synthetic_planted_artefacts(syn: tuple) -> None:
    x, mask, epi, c = syn
    late = slice(N_NONSTEADY + 1, None)  # past the non-steady start
    dv = np.asarray(c["dvars_std"])  # entry i = change from volume i to i + 1
    top2 = set(np.argsort(dv[late])[-4:] + late.start)
    assert {SPIKES[0] - 1, SPIKES[0], SPIKES[1] - 1, SPIKES[1]} == top2
    of = np.asarray(c["outlier_fraction"])
    assert set(np.argsort(of[late])[-2:] + late.start) == set(SPIKES)
    aqi = np.asarray(c["aqi"])
    assert set(np.argsort(aqi[late])[-2:] + late.start) == set(SPIKES)
    summary = qc_summary(c, 2.0)
    assert summary["n_nonsteady"] == N_NONSTEADY
    assert summary["n_nonsteady"] == ref_is_outlier(x.astype(np.float64).mean(1)[:50])
    assert summary["gsr_y"] == pytest.approx(ref_gsr(epi, mask, "y"), rel=RTOL)
    assert summary["gsr_x"] == pytest.approx(ref_gsr(epi, mask, "x"), rel=RTOL)
    assert summary["gsr_y"] > 0.01 > abs(summary["gsr_x"])


def test_summary_values(syn: tuple) -> None:
    x, _, _, c = syn
    s = qc_summary(c, 2.0)
    std, nstd, vstd = ref_dvars(x)
    assert s["tsnr"] == pytest.approx(float(np.median(ref_tsnr(x))), rel=RTOL)
    assert s["dvars_std"] == pytest.approx(float(std.mean()), rel=RTOL)
    assert s["dvars_nstd"] == pytest.approx(float(nstd.mean()), rel=RTOL)
    assert s["dvars_vstd"] == pytest.approx(float(vstd.mean()), rel=RTOL)
    assert s["aor"] == pytest.approx(float(ref_outlier_fraction(x).mean()), rel=RTOL)
    assert s["aqi"] == pytest.approx(float(ref_aqi(x).mean()), rel=RTOL)
    assert s["gcor"] == pytest.approx(ref_gcor_afni(x), rel=RTOL)
    assert len(s["global_signal"]) == T_SYN and len(s["dvars_std_series"]) == T_SYN - 1
    with pytest.raises(MissingMetadataError):
        qc_summary(c, 0.0)
    with pytest.raises(AnalysisError):
        qc_summary({"tsnr": c["tsnr"]}, 2.0)


def test_chunking_does_not_change_results(syn: tuple) -> None:
    x, mask, epi, c = syn
    (other,) = dask.compute(qc_arrays(syn_series(x, mask, 333), time_block=64))
    for key, value in other.items():
        np.testing.assert_allclose(value, c[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_nonsteady_count_edge_cases() -> None:
    g = np.r_[5.0, 3.0, np.ones(20)]
    assert kqc.nonsteady_count(g) == 2  # MAD == 0: unequal points are outliers
    assert kqc.nonsteady_count(np.ones(10)) == 0
    rng = np.random.default_rng(3)
    g = np.r_[200.0, 150.0, 100 + rng.standard_normal(80)]
    assert kqc.nonsteady_count(g) == ref_is_outlier(g[:50]) == 2


def test_exact_median_kernels() -> None:
    rng = np.random.default_rng(1)
    for size in (1001, 1000, 7):
        vals = np.concatenate([rng.normal(0, 1e3, size), rng.integers(-3, 3, size)])
        vals = vals.astype(np.float32)
        vals[:3] = [0.0, -0.0, np.float32(1e-30)]
        blocks = np.array_split(vals, 5)
        high = sum(kqc.key_histogram_high(b) for b in blocks)
        buckets = kqc.median_buckets(high)
        low = sum(kqc.key_histogram_low(b, buckets) for b in blocks)
        assert kqc.order_statistic_from_histograms(high, low) == float(
            np.median(vals.astype(np.float64)))


def test_outliers_polort_l1_detrend() -> None:
    """polort > 0: L1 polynomial fit (AFNI cl1_solve) checked with a linear programme."""
    rng = np.random.default_rng(2)
    nt, nv = 40, 12
    basis = kqc.afni_polort_basis(nt, 2)
    x = 500 + basis @ rng.normal(0, 30, (3, nv)) + rng.standard_normal((nt, nv))
    x[17, :8] += 25.0
    counts = kqc.outlier_counts(x.astype(np.float32), polort=2)
    alpha = kqc.outlier_alpha(nt)
    expect = np.zeros(nt, dtype=int)
    k = basis.shape[1]
    for v in range(nv):
        y = x[:, v].astype(np.float32).astype(np.float64)
        # min sum(e+ + e-) s.t. basis @ b + e+ - e- = y, e >= 0
        c = np.r_[np.zeros(k), np.ones(2 * nt)]
        a_eq = np.hstack([basis, np.eye(nt), -np.eye(nt)])
        bounds = [(None, None)] * k + [(0, None)] * (2 * nt)
        res = optimize.linprog(c, A_eq=a_eq, b_eq=y, bounds=bounds, method="highs")
        resid = y - basis @ res.x[:k]
        mad = np.median(np.abs(resid))
        expect += np.abs(resid) > alpha * mad
    np.testing.assert_array_equal(counts, expect)
    assert counts[17] == 8


def test_outlier_alpha_matches_afni_definition() -> None:
    # qginv(p) is the upper-tail Gaussian quantile; 3dToutcount multiplies by sqrt(pi/2)
    assert kqc.outlier_alpha(156) == pytest.approx(
        stats.norm.isf(0.001 / 156) * math.sqrt(math.pi / 2), rel=1e-12)


def test_qc_arrays_builds_lazily() -> None:
    x, mask, epi = synthetic()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("qc_arrays computed something while building the graph")

    series = syn_series(x, mask, 100)
    with dask.config.set(scheduler=refuse):
        q = qc_arrays(series, mean_volume=da.from_array(epi))
        q2 = qc_arrays(series, intensity_normalization=0.0, polort=1)
        with pytest.raises(AssertionError):
            q["gcor"].compute()
    assert {"tsnr", "gcor", "aqi", "dvars_nstd", "gsr_x"} <= set(q)
    assert "dvars_median" not in q2
    for value in q.values():
        assert isinstance(value, da.Array)
        assert value.ndim <= 1 and value.size <= max(x.shape)


def test_invalid_arguments() -> None:
    x, mask, _ = synthetic()
    series = syn_series(x, mask, 100)
    with pytest.raises(ConfigurationError):
        qc_arrays(series, polort=4)
    with pytest.raises(ConfigurationError):
        qc_arrays(series, qthr=1.5)
    with pytest.raises(AnalysisError):
        qc_arrays(syn_series(x[:4], mask, 100))


# ---------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real(studyforrest_bold, cache_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    from nilearn.masking import compute_epi_mask

    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    mean = img.mean().compute_volume()
    mask = compute_epi_mask(nib.Nifti1Image(mean, img.affine)).get_fdata().astype(bool)
    series = img.to_series(mask)
    (computed,) = dask.compute(qc_arrays(series, image=img))
    # the in-memory reference reads the NIfTI directly with nibabel
    data = np.asarray(nib.load(studyforrest_bold).dataobj, dtype=np.float32)
    return data[mask].T, mask, data.mean(axis=3), computed


def test_real_run_matches_references(real: tuple) -> None:
    x, _, _, c = real
    check_all(c, x)
    s = qc_summary(c, 2.0)
    assert s["n_nonsteady"] == ref_is_outlier(x.astype(np.float64).mean(1)[:50])
    assert 20 < s["tsnr"] < 300 and 0 < s["aor"] < 0.1 and 0 < s["aqi"] < 0.1


def test_real_run_gsr_matches_mriqc(real: tuple) -> None:
    _, mask, epi, c = real
    epi = np.nan_to_num(epi)
    epi[epi < 0] = 0
    assert float(c["gsr_x"]) == pytest.approx(ref_gsr(epi, mask, "x"), rel=RTOL)
    assert float(c["gsr_y"]) == pytest.approx(ref_gsr(epi, mask, "y"), rel=RTOL)
