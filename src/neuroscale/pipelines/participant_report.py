"""Participant reports from the written derivatives (small files only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from neuroscale import __version__
from neuroscale.preproc.registration import plot_anat_registration, plot_boldref_registration
from neuroscale.report import ConnectivityMatrix, RunReport, write_subject_report

__all__ = ["build_run_report", "write_participant_reports"]

_TRACE_KEYS = {
    "dvars": ("dvars_nstd_series",),
    "std_dvars": ("dvars_std_series",),
    "global_signal": ("global_signal",),
    "outlier_fraction": ("outlier_fraction",),
    "fd": ("framewise_displacement",),
}
_MAP_ORDER = ("alff", "falff", "reho", "dcb", "dcw")


def _trace(traces: dict[str, Any], name: str, n: int) -> np.ndarray | None:
    for key in _TRACE_KEYS[name]:
        if key in traces and len(traces[key]) == n:
            return np.asarray(traces[key], dtype=float)
        if key in traces and len(traces[key]) == n - 1:  # DVARS: volume i-1 -> i, none for 0
            return np.concatenate([[np.nan], np.asarray(traces[key], dtype=float)])
    return None


def _trace_or(traces: dict[str, Any], name: str, n: int) -> np.ndarray:
    value = _trace(traces, name, n)
    return np.full(n, np.nan) if value is None else value


def _carpet_rows(carpet: np.ndarray) -> np.ndarray:
    """Linear-detrend and z-score each column (voxel) for display, (T, rows)."""
    from scipy.signal import detrend

    out = detrend(np.asarray(carpet, dtype=np.float64), axis=0)
    std = out.std(axis=0)
    std[std == 0] = 1
    return (out / std).astype(np.float32)


def build_run_report(outcome: Any, report_dir: Path) -> Any:
    """A :class:`neuroscale.report.RunReport` from one run's outputs."""
    import nibabel as nib
    import pandas as pd


    outputs: dict[str, Path] = outcome.outputs
    qc_doc = json.loads(outputs["qc"].read_text()) if "qc" in outputs else {}
    traces = qc_doc.get("traces", {})
    n = int(qc_doc.get("n_volumes", 0))
    carpet = np.load(outcome.carpet_path) if outcome.carpet_path and outcome.carpet_path.exists() \
        else np.zeros((n, 1), np.float32)

    def load(key: str) -> np.ndarray | None:
        path = outputs.get(key)
        if path is None:
            return None
        img: Any = nib.load(path)
        return np.asarray(img.dataobj, dtype=np.float32)

    maps = {k: v for k in _MAP_ORDER if (v := load(k)) is not None}
    for key in sorted(outputs):
        if key.startswith("seed-"):
            value = load(key)
            if value is not None:
                maps[key] = value
    matrices = []
    for key in sorted(outputs):
        if key.startswith("atlas-") and key.endswith("-pearson"):
            frame = pd.read_csv(outputs[key], sep="\t", index_col="Node")
            atlas = key[len("atlas-"):-len("-pearson")]
            matrices.append(ConnectivityMatrix(frame.to_numpy(dtype=float), list(frame.columns),
                                               atlas=atlas, kind="pearson"))
    scalars = {k: v for k, v in qc_doc.items()
               if k not in ("traces", "Provenance") and not isinstance(v, dict | list)}
    tsnr = load("tsnr")
    extra = []
    anat = getattr(outcome, "anat", None)
    if anat is not None and getattr(anat, "result", None) is not None:

        result = anat.result
        extra.append((
            "Registration: T1w to MNI152NLin2009cAsym",
            plot_anat_registration(result),
            f"Edges of the template's brain over the participant's T1w warped to "
            f"MNI152NLin2009cAsym (ANTs SyN); Dice of the brain masks {result.dice:.3f} "
            "(the run fails below 0.9)."))
        if outcome.registration is not None and outcome.mean is not None:
            extra.append((
                "Registration: BOLD reference to T1w",
                plot_boldref_registration(outcome.mean, outcome.affine, result,
                                          outcome.registration),
                "Edges of the T1w's tissue boundaries over the mean realigned EPI (rigid, "
                "mutual information); atlases and tissue masks reach the BOLD grid through "
                "these transforms."))
    return RunReport(
        name=Path(outcome.run.path).name.split("_bold")[0],
        t_r=float(outcome.t_r),
        affine=outcome.affine,
        mask=outcome.mask,
        mean=outcome.mean,
        tsnr=tsnr if tsnr is not None else np.zeros_like(outcome.mean),
        carpet=_carpet_rows(carpet),
        dvars=_trace_or(traces, "dvars", n),
        std_dvars=_trace_or(traces, "std_dvars", n),
        global_signal=_trace_or(traces, "global_signal", n),
        outlier_fraction=_trace(traces, "outlier_fraction", n),
        fd=_trace(traces, "fd", n),
        extra_figures=extra,
        non_steady_state=int(qc_doc.get("n_nonsteady", 0) or 0),
        qc=scalars,
        maps=maps,
        connectivity=matrices or None,
        warnings=list(outcome.warnings),
        outputs=[os.path.relpath(p, report_dir) for p in outputs.values()],
    )


def write_participant_reports(out_dir: Path, outcomes: list[Any], *, config_dict: dict[str, Any]
                              ) -> list[Path]:
    """Write ``sub-<label>.html`` for every participant with at least one successful run.

    Parameters
    ----------
    out_dir : Path
        Derivatives root (the pages go there).
    outcomes : list of RunOutcome
        Every run; failed ones are left out.
    config_dict : dict
        The parameters (``dataclasses.asdict(ParticipantConfig)``), shown on the page.

    Returns
    -------
    list of Path
        The pages written.
    """

    by_subject: dict[str, list[Any]] = {}
    for outcome in outcomes:
        if outcome.error is None:
            by_subject.setdefault(outcome.run.entities["sub"], []).append(outcome)
    name = ""
    desc = out_dir / "dataset_description.json"
    if desc.exists():
        name = json.loads(desc.read_text()).get("Name", "")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in config_dict.items()
              if k not in ("work_dir", "progress", "report")}
    params = json.loads(json.dumps(params, default=str))
    written = []
    for subject, runs in sorted(by_subject.items()):
        path = out_dir / f"sub-{subject}.html"
        reports = [build_run_report(o, out_dir) for o in runs]
        write_subject_report(path, subject, reports, dataset_name=name,
                             software_version=__version__, parameters=params)
        for outcome in runs:
            outcome.report = path
        written.append(path)
    return written
