"""Parcel-level functional connectivity: correlation matrices (their TSV files are written by
:mod:`neuroscale.bids.tables`).

The inputs are small (``(n_timepoints, n_parcels)`` in memory), so everything here is plain
NumPy on computed parcel time series (see :func:`neuroscale.analysis.parcellate.parcel_timeseries`).
Estimation is delegated to nilearn's ``ConnectivityMeasure``:

* ``"pearson"``: ``ConnectivityMeasure(kind="correlation",
  cov_estimator=sklearn.covariance.EmpiricalCovariance())``.  nilearn's *default* estimator is
  ``LedoitWolf(store_precision=False)``, which shrinks correlations towards zero; we override it
  so that the result is the plain Pearson correlation (``numpy.corrcoef``), as XCP-D
  reports it (``pandas.DataFrame.corr`` in ``xcp_d/interfaces/connectivity.py``).
* ``"partial"``: ``ConnectivityMeasure(kind="partial correlation", cov_estimator=...)`` on
  z-scored columns, with ``LedoitWolf(store_precision=False)`` by default (nilearn's default;
  Ledoit & Wolf 2004, J Multivar Anal 88:365): partial correlation
  ``-P_ij / sqrt(P_ii P_jj)`` with ``P`` the inverse of the shrunk covariance
  (nilearn ``prec_to_partial``).  We z-score first because nilearn standardizes the signals
  for ``kind="correlation"`` but not for ``"partial correlation"``, and the Ledoit-Wolf target
  ``mu * I`` is not scale invariant: on z-scored data the estimate does not depend on each
  parcel's signal units.  ``partial_estimator="empirical"`` gives the unregularised
  (maximum-likelihood) partial correlation, defined only when ``n_timepoints > n_parcels``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from neuroscale.errors import AnalysisError

__all__ = [
    "correlation_matrices",
    "fisher_z",
    "usable_columns",
]

#: Correlations are clipped to +-(1 - FISHER_Z_EPS) before arctanh: |z| <= 8.5.
FISHER_Z_EPS = 1e-7


def usable_columns(timeseries: np.ndarray) -> np.ndarray:
    """Columns that can enter a correlation: all values finite and non-zero variance.

    Parameters
    ----------
    timeseries : (n_timepoints, n_parcels) ndarray

    Returns
    -------
    (n_parcels,) ndarray of bool
        False for empty parcels (NaN columns from
        :func:`~neuroscale.analysis.parcellate.parcel_timeseries`), columns with any
        non-finite value, and constant columns (correlation undefined).
    """
    ts = np.asarray(timeseries, dtype=np.float64)
    finite = np.all(np.isfinite(ts), axis=0)
    safe = np.where(finite, ts, 0.0)
    spread = np.ptp(safe, axis=0)
    scale = np.max(np.abs(safe), axis=0)
    nonconstant = spread > 1e-12 * scale
    return finite & nonconstant


def _zscore(ts: np.ndarray) -> np.ndarray:
    centred = ts - ts.mean(axis=0)
    return centred / centred.std(axis=0, ddof=1)


def correlation_matrices(
    timeseries: np.ndarray,
    *,
    partial_estimator: Literal["ledoit_wolf", "empirical"] = "ledoit_wolf",
) -> dict[str, np.ndarray]:
    """Pearson and partial correlation matrices of parcel time series.

    Parameters
    ----------
    timeseries : (n_timepoints, n_parcels) ndarray
        Parcel mean signals (e.g. computed from
        :func:`~neuroscale.analysis.parcellate.parcel_timeseries`).  Columns that are not
        :func:`usable_columns` (NaN columns of empty parcels, constant columns) are left out of
        the estimation and get NaN rows and columns in both matrices, diagonal included.
    partial_estimator : {"ledoit_wolf", "empirical"}
        Covariance estimator behind the partial correlation (see the module docstring).

    Returns
    -------
    dict
        ``"pearson"``: (n_parcels, n_parcels) float64, Pearson correlation (nilearn
        ``ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance())``),
        diagonal 1.  ``"partial"``: (n_parcels, n_parcels) float64, partial correlation
        (nilearn ``ConnectivityMeasure(kind="partial correlation")`` on z-scored columns with the
        chosen estimator), diagonal 1.  Both exactly symmetric.

    Raises
    ------
    AnalysisError
        Not 2D, fewer than 3 time points, fewer than 2 usable columns, or
        ``partial_estimator="empirical"`` with too few time points for an invertible covariance.
    """
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    ts = np.asarray(timeseries, dtype=np.float64)
    if ts.ndim != 2:
        raise AnalysisError(f"time series must be 2D (time, parcel), got shape {ts.shape}")
    n_t, n_parcels = ts.shape
    if n_t < 3:
        raise AnalysisError(f"need at least 3 time points for a correlation, got {n_t}")
    good = usable_columns(ts)
    n_good = int(good.sum())
    if n_good < 2:
        raise AnalysisError(
            f"need at least 2 parcels with a finite, non-constant time series, got {n_good} "
            f"of {n_parcels}"
        )
    if partial_estimator == "ledoit_wolf":
        estimator = LedoitWolf(store_precision=False)
    elif partial_estimator == "empirical":
        if n_good >= n_t - 1:
            raise AnalysisError(
                f"empirical partial correlation needs more time points than parcels "
                f"({n_t} time points, {n_good} parcels): use partial_estimator='ledoit_wolf'"
            )
        estimator = EmpiricalCovariance()
    else:
        raise AnalysisError(f"unknown partial_estimator {partial_estimator!r}")

    z = _zscore(ts[:, good])
    pearson = ConnectivityMeasure(
        kind="correlation", cov_estimator=EmpiricalCovariance()
    ).fit_transform([z])[0]
    try:
        partial = ConnectivityMeasure(
            kind="partial correlation", cov_estimator=estimator
        ).fit_transform([z])[0]
    except np.linalg.LinAlgError as exc:
        raise AnalysisError(f"covariance matrix is singular: {exc}") from exc

    out = {}
    idx = np.flatnonzero(good)
    for key, small in (("pearson", pearson), ("partial", partial)):
        full = np.full((n_parcels, n_parcels), np.nan, dtype=np.float64)
        small = 0.5 * (small + small.T)
        np.fill_diagonal(small, 1.0)
        full[np.ix_(idx, idx)] = small
        out[key] = full
    return out


def fisher_z(r: np.ndarray, *, diagonal: float = np.nan) -> np.ndarray:
    """Fisher's r-to-z transform, ``arctanh(r)``, with clipping.

    Parameters
    ----------
    r : ndarray
        Correlations in [-1, 1] (NaN passes through).
    diagonal : float
        Value written on the diagonal when ``r`` is a square 2D matrix.  Default **NaN**: the
        diagonal of a correlation matrix is 1 by construction and ``arctanh(1)`` is infinite, so
        it carries no information, and NaN keeps it out of ``nanmean``-style group averages;
        pass 0 for tools that cannot take NaN.

    Returns
    -------
    ndarray of float64
        ``arctanh(clip(r, -(1 - 1e-7), 1 - 1e-7))`` (Fisher 1915), so ``|z| <= 8.5``; same shape.
    """
    r = np.asarray(r, dtype=np.float64)
    lim = 1.0 - FISHER_Z_EPS
    z = np.arctanh(np.clip(r, -lim, lim))
    if z.ndim == 2 and z.shape[0] == z.shape[1]:
        np.fill_diagonal(z, diagonal)
    return z


