"""Group level: QC table of every run with robust-z outlier flags, group connectivity, report.

Reads only the participant-level derivatives (small files); needs no cluster.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuroscale import __version__
from neuroscale.analysis.connectivity import fisher_z
from neuroscale.bids.tables import write_relmat_tsv
from neuroscale.errors import BIDSError
from neuroscale.io.atomic import atomic_write_text
from neuroscale.report import write_group_report

__all__ = ["GroupResult", "robust_z", "run_group"]

#: Modified z-score above which a run is flagged (Iglewicz & Hoaglin 1993).
OUTLIER_Z = 3.5



@dataclass
class GroupResult:
    """Paths written by :func:`run_group`."""

    qc_table: Path
    report: Path | None
    matrices: dict[str, Path] = field(default_factory=dict)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-score ``0.6745 (x - median) / MAD`` (Iglewicz & Hoaglin 1993).

    Parameters
    ----------
    values : (n,) ndarray of float
        One metric over runs (NaN ignored).

    Returns
    -------
    (n,) ndarray of float64
        0 where the MAD is 0 and the value equals the median; +-inf where the MAD is 0 and
        it differs.
    """
    x = np.asarray(values, dtype=np.float64)
    med = np.nanmedian(x)
    mad = np.nanmedian(np.abs(x - med))
    dev = x - med
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(mad > 0, 0.6745 * dev / mad, np.where(dev == 0, 0.0, np.sign(dev) * np.inf))
    return z


def _entities_from_name(name: str) -> dict[str, str]:
    ents = {}
    for part in name.split("_")[:-1]:
        if "-" in part:
            key, value = part.split("-", 1)
            ents[key] = value
    return ents


def run_group(out_dir: str | Path) -> GroupResult:
    """Build ``group_bold_qc.tsv``, group mean Fisher-z matrices and ``group.html``.

    Parameters
    ----------
    out_dir : str or Path
        The participant-level derivatives directory.

    Returns
    -------
    GroupResult

    Raises
    ------
    BIDSError
        No participant-level QC file found (run the participant level first).
    """

    out_dir = Path(out_dir)
    qc_files = sorted(out_dir.glob("sub-*/**/*_desc-qc_bold.json"))
    if not qc_files:
        raise BIDSError("no *_desc-qc_bold.json found: run the participant level first", out_dir)
    rows = []
    for path in qc_files:
        doc = json.loads(path.read_text())
        name = path.name.replace("_desc-qc_bold.json", "")
        ents = {k: v for k, v in _entities_from_name(path.name).items() if k != "desc"}
        row: dict[str, object] = {"run": name, **{k: str(v) for k, v in ents.items()}}
        for key, value in doc.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            row[key] = value
        rows.append(row)
    table = pd.DataFrame(rows)
    metrics = [c for c in table.columns
               if pd.api.types.is_numeric_dtype(table[c]) and c not in ("run",)]
    for metric in metrics:
        z = robust_z(table[metric].to_numpy(dtype=float))
        table[f"{metric}_outlier"] = np.abs(z) > OUTLIER_Z
    table = table.rename(columns={"sub": "subject"})
    qc_path = out_dir / "group_bold_qc.tsv"
    atomic_write_text(qc_path, table.to_csv(sep="\t", index=False, na_rep="n/a"))

    matrices: dict[str, Path] = {}
    group_mats: dict[str, tuple[np.ndarray, list[str]]] = {}
    by_atlas: dict[str, list[Path]] = {}
    for path in sorted(out_dir.glob("sub-*/**/*_stat-pearsoncorrelation_relmat.tsv")):
        atlas = _entities_from_name(path.name).get("atlas", "atlas")
        by_atlas.setdefault(atlas, []).append(path)
    for atlas, paths in by_atlas.items():
        frames = [pd.read_csv(p, sep="\t", index_col="Node") for p in paths]
        names = list(frames[0].columns)
        stack = [fisher_z(f[names].to_numpy(dtype=float)) for f in frames
                 if list(f.columns) == names]
        with warnings.catch_warnings():  # empty parcels are all-NaN: their mean stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = (np.nanmean(np.stack(stack), axis=0) if stack
                    else np.full((len(names),) * 2, np.nan))
        dest = out_dir / f"group_atlas-{atlas}_stat-meanfisherz_relmat.tsv"
        write_relmat_tsv(dest, mean, names)
        matrices[atlas] = dest
        group_mats[atlas] = (mean, names)
    report = None
    try:

        report = write_group_report(out_dir / "group.html", table, group_mats,
                                    software_version=__version__)
    except ImportError:  # pragma: no cover
        report = None
    return GroupResult(qc_table=qc_path, report=report, matrices=matrices)
