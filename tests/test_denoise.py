"""neuroscale.analysis.denoise.clean against nilearn.signal.clean on the whole in-memory array."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback
from nilearn import signal as nsignal
from scipy.interpolate import CubicSpline

from neuroscale.analysis.denoise import butterworth_min_volumes, clean
from neuroscale.errors import AnalysisError, ConfigurationError, MissingMetadataError
from neuroscale.image import Series

RTOL = 1e-4


class _CountTasks(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
        self.n += 1


def _series(arr: np.ndarray, chunk: int = 300, t_r: float | None = 2.0,
            source: Path | None = None) -> Series:
    t, n = arr.shape
    mask = np.zeros(n, dtype=bool).reshape(n, 1, 1)
    mask[:] = True
    return Series(data=da.from_array(arr.astype(np.float32), chunks=(t, chunk)), mask=mask,
                  affine=np.eye(4), t_r=t_r, source=source)


def _assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    """Relative agreement to RTOL, scaled by the reference's largest magnitude."""
    assert got.shape == ref.shape
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * scale)


def _nilearn(arr: np.ndarray, **kw: Any) -> np.ndarray:
    """nilearn.signal.clean on the whole array (copies: nilearn edits some inputs in place).

    ``butterworth__copy=True`` filters all columns in one ``sosfiltfilt`` call instead of
    nilearn's per-column loop: the same numbers (see test_butterworth_copy_is_identical), in
    a fraction of the time.
    """
    kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    return nsignal.clean(np.array(arr, dtype=np.float64), butterworth__copy=True, **kw)


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Any]:
    """Known ground truth: 0.05 Hz signal + drift + 0.2 Hz noise + confound-driven noise."""
    rng = np.random.default_rng(42)
    t_r, n_t, n_v = 2.0, 150, 900
    time = np.arange(n_t) * t_r
    truth = np.sin(2 * np.pi * 0.05 * time)  # inside the 0.01-0.1 Hz pass band
    conf = np.column_stack([np.cumsum(rng.normal(size=n_t)) for _ in range(4)])
    conf = np.column_stack([conf, rng.normal(size=(n_t, 2))])
    betas = rng.normal(size=(conf.shape[1], n_v))
    amp = rng.uniform(1, 3, size=n_v)
    arr = (1000.0 + rng.normal(0, 100, n_v)  # baseline
           + np.outer(truth, amp)
           + np.outer(0.02 * time, rng.normal(size=n_v))  # linear drift
           + np.outer(np.sin(2 * np.pi * 0.2 * time), rng.uniform(1, 2, n_v))  # above low_pass
           + conf @ betas
           + rng.normal(0, 0.05, (n_t, n_v)))
    return {"arr": arr.astype(np.float32), "conf": conf, "truth": truth, "t_r": t_r}


# --------------------------------------------------------------------------------------------
# ground truth and equality with nilearn (synthetic)


