"""Self-contained HTML reports: one per participant, one per group.

The reports follow the fMRIPrep / MRIQC visual reports (Esteban et al. 2017, PLoS ONE
12:e0184661; Esteban et al. 2019, Nat Methods 16:111-116): one section per run with a carpet plot,
mosaics and the QC numbers; a group page with per-metric distributions and the flagged runs.

Every figure is a PNG embedded as an RFC 2397 ``data:`` URI and the style sheet is inline, so a
report is one file that opens offline and references nothing on the network (no CDN, no
JavaScript).  Templates are Jinja2 (``autoescape`` on) shipped in
``neuroscale/report/templates``.  The markup is well-formed XHTML-compatible HTML5 (every element
closed, numeric character references only), so it parses with ``xml.etree`` as well as with
browsers.  Files are written atomically (:func:`neuroscale.io.atomic.atomic_write_text`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from neuroscale.errors import AnalysisError, MissingMetadataError
from neuroscale.io.atomic import atomic_write_text
from neuroscale.report import figures

if TYPE_CHECKING:
    import jinja2
    import pandas as pd

__all__ = [
    "ConnectivityMatrix",
    "RunReport",
    "format_value",
    "write_group_report",
    "write_subject_report",
]


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
@dataclass
class ConnectivityMatrix:
    """A region-to-region connectivity matrix for the report.

    Attributes
    ----------
    matrix : ndarray, shape (L, L), float
        Fisher-z (``arctanh`` of Pearson r) or Pearson correlation matrix.
    labels : list of str
        Region names, length L.
    atlas : str
        Atlas name (e.g. ``"HarvardOxford-cort-maxprob-thr0-1mm"``).
    kind : str
        ``"fisher_z"`` or ``"pearson"``: sets the colour-bar label.
    """

    matrix: np.ndarray
    labels: list[str]
    atlas: str = ""
    kind: str = "fisher_z"

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix)
        if self.matrix.ndim != 2 or self.matrix.shape[0] != self.matrix.shape[1]:
            raise AnalysisError(
                f"connectivity matrix of atlas {self.atlas!r} must be square (L, L), "
                f"got shape {self.matrix.shape}"
            )
        if len(self.labels) != self.matrix.shape[0]:
            raise AnalysisError(
                f"connectivity matrix of atlas {self.atlas!r} has {self.matrix.shape[0]} rows "
                f"but {len(self.labels)} labels"
            )


@dataclass
class RunReport:
    """Everything the participant report shows for one BOLD run (all plain NumPy, computed).

    Attributes
    ----------
    name : str
        Run label, e.g. ``"sub-02_task-oneback_run-1"``.
    t_r : float
        Repetition time in seconds (> 0).
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine (mm) of every volume below.
    mask : ndarray, shape (x, y, z), bool
        Brain mask.
    mean : ndarray, shape (x, y, z), float32
        Temporal mean EPI.
    tsnr : ndarray, shape (x, y, z), float32
        Temporal signal-to-noise ratio (mean / standard deviation over time).
    carpet : ndarray, shape (T, n_rows), float32
        A subsample of in-mask voxel time series, detrended and z-scored by the caller; drawn
        one row per voxel in the order given.
    dvars : ndarray, shape (T,), float
        DVARS (signal units per volume); the first value is usually NaN or 0.
    std_dvars : ndarray, shape (T,), float
        Standardised DVARS (dimensionless, Nichols 2017).
    global_signal : ndarray, shape (T,), float
        Mean in-mask signal per volume.
    outlier_fraction : ndarray, shape (T,), float, optional
        Fraction of in-mask voxels flagged as outliers per volume (AFNI ``3dToutcount``).
    fd : ndarray, shape (T,), float, optional
        Framewise displacement in mm (Power et al. 2012).
    non_steady_state : int
        Number of initial non-steady-state volumes (shaded in the carpet plot).
    qc : dict of str to float or int
        The run's QC numbers (as in its QC JSON).
    maps : dict of str to ndarray (x, y, z) float
        Derived maps (e.g. ``"alff"``, ``"falff"``, ``"reho"``, ``"dcb"``, ``"dcw"``,
        ``"seed"``), one mosaic each, in insertion order.
    connectivity : ConnectivityMatrix or sequence of them, optional
        Connectivity matrix (or one per atlas).
    warnings : list of str
        Warnings raised while processing the run (shown prominently).
    outputs : list of str
        Output files, as paths relative to the report's directory (rendered as links).
    extra_figures : list of (str, matplotlib Figure, str)
        Further figures (title, figure, caption), e.g. registration mosaics, shown after
        the mean EPI.
    """

    name: str
    t_r: float
    affine: np.ndarray
    mask: np.ndarray
    mean: np.ndarray
    tsnr: np.ndarray
    carpet: np.ndarray
    dvars: np.ndarray
    std_dvars: np.ndarray
    global_signal: np.ndarray
    outlier_fraction: np.ndarray | None = None
    fd: np.ndarray | None = None
    non_steady_state: int = 0
    qc: dict[str, Any] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    connectivity: ConnectivityMatrix | Sequence[ConnectivityMatrix] | None = None
    warnings: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    extra_figures: list[tuple[str, Any, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (isinstance(self.t_r, int | float) and math.isfinite(self.t_r) and self.t_r > 0):
            raise MissingMetadataError(f"run {self.name}: repetition time must be > 0 s, got {self.t_r!r}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise AnalysisError(f"run {self.name}: affine must be (4, 4), got {self.affine.shape}")
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 3:
            raise AnalysisError(f"run {self.name}: mask must be 3D, got shape {self.mask.shape}")
        for label in ("mean", "tsnr"):
            self._check_volume(label, getattr(self, label))
        for label, vol in self.maps.items():
            self._check_volume(f"map {label!r}", vol)
        self.carpet = np.asarray(self.carpet)
        if self.carpet.ndim != 2:
            raise AnalysisError(f"run {self.name}: carpet must be (T, n_rows), got shape {self.carpet.shape}")
        n_t = self.carpet.shape[0]
        for label in ("dvars", "std_dvars", "global_signal", "outlier_fraction", "fd"):
            trace = getattr(self, label)
            if trace is None:
                continue
            trace = np.asarray(trace, dtype=np.float64).ravel()
            if trace.shape != (n_t,):
                raise AnalysisError(
                    f"run {self.name}: {label} has {trace.shape[0]} values but the carpet has {n_t} time points"
                )
            setattr(self, label, trace)
        if not 0 <= int(self.non_steady_state) <= n_t:
            raise AnalysisError(f"run {self.name}: non_steady_state={self.non_steady_state} outside [0, {n_t}]")

    def _check_volume(self, label: str, vol: np.ndarray) -> None:
        if np.shape(vol) != self.mask.shape:
            raise AnalysisError(
                f"run {self.name}: {label} has shape {np.shape(vol)}, the mask {self.mask.shape}"
            )

    @property
    def connectivities(self) -> list[ConnectivityMatrix]:
        """The connectivity matrices as a list (empty when there are none)."""
        if self.connectivity is None:
            return []
        if isinstance(self.connectivity, ConnectivityMatrix):
            return [self.connectivity]
        return list(self.connectivity)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
#: Human-readable names, units and sources of the per-run maps (mosaic captions).
MAP_DESCRIPTIONS: dict[str, str] = {
    "alff": "ALFF: amplitude of low-frequency fluctuations (Zang et al. 2007)",
    "falff": "fALFF: fractional ALFF (Zou et al. 2008)",
    "reho": "ReHo: regional homogeneity, Kendall's W (Zang et al. 2004)",
    "dcb": "Degree centrality, binarised (Zuo et al. 2012)",
    "dcw": "Degree centrality, weighted (Zuo et al. 2012)",
    "seed": "Seed-based correlation map",
}

_MAP_CMAPS: dict[str, str] = {"alff": "hot", "falff": "hot", "reho": "viridis", "dcb": "magma", "dcw": "magma"}


def format_value(value: Any) -> str:
    """Format one number for a report table.

    Parameters
    ----------
    value : int, float, bool, str or None
        The value.

    Returns
    -------
    str
        Integers (and booleans) verbatim, floats with 4 significant digits (``format(v, ".4g")``),
        non-finite floats and None as ``"n/a"``, anything else ``str(value)``.
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        return format(v, ".4g") if math.isfinite(v) else "n/a"
    return str(value)


