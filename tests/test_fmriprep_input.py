"""fMRIPrep derivatives as input: matching raw runs to fMRIPrep's files (ds001 / ds000001-fmriprep)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.fmriprep_helpers import make_fmriprep_dataset

from neuroscale.bids.confounds import load_confounds, non_steady_state_mask
from neuroscale.bids.fmriprep import (
    check_fmriprep_dir,
    find_fmriprep_bold,
    parse_derivatives_arg,
    parse_space,
)
from neuroscale.bids.layout import BoldRun, find_bold_runs
from neuroscale.errors import BIDSError, ConfigurationError, InputNotFoundError


@pytest.fixture()
def dataset(tmp_path: Path, shared_data: Path) -> tuple[Path, Path]:
    return make_fmriprep_dataset(tmp_path, n_volumes=40, subjects=("16",), runs=(1, 2),
                                 shared_data=shared_data, extra_spaces=True)


def _run(bids_dir: Path, run: int) -> BoldRun:
    runs = [r for r in find_bold_runs(bids_dir, ["16"]) if int(r.entities["run"]) == run]
    assert len(runs) == 1
    return runs[0]


def test_matching_and_default_space(dataset: tuple[Path, Path]) -> None:
    bids_dir, prep = dataset
    run = _run(bids_dir, 1)
    assert run.entities["run"] == "01"                       # raw run-01 vs fMRIPrep run-1
    found = find_fmriprep_bold(prep, run)
    assert found.space == "MNI152NLin2009cAsym"
    assert found.preproc_bold.name == (
        "sub-16_task-balloonanalogrisktask_run-1_space-MNI152NLin2009cAsym_res-2_"
        "desc-preproc_bold.nii.gz")
    assert found.brain_mask.name.endswith("run-1_space-MNI152NLin2009cAsym_res-2_"
                                          "desc-brain_mask.nii.gz")
    assert found.boldref is not None and found.boldref.name.endswith("res-2_boldref.nii.gz")
    assert found.confounds is not None
    assert found.confounds.name == "sub-16_task-balloonanalogrisktask_run-1_desc-confounds_" \
                                   "timeseries.tsv"
    # the synthetic content is readable and consistent
    import nibabel as nib

    img = nib.load(found.preproc_bold)
    assert img.shape == (10, 12, 9, 40) and img.header.get_zooms()[3] == 2.0
    assert nib.load(found.brain_mask).shape == (10, 12, 9)
    # the real confounds, resized to the series: every XCP-D strategy loads
    for strategy, n in (("24P", 24), ("36P", 36)):
        arr, _ = load_confounds(found.confounds, strategy)
        assert arr.shape == (40, n)
    arr, names = load_confounds(found.confounds, "acompcor")
    assert arr.shape[0] == 40 and "cosine00" in names
    keep = non_steady_state_mask(found.confounds)
    assert keep.shape == (40,) and keep.sum() == 37           # 3 non-steady-state volumes
    # run 2 gets its own files
    other = find_fmriprep_bold(prep, _run(bids_dir, 2))
    assert "run-2_" in other.preproc_bold.name and "run-2_" in other.confounds.name


def test_space_preference(dataset: tuple[Path, Path]) -> None:
    bids_dir, prep = dataset
    run = _run(bids_dir, 1)
    func = prep / "sub-16" / "func"
    assert find_fmriprep_bold(prep, run, space="T1w").space == "T1w"
    six = find_fmriprep_bold(prep, run, space="MNI152NLin6Asym:res-2")
    assert six.space == "MNI152NLin6Asym" and six.entities["res"] == "2"
    # without MNI152NLin2009cAsym, T1w is next
    for f in func.glob("*run-1_space-MNI152NLin2009cAsym_*"):
        f.unlink()
    assert find_fmriprep_bold(prep, run).space == "T1w"
    # then any other space
    for f in func.glob("*run-1_space-T1w_*"):
        f.unlink()
    assert find_fmriprep_bold(prep, run).space == "MNI152NLin6Asym"
    with pytest.raises(BIDSError, match=r"space 'T1w'.*available: MNI152NLin6Asym:res-2"):
        find_fmriprep_bold(prep, run, space="T1w")
    # then no space entity at all (fMRIPrep < 1.4 native-space output)
    for f in func.glob("*run-1_space-MNI152NLin6Asym_res-2_*"):
        f.rename(f.with_name(f.name.replace("_space-MNI152NLin6Asym_res-2", "")))
    got = find_fmriprep_bold(prep, run)
    assert got.space is None and got.brain_mask.name.endswith("run-1_desc-brain_mask.nii.gz")


def test_no_matching_bold(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    bids_dir, prep = dataset
    run = _run(bids_dir, 1)
    for f in (prep / "sub-16" / "func").glob("*run-1_*desc-preproc_bold.nii.gz"):
        f.unlink()
    with pytest.raises(BIDSError) as err:
        find_fmriprep_bold(prep, run)
    msg = str(err.value)
    assert "sub-16/func/sub-16_task-balloonanalogrisktask_run-01_bold.nii.gz" in msg
    assert str(prep.resolve()) in msg and "\n" not in msg
    # a run of a subject fMRIPrep never processed
    raw = bids_dir / "sub-16" / "func" / "sub-16_task-balloonanalogrisktask_run-01_bold.nii.gz"
    fake = BoldRun(path=raw.with_name(raw.name.replace("run-01", "run-07")), root=bids_dir,
                   entities={"sub": "16", "task": "balloonanalogrisktask", "run": "07"})
    with pytest.raises(BIDSError, match="no fMRIPrep preprocessed BOLD"):
        find_fmriprep_bold(prep, fake)
    # a mask missing beside the chosen series
    run2 = _run(bids_dir, 2)
    for f in (prep / "sub-16" / "func").glob("*run-2_space-MNI152NLin2009cAsym_*brain_mask*"):
        f.unlink()
    with pytest.raises(BIDSError, match="brain mask"):
        find_fmriprep_bold(prep, run2)


def test_missing_or_not_derivatives(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    bids_dir, prep = dataset
    run = _run(bids_dir, 1)
    with pytest.raises(InputNotFoundError, match="does not exist"):
        find_fmriprep_bold(tmp_path / "nowhere", run)
    with pytest.raises(InputNotFoundError, match="not a BIDS derivatives dataset"):
        find_fmriprep_bold(bids_dir, run)                  # the raw dataset itself
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputNotFoundError, match="dataset_description.json"):
        check_fmriprep_dir(empty)
    # GeneratedBy fMRIPrep alone is enough; DatasetType alone too
    desc = json.loads((prep / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    desc.pop("DatasetType")
    (prep / "dataset_description.json").write_text(json.dumps(desc))
    assert check_fmriprep_dir(prep) == prep.resolve()


def test_derivatives_arg() -> None:
    assert parse_derivatives_arg(["fmriprep=/data/fmriprep"]) == {
        "fmriprep": Path("/data/fmriprep")}
    assert parse_derivatives_arg(None) == {}
    for bad in (["/data/fmriprep"], ["=/x"], ["fmriprep="], ["fmri prep=/x"],
                ["fmriprep=/a", "fmriprep=/b"]):
        with pytest.raises(ConfigurationError, match="--derivatives"):
            parse_derivatives_arg(bad)
    assert parse_space("MNI152NLin2009cAsym:res-2") == ("MNI152NLin2009cAsym", {"res": "2"})
    with pytest.raises(ConfigurationError):
        parse_space("MNI:foo-2")


def test_multi_echo_matches_combined(tmp_path: Path) -> None:
    """A derivative without ``echo`` (optimally combined) matches every echo of its run."""
    prep = tmp_path / "prep"
    func = prep / "sub-01" / "func"
    func.mkdir(parents=True)
    (prep / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.8.0", "DatasetType": "derivative"}))
    for name in ("sub-01_task-me_space-T1w_desc-preproc_bold.nii.gz",
                 "sub-01_task-me_space-T1w_desc-brain_mask.nii.gz"):
        (func / name).write_bytes(b"")
    raw = tmp_path / "raw" / "sub-01" / "func" / "sub-01_task-me_echo-2_bold.nii.gz"
    run = BoldRun(path=raw, root=tmp_path / "raw",
                  entities={"sub": "01", "task": "me", "echo": "2"})
    got = find_fmriprep_bold(prep, run)
    assert got.space == "T1w" and got.confounds is None and got.boldref is None
    other = BoldRun(path=raw, root=tmp_path / "raw",
                    entities={"sub": "01", "task": "me", "acq": "x"})
    with pytest.raises(BIDSError):
        find_fmriprep_bold(prep, other)