def test_recovers_known_signal(synthetic: dict[str, Any]) -> None:
    """Known ground truth: confounds and linear drifts vanish exactly, the 0.05 Hz sine stays.

    The plain reference is built with numpy/scipy only: linear detrend (least squares),
    band-pass (scipy ``butter`` order 5 + ``sosfiltfilt``, as nilearn), then the least-squares
    residual on the detrended, band-passed, centred confounds (Friston 1994; Lindquist 2019).
    """
    from scipy import signal as sps

    arr, conf, truth = synthetic["arr"], synthetic["conf"], synthetic["truth"]
    n_t, n_v = arr.shape
    out = clean(_series(arr), confounds=conf, standardize=None).data.compute()
    # 1. adding any mix of the confounds and any linear drift changes nothing but a constant
    #    (nilearn centres the confounds, not the filtered signal, before the projection)
    rng = np.random.default_rng(3)
    trend = np.column_stack([np.ones(n_t), np.arange(n_t)])
    extra = conf @ rng.normal(0, 5, (conf.shape[1], n_v)) + trend @ rng.normal(0, 3, (2, n_v))
    out2 = clean(_series(arr + extra.astype(np.float32)), confounds=conf,
                 standardize=None).data.compute()
    _assert_close(out2 - out2.mean(axis=0), out - out.mean(axis=0))
    # 2. plain numpy/scipy reference of the whole pipeline
    sos = sps.butter(5, [0.01, 0.1], btype="band", output="sos", fs=0.5)

    def prep(x: np.ndarray) -> np.ndarray:
        x = x - trend @ np.linalg.lstsq(trend, x, rcond=None)[0]
        return sps.sosfiltfilt(sos, x, axis=0)

    fc = prep(conf)
    fc = fc - fc.mean(axis=0)
    sig = prep(arr.astype(np.float64))
    expected = sig - fc @ np.linalg.lstsq(fc, sig, rcond=None)[0]
    _assert_close(out, expected)
    # 3. away from the filter's edge transients, what is left is the (regressed) sine, up to
    #    a constant per voxel
    e = prep(truth[:, None])
    e = e - fc @ np.linalg.lstsq(fc, e, rcond=None)[0]
    mid = slice(40, n_t - 40)
    e_mid = e[mid, 0] - e[mid, 0].mean()
    o_mid = out[mid] - out[mid].mean(axis=0)
    amp = (e_mid @ o_mid) / (e_mid @ e_mid)
    resid_rms = np.sqrt(((o_mid - np.outer(e_mid, amp)) ** 2).mean(axis=0))
    assert resid_rms.max() < 0.1  # noise level; the sine's RMS is 0.7 x amplitude (1 to 3)
    r = (e_mid @ o_mid) / np.linalg.norm(e_mid) / np.linalg.norm(o_mid, axis=0)
    assert r.min() > 0.99
    assert np.all((amp > 0.9) & (amp < 3.1))  # the voxel amplitudes were drawn in [1, 3]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"standardize": None},
        {"standardize": "psc"},
        {"standardize": "psc", "detrend": False, "low_pass": 0.1, "high_pass": None},
        {"low_pass": None, "high_pass": None},
        {"low_pass": 0.08, "high_pass": None},
        {"low_pass": None, "high_pass": 0.009},
        {"detrend": False},
        {"filter": "cosine", "low_pass": None, "high_pass": 0.01},
        {"filter": False},
        {"standardize_confounds": False},
        {"confounds": None},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults",
)
def test_chunked_equals_nilearn_whole(synthetic: dict[str, Any], kw: dict[str, Any]) -> None:
    arr, conf = synthetic["arr"], synthetic["conf"]
    params: dict[str, Any] = {"detrend": True, "standardize": "zscore_sample",
                              "low_pass": 0.1, "high_pass": 0.01, "filter": "butterworth",
                              "confounds": conf, "standardize_confounds": True}
    params.update(kw)
    out = clean(_series(arr, chunk=250), **params)
    got = out.data.compute()
    assert got.dtype == np.float32
    assert out.data.chunks == ((arr.shape[0],), (250, 250, 250, 150))
    ref_kw = dict(params)
    if ref_kw["filter"] is False:
        ref_kw["low_pass"] = ref_kw["high_pass"] = None
    _assert_close(got, _nilearn(arr, t_r=2.0, **ref_kw))


@pytest.mark.parametrize("standardize", ["zscore_sample", "psc", None])
def test_sample_mask_leading_volumes_equals_nilearn(
    synthetic: dict[str, Any], standardize: str | None
) -> None:
    """Dropping dummy scans: nilearn's own path is correct there, and we match it."""
    arr, conf = synthetic["arr"], synthetic["conf"]
    keep = np.ones(arr.shape[0], dtype=bool)
    keep[:4] = False
    out = clean(_series(arr), confounds=conf, sample_mask=keep, standardize=standardize)
    assert out.n_timepoints == arr.shape[0] - 4
    ref = _nilearn(arr, confounds=conf, sample_mask=keep, low_pass=0.1, high_pass=0.01,
                   t_r=2.0, standardize=standardize)
    _assert_close(out.data.compute(), ref)


