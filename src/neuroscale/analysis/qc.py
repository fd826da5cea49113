"""Quality-control metrics of a BOLD run with MRIQC's definitions, chunked on Dask.

:func:`qc_arrays` builds, without computing anything, small lazy arrays — ``(T,)`` traces,
``(N,)`` voxel maps and scalars — from a :class:`~neuroscale.image.Series`; a pipeline puts
them in **one** ``dask.compute`` with its other outputs so the chunk reads are shared.
:func:`qc_summary` then turns the computed arrays into MRIQC's image-quality metrics (IQMs)
with plain NumPy.

Design (how each metric is chunked)
-----------------------------------
A Series chunk holds all ``T`` time points of a block of voxels.

* **Per-voxel maps** (tSNR, temporal median) are computed block by block: ``(N,)``.
* **Per-volume traces** are sums over voxels, so every block returns partial sums
  ``(k, T)`` (:mod:`neuroscale.kernels.qc`) that are added over blocks: global signal,
  GCOR (sum of unit-norm demeaned series; Saad et al. 2013), DVARS (sums of squared
  temporal differences, raw and divided by each voxel's predicted difference SD, plus the
  sum of those SDs and the voxel count; Nichols 2013 / nipype ``compute_dvars``) and the
  3dToutcount outlier counts (each voxel's trend and MAD are temporal, so per block).
* **Whole-dataset median for DVARS' intensity normalisation** (nipype scales the data by
  ``1000 / median`` over all in-mask voxels *and* time points; only the plain DVARS depends
  on it).  It is computed *exactly* in two histogram passes over the float32 order keys
  (high 16 bits, then low 16 bits inside the one or two buckets holding the middle order
  statistics).  The second pass depends on the first pass's result; to keep memory bounded
  it reads a **clone** of the series graph (``dask.graph_manipulation.bind``), i.e. the
  series is read a second time instead of being held in memory.  ``intensity_normalization=0``
  skips it.
* **AQI** (AFNI 3dTqual) needs, for every volume, the ranks of its voxels across the
  whole mask.  Stage 1 (voxel blocks): the temporal median ``(N,)``, then its centred ranks
  (one task on an ``(N,)`` vector).  Stage 2 needs whole volumes: given ``image`` (the 4D
  :class:`~neuroscale.image.Image` the series came from), blocks of volumes are read from
  it along its own time chunks (memory bounded: one block of volumes per task); otherwise
  the series is rechunked into blocks of ``time_block`` volumes — a transpose whose
  intermediate pieces amount to the whole ``(T, N)`` array in memory at once, fine for a
  typical run but pass ``image`` for very large ones.
* **Ghost-to-signal** needs the mean EPI over the whole field of view; it is computed
  (one small task) when a mean volume is given or stored with the series
  (``series.meta["mean"]``, written at ingest), else left out.
* **Non-steady-state volumes** are counted from the computed global signal in
  :func:`qc_summary`.

Only ``(T,)``, ``(T - 1,)``, ``(N,)`` and scalar arrays come back to the client.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.graph_manipulation import bind

from neuroscale.errors import AnalysisError, ConfigurationError, MissingMetadataError
from neuroscale.image import Image, Series
from neuroscale.kernels import qc as kqc

__all__ = ["qc_arrays", "qc_summary"]

#: Target size in bytes of one block of whole volumes for the AQI stage.
AQI_BLOCK_BYTES = 16 * 2**20


def _with_block_axis(block: np.ndarray, func: Any, *args: Any) -> np.ndarray:
    """Apply ``func`` to a (t, v) block and append a length-1 "block" axis to its result."""
    out = np.asarray(func(block, *args))
    if out.ndim == 1:
        out = out[None, :]
    return out[..., None]


def _block_sums(data: da.Array, func: Any, k: int, length: int, *args: Any,
                dtype: Any = np.float64) -> da.Array:
    """Sum over voxel blocks of ``func(block, *args)``, a ``(k, length)`` partial per block."""
    nb = len(data.chunks[1])
    parts = da.map_blocks(
        _with_block_axis, data, func, *args,
        new_axis=0, chunks=((k,), (length,), (1,) * nb), dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
    )
    return parts.sum(axis=2, dtype=dtype)


def _voxel_map(data: da.Array, func: Any, *args: Any, dtype: Any = np.float64) -> da.Array:
    return data.map_blocks(func, *args, drop_axis=0, chunks=(data.chunks[1],), dtype=dtype,
                           meta=np.empty((0,), dtype=dtype))


def _low_hist_block(block: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    return kqc.key_histogram_low(block, buckets)[..., None]


def _exact_median(data: da.Array) -> da.Array:
    """Lazy exact median (0-d float64) of every value of ``data`` (float32), see module doc."""
    high = _block_sums(data, kqc.key_histogram_high, 1, 1 << kqc.KEY_BITS,
                       dtype=np.int64)[0]
    buckets = high.map_blocks(kqc.median_buckets, chunks=((2,),), dtype=np.int64,
                              meta=np.empty((0,), np.int64))
    # re-read the series after pass 1 instead of holding it (deterministic keys via seed)
    second = bind(data, buckets, seed=("neuroscale-qc-median", data.name))
    nb = len(second.chunks[1])
    low = da.blockwise(
        _low_hist_block, "kbv", second, "tv", buckets, "j",
        new_axes={"k": 2, "b": 1 << kqc.KEY_BITS}, adjust_chunks={"v": (1,) * nb},
        concatenate=True, dtype=np.int64, meta=np.empty((0, 0, 0), np.int64),
    ).sum(axis=2)
    value = dask.delayed(kqc.order_statistic_from_histograms, pure=True)(high, low)
    return da.from_delayed(value, shape=(), dtype=np.float64)


def _volume_blocks(series: Series, image: Image | None, time_block: int | None) -> da.Array:
    """The in-mask data as ``(T, N)`` chunked by blocks of whole volumes."""
    nt, nv = series.n_timepoints, series.n_voxels
    if image is not None:
        if image.ndim != 4 or image.shape[:3] != series.mask.shape or image.n_volumes != nt:
            raise AnalysisError(
                f"image of shape {image.shape} does not match the series "
                f"(mask {series.mask.shape}, {nt} volumes)", image.source)
        block_bytes = AQI_BLOCK_BYTES if time_block is None else 4 * nv * int(time_block)
        return image.masked_volume_blocks(series.mask, block_bytes=block_bytes)
    tb = time_block or max(1, min(nt, AQI_BLOCK_BYTES // max(1, 4 * nv)))
    return series.data.rechunk({0: tb, 1: -1})


def qc_arrays(
    series: Series,
    *,
    image: Image | None = None,
    mean_volume: np.ndarray | da.Array | None = None,
    polort: int = 0,
    qthr: float = 0.001,
    tsnr_detrend: int | None = None,
    intensity_normalization: float = 1000.0,
    time_block: int | None = None,
) -> dict[str, da.Array]:
    """Lazy QC arrays of a BOLD series (nothing is computed here).

    Parameters
    ----------
    series : Series
        In-mask data ``(T, N)`` float32, chunked over voxels (the mask is the brain mask all
        metrics are computed in).
    image : Image, optional
        The 4D image the series was taken from; when given, AQI reads whole volumes from it
        along its time chunks (memory bounded) instead of transposing the series.
    mean_volume : (x, y, z) ndarray or dask array, optional
        Mean EPI over the whole field of view, for the ghost-to-signal ratios; defaults to
        ``series.meta["mean"]`` when present (stored at ingest).
    polort : int
        3dToutcount detrending order, 0-3 (0, the AFNI and MRIQC default, removes the
        temporal median).
    qthr : float
        3dToutcount ``-qthr``, in (0, 0.999).
    tsnr_detrend : int or None
        Legendre order regressed out before tSNR (nipype ``TSNR(regress_poly=...)``);
        ``None`` (MRIQC) does not detrend.
    intensity_normalization : float
        nipype ``ComputeDVARS`` scaling: plain DVARS is expressed for data scaled to
        ``intensity_normalization / median`` (1000: "x10 % BOLD units"); 0 disables it
        (and the median pass).
    time_block : int, optional
        Volumes per block for the AQI stage (default: about 64 MiB of float32 per block when
        transposing the series; the image's own time chunks when ``image`` is given).

    Returns
    -------
    dict of str to dask.array.Array
        ``tsnr`` (N,) float32 — voxelwise tSNR map (nipype TSNR);
        ``global_signal`` (T,) float64 — mean over the mask per volume;
        ``gcor`` () float64 — global correlation (AFNI ``@compute_gcor``);
        ``dvars_std``, ``dvars_nstd``, ``dvars_vstd`` (T - 1,) float64 — standardised, plain
        (intensity-normalised) and voxelwise-standardised DVARS of volumes 1..T-1
        (nipype ``compute_dvars``; entry ``i`` is the change from volume ``i`` to ``i + 1``);
        ``dvars_median`` () float64 — the global median used for the normalisation (only if
        ``intensity_normalization != 0``);
        ``outlier_fraction`` (T,) float64 — AFNI ``3dToutcount -fraction`` with the mask;
        ``aqi`` (T,) float64 — AFNI ``3dTqual`` quality index (1 - Spearman correlation of
        each volume with the median volume, within the mask);
        ``gsr_x``, ``gsr_y`` () float64 — MRIQC ghost-to-signal ratios (only with a mean
        volume).

    Raises
    ------
    AnalysisError
        Fewer than 5 volumes (3dToutcount's minimum), or ``image`` does not match.
    ConfigurationError
        ``polort`` not in 0..3 or ``qthr`` not in (0, 0.999).

    Notes
    -----
    Formulas and their sources are documented on the kernels in
    :mod:`neuroscale.kernels.qc`.  Deviations from the reference tools: the masks are the
    series mask everywhere (3dTqual in MRIQC uses ``-automask``; nipype's
    NonSteadyStateDetector averages the whole field of view); nipype drops zero-variance
    voxels with ``IQR / 1.349 <= 1e-7`` on the 1000-normalised scale, here those with a zero
    IQR (the same set unless a voxel's spread is below 1e-10 of the median intensity);
    3dToutcount with ``polort > 0`` solves the L1 fit by IRLS instead of ``cl1_solve``.
    """
    if not 0 <= int(polort) <= 3:
        raise ConfigurationError(f"polort must be 0, 1, 2 or 3, got {polort}")
    if not 0.0 < float(qthr) < 0.999:
        raise ConfigurationError(f"qthr must be in (0, 0.999), got {qthr}")
    nt, nv = series.n_timepoints, series.n_voxels
    if nt < 5:
        raise AnalysisError(f"QC needs at least 5 volumes, got {nt}", series.source)
    data = series.data

    out: dict[str, da.Array] = {}
    out["tsnr"] = _voxel_map(data, kqc.tsnr_map, tsnr_detrend, dtype=np.float32)

    glob = _block_sums(data, kqc.global_partials, 2, nt)
    out["global_signal"] = glob[0] / nv
    avg_unit = glob[1] / nv
    out["gcor"] = (avg_unit * avg_unit).sum()

    dv = _block_sums(data, kqc.dvars_partials, 3, nt)
    count = dv[1, 0]
    dvars_raw = da.sqrt(dv[0, 1:] / count)
    diff_sd_mean = dv[0, 0] / count
    out["dvars_std"] = dvars_raw / diff_sd_mean
    out["dvars_vstd"] = da.sqrt(dv[1, 1:] / count)
    if intensity_normalization:
        median = _exact_median(data)
        out["dvars_median"] = median
        out["dvars_nstd"] = dvars_raw * (float(intensity_normalization) / median)
    else:
        out["dvars_nstd"] = dvars_raw

    counts = _block_sums(data, kqc.outlier_counts, 1, nt, int(polort), float(qthr),
                         dtype=np.int64)[0]
    out["outlier_fraction"] = counts / float(nv)

    ref = _voxel_map(data, kqc.voxel_median).rechunk(-1).map_blocks(
        kqc.centered_ranks, dtype=np.float64)
    vols = _volume_blocks(series, image, time_block)
    out["aqi"] = da.blockwise(kqc.aqi_block, "t", vols, "tv", ref, "v", concatenate=True,
                              dtype=np.float64, meta=np.empty((0,), np.float64))

    mean = mean_volume if mean_volume is not None else series.meta.get("mean")
    if mean is not None:
        if tuple(mean.shape) != series.mask.shape:
            raise AnalysisError(f"mean volume of shape {tuple(mean.shape)} does not match the "
                                f"mask {series.mask.shape}", series.source)
        for axis in ("x", "y"):
            value = dask.delayed(kqc.ghost_to_signal, pure=True)(mean, series.mask, axis)
            out[f"gsr_{axis}"] = da.from_delayed(value, shape=(), dtype=np.float64)
    return out


def qc_summary(computed: dict[str, np.ndarray], t_r: float) -> dict[str, float | int | list]:
    """MRIQC-style image-quality metrics from the computed :func:`qc_arrays` (plain NumPy).

    Parameters
    ----------
    computed : dict of str to ndarray
        The values of :func:`qc_arrays`, computed.
    t_r : float
        Repetition time, seconds (reported as ``tr``; the time axis of the traces).

    Returns
    -------
    dict
        Scalars named as MRIQC's IQMs: ``tsnr`` (median of the tSNR map in the mask),
        ``dvars_std``, ``dvars_nstd``, ``dvars_vstd`` (means over volumes, MRIQC
        ``dvars.std/nstd/vstd``), ``gcor``, ``aor`` (mean outlier fraction), ``aqi`` (mean
        quality index), ``n_nonsteady`` (int, leading non-steady-state volumes from the
        global signal, nipype ``NonSteadyStateDetector`` logic), ``gsr_x``/``gsr_y`` (when
        computed), ``tr`` (seconds); and the traces as lists: ``global_signal``,
        ``outlier_fraction``, ``aqi_series`` (T values), ``dvars_std_series``,
        ``dvars_nstd_series``, ``dvars_vstd_series`` (T - 1 values, volumes 1..T-1).

    Raises
    ------
    MissingMetadataError
        ``t_r`` is not a positive finite number.
    AnalysisError
        A required array is missing from ``computed``.
    """
    if t_r is None or not np.isfinite(t_r) or t_r <= 0:
        raise MissingMetadataError(f"repetition time missing or not positive (t_r={t_r})")
    required = ("tsnr", "global_signal", "gcor", "dvars_std", "dvars_nstd", "dvars_vstd",
                "outlier_fraction", "aqi")
    missing = [k for k in required if k not in computed]
    if missing:
        raise AnalysisError(f"computed QC arrays lack {', '.join(missing)}")
    arr = {k: np.asarray(v) for k, v in computed.items()}
    out: dict[str, float | int | list] = {
        "tsnr": float(np.median(arr["tsnr"])),
        "dvars_std": float(np.mean(arr["dvars_std"])),
        "dvars_nstd": float(np.mean(arr["dvars_nstd"])),
        "dvars_vstd": float(np.mean(arr["dvars_vstd"])),
        "gcor": float(arr["gcor"]),
        "aor": float(np.mean(arr["outlier_fraction"])),
        "aqi": float(np.mean(arr["aqi"])),
        "n_nonsteady": int(kqc.nonsteady_count(arr["global_signal"])),
        "tr": float(t_r),
    }
    for axis in ("x", "y"):
        if f"gsr_{axis}" in arr:
            out[f"gsr_{axis}"] = float(arr[f"gsr_{axis}"])
    out["global_signal"] = arr["global_signal"].astype(float).tolist()
    out["outlier_fraction"] = arr["outlier_fraction"].astype(float).tolist()
    out["aqi_series"] = arr["aqi"].astype(float).tolist()
    for name in ("dvars_std", "dvars_nstd", "dvars_vstd"):
        out[f"{name}_series"] = arr[name].astype(float).tolist()
    return out
