"""ALFF / fALFF against plain numpy/scipy references (synthetic sinusoids + the real run)."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from scipy.signal import detrend
from tests.utils import raise_on_compute

from neuroscale.analysis.alff import alff
from neuroscale.errors import AnalysisError, ConfigurationError, MissingMetadataError
from neuroscale.image import Series, open_image
from neuroscale.testing import synthetic_series


def _reference(x: np.ndarray, t_r: float, low: float, high: float):
    """Plain REST/Zou 2008 ALFF and fALFF of the columns of x (float64)."""
    n = x.shape[0]
    y = detrend(x.astype(np.float64), axis=0, type="linear")
    amp = 2.0 * np.abs(np.fft.rfft(y, axis=0)) / n
    if n % 2 == 0:
        amp[-1] /= 2.0
    f = np.fft.rfftfreq(n, t_r)
    band = (f >= low - 1e-12) & (f <= high + 1e-12) & (f > 0)
    a = amp[band].mean(axis=0)
    total = amp[1:].sum(axis=0)
    fa = np.divide(amp[band].sum(axis=0), total, out=np.zeros_like(total), where=total > 0)
    return a, fa


def _series(arr: np.ndarray, t_r: float | None = 2.0, chunk: int = 3) -> Series:
    mask = np.zeros((arr.shape[1], 1, 1), bool)
    mask[:] = True
    return Series(data=da.from_array(arr.astype(np.float32), chunks=(arr.shape[0], chunk)),
                  mask=mask, affine=np.eye(4), t_r=t_r)


@pytest.mark.parametrize("n", [200, 201])
def test_sinusoid_with_known_amplitude(n: int) -> None:
    t_r = 2.0
    tc = (np.arange(n) - (n - 1) / 2.0) * t_r  # centred time: cosines are orthogonal to a line
    f = np.fft.rfftfreq(n, t_r)
    k_in = int(np.argmin(np.abs(f - 0.05)))
    k_out = int(np.argmin(np.abs(f - 0.2)))
    a_in, a_out = 3.0, 1.0
    cols = [
        500 + a_in * np.cos(2 * np.pi * f[k_in] * tc),
        500 + a_in * np.cos(2 * np.pi * f[k_in] * tc) + a_out * np.cos(2 * np.pi * f[k_out] * tc),
        100 + 0.7 * np.arange(n) + a_in * np.cos(2 * np.pi * f[k_in] * tc),  # + linear drift
        a_out * np.cos(2 * np.pi * f[k_out] * tc),  # nothing in the band
        np.full(n, 7.0),  # constant
    ]
    x = np.stack(cols, axis=1)
    a, fa = dask.compute(*alff(_series(x, t_r, chunk=2)))
    n_band = int(((f >= 0.01) & (f <= 0.1)).sum())
    expected_alff = np.array([a_in, a_in, a_in, 0, 0]) / n_band
    expected_falff = np.array([1.0, a_in / (a_in + a_out), 1.0, 0.0, 0.0])
    np.testing.assert_allclose(a, expected_alff, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fa, expected_falff, rtol=1e-4, atol=1e-6)
    assert a.dtype == fa.dtype == np.float32


def test_synthetic_matches_reference_and_is_lazy() -> None:
    series, truth = synthetic_series(180, (12, 14, 10), t_r=2.0, chunks=97, seed=4)
    with dask.config.set(scheduler=raise_on_compute):
        a, fa = alff(series, low=0.01, high=0.08)
    assert a.shape == fa.shape == (series.n_voxels,)
    assert a.dtype == fa.dtype == np.float32
    got_a, got_fa = dask.compute(a, fa)
    ref_a, ref_fa = _reference(series.data.compute(), 2.0, 0.01, 0.08)
    np.testing.assert_allclose(got_a, ref_a, rtol=1e-4)
    np.testing.assert_allclose(got_fa, ref_fa, rtol=1e-4)
    # the network signals are band-limited to 0.01-0.1 Hz: network voxels have higher ALFF
    lab = truth.labels_in_mask
    assert got_a[lab > 0].mean() > 1.5 * got_a[lab == 0].mean()
    assert got_fa[lab > 0].mean() > got_fa[lab == 0].mean()


def test_errors() -> None:
    x = np.random.default_rng(0).standard_normal((50, 4))
    with pytest.raises(MissingMetadataError):
        alff(_series(x, None))
    with pytest.raises(ConfigurationError):
        alff(_series(x), low=0.1, high=0.01)
    with pytest.raises(AnalysisError):
        alff(_series(x[:10]), low=0.001, high=0.002)  # band below the frequency resolution
    with pytest.raises(AnalysisError):
        alff(_series(x[:2]))


def test_real_run_matches_reference(studyforrest_bold: Path, cache_dir: Path) -> None:
    from nilearn.masking import compute_epi_mask

    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    mean = img.mean().compute_volume()
    mask = compute_epi_mask(nib.Nifti1Image(mean, img.affine)).get_fdata().astype(bool)
    series = img.to_series(mask)
    with dask.config.set(scheduler=raise_on_compute):
        a, fa = alff(series)
    got_a, got_fa = dask.compute(a, fa)
    data = np.asarray(nib.load(studyforrest_bold).dataobj, dtype=np.float32)
    ref_a, ref_fa = _reference(data[mask].T, 2.0, 0.01, 0.1)
    np.testing.assert_allclose(got_a, ref_a, rtol=1e-4)
    np.testing.assert_allclose(got_fa, ref_fa, rtol=1e-4)
    assert got_a.shape == (int(mask.sum()),)
