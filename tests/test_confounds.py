"""fMRIPrep confounds: strategies against nilearn.interfaces.fmriprep.load_confounds."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from neuroscale.bids.confounds import (
    STRATEGIES,
    check_confounds_length,
    find_confounds_file,
    load_confounds,
    non_steady_state_mask,
    select_columns,
)
from neuroscale.errors import AnalysisError, ConfigurationError, InputNotFoundError

RTOL = 1e-4
BOLD = "sub-01_task-test_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz"


@pytest.fixture(scope="module")
def confounds_dir(shared_data: Path) -> Path:
    d = shared_data / "misc" / "nilearn-0.14.1_fmriprep_confounds"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


@pytest.fixture()
def v21(confounds_dir: Path, tmp_path: Path) -> Path:
    """fMRIPrep >= 20.2 layout: BOLD + desc-confounds_timeseries.tsv/.json, named for nilearn."""
    for ext in ("tsv", "json"):
        shutil.copy(confounds_dir / f"test-v21_desc-confounds_timeseries.{ext}",
                    tmp_path / f"sub-01_task-test_desc-confounds_timeseries.{ext}")
    (tmp_path / BOLD).touch()
    return tmp_path / BOLD


@pytest.fixture()
def old_regressors(confounds_dir: Path, tmp_path: Path) -> Path:
    """Pre-20.2 layout (desc-confounds_regressors.tsv), no non-steady-state column."""
    shutil.copy(confounds_dir / "no_nonsteady_desc-confounds_regressors.tsv",
                tmp_path / "sub-01_task-test_desc-confounds_regressors.tsv")
    (tmp_path / BOLD).touch()
    return tmp_path / BOLD


def _nilearn(bold: Path, demean: bool, **kw: Any) -> tuple[pd.DataFrame, Any]:
    from nilearn.interfaces.fmriprep import load_confounds as nl_load

    return nl_load(str(bold), demean=demean, **kw)


# nilearn.interfaces.fmriprep.load_confounds parameters equivalent to each XCP-D strategy
NILEARN_EQUIVALENT: dict[str, dict[str, Any]] = {
    "6P": {"strategy": ("motion",), "motion": "basic"},
    "24P": {"strategy": ("motion",), "motion": "full"},
    "27P": {"strategy": ("motion", "wm_csf", "global_signal"), "motion": "full",
            "wm_csf": "basic", "global_signal": "basic"},
    "36P": {"strategy": ("motion", "wm_csf", "global_signal"), "motion": "full",
            "wm_csf": "full", "global_signal": "full"},
    "gsr_only": {"strategy": ("global_signal",), "global_signal": "basic"},
    # first 5 WM + first 5 CSF components (the file has 4 and 3), cosines, motion + derivs
    "acompcor": {"strategy": ("motion", "high_pass", "compcor"), "motion": "derivatives",
                 "compcor": "anat_separated", "n_compcor": 5},
    "acompcor_gsr": {"strategy": ("motion", "high_pass", "compcor", "global_signal"),
                     "motion": "derivatives", "compcor": "anat_separated", "n_compcor": 5,
                     "global_signal": "basic"},
}


@pytest.mark.parametrize("strategy", list(NILEARN_EQUIVALENT))
def test_strategy_matches_nilearn(v21: Path, strategy: str) -> None:
    tsv = find_confounds_file(v21)
    assert tsv is not None
    arr, names = load_confounds(tsv, strategy, demean=False)
    ref, _ = _nilearn(v21, demean=False, **NILEARN_EQUIVALENT[strategy])
    assert sorted(names) == sorted(ref.columns)
    assert arr.dtype == np.float64 and arr.shape == (30, len(names))
    np.testing.assert_allclose(arr, ref[names].to_numpy(), rtol=RTOL, atol=0)


def test_expected_column_counts(v21: Path) -> None:
    tsv = find_confounds_file(v21)
    assert tsv is not None
    counts = {s: len(load_confounds(tsv, s)[1]) for s in
              ("none", "6P", "24P", "27P", "36P", "gsr_only")}
    assert counts == {"none": 0, "6P": 6, "24P": 24, "27P": 27, "36P": 36, "gsr_only": 1}
    arr, names = load_confounds(tsv, "acompcor")
    # 12 motion + w_comp_cor_00..03 + c_comp_cor_00..02 (all there are) + cosine00
    assert len(names) == 12 + 4 + 3 + 1
    assert "w_comp_cor_00" in names and "c_comp_cor_00" in names and "cosine00" in names
    assert "a_comp_cor_00" not in names and "t_comp_cor_00" not in names
    _, gsr = load_confounds(tsv, "acompcor_gsr")
    assert set(gsr) - set(names) == {"global_signal"}
    empty, none = load_confounds(tsv, "none")
    assert empty.shape == (30, 0) and none == []


def test_demean_and_first_row_fill_match_nilearn(old_regressors: Path) -> None:
    """Without non-steady-state volumes nilearn demeans over all rows, as we do."""
    tsv = find_confounds_file(old_regressors)
    assert tsv is not None and tsv.name.endswith("_desc-confounds_regressors.tsv")
    arr, names = load_confounds(tsv, "36P")
    ref, sample_mask = _nilearn(old_regressors, demean=True, **NILEARN_EQUIVALENT["36P"])
    assert sample_mask is None
    np.testing.assert_allclose(arr, ref[names].to_numpy(), rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(arr.mean(axis=0), 0, atol=1e-9)
    # the first row of derivative columns is n/a in the file and becomes the second row
    raw = pd.read_csv(tsv, sep="\t", na_values="n/a")
    deriv = [n for n in names if "derivative1" in n]
    assert raw[deriv].iloc[0].isna().all()
    filled, _ = load_confounds(tsv, deriv, demean=False)
    np.testing.assert_array_equal(filled[0], raw[deriv].iloc[1].to_numpy())
    np.testing.assert_array_equal(filled[1:], raw[deriv].iloc[1:].to_numpy())


def test_non_steady_state_mask_matches_nilearn(v21: Path) -> None:
    tsv = find_confounds_file(v21)
    assert tsv is not None
    keep = non_steady_state_mask(tsv)
    _, sample_mask = _nilearn(v21, demean=False, **NILEARN_EQUIVALENT["6P"])
    np.testing.assert_array_equal(np.flatnonzero(keep), sample_mask)
    assert keep.sum() == 27


def test_custom_list_with_regex(v21: Path) -> None:
    tsv = find_confounds_file(v21)
    assert tsv is not None
    arr, names = load_confounds(tsv, ["csf", "^t_comp_cor_\\d+$", "framewise_displacement"],
                                demean=False)
    assert names == ["csf", "framewise_displacement", "t_comp_cor_00", "t_comp_cor_01",
                     "t_comp_cor_02"]
    raw = pd.read_csv(tsv, sep="\t", na_values="n/a")
    np.testing.assert_array_equal(arr[:, 0], raw["csf"].to_numpy())
    # framewise_displacement is n/a in row 0 -> row 1's value (nilearn's rule)
    assert arr[0, 1] == raw["framewise_displacement"].iloc[1]


def test_aroma_from_separate_table(v21: Path, tmp_path: Path) -> None:
    tsv = find_confounds_file(v21)
    assert tsv is not None
    with pytest.raises(AnalysisError, match="aroma_orth_motion") as err:
        load_confounds(tsv, "aroma")
    assert str(tsv) in str(err.value)
    rng = np.random.default_rng(0)
    aroma = pd.DataFrame(rng.normal(size=(30, 3)),
                         columns=[f"aroma_orth_motion_{i:02d}" for i in range(3)])
    aroma["aroma_motion_00"] = 1.0  # not selected: XCP-D wants the orthogonalised ones
    apath = tmp_path / "sub-01_task-test_desc-aroma_timeseries.tsv"
    aroma.to_csv(apath, sep="\t", index=False)
    arr, names = load_confounds(tsv, "aroma_gsr", aroma_path=apath, demean=False)
    assert names == ["global_signal", "csf", "white_matter", "aroma_orth_motion_00",
                     "aroma_orth_motion_01", "aroma_orth_motion_02"]
    np.testing.assert_allclose(arr[:, 3:], aroma.iloc[:, :3].to_numpy())
    aroma.iloc[:20].to_csv(apath, sep="\t", index=False)
    with pytest.raises(AnalysisError, match="20 rows"):
        load_confounds(tsv, "aroma", aroma_path=apath)


# --------------------------------------------------------------------------------------------
# errors


def test_unknown_strategy_lists_valid_names(v21: Path) -> None:
    with pytest.raises(ConfigurationError) as err:
        load_confounds(v21.parent / "does-not-matter.tsv", "37P")
    msg = str(err.value)
    for name in STRATEGIES:
        assert name in msg
    assert isinstance(err.value, ValueError)


def test_missing_columns_named(v21: Path, tmp_path: Path) -> None:
    tsv = find_confounds_file(v21)
    assert tsv is not None
    df = pd.read_csv(tsv, sep="\t")
    broken = tmp_path / "sub-02_task-test_desc-confounds_timeseries.tsv"
    df.drop(columns=["csf_power2", "rot_z"]).to_csv(broken, sep="\t", index=False,
                                                   na_rep="n/a")
    with pytest.raises(AnalysisError) as err:
        load_confounds(broken, "36P")
    msg = str(err.value)
    assert str(broken) in msg and "'rot_z'" in msg and "'csf_power2'" in msg
    assert "\n" not in msg
    # the old single-mask CompCor layout has no w_/c_comp_cor columns for XCP-D's acompcor
    with pytest.raises(AnalysisError, match=r"no column matches .*w_comp_cor"):
        select_columns(["trans_x", "a_comp_cor_00"], "acompcor", path="x.tsv")


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        load_confounds(tmp_path / "nope.tsv")


def test_nan_beyond_first_row(tmp_path: Path) -> None:
    p = tmp_path / "c.tsv"
    pd.DataFrame({"global_signal": [1.0, 2.0, np.nan, 4.0]}).to_csv(p, sep="\t", index=False,
                                                                    na_rep="n/a")
    with pytest.raises(AnalysisError, match="global_signal"):
        load_confounds(p, "gsr_only")


def test_check_confounds_length() -> None:
    check_confounds_length(np.zeros((30, 4)), 30)
    with pytest.raises(AnalysisError, match="30 rows but the BOLD series has 156 volumes") as e:
        check_confounds_length(np.zeros((30, 4)), 156, path="sub-02_bold.nii.gz")
    assert str(e.value).startswith("sub-02_bold.nii.gz: ")


# --------------------------------------------------------------------------------------------
# finding the file


def test_find_confounds_file_variants(tmp_path: Path) -> None:
    func = tmp_path / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-01_ses-1_task-rest_run-2_space-T1w_desc-preproc_bold.nii.gz"
    assert find_confounds_file(bold) is None
    other_run = func / "sub-01_ses-1_task-rest_run-1_desc-confounds_timeseries.tsv"
    other_run.touch()
    assert find_confounds_file(bold) is None  # run-1 is not run-2's
    old = func / "sub-01_ses-1_task-rest_run-2_desc-confounds_regressors.tsv"
    old.touch()
    assert find_confounds_file(bold) == old
    new = func / "sub-01_ses-1_task-rest_run-2_desc-confounds_timeseries.tsv"
    new.touch()
    assert find_confounds_file(bold) == new  # _timeseries preferred
    # a CIFTI / GIFTI output of the same run finds the same file
    assert find_confounds_file(func / "sub-01_ses-1_task-rest_run-2_space-fsLR_den-91k_"
                                      "bold.dtseries.nii") == new
    assert find_confounds_file(func / "sub-01_ses-1_task-rest_run-2_hemi-L_space-fsaverage_"
                                      "bold.func.gii") == new
    # a BOLD name with an entity the confounds file lacks (here acq) still matches by subset
    acq_bold = func / "sub-01_ses-1_task-rest_acq-mb_run-2_space-T1w_desc-preproc_bold.nii.gz"
    assert find_confounds_file(acq_bold) == new
    # two equally specific candidates: refuse to guess
    amb = tmp_path / "amb"
    amb.mkdir()
    (amb / "sub-01_task-a_desc-confounds_timeseries.tsv").touch()
    (amb / "sub-01_run-1_desc-confounds_timeseries.tsv").touch()
    with pytest.raises(AnalysisError, match="several confounds files"):
        find_confounds_file(amb / "sub-01_task-a_run-1_desc-preproc_bold.nii.gz")


# --------------------------------------------------------------------------------------------
# into clean()


def test_confounds_into_clean(v21: Path) -> None:
    import dask.array as da
    from nilearn import signal as nsignal

    from neuroscale.analysis.denoise import clean
    from neuroscale.image import Series

    tsv = find_confounds_file(v21)
    assert tsv is not None
    conf, names = load_confounds(tsv, "24P")
    rng = np.random.default_rng(5)
    arr = (rng.normal(size=(30, 400)) + 100).astype(np.float32)
    s = Series(data=da.from_array(arr, chunks=(30, 150)), mask=np.ones((400, 1, 1), bool),
               affine=np.eye(4), t_r=2.0, source=v21)
    out = clean(s, confounds=conf, low_pass=None, high_pass=0.01).data.compute()
    ref = nsignal.clean(arr.astype(np.float64), confounds=conf.copy(), high_pass=0.01,
                        t_r=2.0)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())
    # 36 regressors in 30 volumes: refused before any computation
    conf36, _ = load_confounds(tsv, "36P")
    with pytest.raises(AnalysisError, match="36 nuisance regressors leave no degrees"):
        clean(s, confounds=conf36, low_pass=None, high_pass=0.01)
    # a band-pass needs 34 volumes at order 5
    with pytest.raises(AnalysisError, match="at least 34 volumes"):
        clean(s, confounds=conf)


# -- custom strategy files in XCP-D's format ----------------------------------------------

_XCPD_36P = """\
name: 36P
description: |
    In total, 36 nuisance regressors were selected from the preprocessing confounds,
    according to the '36P' strategy.
