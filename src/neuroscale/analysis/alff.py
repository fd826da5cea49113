"""ALFF and fALFF: amplitude of low-frequency fluctuations, per voxel.

Definition used (Zang et al. 2007, Brain Dev 29:83; Zou et al. 2008, J Neurosci Methods
172:137; as implemented in REST / DPABI ``y_alff_falff``): each voxel's time series is linearly
detrended, Fourier transformed (no taper and no zero-padding, where REST/DPABI pad to a power
of two), and its single-sided amplitude spectrum
``A_k = 2 |X_k| / T`` (the amplitude of a sinusoid at bin frequency ``f_k = k / (T * t_r)``)
is formed.

* ALFF = the **mean** of ``A_k`` over the bins with ``low <= f_k <= high``
  (= ``sqrt`` of the power, averaged across the band, as Zang 2007 states it);
* fALFF = ``sum`` of ``A_k`` over the band / ``sum`` of ``A_k`` over all bins ``f_k > 0``
  (the whole detectable range, DC excluded), 0 for a constant series.

Other tools use related but different estimators: C-PAC's ``alff`` workflow
(``CPAC/alff/alff.py``) takes the standard deviation of the band-passed series (AFNI
``3dBandpass`` + ``3dTstat -stdev``; by Parseval the root of the summed band *power*) and its
fALFF divides it by the standard deviation of the unfiltered series; XCP-D's ``compute_alff``
uses ``sqrt`` of scipy's periodogram.  Maps are strongly related across tools but absolute
values are not interchangeable.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from neuroscale.errors import AnalysisError, ConfigurationError, MissingMetadataError
from neuroscale.image import Series
from neuroscale.kernels.maps import alff_block

__all__ = ["alff"]


def alff(series: Series, low: float = 0.01, high: float = 0.1) -> tuple[da.Array, da.Array]:
    """ALFF and fALFF maps, lazily.

    Parameters
    ----------
    series : Series
        ``(n_timepoints, n_voxels)`` float32 in-mask time series with ``t_r`` set (seconds).
    low, high : float
        Band limits in Hz, inclusive (default 0.01-0.1 Hz).

    Returns
    -------
    alff : (n_voxels,) dask array of float32
        Mean single-sided amplitude over the band, in the data's intensity units.
    falff : (n_voxels,) dask array of float32
        Band amplitude sum over the amplitude sum over all non-zero frequencies (0-1).

    Both share one task per voxel chunk (computing them together reads the data once); voxels
    are in mask order. See the module docstring for the definition and its sources.

    Raises
    ------
    MissingMetadataError
        ``series.t_r`` is missing or not positive.
    ConfigurationError
        ``low``/``high`` are not ``0 <= low < high``.
    AnalysisError
        Fewer than 3 time points, or no frequency bin falls inside the band.
    """
    t_r = series.t_r
    if t_r is None or not np.isfinite(t_r) or t_r <= 0:
        raise MissingMetadataError(f"ALFF needs the repetition time (t_r={t_r})", series.source)
    if not (0 <= low < high):
        raise ConfigurationError(f"ALFF band must satisfy 0 <= low < high, got {low}-{high} Hz")
    n_t = series.n_timepoints
    if n_t < 3:
        raise AnalysisError(f"ALFF needs at least 3 time points, got {n_t}", series.source)
    freqs = np.fft.rfftfreq(n_t, d=t_r)
    tol = 1e-9 * freqs[1]
    if not np.any((freqs >= low - tol) & (freqs <= high + tol) & (freqs > 0)):
        raise AnalysisError(
            f"no frequency bin of a {n_t}-volume run (TR {t_r} s, resolution "
            f"{freqs[1]:.4g} Hz, Nyquist {freqs[-1]:.4g} Hz) lies in {low}-{high} Hz",
            series.source,
        )
    both = da.map_blocks(
        alff_block, series.data, float(t_r), float(low), float(high),
        chunks=((2,), series.data.chunks[1]), dtype=np.float32,
        meta=meta_from_array(series.data, ndim=2, dtype=np.float32),  # CuPy chunks stay CuPy
    )
    return both[0], both[1]