def test_sample_mask_cosine_equals_nilearn(synthetic: dict[str, Any]) -> None:
    arr, conf = synthetic["arr"], synthetic["conf"]
    keep = np.setdiff1d(np.arange(arr.shape[0]), [0, 1, 40, 41, 109, 149])
    out = clean(_series(arr), confounds=conf, sample_mask=keep, filter="cosine",
                low_pass=None, high_pass=0.01)
    ref = _nilearn(arr, confounds=conf, sample_mask=keep, filter="cosine", high_pass=0.01,
                   t_r=2.0)
    _assert_close(out.data.compute(), ref)


def test_scrubbing_butterworth_interpolates_censored_volumes(synthetic: dict[str, Any]) -> None:
    """Censored spikes must not leak into the band-passed signal (cubic-spline interpolation).

    Volumes 40 and 109 are mirror images (109 = 150 - 1 - 40): nilearn 0.14.1 leaves both
    un-interpolated (see kernels.signal.interpolate_censored); the reference here interpolates
    plainly with scipy and then calls nilearn.
    """
    arr = synthetic["arr"].copy()
    conf = synthetic["conf"]
    bad = [0, 40, 77, 109, 148, 149]
    arr[bad] += 5000.0  # huge spikes on censored volumes only
    keep = np.setdiff1d(np.arange(arr.shape[0]), bad)
    got = clean(_series(arr), confounds=conf, sample_mask=keep, standardize=None)
    got_arr = got.data.compute()
    assert got_arr.shape == (keep.size, arr.shape[1])
    clean_ref = clean(_series(synthetic["arr"]), confounds=conf, sample_mask=keep,
                      standardize=None).data.compute()
    np.testing.assert_allclose(got_arr, clean_ref, rtol=0, atol=1e-3)  # spikes had no effect
    # independent reference: spline-fill censored volumes in the first..last kept span
    first, last = keep[0], keep[-1]
    time = np.arange(arr.shape[0]) * 2.0
    x = arr.astype(np.float64)
    c = conf.copy()
    miss = np.setdiff1d(np.arange(first, last + 1), keep)
    x[miss] = CubicSpline(time[keep], x[keep])(time[miss])
    c[miss] = CubicSpline(time[keep], c[keep])(time[miss])
    ref = nsignal.clean(x[first:last + 1], confounds=c[first:last + 1],
                        sample_mask=keep - first, standardize=None, low_pass=0.1,
                        high_pass=0.01, t_r=2.0)
    _assert_close(got_arr, ref)


def test_t_r_argument_overrides_missing_metadata(synthetic: dict[str, Any]) -> None:
    arr = synthetic["arr"][:, :200]
    s = _series(arr, t_r=None)
    with pytest.raises(MissingMetadataError, match="repetition time"):
        clean(s)
    _assert_close(clean(s, t_r=2.0).data.compute(),
                  _nilearn(arr, low_pass=0.1, high_pass=0.01, t_r=2.0))
    # no filter: no t_r needed
    _assert_close(clean(s, filter=False).data.compute(), _nilearn(arr))


# --------------------------------------------------------------------------------------------
# laziness, metadata


def test_clean_is_lazy_and_picklable(synthetic: dict[str, Any]) -> None:
    s = _series(synthetic["arr"])
    with _CountTasks() as counter, dask.config.set(scheduler="sync"):
        out = clean(s, confounds=synthetic["conf"], standardize="psc")
        out2 = clean(s, sample_mask=np.arange(3, 150))
    assert counter.n == 0
    assert isinstance(out.data, da.Array) and out.data.dtype == np.float32
    assert out2.data.shape == (147, s.n_voxels)
    assert out.meta["clean"]["n_confounds"] == 6
    assert out.meta["clean"]["standardize"] == "psc"
    assert out.mask is s.mask and out.t_r == 2.0
    back = pickle.loads(pickle.dumps(out2))
    np.testing.assert_array_equal(back.data[:, :10].compute(), out2.data[:, :10].compute())


# --------------------------------------------------------------------------------------------
# validation before the graph


