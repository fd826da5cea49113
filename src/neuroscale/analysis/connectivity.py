"""Parcel-level functional connectivity: correlation matrices and their TSV derivatives.

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

TSV layouts follow XCP-D's BIDS derivatives (``xcp_d/interfaces/connectivity.py``):
``*_timeseries.tsv`` has a header row of parcel names and one row per volume, no index column;
``*_relmat.tsv`` has a header row ``Node<TAB>name_1...`` and one row per parcel starting with its
name (pandas ``index_label="Node"``); missing values are written ``n/a`` (BIDS tabular files).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from neuroscale.errors import AnalysisError
from neuroscale.io.atomic import atomic_write_text

__all__ = [
    "correlation_matrices",
    "fisher_z",
    "usable_columns",
    "write_relmat_tsv",
    "write_timeseries_tsv",
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


def _format_value(value: float, single: bool) -> str:
    if np.isnan(value):
        return "n/a"
    # shortest text that reads back to the same float32 / float64
    return str(np.float32(value)) if single else repr(float(value))


def _check_names(names: Sequence[str], n: int, path: Path) -> list[str]:
    names = [str(x) for x in names]
    if len(names) != n:
        raise AnalysisError(f"{len(names)} names for {n} parcels", path)
    bad = [x for x in names if not x or any(c in x for c in "\t\n\r")]
    if bad:
        raise AnalysisError(f"parcel names must be non-empty without tabs/newlines: {bad[:3]}",
                            path)
    if len(set(names)) != len(names):
        raise AnalysisError("parcel names must be unique (they are TSV column headers)", path)
    return names


def write_timeseries_tsv(path: str | Path, timeseries: np.ndarray, names: Sequence[str]) -> Path:
    """Write parcel time series as a BIDS-derivatives ``*_timeseries.tsv``, atomically.

    Layout as XCP-D's ``*_timeseries.tsv``: a header row of parcel names, then one row per
    volume, no index column, NaN written ``n/a``.

    Parameters
    ----------
    path : str or Path
        Destination (``..._timeseries.tsv``).
    timeseries : (n_timepoints, n_parcels) ndarray
        float32 values are written with the shortest text that reads back to the same float32,
        others as float64.
    names : sequence of str, length n_parcels
        Column headers (unique, no tabs or newlines).

    Returns
    -------
    Path

    Raises
    ------
    AnalysisError
        Shape and names disagree, or names are not valid TSV headers.
    """
    path = Path(path)
    ts = np.asarray(timeseries)
    if ts.ndim != 2:
        raise AnalysisError(f"time series must be 2D (time, parcel), got {ts.shape}", path)
    header = _check_names(names, ts.shape[1], path)
    single = ts.dtype == np.float32
    lines = ["\t".join(header)]
    lines += ["\t".join(_format_value(v, single) for v in row) for row in ts.tolist()]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_relmat_tsv(
    path: str | Path,
    matrix: np.ndarray,
    names: Sequence[str],
    *,
    index_label: str | None = "Node",
) -> Path:
    """Write a parcel-by-parcel matrix as a BIDS-derivatives ``*_relmat.tsv``, atomically.

    Layout as XCP-D's ``*_relmat.tsv`` (``DataFrame.to_csv(sep="\\t", na_rep="n/a",
    index_label="Node")``): a header row ``Node`` + parcel names, then one row per parcel that
    starts with its name; NaN written ``n/a``.  ``index_label=None`` drops the index column
    (giga-connectome's BEP017-style layout, header row of names only).

    Parameters
    ----------
    path : str or Path
        Destination (``..._relmat.tsv``).
    matrix : (n_parcels, n_parcels) ndarray
        Written as float64 (shortest round-trip text).
    names : sequence of str, length n_parcels
        Row and column names (unique, no tabs or newlines).
    index_label : str or None
        Header of the index column, or None for no index column.

    Returns
    -------
    Path

    Raises
    ------
    AnalysisError
        The matrix is not square, or its size and the names disagree.
    """
    path = Path(path)
    mat = np.asarray(matrix, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise AnalysisError(f"a relmat must be a square matrix, got {mat.shape}", path)
    header = _check_names(names, mat.shape[0], path)
    lines = ["\t".join(([index_label] if index_label is not None else []) + header)]
    for name, row in zip(header, mat.tolist(), strict=True):
        cells = [_format_value(v, False) for v in row]
        lines.append("\t".join(([name] if index_label is not None else []) + cells))
    return atomic_write_text(path, "\n".join(lines) + "\n")
