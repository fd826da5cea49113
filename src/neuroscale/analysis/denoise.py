"""Temporal denoising of a :class:`~neuroscale.image.Series`: ``nilearn.signal.clean``, chunked.

:func:`clean` maps :func:`nilearn.signal.clean` over the voxel chunks of a Series (every chunk
holds all time points, and every cleaning step is column-wise, so the chunked result equals
the whole-array result; see :mod:`neuroscale.kernels.signal`).  Everything that can be checked
without reading voxel data (repetition time, cut-off frequencies against the Nyquist
frequency, run length against the Butterworth filter's padding, confounds and sample mask
shapes) is checked before the graph is built, so a bad call fails at once with a one-line
message naming the source file instead of deep inside a Dask worker.

Parameters shared by the functions here (documented once):

t_r : float, optional
    Repetition time in **seconds**; defaults to ``series.t_r``.
low_pass : float or None
    Low-pass cut-off in **Hz** (frequencies above it are removed); must be below the
    Nyquist frequency ``0.5 / t_r``.
high_pass : float or None
    High-pass cut-off in **Hz** (frequencies below it are removed); below ``low_pass``.

Reference implementation: nilearn 0.14.1 ``nilearn.signal.clean`` / ``butterworth``
(Abraham et al. 2014, Front. Neuroinform. 8:14); Butterworth padding rule from
``scipy.signal.sosfiltfilt`` (``padlen = 3 * ntaps``).
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

from neuroscale.errors import AnalysisError, ConfigurationError, MissingMetadataError
from neuroscale.image import Series
from neuroscale.kernels.signal import (
    clean_block,
    clean_scaled_block,
    psc_finish_block,
    psc_parts_block,
)

__all__ = [
    "BUTTERWORTH_ORDER",
    "DEFAULT_FD_THRESHOLD_MM",
    "FILTERS",
    "STANDARDIZE",
    "butterworth_min_volumes",
    "censoring_mask",
    "censoring_summary",
    "clean",
    "clean_with_scale",
]

#: XCP-D-style motion censoring threshold on framewise displacement, mm.
DEFAULT_FD_THRESHOLD_MM = 0.5

#: Order of nilearn's Butterworth filter (``nilearn.signal.butterworth(order=5)``).
BUTTERWORTH_ORDER = 5
#: Accepted ``filter`` values (``None`` means ``False``).
FILTERS = ("butterworth", "cosine", False)
#: Accepted ``standardize`` values (``True`` means "zscore_sample", ``False`` means ``None``).
STANDARDIZE = ("zscore_sample", "psc", None)


def butterworth_min_volumes(
    t_r: float,
    low_pass: float | None,
    high_pass: float | None,
    order: int = BUTTERWORTH_ORDER,
) -> int:
    """The fewest time points nilearn's zero-phase Butterworth filter accepts.

    nilearn filters with ``scipy.signal.sosfiltfilt(sos, x, padtype="odd", padlen=None)``,
    which pads ``3 * ntaps`` samples at each end, with
    ``ntaps = 2 * n_sections + 1 - min(#(sos[:, 2] == 0), #(sos[:, 5] == 0))``, and raises
    unless the signal is *longer* than that padding.  The second-order sections are built as
    nilearn builds them: ``scipy.signal.butter(order, Wn, btype, output="sos", fs=1 / t_r)``.

    Parameters
    ----------
    t_r : float
        Repetition time, seconds.
    low_pass, high_pass : float or None
        Cut-offs, Hz (at least one given; valid, i.e. in (0, Nyquist)).
    order : int
        Filter order (nilearn's default 5).

    Returns
    -------
    int
        ``3 * ntaps + 1`` (for order 5: 19 for low- or high-pass only, 34 for band-pass).

    Raises
    ------
    ConfigurationError
        Neither cut-off given.
    """
    from scipy import signal as sp_signal

    if low_pass is None and high_pass is None:
        raise ConfigurationError("butterworth_min_volumes needs low_pass or high_pass")
    if low_pass is not None and high_pass is not None:
        wn: Any = [high_pass, low_pass]
        btype = "band"
    elif low_pass is not None:
        wn, btype = low_pass, "low"
    else:
        wn, btype = high_pass, "high"
    sos = sp_signal.butter(N=order, Wn=wn, btype=btype, output="sos", fs=1.0 / t_r)
    ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * ntaps + 1


def censoring_mask(fd: Any, threshold_mm: float = DEFAULT_FD_THRESHOLD_MM,
                   n_dummy: int = 0) -> np.ndarray:
    """Volumes kept after motion censoring ("scrubbing"), XCP-D's definition.

    A volume is censored when its framewise displacement exceeds the threshold
    (``fd > threshold_mm``, strictly; XCP-D ``generate_temporal_mask`` /
    ``FlagMotionOutliers``: ``fd_timeseries > fd_thresh``).  Only the volume itself is
    censored: no neighbour before or after (XCP-D's default; Power et al. 2014 also flagged
    1 volume before and 2 after, which XCP-D does not do).  The first volume's FD, undefined
    (``n/a`` in fMRIPrep's table), counts as 0.  The first ``n_dummy`` volumes (non-steady
    state) are censored too; XCP-D removes them before censoring, which, for the kept
    volumes, is the same.  A threshold ``<= 0`` disables censoring (XCP-D's
    ``--fd-thresh 0``).

    Parameters
    ----------
    fd : array_like, shape (n_volumes,)
        Framewise displacement, mm (Power et al. 2012; fMRIPrep's ``framewise_displacement``
        column); NaN allowed in the first row only.
    threshold_mm : float
        FD threshold, mm (default 0.5).
    n_dummy : int
        Leading non-steady-state volumes to censor.

    Returns
    -------
    ndarray of bool, shape (n_volumes,)
        True for kept volumes: pass it as ``sample_mask`` to :func:`clean`.

    Raises
    ------
    ConfigurationError
        ``fd`` not 1D, NaN beyond the first row, negative values; bad ``threshold_mm`` or
        ``n_dummy``.
    AnalysisError
        Every volume is censored.
    """
    x = np.asarray(fd, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ConfigurationError(f"fd must be a non-empty 1D array, got shape {x.shape}")
    if not np.all(np.isfinite(x[1:])):
        raise ConfigurationError("framewise displacement has n/a or infinite values beyond "
                                 "the first volume")
    x = np.nan_to_num(x, nan=0.0)
    if (x < 0).any():
        raise ConfigurationError("framewise displacement cannot be negative")
    if isinstance(threshold_mm, bool) or not isinstance(threshold_mm, (int, float, np.number)) \
            or not math.isfinite(float(threshold_mm)):
        raise ConfigurationError(f"threshold_mm must be a number of mm, got {threshold_mm!r}")
    if isinstance(n_dummy, bool) or not isinstance(n_dummy, (int, np.integer)) \
            or not 0 <= int(n_dummy) <= x.size:
        raise ConfigurationError(f"n_dummy must be in [0, {x.size}], got {n_dummy!r}")
    keep = np.ones(x.size, dtype=bool) if threshold_mm <= 0 else x <= float(threshold_mm)
    keep[: int(n_dummy)] = False
    if not keep.any():
        raise AnalysisError(f"motion censoring at FD > {threshold_mm} mm removes all "
                            f"{x.size} volumes")
    return keep


def censoring_summary(keep: Any, *, t_r: float | None = None,
                      threshold_mm: float | None = None, n_dummy: int = 0) -> dict[str, Any]:
    """The censoring figures for the QC JSON.

    Parameters
    ----------
    keep : array_like of bool, shape (n_volumes,)
        From :func:`censoring_mask`.
    t_r : float, optional
        Repetition time, s (for the kept duration).
    threshold_mm : float, optional
        The FD threshold used, mm.
    n_dummy : int
        Leading volumes censored as non-steady-state.

    Returns
    -------
    dict
        ``n_volumes``, ``n_volumes_kept``, ``n_volumes_censored`` (motion only, dummies
        excluded), ``n_dummy``, ``fd_threshold_mm``, ``kept_duration_s`` (None without
        ``t_r``), ``censored_volumes`` (0-based indices).
    """
    k = np.asarray(keep, dtype=bool).reshape(-1)
    n_kept = int(k.sum())
    censored = [int(i) for i in np.flatnonzero(~k) if i >= n_dummy]
    return {
        "n_volumes": int(k.size),
        "n_volumes_kept": n_kept,
        "n_volumes_censored": len(censored),
        "n_dummy": int(n_dummy),
        "fd_threshold_mm": None if threshold_mm is None else float(threshold_mm),
        "kept_duration_s": None if t_r is None else float(n_kept * t_r),
        "censored_volumes": censored,
    }


def _resolve_t_r(series: Series, t_r: float | None, needed: bool) -> float | None:
    if t_r is not None:
        if isinstance(t_r, bool) or not isinstance(t_r, (int, float, np.number)) or not (
            math.isfinite(float(t_r)) and float(t_r) > 0
        ):
            raise ConfigurationError(f"t_r must be a positive number of seconds, got {t_r!r}",
                                     series.source)
        return float(t_r)
    st = series.t_r
    if st is not None and math.isfinite(float(st)) and float(st) > 0:
        return float(st)
    if needed:
        raise MissingMetadataError(
            f"the repetition time is needed for temporal filtering but is missing or not "
            f"positive (t_r={st}); pass t_r= or set RepetitionTime in the BIDS sidecar",
            series.source,
        )
    return None


def _check_frequency(name: str, value: Any, series: Series) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ConfigurationError(f"{name} must be a frequency in Hz or None, got {value!r}",
                                 series.source)
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"{name} must be a positive frequency in Hz, got {value}",
                                 series.source)
    return value


def _normalise_sample_mask(sample_mask: Any, n_t: int, series: Series) -> np.ndarray | None:
    if sample_mask is None:
        return None
    sm = np.asarray(sample_mask)
    if sm.ndim != 1:
        raise ConfigurationError(f"sample_mask must be 1D, got shape {sm.shape}", series.source)
    if sm.dtype == bool:
        if sm.size != n_t:
            raise ConfigurationError(
                f"boolean sample_mask has {sm.size} entries but the series has {n_t} volumes",
                series.source,
            )
        idx = np.flatnonzero(sm)
    elif sm.size == 0 or np.issubdtype(sm.dtype, np.integer):
        idx = sm.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_t):
            raise ConfigurationError(
                f"sample_mask indices must lie in [0, {n_t - 1}], got {idx.min()}..{idx.max()}",
                series.source,
            )
        if idx.size > 1 and np.any(np.diff(idx) <= 0):
            raise ConfigurationError("sample_mask indices must be strictly increasing",
                                     series.source)
    else:
        raise ConfigurationError(
            f"sample_mask must be boolean (n_volumes,) or integer indices, got {sm.dtype}",
            series.source,
        )
    if idx.size == 0:
        raise AnalysisError("sample_mask removes every volume", series.source)
    return idx


def _normalise_confounds(confounds: Any, n_t: int, series: Series) -> np.ndarray | None:
    if confounds is None:
        return None
    from neuroscale.bids.confounds import check_confounds_length

    if hasattr(confounds, "to_numpy"):  # pandas DataFrame / Series
        confounds = confounds.to_numpy()
    try:
        arr = np.array(confounds, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"confounds are not numeric: {exc}", series.source) from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ConfigurationError(f"confounds must be (n_volumes, n_confounds), got {arr.shape}",
                                 series.source)
    check_confounds_length(arr, n_t, path=series.source)
    if arr.shape[1] == 0:
        return None
    if not np.all(np.isfinite(arr)):
        bad = sorted({int(c) for c in np.nonzero(~np.isfinite(arr))[1]})
        raise AnalysisError(f"confounds contain NaN or infinite values (columns {bad})",
                            series.source)
    return arr


def clean(
    series: Series,
    *,
    t_r: float | None = None,
    detrend: bool = True,
    standardize: str | bool | None = "zscore_sample",
    low_pass: float | None = 0.1,
    high_pass: float | None = 0.01,
    filter: str | bool | None = "butterworth",
    confounds: Any = None,
    standardize_confounds: bool = True,
    sample_mask: Any = None,
) -> Series:
    """Denoise every voxel time series with :func:`nilearn.signal.clean`, chunk by chunk (lazy).

    In nilearn's order: (censored volumes interpolated, when scrubbing with a Butterworth
    filter) -> linear detrend -> Butterworth band-pass, or cosine drift regressors -> censoring
    -> projection onto the orthogonal complement of the confounds (which are detrended and
    filtered the same way first, Lindquist et al. 2019) -> standardisation.

    With a ``sample_mask`` (e.g. :func:`censoring_mask`) and the Butterworth filter this is
    XCP-D's scrubbing order (``denoise_with_nilearn``, XCP-D >= 0.7): the censored volumes of
    the signals *and* of the confounds are replaced by a cubic spline through the kept ones,
    both are detrended and band-passed, then the confounds are fitted on the kept volumes
    only and the kept volumes' residuals are returned (nilearn semantics: ``n_kept`` rows;
    XCP-D also computes the censored rows and drops them later, before connectivity, so the
    kept rows are the same computation).  Censored values never reach the kept volumes.
    Differences from XCP-D, all at the run's edges or in the filter's details: censored
    volumes before the first / after the last kept volume are dropped (nilearn) rather than
    filled with the nearest kept volume (XCP-D); the filter is nilearn's 5th-order
    Butterworth with ``sosfiltfilt``'s default odd padding (XCP-D: ``--bpf-order``, default
    2, constant padding of ``n - 1`` samples); and the confounds are z-scored over the kept
    volumes before the projection (``standardize_confounds``; XCP-D regresses the
    unstandardised, detrended confounds without an intercept).

    Parameters
    ----------
    series : Series
        ``(n_timepoints, n_voxels)`` float32 time series, all time points in each chunk.
    t_r : float, optional
        Repetition time in seconds; defaults to ``series.t_r``.
    detrend : bool
        Remove a linear trend (and the mean) from signals and confounds first.
    standardize : {"zscore_sample", "psc", None}
        ``"zscore_sample"``: zero mean, unit sample standard deviation (ddof=1) per voxel;
        ``"psc"``: percent signal change ``100 * (x - mean) / |mean|`` (nilearn adds the
        original mean back first when detrending/high-pass removed it -- a decision nilearn
        takes from all voxels together, so this option computes the cleaning twice per chunk);
        ``None``: no scaling.  ``True``/``False`` mean "zscore_sample"/``None``.
    low_pass : float or None
        Low-pass cut-off in Hz (Butterworth only); below the Nyquist frequency ``0.5 / t_r``.
    high_pass : float or None
        High-pass cut-off in Hz; below ``low_pass``.  With ``filter="cosine"`` it sets the
        discrete cosine drift basis (periods longer than ``1 / high_pass`` seconds).
    filter : {"butterworth", "cosine", False}
        Temporal filter: nilearn's zero-phase 5th-order Butterworth filter
        (``scipy.signal.sosfiltfilt``), cosine drift regressors added to the confounds, or
        none.  ``"butterworth"`` with both cut-offs ``None`` means no filter.
    confounds : ndarray or DataFrame, shape (n_timepoints, n_confounds) or (n_timepoints,)
        Nuisance regressors (e.g. from :func:`neuroscale.bids.confounds.load_confounds`),
        one row per volume of the *uncensored* series.
    standardize_confounds : bool
        z-score the confounds before the projection (nilearn's default).
    sample_mask : ndarray of bool (n_timepoints,) or of int (n_kept,), optional
        Volumes to keep (scrubbing / dummy-scan removal).  The output has ``n_kept`` time
        points.

    Returns
    -------
    Series
        Lazy; data float32, shape ``(n_kept or n_timepoints, n_voxels)``, same voxel chunks,
        same mask/affine/t_r; ``meta["clean"]`` records the parameters.

    Raises
    ------
    MissingMetadataError
        Filtering needs the repetition time and neither ``t_r`` nor ``series.t_r`` is valid.
    ConfigurationError
        Unknown ``filter``/``standardize``; a cut-off that is not positive, not below the
        Nyquist frequency, or a high-pass not below the low-pass; ``filter="cosine"`` without
        ``high_pass`` or with ``low_pass``; a malformed ``sample_mask`` or ``confounds``.
    AnalysisError
        Too few volumes for the Butterworth filter's padding (see
        :func:`butterworth_min_volumes`) or for a cosine drift term, fewer than 2 volumes,
        as many confounds as kept volumes, confounds whose row count differs from the series,
        non-finite confounds, or a sample mask that removes everything.

    Notes
    -----
    Reference: nilearn 0.14.1 ``nilearn.signal.clean``, run on float64 copies of each chunk
    (output cast to float32).  One deliberate difference: when scrubbing with a Butterworth
    filter, the censored volumes are interpolated by
    :func:`neuroscale.kernels.signal.interpolate_censored` (cubic spline, as nilearn
    documents) because nilearn 0.14.1's own interpolation indexes the wrong rows for integer
    sample masks; for sample masks that only drop leading volumes the two agree exactly.

    Examples
    --------
    >>> cleaned = clean(series, low_pass=0.08, high_pass=0.009, confounds=conf)  # doctest: +SKIP
    >>> cleaned.data.dtype, cleaned.data.chunks == series.data.chunks            # doctest: +SKIP
    (dtype('float32'), True)
    """
    return _clean(series, t_r=t_r, detrend=detrend, standardize=standardize, low_pass=low_pass,
                  high_pass=high_pass, filter=filter, confounds=confounds,
                  standardize_confounds=standardize_confounds, sample_mask=sample_mask)[0]


def clean_with_scale(
    series: Series,
    *,
    t_r: float | None = None,
    detrend: bool = True,
    standardize: str | bool | None = "zscore_sample",
    low_pass: float | None = 0.1,
    high_pass: float | None = 0.01,
    filter: str | bool | None = "butterworth",
    confounds: Any = None,
    standardize_confounds: bool = True,
    sample_mask: Any = None,
) -> tuple[Series, da.Array]:
    """:func:`clean`, plus what undoes the standardisation of each voxel (lazy).

    Parcel and seed time series follow the field's convention (nilearn's
    ``NiftiLabelsMasker`` / ``NiftiSpheresMasker`` on the denoised image, XCP-D's
    ``NiftiParcellate``): the mean of the denoised voxels *before* each voxel is z-scored.
    Keeping each voxel's scale and offset (a ``(2, n_voxels)`` vector pair) beside the
    z-scored series lets them be computed from the one z-scored store, without a second 4D
    copy.

    Parameters
    ----------
    series, t_r, detrend, low_pass, high_pass, filter, confounds, standardize_confounds, \