@pytest.mark.parametrize(
    ("low", "high"), [(0.1, 0.01), (0.1, None), (None, 0.01), (0.2, 0.05)]
)
def test_min_volumes_matches_scipy_padlen(low: float | None, high: float | None) -> None:
    """n = butterworth_min_volumes works in nilearn, n - 1 fails there and here."""
    need = butterworth_min_volumes(2.0, low, high)
    rng = np.random.default_rng(0)
    ok = rng.normal(size=(need, 3))
    nsignal.clean(ok.copy(), low_pass=low, high_pass=high, t_r=2.0)  # nilearn accepts it
    clean(_series(ok), low_pass=low, high_pass=high).data.compute()
    short = ok[:-1]
    with pytest.raises(ValueError, match="padlen"):
        nsignal.clean(short.copy(), low_pass=low, high_pass=high, t_r=2.0)
    src = Path("sub-01_task-x_bold.nii.gz")
    with pytest.raises(AnalysisError) as err:
        clean(_series(short, source=src), low_pass=low, high_pass=high)
    msg = str(err.value)
    assert "sub-01_task-x_bold.nii.gz" in msg and f"{need - 1} volumes" in msg
    assert f"at least {need} volumes" in msg and "\n" not in msg


def test_min_volumes_band_pass_value() -> None:
    # order-5 band-pass: 5 second-order sections, ntaps 11, padlen 33
    assert butterworth_min_volumes(2.0, 0.1, 0.01) == 34
    assert butterworth_min_volumes(2.0, 0.1, None) == 19


@pytest.mark.parametrize(
    ("kw", "exc", "pattern"),
    [
        ({"low_pass": 0.25}, ConfigurationError, r"low_pass=0.25 Hz is not below the Nyquist"),
        ({"low_pass": 0.3, "high_pass": None}, ConfigurationError, "Nyquist frequency 0.25 Hz"),
        ({"high_pass": 0.1, "low_pass": 0.05}, ConfigurationError, "must be below low_pass"),
        ({"high_pass": -0.01}, ConfigurationError, "positive frequency"),
        ({"low_pass": float("nan")}, ConfigurationError, "positive frequency"),
        ({"filter": "fir"}, ConfigurationError, "filter must be one of"),
        ({"standardize": "zscore"}, ConfigurationError, "standardize must be one of"),
        ({"filter": "cosine"}, ConfigurationError, "low_pass is not implemented"),
        ({"filter": "cosine", "low_pass": None, "high_pass": None}, ConfigurationError,
         "needs high_pass"),
        ({"t_r": 0.0}, ConfigurationError, "t_r must be a positive"),
        ({"confounds": np.zeros((10, 2))}, AnalysisError, "10 rows but the BOLD series has 60"),
        ({"confounds": np.full((60, 2), np.nan)}, AnalysisError, "NaN"),
        ({"confounds": np.random.default_rng(0).normal(size=(60, 60))}, AnalysisError,
         "no degrees of freedom"),
        ({"sample_mask": np.ones(59, bool)}, ConfigurationError, "59 entries"),
        ({"sample_mask": np.array([3, 2, 10])}, ConfigurationError, "strictly increasing"),
        ({"sample_mask": np.array([0, 60])}, ConfigurationError, r"\[0, 59\]"),
        ({"sample_mask": np.zeros(60, bool)}, AnalysisError, "removes every volume"),
        ({"sample_mask": np.array([0, 20])}, AnalysisError, "first to last kept"),
        ({"filter": "cosine", "low_pass": None, "high_pass": 0.001}, AnalysisError,
         "too short for a cosine"),
    ],
)
def test_invalid_parameters(kw: dict[str, Any], exc: type[Exception], pattern: str) -> None:
    arr = np.random.default_rng(1).normal(size=(60, 20)).astype(np.float32)
    src = Path("/data/sub-07_task-rest_bold.nii.gz")
    with pytest.raises(exc, match=pattern) as err:
        clean(_series(arr, source=src), **kw)
    assert str(err.value).startswith(str(src)) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# the real studyforrest run


