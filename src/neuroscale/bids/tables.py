"""BIDS-derivatives tables of parcel connectivity: ``*_timeseries.tsv`` and ``*_relmat.tsv``.

TSV layouts follow XCP-D's BIDS derivatives (``xcp_d/interfaces/connectivity.py``):
``*_timeseries.tsv`` has a header row of parcel names and one row per volume, no index column;
``*_relmat.tsv`` has a header row ``Node<TAB>name_1...`` and one row per parcel starting with its
name (pandas ``index_label="Node"``); missing values are written ``n/a`` (BIDS tabular files).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neuroscale.errors import AnalysisError
from neuroscale.io.atomic import atomic_write_text

__all__ = ["write_relmat_tsv", "write_timeseries_tsv"]


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