confounds:
    preproc_confounds:
        dataset: preprocessed
        query:
            space: null
            cohort: null
            res: null
            den: null
            desc: confounds
            extension: .tsv
            suffix: timeseries
        columns:
{columns}
"""

# XCP-D's older list form (acompcor.yml before the 0[0-4] fix), regexes included
_XCPD_LIST = """\
name: old_acompcor
description: list form
confounds:
-   dataset: preprocessed
    query:
        space: null
        description: confounds
        extension: .tsv
        suffix: timeseries
    columns:
    - trans_x
    - trans_x_derivative1
    - ^w_comp_cor_0[1-5]$
    - ^c_comp_cor_0[1-5]$
    - ^cosine\\d+$
"""


def test_custom_strategy_file_yaml(v21: Path, tmp_path: Path) -> None:
    from neuroscale.bids.confounds import load_strategy_file

    tsv = find_confounds_file(v21)
    assert tsv is not None
    cols = "\n".join(f"        - {c}" for c in STRATEGIES["36P"].columns)
    yml = tmp_path / "my36P.yml"
    yml.write_text(_XCPD_36P.format(columns=cols))
    strat = load_strategy_file(yml)
    assert strat.name == "36P" and strat.columns == STRATEGIES["36P"].columns
    assert strat.description.startswith("In total, 36 nuisance regressors")
    got, names = load_confounds(tsv, str(yml))          # a path where a name goes
    ref, ref_names = load_confounds(tsv, "36P")
    assert names == ref_names
    np.testing.assert_array_equal(got, ref)
    lst = tmp_path / "old.yaml"
    lst.write_text(_XCPD_LIST)
    arr, names = load_confounds(tsv, lst, demean=False)
    assert names == ["trans_x", "trans_x_derivative1", "w_comp_cor_01", "w_comp_cor_02",
                     "w_comp_cor_03", "c_comp_cor_01", "c_comp_cor_02", "cosine00"]
    # the same structure as JSON
    import json

    import yaml

    js = tmp_path / "s.json"
    js.write_text(json.dumps(yaml.safe_load(_XCPD_LIST)))
    assert load_confounds(tsv, js, demean=False)[1] == names


@pytest.mark.parametrize(("text", "match"), [
    ("confounds: [1, 2", "not valid YAML"),
    ("- a\n- b\n", "is a mapping"),
    ("name: x\nconfounds: {}\n", "empty"),
    ("name: x\n", "'confounds' must be"),
    ("name: x\nfoo: 1\nconfounds: {a: {columns: [csf]}}\n", "unknown keys"),
    ("name: x\nconfounds: {a: {dataset: rapidtide, columns: [x]}}\n", "not supported"),
    ("name: x\nconfounds: {a: {dataset: preprocessed}}\n", "'columns' is missing"),
    ("name: x\nconfounds: {a: {columns: []}}\n", "non-empty list"),
    ("name: x\nconfounds: {a: {columns: ['^w_comp_cor_0[1-5$']}}\n", "bad regular expression"),
    ("name: x\nconfounds: {a: {columns: [csf, csf]}}\n", "listed twice"),
    ("name: x\nconfounds: {a: {query: {desc: signal}, columns: [csf]}}\n", "confounds_timeseries"),
    ("name: x\nconfounds: {a: {query: {extension: .nii.gz}, columns: [csf]}}\n", "voxelwise"),
])
def test_custom_strategy_file_errors(tmp_path: Path, text: str, match: str) -> None:
    from neuroscale.bids.confounds import load_strategy_file

    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=match) as err:
        load_strategy_file(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_custom_strategy_file_missing(tmp_path: Path, v21: Path) -> None:
    tsv = find_confounds_file(v21)
    assert tsv is not None
    with pytest.raises(InputNotFoundError, match="strategy file not found"):
        load_confounds(tsv, str(tmp_path / "nope.yml"))
    # columns the table lacks: AnalysisError naming them, as for the named strategies
    path = tmp_path / "s.yml"
    path.write_text("name: s\nconfounds: {a: {columns: [csf, not_a_column]}}\n")
    with pytest.raises(AnalysisError, match="not_a_column"):
        load_confounds(tsv, path)