sample_mask
        As in :func:`clean`.
    standardize : {"zscore_sample", None}
        As in :func:`clean`; ``"psc"`` is refused (its scaling is not one factor per voxel
        known from the chunk alone).

    Returns
    -------
    denoised : Series
        Exactly :func:`clean`'s result (same numbers, same chunks).
    scale : dask array, shape (2, n_voxels), float32
        Row 0 the scale, row 1 the offset of every voxel, in mask order: ``scale[0] * z +
        scale[1]`` is ``nilearn.signal.clean(..., standardize=False)`` (float32 rounding).
        With ``standardize=None`` the rows are 1 and 0.

    Raises
    ------
    ConfigurationError
        ``standardize="psc"``, or anything :func:`clean` refuses.
    MissingMetadataError, AnalysisError
        As :func:`clean`.
    """
    if standardize == "psc":
        raise ConfigurationError("clean_with_scale: standardize='psc' has no per-voxel scale",
                                 series.source)
    out, scale = _clean(series, t_r=t_r, detrend=detrend, standardize=standardize,
                        low_pass=low_pass, high_pass=high_pass, filter=filter,
                        confounds=confounds, standardize_confounds=standardize_confounds,
                        sample_mask=sample_mask, keep_scale=True)
    assert scale is not None
    return out, scale


def _clean(
    series: Series,
    *,
    t_r: float | None,
    detrend: bool,
    standardize: str | bool | None,
    low_pass: float | None,
    high_pass: float | None,
    filter: str | bool | None,
    confounds: Any,
    standardize_confounds: bool,
    sample_mask: Any,
    keep_scale: bool = False,
) -> tuple[Series, da.Array | None]:
    """The body of :func:`clean` / :func:`clean_with_scale` (``keep_scale``)."""
    standardize, filter, lp, hp, t_r_s = _check_choices(
        series, t_r=t_r, standardize=standardize, low_pass=low_pass, high_pass=high_pass,
        filter=filter)
    sm, conf, n_out = _check_shapes(series, confounds=confounds, sample_mask=sample_mask,
                                    filter=filter, lp=lp, hp=hp, t_r_s=t_r_s)
    kw: dict[str, Any] = {
        "confounds": conf,
        "sample_mask": sm,
        "t_r": t_r_s,
        "detrend": bool(detrend),
        "standardize_confounds": bool(standardize_confounds),
        "filter": filter,
        "low_pass": lp,
        "high_pass": hp,
    }
    out, scale = _clean_graph(series.data, n_out, standardize, keep_scale, kw)
    record = {
        "t_r": t_r_s,
        "detrend": bool(detrend),
        "standardize": standardize,
        "low_pass": lp,
        "high_pass": hp,
        "filter": filter,
        "n_confounds": 0 if conf is None else int(conf.shape[1]),
        "standardize_confounds": bool(standardize_confounds),
        "sample_mask": None if sm is None else [int(i) for i in sm],
        "implementation": "nilearn.signal.clean",
    }
    return series.with_data(out, meta={**series.meta, "clean": record}), scale


def _check_choices(
    series: Series,
    *,
    t_r: float | None,
    standardize: str | bool | None,
    low_pass: float | None,
    high_pass: float | None,
    filter: str | bool | None,
) -> tuple[str | None, str | bool, float | None, float | None, float | None]:
    """Check and normalise the options of :func:`_clean` (no data shapes involved).

    Returns
    -------
    standardize : str or None
        ``True`` -> ``"zscore_sample"``, ``False`` -> ``None``.
    filter : str or False
        ``None`` -> ``False``; a Butterworth filter with no cut-off is switched off.
    lp, hp : float or None
        The cut-offs in Hz (``None`` when no filter is applied).
    t_r_s : float or None
        The repetition time in seconds (required when a filter is applied).

    Raises
    ------
    ConfigurationError
        An unknown ``filter`` or ``standardize``; a cosine filter without ``high_pass`` or with
        ``low_pass``; a cut-off not below the Nyquist frequency; ``high_pass >= low_pass``.
    MissingMetadataError
        No repetition time where a filter needs one (:func:`_resolve_t_r`).
    """
    src = series.source
    if filter is None:
        filter = False
    if filter not in FILTERS:
        raise ConfigurationError(f"filter must be one of {FILTERS}, got {filter!r}", src)
    if standardize is True:
        standardize = "zscore_sample"
    elif standardize is False:
        standardize = None
    if standardize not in STANDARDIZE:
        raise ConfigurationError(f"standardize must be one of {STANDARDIZE}, got {standardize!r}",
                                 src)
    lp = _check_frequency("low_pass", low_pass, series)
    hp = _check_frequency("high_pass", high_pass, series)
    if filter is False:
        lp = hp = None
    elif filter == "butterworth" and lp is None and hp is None:
        filter = False  # nilearn: butterworth with no cut-off is switched off
    elif filter == "cosine":
        if hp is None:
            raise ConfigurationError("filter='cosine' needs high_pass (Hz)", src)
        if lp is not None:
            raise ConfigurationError(
                "low_pass is not implemented for filter='cosine' (nilearn); pass low_pass=None",
                src,
            )
    t_r_s = _resolve_t_r(series, t_r, needed=filter is not False)
    if filter is not False:
        assert t_r_s is not None
        nyquist = 0.5 / t_r_s
        for name, f in (("low_pass", lp), ("high_pass", hp)):
            if f is not None and f >= nyquist:
                raise ConfigurationError(
                    f"{name}={f} Hz is not below the Nyquist frequency {nyquist:g} Hz "
                    f"(t_r={t_r_s:g} s)",
                    src,
                )
        if lp is not None and hp is not None and hp >= lp:
            raise ConfigurationError(
                f"high_pass={hp} Hz must be below low_pass={lp} Hz for a band-pass", src
            )
    return standardize, filter, lp, hp, t_r_s


def _check_shapes(
    series: Series,
    *,
    confounds: Any,
    sample_mask: Any,
    filter: str | bool,
    lp: float | None,
    hp: float | None,
    t_r_s: float | None,
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Check the run length, sample mask and confounds of :func:`_clean` against the options.

    Returns
    -------
    sm : (n_out,) ndarray of int or None
        The kept volumes (:func:`_normalise_sample_mask`).
    conf : (n_timepoints, k) ndarray or None
        The confounds (:func:`_normalise_confounds`).
    n_out : int
        Number of output volumes.

    Raises
    ------
    AnalysisError
        Fewer than 2 output volumes; too few volumes for the Butterworth filter's padding or
        for one cosine regressor; no degrees of freedom left by the regressors.
    """
    src = series.source
    n_t = series.n_timepoints
    sm = _normalise_sample_mask(sample_mask, n_t, series)
    conf = _normalise_confounds(confounds, n_t, series)
    n_out = n_t if sm is None else int(sm.size)
    if n_out < 2:
        raise AnalysisError(f"cleaning needs at least 2 volumes, got {n_out}", src)
    if filter == "butterworth":
        assert t_r_s is not None
        n_filt = n_t if sm is None else int(sm[-1] - sm[0] + 1)
        need = butterworth_min_volumes(t_r_s, lp, hp)
        if n_filt < need:
            span = "" if sm is None else " (first to last kept volume)"
            raise AnalysisError(
                f"{n_filt} volumes{span} are too few for the Butterworth filter "
                f"(low_pass={lp} Hz, high_pass={hp} Hz, order {BUTTERWORTH_ORDER}, "
                f"t_r={t_r_s:g} s): scipy.signal.sosfiltfilt pads {need - 1} samples and "
                f"needs at least {need} volumes",
                src,
            )
    n_cos = 0
    if filter == "cosine":
        assert t_r_s is not None and hp is not None
        # nilearn.signal.create_cosine_drift: min(n - 1, floor(2 n hp dt)) regressors
        n_cos = min(n_t - 1, int(np.floor(2 * n_t * hp * t_r_s)))
        if n_cos < 1:
            raise AnalysisError(
                f"{n_t} volumes x {t_r_s:g} s = {n_t * t_r_s:g} s is too short for a cosine "
                f"high-pass at {hp} Hz (needs at least {1 / (2 * hp):g} s)",
                src,
            )
    n_reg = (0 if conf is None else conf.shape[1]) + n_cos
    if n_reg >= n_out:
        raise AnalysisError(
            f"{n_reg} nuisance regressors leave no degrees of freedom in {n_out} volumes", src
        )
    return sm, conf, n_out


