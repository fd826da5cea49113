"""Per-chunk kernels for functional quality-control metrics (MRIQC's definitions).

Every function here works on one block of a :class:`neuroscale.image.Series`, a
``(n_timepoints, n_voxels)`` array holding **all time points of a block of voxels**, or on
small vectors.  Per-volume quantities are returned as *partial sums over the block's voxels*
so that the graph layer (:mod:`neuroscale.analysis.qc`) adds them over blocks; voxelwise
quantities are returned for the block's voxels.  No Dask, no I/O.

Sources of the formulas are given function by function: nipype ``TSNR`` and
``compute_dvars`` (``nipype/algorithms/confounds.py``), AFNI ``3dToutcount.c``,
``3dTqual.c`` and ``@compute_gcor``, MRIQC ``mriqc/qc/functional.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import ndtri

from neuroscale.kernels.xp import array_namespace, asarray_like, nan_to_num

__all__ = [
    "afni_polort_basis",
    "aqi_block",
    "centered_ranks",
    "dvars_partials",
    "ghost_to_signal",
    "global_partials",
    "key_histogram_high",
    "key_histogram_low",
    "median_buckets",
    "nonsteady_count",
    "order_statistic_from_histograms",
    "outlier_alpha",
    "outlier_counts",
    "tsnr_map",
    "voxel_median",
]

#: Number of high (and of low) bits of a float32 order key binned by the median histograms.
KEY_BITS = 16
_KEY_BINS = 1 << KEY_BITS


# ----------------------------------------------------------------------------- tSNR


def _legendre_design(n_timepoints: int, degree: int) -> np.ndarray:
    """nipype ``regress_poly`` design: constant + Legendre P1..Pdegree on linspace(-1, 1, T)."""
    x = np.linspace(-1.0, 1.0, n_timepoints)
    cols: list[np.ndarray] = [np.ones(n_timepoints)]
    for i in range(1, degree + 1):
        coef = np.zeros(i + 1)
        coef[i] = 1.0
        cols.append(np.polynomial.legendre.legval(x, coef))
    return np.stack(cols, axis=1)


def tsnr_map(block: Any, detrend_order: int | None = None) -> Any:
    """Voxelwise temporal SNR, mean over time divided by standard deviation over time.

    Parameters
    ----------
    block : (n_timepoints, n_voxels) array of float32 (NumPy, CuPy or another array-API
        library)
        All time points of a block of voxels.
    detrend_order : int or None
        If given (>= 1), Legendre polynomials of orders 1..``detrend_order`` are regressed out
        first, keeping the mean (nipype ``TSNR(regress_poly=k)``, i.e.
        ``regress_poly(k, data, remove_mean=False)``).  ``None`` (MRIQC's setting) does not
        detrend.

    Returns
    -------
    (n_voxels,) array of float32, ``block``'s library and device
        ``mean / std`` (population std, ``ddof=0``); 0 where ``std <= 1e-3`` (nipype's
        threshold).  NaNs in the input are replaced by 0 first (``np.nan_to_num``).

    Notes
    -----
    Source: nipype ``nipype.algorithms.confounds.TSNR._run_interface``; MRIQC's ``tsnr`` IQM
    is the median of this map inside the brain mask (``mriqc/interfaces/functional.py``).
    """
    xp = array_namespace(block)
    data = nan_to_num(xp, xp.astype(block, xp.float64, copy=False))
    if detrend_order is not None and detrend_order >= 1:
        design = _legendre_design(data.shape[0], detrend_order)  # small: on the host
        pinv = asarray_like(np.linalg.pinv(design), data)
        betas = pinv @ data
        data = data - asarray_like(design[:, 1:], data) @ betas[1:, :]
    mean = xp.mean(data, axis=0)
    std = xp.std(data, axis=0)
    ok = std > 1.0e-3
    return xp.astype(xp.where(ok, mean / xp.where(ok, std, 1.0), 0.0), xp.float32)


# ----------------------------------------------------------- global signal and GCOR


def global_partials(block: np.ndarray) -> np.ndarray:
    """Per-volume sums over the block's voxels for the global signal and GCOR.

    Parameters
    ----------
    block : (n_timepoints, n_voxels) ndarray of float32

    Returns
    -------
    (2, n_timepoints) ndarray of float64
        Row 0: ``sum_v x[t, v]`` (global signal numerator).  Row 1: ``sum_v u[t, v]`` where
        ``u[:, v]`` is voxel ``v``'s demeaned time series scaled to unit Euclidean length
        (AFNI ``3dTnorm -polort 0``; all-zero where the demeaned series is all zero).

    Notes
    -----
    GCOR (Saad et al. 2013, Brain Connectivity 3(4):339; AFNI ``@compute_gcor``) is
    ``|| mean_v u[:, v] ||^2``, the average of the full voxel-by-voxel correlation matrix,
    so it needs only the sum of the unit series over voxels.
    """
    data = np.asarray(block, dtype=np.float64)
    out = np.empty((2, data.shape[0]), dtype=np.float64)
    out[0] = data.sum(axis=1)
    dm = data - data.mean(axis=0)
    norm = np.sqrt(np.einsum("tv,tv->v", dm, dm))
    scale = np.zeros_like(norm)
    np.divide(1.0, norm, out=scale, where=norm > 0)
    out[1] = dm @ scale
    return out


# ---------------------------------------------------------------------------- DVARS


def dvars_partials(block: np.ndarray) -> np.ndarray:
    """Partial sums over the block's voxels for plain, standardised and voxelwise-standardised DVARS.

    Parameters
    ----------
    block : (n_timepoints, n_voxels) ndarray of float32
        Raw (not intensity-normalised) data; ``n_timepoints >= 2``.

    Returns
    -------
    (3, n_timepoints) ndarray of float64
        Only voxels with a non-zero robust SD are used ("zero-variance" voxels are dropped,
        nipype ``remove_zerovariance``).  With ``d[t, v] = x[t, v] - x[t-1, v]`` for
        ``t = 1..T-1``:

        * ``[0, t]`` (t >= 1): ``sum_v d[t, v]**2``
        * ``[1, t]`` (t >= 1): ``sum_v (d[t, v] / sdhat[v])**2``
        * ``[2, t]`` (t >= 1): unused (0)
        * ``[0, 0]``: ``sum_v sdhat[v]``; ``[1, 0]``: number of voxels used; ``[2, 0]``: 0.

        where ``sdhat[v] = sqrt(2 * (1 - ar1[v])) * iqr_sd[v]`` is the predicted SD of the
        temporal difference, ``iqr_sd = (P75 - P25) / 1.349`` over time with numpy's
        ``method="lower"`` percentiles (as FSL), and ``ar1`` the Yule-Walker lag-1
        autocorrelation of the demeaned series, ``sum_t y[t] y[t+1] / sum_t y[t]**2``
        (nitime ``AR_est_YW`` with order 1).

    Notes
    -----
    Source: Nichols (2013), "Notes on creating a standardized version of DVARS";
    Power et al. (2012) NeuroImage 59(3):2142; implementation followed: nipype
    ``nipype.algorithms.confounds.compute_dvars``.  The intensity normalisation (scaling
    everything by 1000 / global median) multiplies the plain DVARS and ``sdhat`` alike, so it
    is applied afterwards by the graph layer; the standardised and voxelwise-standardised
    DVARS do not depend on it.
    """
    data = np.asarray(block, dtype=np.float64)
    nt = data.shape[0]
    out = np.zeros((3, nt), dtype=np.float64)
    p75 = np.percentile(data, 75, axis=0, method="lower")
    p25 = np.percentile(data, 25, axis=0, method="lower")
    iqr_sd = (p75 - p25) / 1.349
    keep = iqr_sd > 0
    if not keep.any() or nt < 2:
        return out
    data = data[:, keep]
    iqr_sd = iqr_sd[keep]
    dm = data - data.mean(axis=0)
    r0 = np.einsum("tv,tv->v", dm, dm)
    r1 = np.einsum("tv,tv->v", dm[:-1], dm[1:])
    ar1 = np.zeros_like(r0)
    np.divide(r1, r0, out=ar1, where=r0 > 0)
    sdhat = np.sqrt(2.0 * (1.0 - ar1)) * iqr_sd
    diff = np.diff(data, axis=0)
    out[0, 1:] = np.einsum("tv,tv->t", diff, diff)
    inv = np.zeros_like(sdhat)
    np.divide(1.0, sdhat, out=inv, where=sdhat > 0)
    scaled = diff * inv
    out[1, 1:] = np.einsum("tv,tv->t", scaled, scaled)
    out[0, 0] = sdhat.sum()
    out[1, 0] = float(keep.sum())
    return out


# ------------------------------------------------------------ outliers (3dToutcount)


def outlier_alpha(n_timepoints: int, qthr: float = 0.001) -> float:
    """3dToutcount's threshold factor ``qginv(qthr / T) * sqrt(pi / 2)``.

    ``qginv`` is the inverse of the upper-tail Gaussian probability (AFNI ``qginv``), so this
    is ``Phi^-1(1 - qthr / T) * sqrt(pi / 2)``.  Source: AFNI ``src/3dToutcount.c``.
    """
    return float(-ndtri(qthr / n_timepoints) * math.sqrt(0.5 * math.pi))


def afni_polort_basis(n_timepoints: int, polort: int) -> np.ndarray:
    """3dToutcount's detrending regressors, ``(T, polort + 1)`` float64.

    ``1, s, s**2, ...`` with ``s = (t - (T - 1) / 2) * 2 / T`` (AFNI ``src/3dToutcount.c``,
    the default non-Legendre basis).
    """
    tm = 0.5 * (n_timepoints - 1.0)
    s = (np.arange(n_timepoints) - tm) * (2.0 / n_timepoints)
    return np.stack([s**j for j in range(polort + 1)], axis=1)


def _l1_fit(data: np.ndarray, design: np.ndarray, n_iter: int = 100) -> np.ndarray:
    """Least-absolute-deviation fit of every column of ``data`` by IRLS; returns the fit."""
    beta = np.linalg.lstsq(design, data, rcond=None)[0]  # (k, v)
    eps = 1e-8 * max(1.0, float(np.abs(data).max(initial=0.0)))
    for _ in range(n_iter):
        resid = data - design @ beta
        w = 1.0 / np.maximum(np.abs(resid), eps)  # (t, v)
        xtwx = np.einsum("tk,tv,tl->vkl", design, w, design)
        xtwy = np.einsum("tk,tv->vk", design, w * data)
        new = np.linalg.solve(xtwx, xtwy[..., None])[..., 0].T
        if np.allclose(new, beta, rtol=1e-10, atol=eps):
            beta = new
            break
        beta = new
    fit: np.ndarray = design @ beta
    return fit


def outlier_counts(block: np.ndarray, polort: int = 0, qthr: float = 0.001) -> np.ndarray:
    """Number of outlying voxels of the block at every time point, as AFNI 3dToutcount.

    Parameters
    ----------
    block : (n_timepoints, n_voxels) ndarray of float32
    polort : int
        0 (AFNI's and MRIQC's default): the trend is the voxel's temporal median.  1-3: the
        trend is a polynomial fit (:func:`afni_polort_basis`) by least absolute deviations;
        AFNI solves it exactly with ``cl1_solve``, here it is solved by iteratively
        reweighted least squares, which reaches the L1 optimum to within round-off in
        practice but may pick a different optimum where the L1 fit is not unique.
    qthr : float
        AFNI ``-qthr`` (default 0.001).

    Returns
    -------
    (n_timepoints,) ndarray of int64
        With residuals ``r = x - trend`` and ``MAD = median_t |r|``, a point is an outlier if
        ``|r| > alpha * MAD`` with ``alpha = outlier_alpha(T, qthr)``; voxels with
        ``MAD == 0`` have no outliers.

    Notes
    -----
    Source: AFNI ``src/3dToutcount.c`` (Cox); MRIQC ``aor`` is the mean over volumes of
    the fraction ``count / n_mask_voxels`` (``3dToutcount -fraction -mask``).
    """
    data = np.asarray(block, dtype=np.float64)
    nt = data.shape[0]
    if polort == 0:
        resid = data - np.median(data, axis=0)
    else:
        resid = data - _l1_fit(data, afni_polort_basis(nt, polort))
    absr = np.abs(resid)
    mad = np.median(absr, axis=0)
    top = outlier_alpha(nt, qthr) * mad
    out = (absr > top) & (mad > 0)
    counts: np.ndarray = out.sum(axis=1).astype(np.int64)
    return counts


# -------------------------------------------------------------------- AQI (3dTqual)


def voxel_median(block: np.ndarray) -> np.ndarray:
    """Temporal median of every voxel, ``(n_voxels,)`` float64 (AFNI ``THD_median_brick``).

    For an even number of volumes this is the mean of the two middle values (``np.median``).
    """
    return np.asarray(np.median(np.asarray(block, dtype=np.float64), axis=0))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks of a 1D array with ties averaged; ``(n,)`` float64.

    The same numbers as ``scipy.stats.rankdata(values, method="average") - 1``, about 4x
    faster on float32 (numpy's SIMD argsort, then one pass over the runs of equal values).
    """
    v = np.asarray(values).reshape(-1)
    n = v.size
    order = np.argsort(v)
    sv = v[order]
    starts = np.empty(n + 1, dtype=bool)
    starts[0] = starts[-1] = True
    np.not_equal(sv[1:], sv[:-1], out=starts[1:-1])
    edges = np.flatnonzero(starts)
    mean_rank = (edges[:-1] + edges[1:] - 1) * 0.5
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = mean_rank[np.cumsum(starts[:-1]) - 1]
    return ranks


def centered_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged, minus their mean ``(n - 1) / 2``; ``(n,)`` float64.

    Source: AFNI ``src/3dTqual.c`` ``rank_order_float`` / ``spearman_rank_prepare``.
    """
    values = np.asarray(values)
    ranks: np.ndarray = average_ranks(values) - 0.5 * (values.size - 1)
    return ranks


def aqi_block(volumes: np.ndarray, reference_ranks: np.ndarray) -> np.ndarray:
    """AFNI quality index of a block of whole volumes: 1 - Spearman correlation with the median.

    Parameters
    ----------
    volumes : (n_volumes_in_block, n_voxels) ndarray
        Whole in-mask volumes (every voxel of each volume).
    reference_ranks : (n_voxels,) ndarray of float64
        :func:`centered_ranks` of the voxelwise temporal median volume.

    Returns
    -------
    (n_volumes_in_block,) ndarray of float64
        ``1 - sum(r_t * r_m) / sqrt(sum(r_t**2) * sum(r_m**2))`` with ``r`` centred
        average-tie ranks across voxels; a volume whose ranks have zero spread has
        correlation 0 (index 1), as in AFNI.

    Notes
    -----
    Source: AFNI ``src/3dTqual.c`` (default ``-spearman`` method); MRIQC ``aqi`` is the mean
    of this index over volumes.
    """
    ref = np.asarray(reference_ranks, dtype=np.float64)
    rv = float(ref @ ref)
    vols = np.asarray(volumes)
    ranks = np.stack([average_ranks(row) for row in vols]) - 0.5 * (vols.shape[1] - 1)
    xv = np.einsum("tv,tv->t", ranks, ranks)
    ss = ranks @ ref
    corr = np.zeros(vols.shape[0], dtype=np.float64)
    ok = (xv > 0) & (rv > 0)
    corr[ok] = ss[ok] / np.sqrt(rv * xv[ok])
    return 1.0 - corr


# ------------------------------------------------- exact global median (DVARS scaling)


def _order_keys(block: np.ndarray) -> np.ndarray:
    """Map float32 values to uint32 keys whose unsigned order is the float order."""
    bits = np.ascontiguousarray(block, dtype=np.float32).reshape(-1).view(np.uint32)
    neg = (bits & np.uint32(0x80000000)) != 0
    keys: np.ndarray = np.where(neg, ~bits, bits | np.uint32(0x80000000))
    return keys


def _key_to_float(key: int) -> float:
    k = np.uint32(key)
    bits = (k & np.uint32(0x7FFFFFFF)) if (k & np.uint32(0x80000000)) else ~k
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def key_histogram_high(block: np.ndarray) -> np.ndarray:
    """Counts of the block's values by the high 16 bits of their float32 order key.

    Returns ``(65536,)`` int64.  First pass of an exact, chunked order statistic: the float32
    order key (sign-flipped IEEE bits) sorts like the values, so bucket counts locate the
    k-th smallest value to one bucket, which :func:`key_histogram_low` then resolves.
    """
    keys = _order_keys(block)
    return np.bincount((keys >> np.uint32(KEY_BITS)).astype(np.intp), minlength=_KEY_BINS)


def key_histogram_low(block: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Counts by the low 16 bits of the keys falling in each of ``buckets`` (high-16 values).

    Returns ``(len(buckets), 65536)`` int64.  Second pass of the exact order statistic.
    """
    keys = _order_keys(block)
    high = keys >> np.uint32(KEY_BITS)
    low = keys & np.uint32(_KEY_BINS - 1)
    out = np.zeros((len(buckets), _KEY_BINS), dtype=np.int64)
    for i, b in enumerate(np.asarray(buckets).reshape(-1)):
        out[i] = np.bincount(low[high == b].astype(np.intp), minlength=_KEY_BINS)
    return out


def median_buckets(high_hist: np.ndarray) -> np.ndarray:
    """The high-16 buckets holding the two middle order statistics; ``(2,)`` int64.

    For ``M`` values these are the ``(M - 1) // 2``-th and ``M // 2``-th smallest (0-based),
    whose mean is ``np.median``.
    """
    cum = np.cumsum(high_hist)
    total = int(cum[-1])
    ks = np.array([(total - 1) // 2, total // 2])
    return np.searchsorted(cum, ks, side="right").astype(np.int64)


def order_statistic_from_histograms(high_hist: np.ndarray, low_hist: np.ndarray) -> float:
    """The median (mean of the two middle order statistics) from the two histogram passes.

    Parameters
    ----------
    high_hist : (65536,) ndarray of int64
        Sum over blocks of :func:`key_histogram_high`.
    low_hist : (2, 65536) ndarray of int64
        Sum over blocks of :func:`key_histogram_low` for :func:`median_buckets`.

    Returns
    -------
    float
        Exactly ``np.median`` of all the float32 values (computed in float64).
    """
    cum = np.cumsum(high_hist)
    total = int(cum[-1])
    buckets = median_buckets(high_hist)
    values = []
    for i, k in enumerate(((total - 1) // 2, total // 2)):
        b = int(buckets[i])
        before = int(cum[b - 1]) if b > 0 else 0
        low_cum = np.cumsum(low_hist[i])
        low = int(np.searchsorted(low_cum, k - before, side="right"))
        values.append(_key_to_float((b << KEY_BITS) | low))
    return 0.5 * (values[0] + values[1])


# ------------------------------------------------------------------ ghost-to-signal


def ghost_to_signal(epi_mean: np.ndarray, mask: np.ndarray, direction: str = "y") -> float:
    """Ghost-to-signal ratio of a mean EPI along the phase-encoding axis (MRIQC ``gsr``).

    Parameters
    ----------
    epi_mean : (x, y, z) ndarray
        Mean EPI over the whole field of view (NaN -> 0, negative values clipped to 0, as
        MRIQC ``FunctionalQC`` prepares it).
    mask : (x, y, z) ndarray of bool
        Brain mask.
    direction : {"x", "y", "z"}
        Axis along which the mask is circularly shifted by ``floor(n / 2)`` voxels to
        outline the N/2 (Nyquist) ghost.

    Returns
    -------
    float
        ``(mean(ghost) - mean(background)) / mean(signal)`` where ghost = shifted mask minus
        mask, signal = mask, background = neither.

    Notes
    -----
    Source: Giannelli et al. (2010) J Appl Clin Med Phys 11(4):237; implementation
    followed: MRIQC ``mriqc/qc/functional.py::gsr``.
    """
    axis = {"x": 0, "y": 1, "z": 2}[direction]
    data = np.nan_to_num(np.array(epi_mean, dtype=np.float32, copy=True))
    data[data < 0] = 0
    m = np.asarray(mask, dtype=bool)
    # MRIQC: ghost[:n//2] = mask[n//2:], ghost[n//2:] = mask[:n//2] (even n), i.e. a roll
    ghost = np.roll(m, -(m.shape[axis] // 2), axis=axis) & ~m
    background = ~(ghost | m)
    signal = float(data[m].mean())
    return float((data[ghost].mean() - data[background].mean()) / signal)



# ------------------------------------------------------------- non-steady state


def nonsteady_count(global_signal: np.ndarray, thresh: float = 3.5, n_max: int = 50) -> int:
    """Number of leading non-steady-state volumes, nipype ``NonSteadyStateDetector`` logic.

    Parameters
    ----------
    global_signal : (n_timepoints,) ndarray
        Mean signal per volume.
    thresh : float
        Modified z-score above which a volume is an outlier (Iglewicz & Hoaglin 1993).
    n_max : int
        Only the first ``n_max`` volumes are considered (nipype uses 50).

    Returns
    -------
    int
        The number of consecutive volumes from the start whose modified z-score
        ``0.6745 * |g - median(g)| / MAD`` exceeds ``thresh`` (MAD = median absolute
        deviation), computed over the first ``n_max`` volumes.  Where ``MAD == 0``, volumes
        equal to the median are not outliers and all others are.

    Notes
    -----
    Source: nipype ``nipype.algorithms.confounds.is_outlier`` and
    ``NonSteadyStateDetector`` (which averages the first 50 volumes over the whole field of
    view; here the caller passes the in-mask global signal).
    """
    g = np.asarray(global_signal, dtype=np.float64)[:n_max]
    diff = np.abs(g - np.median(g))
    mad = np.median(diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff > 0, 0.6745 * diff / mad, 0.0)
    count = 0
    for value in z:
        if value <= thresh:
            break
        count += 1
    return count
