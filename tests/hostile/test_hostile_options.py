"""Hostile command-line options and pipeline-level inputs (issue "trust what exists").

Each :class:`~tests.hostile.harness.Case` runs the ``neuroscale`` command line on the cropped example
and asserts the documented exit code, one clear line naming the offending file or option, no
traceback and nothing misleading left behind.  Usage errors (exit 2) are refused before a cluster
starts; atlases that cannot work on a run (exit 4) are refused before that run's first compute.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tests.hostile.harness import (
    EXAMPLE_ATLAS,
    FAST,
    Case,
    bold_path,
    check_failure,
    check_success,
    run_cli,
)

from neuroscale.compute.gpu import gpu_info


def _args(root: Path, *extra: object, out: Path | None = None) -> list[object]:
    return [root / "bids", out or root / "out", "participant", *FAST, *extra]


def _label_atlas(root: Path, name: str, *, shift_mm: float = 0.0, zoom: float = 1.0,
                 outside_brain: bool = False) -> Path:
    """A 2-label atlas derived from the run's own grid: moved by ``shift_mm``, its voxels
    ``zoom`` times larger (another grid); with ``outside_brain`` label 2 sits in a corner of the
    field of view, outside the brain mask."""
    img = nib.load(str(bold_path(root / "bids")))
    shape = tuple(int(np.ceil(s / zoom)) for s in img.shape[:3])
    affine = img.affine.copy()
    affine[:3, :3] *= zoom
    affine[:3, 3] += shift_mm
    labels = np.zeros(shape, np.int16)
    cx, cy, cz = (s // 2 for s in shape)
    labels[cx - 4:cx, cy - 4:cy + 4, cz - 2:cz + 2] = 1
    if outside_brain:
        labels[:2, :2, :2] = 2
    else:
        labels[cx:cx + 4, cy - 4:cy + 4, cz - 2:cz + 2] = 2
    path = root / name
    nib.save(nib.Nifti1Image(labels, affine), str(path))
    return path


def _write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


CASES = [
    # -- atlases -------------------------------------------------------------------------------
    Case("mni-atlas-without-registration",
         lambda root: _args(root, "--atlas", EXAMPLE_ATLAS),
         exit_code=2, message=r"MNI152NLin2009cAsym space .*not registered.*--atlas-space bold",
         names="aal.nii.gz"),
    Case("atlas-on-another-grid-one-parcel-in-the-brain",
         lambda root: _args(root, "--atlas", _label_atlas(root, "grid2.nii.gz", zoom=2.0,
                                                         outside_brain=True),
                            "--atlas-space", "bold"),
         exit_code=4, message=r"atlas grid2: only 1 of 2 parcels have a voxel inside the BOLD's "
                              r"brain mask", names="grid2.nii.gz"),
    Case("atlas-outside-the-field-of-view",
         lambda root: _args(root, "--atlas", _label_atlas(root, "far.nii.gz", shift_mm=900.0),
                            "--atlas-space", "bold"),
         exit_code=4, message=r"outside the BOLD's field of view", names="far.nii.gz"),
    Case("missing-atlas",
         lambda root: _args(root, "--atlas", root / "nope_dseg.nii.gz", "--atlas-space", "bold"),
         exit_code=2, message=r"atlas not found", names="nope_dseg.nii.gz"),
    Case("unknown-atlas-space",
         lambda root: _args(root, "--atlas", EXAMPLE_ATLAS, "--atlas-space", "MNI305"),
         exit_code=2, message=r"--atlas-space: invalid choice", names="MNI305"),
    # -- seeds ---------------------------------------------------------------------------------
    Case("seed-nan", lambda root: _args(root, "--seed", "nan,0,0,6"),
         exit_code=2, message=r"--seed expects X,Y,Z,RADIUS_MM \(finite", names="nan,0,0,6"),
    Case("seed-inf", lambda root: _args(root, "--seed", "0,inf,0,6"),
         exit_code=2, message=r"--seed expects X,Y,Z,RADIUS_MM \(finite", names="0,inf,0,6"),
    Case("seed-radius-nan", lambda root: _args(root, "--seed", "0,0,0,nan"),
         exit_code=2, message=r"--seed expects", names="0,0,0,nan"),
    # -- execution ------------------------------------------------------------------------------
    *([Case("gpu-on-a-machine-without-one", lambda root: _args(root, "--gpu"),
            exit_code=2, message=r"^neuroscale: error: --gpu: (CuPy is not installed|no CUDA GPU)",
            names="--gpu")] if gpu_info() is None else []),
    # -- output and working directories -------------------------------------------------------
    Case("output-is-an-existing-file",
         lambda root: _args(root, out=_write(root, "results.txt", "not a directory\n")),
         exit_code=2, message=r"output_dir exists and is not a directory", names="results.txt"),
    Case("output-below-an-existing-file",
         lambda root: _args(root, out=_write(root, "results.txt", "x\n") / "deriv"),
         exit_code=2, message=r"output_dir: .* is not a directory", names="results.txt"),
    Case("output-inside-the-raw-data",
         lambda root: _args(root, out=root / "bids" / "sub-02" / "deriv"),
         exit_code=2, message=r"output_dir is inside the BIDS dataset .*derivatives",
         names="sub-02/deriv"),
    Case("output-is-the-bids-root",
         lambda root: _args(root, out=root / "bids"),
         exit_code=2, message=r"output_dir must differ from bids_dir", names="bids"),
    Case("work-dir-inside-the-raw-data",
         lambda root: _args(root, "--work-dir", root / "bids" / "work"),
         exit_code=2, message=r"--work-dir is inside the BIDS dataset", names="bids/work"),
    # -- selection (already closed: keep them so) ----------------------------------------------
    Case("participant-label-traversal",
         lambda root: _args(root, "--participant-label", "../../etc"),
         exit_code=2, message=r"participant label\(s\) .* not found", names="../../etc"),
    Case("participant-label-traversal-after-sub",
         lambda root: _args(root, "--participant-label", "sub-02/../../x"),
         exit_code=2, message=r"not found", names="02/../../x"),
    Case("filter-value-traversal",
         lambda root: _args(root, "--bids-filter-file",
                            _write(root, "f.json", '{"bold": {"task": "../../../etc"}}')),
         exit_code=2, message=r"no BOLD run .* with filters", names="../../../etc"),
    Case("filter-subject-traversal",
         lambda root: _args(root, "--bids-filter-file",
                            _write(root, "f.json", '{"bold": {"subject": "../sub-02"}}')),
         exit_code=2, message=r"no BOLD run .* with filters", names="../sub-02"),
    Case("filter-file-invalid-json",
         lambda root: _args(root, "--bids-filter-file", _write(root, "f.json", "{bad")),
         exit_code=2, message=r"not valid JSON", names="f.json"),
    Case("filter-file-is-a-directory",
         lambda root: (root / "filters.json").mkdir() or _args(root, "--bids-filter-file",
                                                               root / "filters.json"),
         exit_code=2, message=r"BIDS filter file", names="filters.json"),
    Case("filter-file-missing",
         lambda root: _args(root, "--bids-filter-file", root / "nope.json"),
         exit_code=2, message=r"BIDS filter file does not exist", names="nope.json"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_option(small_example: Path, case: Case) -> None:
    root = small_example
    result = run_cli(case.make(root), timeout=case.timeout)
    check_failure(case, result, root / "out")
    assert not (root / "bids" / "sub-02" / "deriv").exists(), "written into the raw data"


def test_epi_only_run_says_what_it_did(small_example: Path) -> None:
    """The sanctioned places and the explicit statements work: output under
    ``bids/derivatives/``, a BOLD-space atlas (``--atlas-space bold``); without registration and
    motion correction the confounds fall back to the global signal (+ expansions), and the
    terminal, the sidecars and the report all say so."""
    root = small_example
    out = root / "bids" / "derivatives" / "neuroscale"
    result = run_cli(_args(root, "--atlas", EXAMPLE_ATLAS, "--atlas-space", "bold", out=out))
    check_success(result, warning=r"neuroscale: warning: .*nuisance strategy 36P needs "
                                  r"confounds that are not available .*global signal")
    func = out / "sub-02" / "func"
    sidecar = json.loads(next(func.glob("*_stat-reho_boldmap.json")).read_text())
    assert sidecar["NuisanceStrategyApplied"] == "GS4"
    assert sidecar["ConfoundRegressors"][0] == "global_signal"
    assert "no motion correction" in sidecar["NuisanceStrategyFallback"]
    atlas_sidecar = json.loads(next(func.glob("*_atlas-aal_stat-mean_timeseries.json")).read_text())
    assert atlas_sidecar["Parameters"]["atlas_space"] == "bold"
    assert "unstandardised" in atlas_sidecar["Parameters"]["parcel_signal"]
    report = (out / "sub-02.html").read_text()
    assert "needs confounds that are not available" in report


@pytest.fixture
def small_example(tmp_path: Path) -> Path:
    from tests.hostile.harness import small_bids

    small_bids(tmp_path)
    return tmp_path