def _clean_graph(data: da.Array, n_out: int, standardize: str | None, keep_scale: bool,
                 kw: dict[str, Any]) -> tuple[da.Array, da.Array | None]:
    """The lazy cleaned data ``(n_out, n_voxels)`` float32 and, with ``keep_scale``, the
    ``(2, n_voxels)`` float32 scale and offset of the z-scoring (ones and zeros otherwise).

    ``kw`` are the keyword arguments of the :mod:`neuroscale.kernels.signal` block functions.
    """
    out_chunks = ((n_out,), data.chunks[1])
    meta32 = np.empty((0, 0), dtype=np.float32)
    scale: da.Array | None = None
    if keep_scale and standardize == "zscore_sample":
        # one task per chunk cleans it once and returns z (n_out rows), scale and offset
        stacked = da.map_blocks(clean_scaled_block, data, chunks=((n_out + 2,), data.chunks[1]),
                                dtype=np.float32, meta=meta32, **kw)
        out = stacked[:n_out]
        scale = stacked[n_out:]
    elif standardize != "psc":
        out = da.map_blocks(clean_block, data, standardize=standardize, chunks=out_chunks,
                            dtype=np.float32, meta=meta32, **kw)
        if keep_scale:
            n_v = data.shape[1]
            scale = da.concatenate([da.ones((1, n_v), dtype=np.float32, chunks=(1, data.chunks[1])),
                                    da.zeros((1, n_v), dtype=np.float32,
                                             chunks=(1, data.chunks[1]))], axis=0)
    else:
        nb = len(data.chunks[1])
        parts = da.map_blocks(psc_parts_block, data, chunks=((1,), (2,) * nb), dtype=np.float64,
                              meta=np.empty((0, 0), dtype=np.float64), **kw)
        a = parts[0, 0::2].sum()
        b = parts[0, 1::2].sum()
        # nilearn: mean|mean(cleaned)| / mean|original mean| < 0.1 (0/0 or x/0 -> False)
        add_mean = da.where(b > 0, a / da.where(b > 0, b, 1.0), np.inf) < 0.1
        out = da.blockwise(psc_finish_block, "tv", data, "tv", add_mean, "",
                           adjust_chunks={"t": n_out}, dtype=np.float32, meta=meta32, **kw)
    return out, scale