def _anchor(name: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


def _href(path: str) -> str:
    """Percent-encode a relative output path for an ``href`` (keeps ``/``)."""
    return quote(str(path).replace("\\", "/"), safe="/._-~")


def _png(fig: Any) -> str:
    return figures.png_data_uri(figures.figure_to_png(fig))


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("neuroscale.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = format_value
    env.filters["href"] = _href
    return env


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _param_rows(parameters: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, value in parameters.items():
        if isinstance(value, str | int | float | bool | np.number) or value is None:
            text = format_value(value)
        else:
            try:
                text = json.dumps(value, default=str, sort_keys=True)
            except (TypeError, ValueError):
                text = str(value)
        rows.append((str(key), text))
    return rows


# --------------------------------------------------------------------------------------------
# Participant report
# --------------------------------------------------------------------------------------------
def _run_context(run: RunReport) -> dict[str, Any]:
    title = run.name
    figs: list[dict[str, str]] = [_carpet_figure(run)]
    orient = (
        "Axial slices, inferior to superior, neurological convention "
        "(subject's left on the left of each slice), anterior up."
    )
    contour_note = " Orange line: brain mask."
    figs.append(
        {
            "id": "mean",
            "title": "Mean EPI",
            "src": _png(
                figures.plot_mosaic(run.mean, run.affine, run.mask, title=f"{title}: mean EPI",
                                    colorbar_label="signal (a.u.)")
            ),
            "caption": f"Temporal mean of the BOLD run. {orient}{contour_note}",
        }
    )
    for i, (fig_title, fig, caption) in enumerate(run.extra_figures):
        figs.append({"id": f"extra-{i}", "title": fig_title, "src": _png(fig),
                     "caption": caption})
    figs.append(
        {
            "id": "tsnr",
            "title": "tSNR",
            "src": _png(
                figures.plot_mosaic(run.tsnr, run.affine, run.mask, title=f"{title}: tSNR",
                                    cmap="viridis", colorbar_label="tSNR")
            ),
            "caption": (
                "Temporal signal-to-noise ratio (mean / standard deviation over time). "
                f"{orient}{contour_note}"
            ),
        }
    )
    figs.extend(_map_figures(run, orient))
    figs.extend(_connectivity_figures(run))
    vox = figures._voxel_sizes(run.affine)
    summary = [
        ("volume shape", " x ".join(str(s) for s in run.mask.shape)),
        ("voxel size (mm)", " x ".join(f"{v:.3g}" for v in vox)),
        ("time points", str(run.carpet.shape[0])),
        ("repetition time (s)", format_value(float(run.t_r))),
        ("in-mask voxels", str(int(run.mask.sum()))),
        ("non-steady-state volumes", str(int(run.non_steady_state))),
    ]
    return {
        "name": run.name,
        "anchor": _anchor(run.name),
        "figures": figs,
        "qc": [(str(k), format_value(v)) for k, v in run.qc.items()],
        "summary": summary,
        "warnings": [str(w) for w in run.warnings],
        "outputs": [str(o) for o in run.outputs],
    }


def _carpet_figure(run: RunReport) -> dict[str, str]:
    """The carpet plot of a run, with its QC traces, as a report figure entry."""
    traces: dict[str, tuple[np.ndarray, str]] = {}
    if run.fd is not None:
        traces["FD (mm)"] = (np.asarray(run.fd), "#9467bd")
    traces["DVARS"] = (np.asarray(run.dvars), "#1f77b4")
    traces["std DVARS"] = (np.asarray(run.std_dvars), "#ff7f0e")
    traces["global signal"] = (np.asarray(run.global_signal), "#2ca02c")
    if run.outlier_fraction is not None:
        traces["outlier fraction"] = (np.asarray(run.outlier_fraction), "#d62728")
    return {
        "id": "carpet",
        "title": "Carpet plot",
        "src": _png(
            figures.plot_carpet(
                run.carpet, run.t_r, traces, non_steady_state=int(run.non_steady_state),
                title=run.name
            )
        ),
        "caption": (
            f"{run.carpet.shape[1]} in-mask voxel time series (rows, detrended and z-scored, "
            "grey scale -2..2) against time in seconds, with "
            + ", ".join(traces)
            + " on the same time axis (Power 2017). "
            + (
                f"The first {int(run.non_steady_state)} non-steady-state volume(s) are shaded red."
                if run.non_steady_state
                else "No non-steady-state volumes were detected."
            )
        ),
    }


def _map_figures(run: RunReport, orient: str) -> list[dict[str, str]]:
    """One report figure entry per map of a run, overlaid on its mean EPI (``orient``: the
    slice-orientation sentence of the captions)."""
    figs: list[dict[str, str]] = []
    for key, vol in run.maps.items():
        kind = key.lower().split("-")[0]  # "seed-pcc" -> "seed"
        desc = MAP_DESCRIPTIONS.get(kind, key)
        if kind != key.lower() and kind in MAP_DESCRIPTIONS:
            desc = f"{desc} ({key})"
        figs.append(
            {
                "id": f"map-{re.sub(r'[^A-Za-z0-9_-]+', '-', key)}",
                "title": f"Map: {key}",
                "src": _png(
                    figures.plot_mosaic(run.mean, run.affine, run.mask, overlay=np.asarray(vol),
                                        title=f"{run.name}: {key}", cmap=_MAP_CMAPS.get(kind),
                                        colorbar_label=key, contour=False)
                ),
                "caption": f"{desc}, in the mask, over the mean EPI. {orient}",
            }
        )
    return figs


def _connectivity_figures(run: RunReport) -> list[dict[str, str]]:
    """One report figure entry per connectivity matrix of a run."""
    figs: list[dict[str, str]] = []
    for conn in run.connectivities:
        label = "Fisher z" if conn.kind == "fisher_z" else "Pearson r"
        figs.append(
            {
                "id": f"conn-{re.sub(r'[^A-Za-z0-9_-]+', '-', conn.atlas or 'atlas')}",
                "title": f"Connectivity: {conn.atlas}",
                "src": _png(
                    figures.plot_matrix(conn.matrix, conn.labels, title=f"{run.name}: {conn.atlas}",
                                        colorbar_label=label)
                ),
                "caption": (
                    f"{conn.matrix.shape[0]} x {conn.matrix.shape[0]} {label} matrix of atlas "
                    f"{conn.atlas}; symmetric colour scale, diagonal blank."
                ),
            }
        )
    return figs


def write_subject_report(
    path: str | Path,
    subject_label: str,
    runs: Sequence[RunReport],
    *,
    dataset_name: str = "",
    software_version: str = "",
    parameters: Mapping[str, Any] | None = None,
) -> Path:
    """Write one participant's self-contained HTML report.

    Parameters
    ----------
    path : str or Path
        Destination, conventionally ``<output>/sub-<label>.html``; parent directories are created.
    subject_label : str
        Participant label, with or without the ``sub-`` prefix.
    runs : sequence of RunReport
        One section per run, in order.
    dataset_name : str
        BIDS dataset name (``dataset_description.json`` ``Name``).
    software_version : str
        neuroscale version written in the header and methods.
    parameters : mapping, optional
        Pipeline parameters, listed in the methods section (nested values as JSON).

    Returns
    -------
    Path
        ``path``.  Written atomically: a crash never leaves a half-written report.

    Notes
    -----
    Per run: carpet plot with DVARS, standardised DVARS, global signal (and FD, outlier
    fraction when given) on a shared time axis in seconds, non-steady-state volumes shaded
    (Power 2017; fMRIPrep's ``fMRIPlot``); mean EPI and tSNR mosaics with the mask contour; one
    mosaic per map; the connectivity matrix; the QC table; warnings; output links.  Figures are
    embedded PNG (about 50-250 kB each), so one run adds roughly 0.5-1.5 MB.
    """
    label = subject_label if subject_label.startswith("sub-") else f"sub-{subject_label}"
    runs_ctx = [_run_context(run) for run in runs]
    html = _environment().get_template("subject.html").render(
        title=f"neuroscale: {label}",
        subject=label,
        dataset_name=dataset_name,
        software_version=software_version,
        generated=_now(),
        runs=runs_ctx,
        parameters=_param_rows(parameters or {}),
    )
    return atomic_write_text(path, html)


# --------------------------------------------------------------------------------------------
# Group report
# --------------------------------------------------------------------------------------------
def _split_columns(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(identifier columns, metric columns) of a QC table."""
    import pandas as pd

    ids: list[str] = []
    metrics: list[str] = []
    for col in table.columns:
        name = str(col)
        if name.endswith("_outlier"):
            continue
        series = table[col]
        if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
            ids.append(name)
        else:
            metrics.append(name)
    return ids, metrics


def write_group_report(
    path: str | Path,
    qc_table: pd.DataFrame,
    group_matrices: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None = None,
    *,
    software_version: str = "",
    dataset_name: str = "",
    subject_reports: Mapping[str, str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Path:
    """Write the group (dataset-level) self-contained HTML report.

    Parameters
    ----------
    path : str or Path
        Destination, e.g. ``<output>/group.html``.
    qc_table : pandas.DataFrame
        One row per run.  Non-numeric columns (e.g. ``subject``, ``run``) identify the run;
        numeric columns are QC metrics; a boolean column ``<metric>_outlier`` flags that
        metric's outliers (computed by the caller, e.g. robust z-score).  Columns ending in
        ``_outlier`` without a matching metric are ignored.
    group_matrices : mapping of str to (ndarray (L, L), sequence of str), optional
        Atlas name -> (group-mean Fisher-z matrix, region names).
    software_version : str
        neuroscale version.
    dataset_name : str
        BIDS dataset name.
    subject_reports : mapping of str to str, optional
        Subject label (as in the ``subject`` column) -> relative link to its report; the subject
        cell becomes a link.
    parameters : mapping, optional
        Group-level parameters (e.g. the outlier threshold), listed in the methods section.

    Returns
    -------
    Path
        ``path``, written atomically.

    Raises
    ------
    AnalysisError
        When ``qc_table`` has no rows, or an ``_outlier`` column is not boolean.

    Notes
    -----
    Table cells flagged as outliers are highlighted and the whole row is marked; per metric a
    box plot with every run as a jittered point and the outliers in red (as MRIQC's group
    report, Esteban et al. 2017); per atlas the group-mean Fisher-z matrix on a symmetric
    colour scale.
    """
    import pandas as pd

    if len(qc_table) == 0:
        raise AnalysisError("group QC table has no rows", path=path)
    ids, metrics = _split_columns(qc_table)
    flags: dict[str, np.ndarray] = {}
    for m in metrics:
        col = f"{m}_outlier"
        if col in qc_table.columns:
            s = qc_table[col]
            if not pd.api.types.is_bool_dtype(s):
                raise AnalysisError(f"column {col!r} of the group QC table must be boolean", path=path)
            flags[m] = s.to_numpy(dtype=bool)
        else:
            flags[m] = np.zeros(len(qc_table), dtype=bool)

    run_names = [
        " ".join(str(v) for v in row) for row in qc_table[ids].itertuples(index=False, name=None)
    ] if ids else [str(i) for i in qc_table.index]

    rows = []
    subject_col = "subject" if "subject" in ids else None
    for i in range(len(qc_table)):
        cells = []
        for c in ids:
            text = format_value(qc_table[c].iloc[i])
            link = None
            if c == subject_col and subject_reports is not None:
                link = subject_reports.get(str(qc_table[c].iloc[i]))
            cells.append({"text": text, "outlier": False, "link": link, "num": False})
        flagged = []
        for m in metrics:
            is_out = bool(flags[m][i])
            if is_out:
                flagged.append(m)
            cells.append(
                {"text": format_value(qc_table[m].iloc[i]), "outlier": is_out, "link": None, "num": True}
            )
        rows.append({"cells": cells, "outlier": bool(flagged), "flagged": ", ".join(flagged)})

    metric_figs = []
    for m in metrics:
        fig = figures.plot_group_metric(
            qc_table[m].to_numpy(dtype=np.float64, na_value=np.nan), flags[m], run_names, metric=m
        )
        metric_figs.append({"metric": m, "src": _png(fig), "n_outliers": int(flags[m].sum())})

    matrix_figs = []
    for atlas, (matrix, names) in (group_matrices or {}).items():
        mat = np.asarray(matrix)
        ConnectivityMatrix(mat, list(names), atlas)  # validates shape / labels
        fig = figures.plot_matrix(mat, list(names), title=f"group mean: {atlas}", colorbar_label="mean Fisher z")
        matrix_figs.append({"atlas": atlas, "src": _png(fig), "n": int(mat.shape[0])})

    html = _environment().get_template("group.html").render(
        title="neuroscale: group report",
        dataset_name=dataset_name,
        software_version=software_version,
        generated=_now(),
        columns=ids + metrics,
        rows=rows,
        n_runs=len(qc_table),
        n_flagged=sum(1 for r in rows if r["outlier"]),
        metric_figures=metric_figs,
        matrix_figures=matrix_figs,
        parameters=_param_rows(parameters or {}),
    )
    return atomic_write_text(path, html)
