"""Per-chunk temporal signal cleaning: :func:`nilearn.signal.clean` on one ``(t, v)`` block.

These are plain NumPy functions (no Dask, no I/O) that
:func:`neuroscale.analysis.denoise.clean` maps over the voxel chunks of a
:class:`~neuroscale.image.Series`.  Every step of ``nilearn.signal.clean`` (detrending,
Butterworth or cosine filtering, censoring/interpolation, confound projection, z-scoring) acts
on each voxel's time series independently, so cleaning the chunks one by one gives the same
numbers as cleaning the whole ``(t, n_voxels)`` array at once.  The one exception is
``standardize="psc"``: nilearn decides whether to add the original mean back before scaling
from a ratio averaged over *all* voxels (``filtered_mean_check`` in ``nilearn/signal.py``), so
that case is split into :func:`psc_parts_block` (the per-chunk parts of that ratio) and
:func:`psc_finish_block` (the scaling, given the global decision).

The arithmetic runs in float64 (the input chunk is converted once) and the result is returned
as float32.  When scrubbing with a Butterworth filter, the censored volumes are interpolated
here (:func:`interpolate_censored`) before nilearn sees the data, working around a nilearn
0.14.1 indexing bug described there; everything else is nilearn's own code.

Reference implementation: nilearn 0.14.1, ``nilearn.signal.clean`` and
``nilearn.signal.standardize_signal`` (Abraham et al. 2014, Front. Neuroinform. 8:14);
confound projection after Friston et al. (1994), filter/regression orthogonality after
Lindquist et al. (2019, Hum. Brain Mapp. 40:2358).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["clean_block", "clean_scaled_block", "interpolate_censored", "psc_finish_block",
           "psc_parts_block"]


def _copy_or_none(arr: np.ndarray | None) -> np.ndarray | None:
    # nilearn modifies some inputs in place (``butterworth(confounds, copy=False)`` when
    # detrend=False, ``sample_mask -= sample_mask[0]`` when interpolating): every call gets
    # its own copy, because Dask hands the same argument object to every chunk's task.
    return None if arr is None else np.array(arr, copy=True)


def interpolate_censored(
    x: np.ndarray, sample_mask: np.ndarray, t_r: float
) -> tuple[np.ndarray, np.ndarray]:
    """Replace censored volumes by a cubic spline through the kept ones, as nilearn intends.

    This is the first step of ``nilearn.signal.clean`` when scrubbing with a Butterworth filter
    (Lindquist et al. 2019, recommendation 2; nilearn ``_interpolate_volumes`` with
    ``extrapolate=False``, the default since nilearn 0.13): a
    :class:`scipy.interpolate.CubicSpline` (not-a-knot) through the kept volumes, evaluated at
    the censored ones; censored volumes before the first or after the last kept volume cannot
    be interpolated and are dropped.  It is done here, before nilearn sees the data, because
    nilearn 0.14.1 writes the interpolated values with ``volumes[~sample_mask]`` on an
    *integer* index array, i.e. into rows ``T - 1 - i`` for every kept ``i``: a censored volume
    whose mirror ``T - 1 - i`` is censored too keeps its raw value and leaks into the filtered
    signal, and the leading censored volumes are not always dropped.  On the already
    interpolated, trimmed data nilearn's own interpolation is a no-op (the spline through the
    same knots returns the same values), so the rest of ``clean`` runs unchanged.

    Parameters
    ----------
    x : ndarray, shape (n_timepoints, n_columns), float64
        Signals or confounds (not modified).
    sample_mask : ndarray of int, shape (n_kept,)
        Sorted, unique indices of the volumes to keep.
    t_r : float
        Repetition time, seconds (the spline's time axis; only ratios matter).

    Returns
    -------
    filled : ndarray, shape (last - first + 1, n_columns), float64
        Volumes ``first..last`` (first and last kept volume) with the censored ones
        interpolated.
    shifted_mask : ndarray of int, shape (n_kept,)
        ``sample_mask - first``: the kept volumes' rows in ``filled``.
    """
    from scipy.interpolate import CubicSpline

    sample_mask = np.asarray(sample_mask, dtype=np.int64)
    first, last = int(sample_mask[0]), int(sample_mask[-1])
    filled = np.array(x[first : last + 1], dtype=np.float64, copy=True)
    missing = np.setdiff1d(np.arange(first, last + 1), sample_mask)
    if missing.size:
        times = np.arange(x.shape[0], dtype=np.float64) * float(t_r)
        spline = CubicSpline(times[sample_mask], x[sample_mask], extrapolate=False)
        filled[missing - first] = spline(times[missing])
    return filled, sample_mask - first


def _prepare(block: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """float64 copy of the block; correct interpolation of censored volumes (see above)."""
    x = np.asarray(block, dtype=np.float64)
    sample_mask = params["sample_mask"]
    if sample_mask is None or params["filter"] != "butterworth":
        return x, params
    x, shifted = interpolate_censored(x, sample_mask, params["t_r"])
    confounds = params["confounds"]
    if confounds is not None:
        confounds, _ = interpolate_censored(confounds, sample_mask, params["t_r"])
    return x, {**params, "sample_mask": shifted, "confounds": confounds}


def _nilearn_clean(x: np.ndarray, standardize: str | None, params: dict[str, Any]) -> np.ndarray:
    from nilearn.signal import clean

    return np.asarray(
        clean(
            x,
            detrend=params["detrend"],
            standardize=standardize,
            sample_mask=_copy_or_none(params["sample_mask"]),
            confounds=_copy_or_none(params["confounds"]),
            standardize_confounds=params["standardize_confounds"],
            filter=params["filter"],
            low_pass=params["low_pass"],
            high_pass=params["high_pass"],
            t_r=params["t_r"],
            # nilearn's default (copy=False) filters column by column in a Python loop;
            # copy=True runs the same scipy.signal.sosfiltfilt once along axis 0: identical
            # numbers, ~20x faster on a chunk of thousands of voxels
            butterworth__copy=True,
        )
    )


def _original_mean(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """nilearn's ``original_mean_signals``: mean after censoring/interpolation, before detrend."""
    sample_mask = params["sample_mask"]
    if sample_mask is None or params["filter"] == "butterworth":
        return np.asarray(x.mean(axis=0))
    return np.asarray(x[sample_mask].mean(axis=0))


#: Voxels cleaned per nilearn call inside one chunk (bounds nilearn's float64 copies).
COLUMN_BLOCK = 512


def clean_block(
    block: np.ndarray,
    *,
    confounds: np.ndarray | None,
    sample_mask: np.ndarray | None,
    t_r: float | None,
    detrend: bool,
    standardize: str | None,
    standardize_confounds: bool,
    filter: str | bool,
    low_pass: float | None,
    high_pass: float | None,
) -> np.ndarray:
    """Clean one chunk of voxel time series with :func:`nilearn.signal.clean`.

    Parameters
    ----------
    block : ndarray, shape (n_timepoints, n_voxels), any float dtype
        One chunk of a Series (all time points, some voxels).
    confounds : ndarray, shape (n_timepoints, n_confounds), float64, or None
        Nuisance regressors, one per column (not modified).
    sample_mask : ndarray of int, shape (n_kept,), or None
        Sorted, unique indices of the volumes to keep (not modified).
    t_r : float or None
        Repetition time, seconds.
    detrend, standardize_confounds : bool
        As in :func:`nilearn.signal.clean`.
    standardize : {"zscore_sample", None}
        Column-wise standardisation; ``"psc"`` is not column-wise in nilearn and goes through
        :func:`psc_parts_block` / :func:`psc_finish_block` instead.
    filter : {"butterworth", "cosine", False}
        Temporal filter.
    low_pass, high_pass : float or None
        Cut-off frequencies, Hz.

    Returns
    -------
    ndarray, shape (n_kept or n_timepoints, n_voxels), float32
        ``nilearn.signal.clean(block.astype(float64), ...)`` cast to float32 (after
        :func:`interpolate_censored` when ``sample_mask`` is given with a Butterworth filter).
    """
    if standardize == "psc":
        raise ValueError("clean_block: psc is not column-wise; use psc_parts/psc_finish_block")
    params = {"confounds": confounds, "sample_mask": sample_mask, "t_r": t_r,
              "detrend": detrend, "standardize_confounds": standardize_confounds,
              "filter": filter, "low_pass": low_pass, "high_pass": high_pass}
    n_voxels = block.shape[1]
    out: np.ndarray | None = None
    # nilearn works in float64 and makes several copies: clean COLUMN_BLOCK voxels at a time
    # (every step is column-wise, so the result is the same) to bound the transient memory
    for j in range(0, max(n_voxels, 1), COLUMN_BLOCK):
        x, prepared = _prepare(block[:, j:j + COLUMN_BLOCK], params)
        cleaned = _nilearn_clean(x, standardize, prepared)
        if out is None:
            out = np.empty((cleaned.shape[0], n_voxels), dtype=np.float32)
        out[:, j:j + COLUMN_BLOCK] = cleaned
    assert out is not None
    return out


def psc_parts_block(block: np.ndarray, **params: Any) -> np.ndarray:
    """The two voxel sums behind nilearn's ``filtered_mean_check`` for one chunk.

    nilearn (``clean``, standardize="psc") adds the original mean back before computing the
    percent signal change when ``mean_v |mean_t(cleaned)| / mean_v |mean_t(original)| < 0.1``.
    Over chunks the ratio of means equals the ratio of sums, so each chunk returns its sums.

    Parameters
    ----------
    block : ndarray, shape (n_timepoints, n_voxels)
    **params
        The keyword arguments of :func:`clean_block` (``standardize`` excluded).

    Returns
    -------
    ndarray, shape (1, 2), float64
        ``[[sum_v |mean_t(cleaned)|, sum_v |mean_t(original)|]]``.
    """
    x, prepared = _prepare(block, params)
    cleaned = _nilearn_clean(x, None, prepared)
    orig = _original_mean(x, prepared)
    return np.array([[np.abs(cleaned.mean(axis=0)).sum(), np.abs(orig).sum()]])


def psc_finish_block(block: np.ndarray, add_mean: Any, **params: Any) -> np.ndarray:
    """Clean one chunk and convert it to percent signal change as nilearn does.

    Parameters
    ----------
    block : ndarray, shape (n_timepoints, n_voxels)
    add_mean : bool or ndarray of bool (any shape, one element)
        The global ``filtered_mean_check`` decision (from the sums of
        :func:`psc_parts_block` over all chunks): add the original mean back before scaling.
    **params
        The keyword arguments of :func:`clean_block` (``standardize`` excluded).

    Returns
    -------
    ndarray, shape (n_kept or n_timepoints, n_voxels), float32
        ``100 * (s - mean_t s) / |mean_t s|`` with ``s`` the cleaned signal (plus the original
        mean when ``add_mean``), via ``nilearn.signal.standardize_signal(s, "psc")``; voxels
        with a zero mean are set to 0.
    """
    from nilearn.signal import standardize_signal

    x, prepared = _prepare(block, params)
    cleaned = _nilearn_clean(x, None, prepared)
    if bool(np.asarray(add_mean).reshape(-1)[0]):
        cleaned = cleaned + _original_mean(x, prepared)
    return np.asarray(standardize_signal(cleaned, standardize="psc", detrend=False)).astype(
        np.float32
    )


def clean_scaled_block(block: np.ndarray, **params: Any) -> np.ndarray:
    """:func:`clean_block` with z-scoring, plus every column's scale and offset.

    Parameters
    ----------
    block : ndarray, shape (n_timepoints, n_voxels), any float dtype
        One chunk of a Series.
    **params
        The keyword arguments of :func:`clean_block` except ``standardize``.

    Returns
    -------
    ndarray, shape (n_kept + 2, n_voxels), float32
        Rows ``[:n_kept]``: the z-scored cleaned series, the same numbers as
        ``clean_block(block, standardize="zscore_sample", ...)``; row ``n_kept``: each
        column's sample standard deviation (ddof=1) of the unstandardised cleaned series (1
        where it is below float64 eps, as nilearn); row ``n_kept + 1``: its mean.  So
        ``scale * z + offset`` is the cleaned series before z-scoring (what
        ``nilearn.signal.clean(..., standardize=False)`` returns), up to float32 rounding.

    Notes
    -----
    The z-scoring is ``nilearn.signal.standardize_signal(x, "zscore_sample", detrend=False)``
    (nilearn 0.14.1) done here step by step, in the same float64 operations, to keep the
    scale it divides by.
    """
    n_voxels = block.shape[1]
    out: np.ndarray | None = None
    for j in range(0, max(n_voxels, 1), COLUMN_BLOCK):
        x, prepared = _prepare(block[:, j:j + COLUMN_BLOCK], params)
        cleaned = _nilearn_clean(x, None, prepared)
        mean = cleaned.mean(axis=0)
        centred = cleaned - mean
        std = centred.std(axis=0, ddof=1)
        std[std < np.finfo(np.float64).eps] = 1.0
        centred /= std
        if out is None:
            out = np.empty((centred.shape[0] + 2, n_voxels), dtype=np.float32)
        out[:-2, j:j + COLUMN_BLOCK] = centred
        out[-2, j:j + COLUMN_BLOCK] = std
        out[-1, j:j + COLUMN_BLOCK] = mean
    assert out is not None
    return out