@pytest.fixture(scope="module")
def real_series(studyforrest_bold: Path, cache_dir: Path) -> tuple[Series, np.ndarray]:
    import nibabel as nib
    from nilearn.masking import compute_epi_mask

    from neuroscale.image import open_image

    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    mean = img.mean().compute_volume()
    mask = compute_epi_mask(nib.Nifti1Image(mean, img.affine)).get_fdata().astype(bool)
    series = img.to_series(mask)
    assert len(series.data.chunks[1]) > 1  # really chunked
    return series, series.data.compute()


@pytest.mark.parametrize("band_pass", [True, False], ids=["bandpass", "nofilter"])
@pytest.mark.parametrize("with_confounds", [True, False], ids=["confounds", "noconfounds"])
def test_real_run_chunked_equals_nilearn(
    real_series: tuple[Series, np.ndarray], band_pass: bool, with_confounds: bool
) -> None:
    series, whole = real_series
    n_t = whole.shape[0]
    conf = None
    if with_confounds:
        # global signal + derivative, and 4 smooth random-walk "motion" traces
        gs = whole.mean(axis=1, dtype=np.float64)
        rng = np.random.default_rng(7)
        walks = np.cumsum(rng.normal(size=(n_t, 4)), axis=0)
        conf = np.column_stack([gs, np.r_[0.0, np.diff(gs)], walks])
    lp, hp = (0.08, 0.009) if band_pass else (None, None)
    out = clean(series, confounds=conf, low_pass=lp, high_pass=hp)
    assert out.data.chunks == series.data.chunks and out.data.dtype == np.float32
    assert out.t_r == 2.0 and out.source == series.source
    got = out.data.compute()
    ref = _nilearn(whole, confounds=conf, low_pass=lp, high_pass=hp, t_r=2.0)
    _assert_close(got, ref)
    # also against nilearn on the float32 array, as a user would call it
    _assert_close(got, nsignal.clean(whole.copy(), confounds=None if conf is None else
                                     conf.copy(), low_pass=lp, high_pass=hp, t_r=2.0,
                                     butterworth__copy=True))


def test_real_run_too_short_message(real_series: tuple[Series, np.ndarray]) -> None:
    series, _ = real_series
    short = series.with_data(series.data[:30])
    with pytest.raises(AnalysisError) as err:
        clean(short)
    msg = str(err.value)
    assert msg.startswith(str(series.source))
    assert re.search(r"30 volumes .*low_pass=0.1 Hz, high_pass=0.01 Hz.* at least 34 volumes", msg)


@pytest.mark.parametrize("kw", [{}, {"detrend": False}, {"sample_mask": np.arange(5, 150)},
                                {"standardize": None}],
                         ids=["defaults", "detrend=False", "sample_mask", "standardize=None"])
def test_clean_with_scale_undoes_the_zscoring(synthetic: dict[str, Any], kw: dict[str, Any]
                                              ) -> None:
    """z is clean()'s result bit for bit; scale * z + offset is nilearn's unstandardised clean."""
    from neuroscale.analysis.denoise import clean_with_scale

    arr, conf = synthetic["arr"], synthetic["conf"]
    params: dict[str, Any] = {"detrend": True, "standardize": "zscore_sample", "low_pass": 0.1,
                              "high_pass": 0.01, "filter": "butterworth", "confounds": conf}
    params.update(kw)
    out, scale = clean_with_scale(_series(arr, chunk=250), **params)
    z, s = dask.compute(out.data, scale)
    assert s.shape == (2, arr.shape[1]) and s.dtype == np.float32
    np.testing.assert_array_equal(z, clean(_series(arr, chunk=250), **params).data.compute())
    ref_kw = {**params, "standardize": None}
    _assert_close(s[0] * z + s[1], _nilearn(arr, t_r=2.0, **ref_kw))
    if params["standardize"] is None:
        np.testing.assert_array_equal(s, np.vstack([np.ones(arr.shape[1]),
                                                    np.zeros(arr.shape[1])]))
    with pytest.raises(ConfigurationError, match="psc"):
        clean_with_scale(_series(arr), standardize="psc")
