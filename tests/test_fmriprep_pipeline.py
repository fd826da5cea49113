"""The participant pipeline on fMRIPrep derivatives (``--derivatives fmriprep=PATH``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from tests.fmriprep_helpers import make_fmriprep_dataset, shared_sources

from neuroscale.cli.main import main

ATLAS = Path(__file__).resolve().parents[1] / "examples" / "atlas" / "aal.nii.gz"


@pytest.fixture()
def fmriprep_dataset(tmp_path: Path) -> tuple[Path, Path]:
    if not shared_sources()[0].is_dir():
        pytest.skip(f"bids-examples not found at {shared_sources()[0]}")
    # 6 mm voxels centred on MNI (0, 0, 0): the AAL atlas has labels on this small grid
    shape = (12, 14, 10)
    centred = np.diag([6.0, 6.0, 6.0, 1.0])
    centred[:3, 3] = -6.0 * (np.array(shape) - 1) / 2
    return make_fmriprep_dataset(tmp_path, n_volumes=60, shape=shape, preproc_affine=centred)


def test_fmriprep_outputs_are_used_instead_of_preprocessing(
        fmriprep_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """fMRIPrep's MNI-space BOLD, brain mask and confounds are used as they are: no motion
    correction, no registration; the outputs carry the space entity; FD for the QC JSON and
    for censoring comes from fMRIPrep's confounds."""
    bids_dir, fmriprep_dir = fmriprep_dataset
    out = tmp_path / "out"
    only_run1 = tmp_path / "filter.json"
    only_run1.write_text(json.dumps({"bold": {"run": 1}}))
    code = main([str(bids_dir), str(out), "participant", "--participant-label", "16",
                 "--bids-filter-file", str(only_run1),
                 "--derivatives", f"fmriprep={fmriprep_dir}", "--atlas", str(ATLAS),
                 "--nuisance-strategy", "24P", "--fd-threshold", "3", "--no-centrality",
                 "--n-workers", "1", "--no-progress", "--work-dir", str(tmp_path / "work")])
    assert code == 0
    func = out / "sub-16" / "func"
    maps = sorted(p.name for p in func.glob("*_boldmap.nii.gz"))
    assert maps and all("space-MNI152NLin2009cAsym" in name for name in maps), maps
    assert not list(func.glob("*desc-motion_timeseries.tsv"))  # fMRIPrep did it
    assert not (out / "sub-16" / "anat").exists()
    preproc = sorted(fmriprep_dir.glob(
        "sub-16/func/*run-1*space-MNI152NLin2009cAsym*desc-preproc_bold.nii.gz"))[0]
    fp_mask = sorted(fmriprep_dir.glob(
        "sub-16/func/*run-1*space-MNI152NLin2009cAsym*desc-brain_mask.nii.gz"))[0]
    mask_out = sorted(func.glob("*run-01*desc-brain_mask.nii.gz"))[0]
    np.testing.assert_array_equal(np.asarray(nib.load(mask_out).dataobj) > 0,
                                  np.asarray(nib.load(fp_mask).dataobj) > 0)
    reho = sorted(func.glob("*run-01*stat-reho_boldmap.nii.gz"))[0]
    np.testing.assert_allclose(nib.load(reho).affine, nib.load(preproc).affine, atol=1e-5)
    qc = json.loads(sorted(func.glob("*run-01*desc-qc_bold.json"))[0].read_text())
    conf = sorted(fmriprep_dir.glob("sub-16/func/*run-1*desc-confounds_timeseries.tsv"))[0]
    fd = pd.read_csv(conf, sep="\t", na_values="n/a")["framewise_displacement"].fillna(0)
    assert qc["fd_mean"] == pytest.approx(fd.to_numpy()[1:].mean(), rel=1e-6)
    # the real confounds file moves a lot (median FD 1.2 mm): threshold 3 mm keeps ~70 %
    assert qc["n_volumes_kept"] == int((fd <= 3.0).sum()) < 60
    ts = pd.read_csv(sorted(func.glob("*atlas-aal_stat-mean_timeseries.tsv"))[0], sep="\t")
    assert len(ts) == qc["n_volumes_kept"]
    prov = json.loads((func / (reho.name.split(".")[0] + ".json")).read_text())
    assert "24P" in json.dumps(prov) and "trans_x_derivative1_power2" in json.dumps(prov)
    assert list(func.glob("*atlas-aal*relmat.tsv"))


def test_fmriprep_without_matching_bold_fails_before_writing(
        fmriprep_dataset: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bids_dir, fmriprep_dir = fmriprep_dataset
    for path in fmriprep_dir.glob("sub-16/func/*run-1*desc-preproc_bold.nii.gz"):
        path.unlink()
    out = tmp_path / "out"
    only_run1 = tmp_path / "filter.json"
    only_run1.write_text(json.dumps({"bold": {"run": 1}}))
    code = main([str(bids_dir), str(out), "participant", "--participant-label", "16",
                 "--bids-filter-file", str(only_run1),
                 "--derivatives", f"fmriprep={fmriprep_dir}", "--n-workers", "1",
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "run-01" in err or "run-1" in err
    assert not out.exists()


def test_bad_derivatives_argument_is_a_usage_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "ds-studyforrest-oneback"
    code = main([str(example), str(tmp_path / "out"), "participant",
                 "--derivatives", "fmriprep"])
    assert code == 2
    assert "fmriprep" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
