"""Confound time series built by neuroscale (fMRIPrep conventions) against planted ground truth."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from tests.fmriprep_helpers import shared_sources
from tests.utils import raise_if_dask_computes

from neuroscale.bids.confounds import load_confounds
from neuroscale.errors import AnalysisError, ConfigurationError
from neuroscale.image import Series
from neuroscale.preproc.confounds import (
    compcor_components,
    confound_signals,
    confounds_table,
    cosine_basis,
    write_confounds_tsv,
)

T_R = 2.0
N_T = 120
SHAPE = (10, 12, 9)


def _nipype_compcor(ts: np.ndarray, t_r: float, period_cut: float, k: int) -> np.ndarray:
    """nipype ``compute_noise_components(filter_type="cosine")``, written out in numpy.

    ``ts`` (voxels, T) as nipype's ``imgseries[mask, :]``.
    """
    ts = np.array(ts, dtype=np.float64)
    ts[np.isnan(ts.sum(axis=1)), :] = 0
    n = ts.shape[1]
    # nipype _cosine_drift(period_cut, frametimes) (constant column last)
    order = max(int(np.floor(2 * n * (1.0 / period_cut) * t_r)), 1)
    x = np.zeros((n, order))
    for j in range(1, order):
        x[:, j - 1] = np.sqrt(2.0 / n) * np.cos((np.pi / n) * (np.arange(n) + 0.5) * j)
    x[:, order - 1] = 1.0
    betas = np.linalg.lstsq(x, ts.T, rcond=None)[0]
    m = (ts - x.dot(betas).T).T                       # M: time x voxels
    std = m.std(axis=0)
    std[std == 0] = 1.0
    std[np.isnan(std)] = 1.0
    m = m / std
    u, _s, _ = np.linalg.svd(m, full_matrices=False)
    u = u[:, :k]
    idx = np.argmax(np.abs(u), axis=0)
    return u * np.sign(u[idx, np.arange(u.shape[1])])


@pytest.fixture(scope="module")
def planted() -> dict:
    """A BOLD grid with a brain box, WM and CSF slabs and planted tissue signals."""
    rng = np.random.default_rng(7)
    brain = np.zeros(SHAPE, bool)
    brain[1:9, 1:11, 1:8] = True
    wm = np.zeros(SHAPE, bool)
    wm[2:5, 2:10, 2:7] = True
    wm[0, 3:6, 3:6] = True                  # outside the brain mask: must be ignored
    csf = np.zeros(SHAPE, bool)
    csf[6:8, 3:9, 2:6] = True
    t = np.arange(N_T) * T_R
    s_wm = np.sin(2 * np.pi * 0.031 * t) + 0.5 * np.sin(2 * np.pi * 0.07 * t + 1.0)
    s_csf = np.cos(2 * np.pi * 0.043 * t) ** 3
    vol = 1000.0 + rng.normal(0, 5.0, (*SHAPE, N_T))
    n_wm = int(wm.sum())
    # rank-one noise in WM: random positive loadings x planted time course
    vol[wm] += rng.uniform(20, 40, n_wm)[:, None] * s_wm[None, :]
    vol[csf] += rng.uniform(20, 40, int(csf.sum()))[:, None] * s_csf[None, :]
    vol[wm] += 300.0                        # brighter WM, known mean offset
    vol[3, 5, 4] = np.nan                   # one bad WM voxel: nipype zeroes it
    data = vol[brain].T.astype(np.float32)  # (T, voxels) in C order of the mask
    series = Series(data=da.from_array(data, chunks=(N_T, 97)), mask=brain,
                    affine=np.diag([3.0, 3.0, 3.0, 1.0]), t_r=T_R)
    return {"series": series, "vol": vol.astype(np.float32), "brain": brain, "wm": wm,
            "csf": csf, "s_wm": s_wm, "s_csf": s_csf}


def test_building_is_lazy(planted: dict) -> None:
    with raise_if_dask_computes():
        lazy = confound_signals(planted["series"], {"WM": planted["wm"], "CSF": planted["csf"]},
                                t_r=T_R, n_dummy=3)
    assert all(isinstance(v, da.Array) for v in lazy.values())
    assert lazy["gram_a_comp_cor"].shape == (N_T - 3, N_T - 3)
    # no task holds the noise-ROI matrix: each gram part comes from one voxel chunk
    assert lazy["gram_w_comp_cor"].npartitions == 1


def test_means_and_compcor(planted: dict) -> None:
    series, vol, brain = planted["series"], planted["vol"], planted["brain"]
    wm, csf = planted["wm"], planted["csf"]
    lazy = confound_signals(series, {"WM": wm, "CSF": csf}, t_r=T_R)
    (res,) = dask.compute(lazy)
    wm_in, csf_in = wm & brain, csf & brain
    # means over the tissue voxels inside the brain mask (float32 data, float64 sums)
    np.testing.assert_allclose(res["white_matter"], np.nanmean(vol[wm_in].astype(np.float64), axis=0),
                               rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(res["csf"], vol[csf_in].astype(np.float64).mean(axis=0),
                               rtol=1e-10)
    np.testing.assert_allclose(res["global_signal"],
                               np.nanmean(vol[brain].astype(np.float64), axis=0), rtol=1e-10)
    assert int(res["n_voxels_wm"]) == int(wm_in.sum()) < int(wm.sum())
    # aCompCor: equals nipype's SVD recipe on the in-memory noise-ROI matrix
    for key, roi in (("w_comp_cor", wm_in), ("c_comp_cor", csf_in),
                     ("a_comp_cor", wm_in | csf_in)):
        ours, explained = compcor_components(res[f"gram_{key}"], 5)
        ref = _nipype_compcor(vol[roi], T_R, 128.0, 5)
        assert ours.shape == (N_T, 5)
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=key)
        assert np.all(np.diff(explained) <= 1e-12) and abs(explained.sum() - 1) < 1e-9
    # the first WM component is the planted WM time course (high-passed as aCompCor does)
    hp = cosine_basis(N_T, T_R)
    x = np.column_stack([hp, np.ones(N_T)])
    for key, sig in (("w_comp_cor", planted["s_wm"]), ("c_comp_cor", planted["s_csf"])):
        filt = sig - x @ np.linalg.lstsq(x, sig, rcond=None)[0]
        comp0 = compcor_components(res[f"gram_{key}"], 1)[0][:, 0]
        assert abs(np.corrcoef(comp0, filt)[0, 1]) > 0.99, key


def test_table_names_and_strategies(planted: dict, tmp_path: Path) -> None:
    series = planted["series"]
    (res,) = dask.compute(confound_signals(series, {"WM": planted["wm"], "CSF": planted["csf"]},
                                           t_r=T_R, n_dummy=2))
    rng = np.random.default_rng(1)
    motion = np.cumsum(rng.normal(0, 0.02, (N_T, 6)), axis=0)
    fd = np.r_[0.0, np.abs(np.diff(motion[:, :3], axis=0)).sum(1)
               + 50 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(1)]
    table = confounds_table(res, motion, fd, t_r=T_R, n_dummy=2)
    n_cos = cosine_basis(N_T - 2, T_R).shape[1]
    assert n_cos == 2
    # every column name is one fMRIPrep writes (checked against a real fMRIPrep file)
    real = shared_sources()[2]         # a real fMRIPrep file; the check is skipped without it
    if real.is_file():
        real_cols = set(pd.read_csv(real, sep="\t", nrows=1).columns)
        for c in table.columns:
            stem = c.rstrip("0123456789")
            assert c in real_cols or any(r.startswith(stem) for r in real_cols), c
    assert list(table.columns[:4]) == ["global_signal", "global_signal_derivative1",
                                       "global_signal_derivative1_power2",
                                       "global_signal_power2"]
    assert np.isnan(table["trans_x_derivative1"].iloc[0])
    assert np.isnan(table["framewise_displacement"].iloc[0])
    np.testing.assert_allclose(table["rot_z_derivative1"].iloc[1:], np.diff(motion[:, 5]))
    assert (table.filter(like="a_comp_cor").iloc[:2] == 0).all().all()
    np.testing.assert_array_equal(table["non_steady_state_outlier01"], np.eye(N_T)[1])
    path = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    write_confounds_tsv(path, table)
    assert "n/a" in path.read_text().splitlines()[1]
    assert not list(tmp_path.glob(".tmp-*"))
    expected = {"24P": 24, "27P": 27, "36P": 36, "acompcor": 12 + 10 + n_cos,
                "acompcor_gsr": 12 + 10 + n_cos + 1}
    for strategy, n in expected.items():
        arr, names = load_confounds(path, strategy, demean=False)
        assert arr.shape == (N_T, n), strategy
        np.testing.assert_allclose(arr[:, names.index("trans_y")], motion[:, 1], rtol=1e-8)
    # nilearn reads it too (36P-equivalent selection)
    from nilearn.interfaces.fmriprep import load_confounds as nl_load

    bold = tmp_path / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    bold.touch()
    nl, _ = nl_load(str(bold), strategy=("motion", "wm_csf", "global_signal"),
                    motion="full", wm_csf="full", global_signal="full", demean=False)
    assert nl.shape == (N_T, 36)
    ours, names = load_confounds(path, "36P", demean=False)
    np.testing.assert_allclose(nl[names].to_numpy(), ours, rtol=1e-8)


def test_bad_input(planted: dict) -> None:
    series = planted["series"]
    with pytest.raises(ConfigurationError, match="CSF"):
        confound_signals(series, {"WM": planted["wm"]}, t_r=T_R)
    empty = np.zeros(SHAPE, bool)
    empty[0, 0, 0] = True                     # only outside the brain
    with pytest.raises(AnalysisError, match="no voxel inside"):
        confound_signals(series, {"WM": empty, "CSF": planted["csf"]}, t_r=T_R)
    with pytest.raises(AnalysisError, match="shape"):
        confound_signals(series, {"WM": planted["wm"][:-1], "CSF": planted["csf"]}, t_r=T_R)


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "x_desc-confounds_timeseries.tsv"
    bad = pd.DataFrame({"a": [1.0, np.inf]})
    with pytest.raises(AnalysisError):
        write_confounds_tsv(path, bad)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_overlapping_masks_union(planted: dict) -> None:
    """a_comp_cor uses the union of WM and CSF; an overlap is counted once."""
    wm = planted["wm"].copy()
    csf = planted["csf"].copy()
    csf[4:7, 3:9, 2:6] = True                 # overlaps WM on the x = 4 plane
    assert (wm & csf & planted["brain"]).any()
    (res,) = dask.compute(confound_signals(planted["series"], {"WM": wm, "CSF": csf}, t_r=T_R))
    union = (wm | csf) & planted["brain"]
    ours, _ = compcor_components(res["gram_a_comp_cor"], 5)
    np.testing.assert_allclose(ours, _nipype_compcor(planted["vol"][union], T_R, 128.0, 5),
                               atol=1e-5)
    assert int(res["n_voxels_wm_csf"]) == int(union.sum())


def test_epi_only_confounds_have_global_signal_motion_and_cosines() -> None:
    """Without tissue masks (no T1w) the table still has GS, motion terms and cosines."""
    from neuroscale.testing import synthetic_series

    series, _ = synthetic_series(100, (8, 9, 7), seed=3)
    lazy = confound_signals(series, {}, t_r=2.0)
    assert sorted(lazy) == ["global_signal", "n_voxels_global"]
    (computed,) = dask.compute(lazy)
    expected = np.asarray(series.data.compute(), dtype=np.float64).mean(axis=1)
    np.testing.assert_allclose(computed["global_signal"], expected, rtol=1e-6)
    motion = np.random.default_rng(0).normal(0, 0.1, (100, 6))
    table = confounds_table(computed, motion, np.abs(motion[:, 0]), t_r=2.0)
    assert "global_signal_derivative1_power2" in table.columns
    assert "rot_z_derivative1_power2" in table.columns and "cosine00" in table.columns
    assert not any(c.startswith(("csf", "white_matter", "a_comp_cor")) for c in table.columns)
