"""Motion censoring (scrubbing): XCP-D's order, chunked, against an in-memory reference."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from nilearn import signal as nsignal
from scipy import signal as sp_signal
from scipy.interpolate import CubicSpline

from neuroscale.analysis.denoise import censoring_mask, censoring_summary, clean
from neuroscale.errors import AnalysisError, ConfigurationError
from neuroscale.image import Series

T_R = 2.0
N_T = 150
LP, HP = 0.1, 0.01


def _series(arr: np.ndarray, chunk: int = 70) -> Series:
    n = arr.shape[1]
    mask = np.ones((n, 1, 1), dtype=bool)
    return Series(data=da.from_array(arr.astype(np.float32), chunks=(arr.shape[0], chunk)),
                  mask=mask, affine=np.eye(4), t_r=T_R)


def _reference(x: np.ndarray, conf: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The recipe written out: interpolate -> detrend -> band-pass -> regress on kept -> z."""
    idx = np.flatnonzero(keep)
    first, last = idx[0], idx[-1]
    times = np.arange(x.shape[0]) * T_R
    missing = np.setdiff1d(np.arange(first, last + 1), idx)

    def interp(a: np.ndarray) -> np.ndarray:
        a = np.array(a, dtype=np.float64)
        if missing.size:
            a[missing] = CubicSpline(times[idx], a[idx])(times[missing])
        return a[first : last + 1]

    xi = sp_signal.detrend(interp(x), axis=0)
    ci = sp_signal.detrend(interp(conf), axis=0)
    sos = sp_signal.butter(5, [HP, LP], btype="band", output="sos", fs=1 / T_R)
    xf = sp_signal.sosfiltfilt(sos, xi, axis=0)
    cf = sp_signal.sosfiltfilt(sos, ci, axis=0)
    k = idx - first
    xk, ck = xf[k], cf[k]
    ck = (ck - ck.mean(0)) / ck.std(0, ddof=1)
    resid = xk - ck @ np.linalg.lstsq(ck, xk, rcond=None)[0]
    return (resid - resid.mean(0)) / resid.std(0, ddof=1)


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(3)
    t = np.arange(N_T) * T_R
    conf = np.cumsum(rng.normal(0, 0.05, (N_T, 6)), axis=0)          # motion-like walks
    shared = np.sin(2 * np.pi * 0.04 * t)
    x = (500 + 8 * shared[:, None] * rng.uniform(0.5, 1.5, 200)
         + conf @ rng.normal(0, 20, (6, 200)) + rng.normal(0, 3, (N_T, 200)))
    return {"x": x, "conf": conf}


def _fd(censor: list[int]) -> np.ndarray:
    fd = np.full(N_T, 0.1)
    fd[0] = np.nan
    fd[censor] = [0.6 + 0.1 * i for i in range(len(censor))]
    return fd


# interior volumes whose mirrors (N_T - 1 - c) are kept: nilearn 0.14.1 gets these right
SAFE = [30, 31, 77, 110]
# consecutive run, a volume whose mirror is censored too (40 / 109), and edges
HARD = [0, 1, 40, 41, 42, 109, 148, 149]


def test_censoring_mask() -> None:
    fd = _fd(SAFE)
    keep = censoring_mask(fd)                        # default 0.5 mm
    assert keep.dtype == bool and keep.shape == (N_T,)
    assert np.array_equal(np.flatnonzero(~keep), SAFE)   # no neighbours censored
    fd2 = fd.copy()
    fd2[5] = 0.5                                     # strictly greater than the threshold
    assert censoring_mask(fd2)[5]
    assert not censoring_mask(fd2, threshold_mm=0.45)[5]
    k3 = censoring_mask(fd, n_dummy=3)
    assert not k3[:3].any() and k3.sum() == N_T - 3 - len(SAFE)
    assert censoring_mask(fd, threshold_mm=0).all()
    summary = censoring_summary(k3, t_r=T_R, threshold_mm=0.5, n_dummy=3)
    assert summary["n_volumes_kept"] == N_T - 7 and summary["n_volumes_censored"] == 4
    assert summary["censored_volumes"] == SAFE and summary["kept_duration_s"] == 2 * (N_T - 7)
    with pytest.raises(ConfigurationError):
        censoring_mask(np.r_[0.1, np.nan, 0.2])
    with pytest.raises(ConfigurationError):
        censoring_mask(fd, n_dummy=-1)
    with pytest.raises(AnalysisError, match="removes all"):
        censoring_mask(np.full(10, 2.0))


@pytest.mark.parametrize("censor", [SAFE, HARD], ids=["interior", "edges+runs"])
def test_matches_reference_and_no_leak(data: dict, censor: list[int]) -> None:
    x, conf = data["x"], data["conf"]
    keep = censoring_mask(_fd(censor))
    out = clean(_series(x), confounds=conf, sample_mask=keep, low_pass=LP, high_pass=HP)
    assert out.data.shape == (int(keep.sum()), x.shape[1])
    assert out.data.chunks[1] == (70, 70, 60)
    got = out.data.compute()
    ref = _reference(x, conf, keep)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    # huge spikes planted in the censored volumes, of the signals and of the confounds:
    # nothing of them reaches the kept volumes
    xs, cs = x.copy(), conf.copy()
    xs[censor] += 1e6
    cs[censor] -= 1e4
    spiked = clean(_series(xs), confounds=cs, sample_mask=keep, low_pass=LP,
                   high_pass=HP).data.compute()
    np.testing.assert_allclose(spiked, got, atol=1e-5)


def test_equals_nilearn_where_nilearn_is_right(data: dict) -> None:
    x, conf = data["x"], data["conf"]
    keep = censoring_mask(_fd(SAFE))
    got = clean(_series(x), confounds=conf, sample_mask=keep, low_pass=LP,
                high_pass=HP).data.compute()
    ref = nsignal.clean(x, confounds=conf, sample_mask=keep, t_r=T_R, low_pass=LP,
                        high_pass=HP, detrend=True, standardize="zscore_sample")
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_nilearn_leaks_where_it_is_wrong(data: dict) -> None:
    """Why neuroscale interpolates itself: nilearn 0.14.1 leaks a censored spike."""
    x = data["x"]
    keep = censoring_mask(_fd(HARD))
    xs = x.copy()
    xs[HARD] += 1e6
    a = nsignal.clean(x, sample_mask=keep, t_r=T_R, low_pass=LP, high_pass=HP)
    b = nsignal.clean(xs, sample_mask=keep, t_r=T_R, low_pass=LP, high_pass=HP)
    assert np.abs(a - b).max() > 1e-2          # nilearn: the spike reached kept volumes
    ours_a = clean(_series(x), sample_mask=keep, low_pass=LP, high_pass=HP).data.compute()
    ours_b = clean(_series(xs), sample_mask=keep, low_pass=LP, high_pass=HP).data.compute()
    np.testing.assert_allclose(ours_a, ours_b, atol=1e-5)
