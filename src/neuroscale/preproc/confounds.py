"""Confound time series of a BOLD run, written as fMRIPrep writes them.

neuroscale builds the regressors that fMRIPrep's ``init_bold_confs_wf`` puts into
``*_desc-confounds_timeseries.tsv`` from the realigned BOLD series, the motion parameters of
motion correction and the (eroded) white-matter and CSF masks of the T1w segmentation, so that
the table can be read by :func:`neuroscale.bids.confounds.load_confounds`, by nilearn's
``load_confounds`` and by XCP-D.

Out of core
-----------
:func:`confound_signals` returns lazy Dask arrays only; no ``(t, n_voxels)`` matrix is ever
gathered.  Every quantity is a sum over the voxel chunks of the :class:`~neuroscale.image.Series`:

* ``global_signal``, ``white_matter``, ``csf``: sums over the in-mask / tissue voxels of each
  chunk, divided by the voxel count (fMRIPrep: ``SignalExtraction`` means over the brain mask
  and the eroded WM / CSF masks of the unfiltered BOLD); non-finite values are left out of
  both (a NaN-ignoring mean; never the case for BOLD stored as integers).
* aCompCor: for each tissue mask the ``T x T`` Gram matrix ``G = M M^T`` of the pre-processed
  noise-ROI matrix ``M`` (time x voxel), accumulated chunk by chunk (each chunk adds
  ``M_c M_c^T``).  ``M`` is built exactly as nipype's ``compute_noise_components`` builds it
  for fMRIPrep (``pre_filter="cosine"``, ``high_pass_cutoff=128`` s), column by column:

  1. voxel series containing NaN are set to 0;
  2. ``cosine_filter``: least-squares residuals against the discrete cosine basis of
     ``_cosine_drift(period_cut=1/high_pass_hz, frametimes)`` (DCT-II columns
     ``sqrt(2/T) cos(pi k (n + 1/2) / T)``, ``k = 1 .. order-1`` with
     ``order = max(floor(2 T t_r / period_cut), 1)``) *plus a constant column*, i.e. the mean
     is removed too (``remove_mean=True``);
  3. ``M / _compute_tSTD(M, 1.)``: division by the population standard deviation (ddof 0) of
     each filtered voxel series, a zero or NaN standard deviation replaced by 1.

  nipype then takes ``u`` of ``numpy.linalg.svd(M, full_matrices=False)``.  The left singular
  vectors of ``M`` are the eigenvectors of ``G`` (eigenvalues ``s**2``), so
  :func:`compcor_components` takes the leading eigenvectors of the summed ``G``
  (``numpy.linalg.eigh``), with a deterministic sign: the entry of largest magnitude of each
  component is made positive (scikit-learn's ``svd_flip`` rule; LAPACK's SVD sign is
  arbitrary, so nipype's components equal ours up to that sign).  Memory: ``T x T`` float64
  per chunk (11.5 MB for T = 1200).

Tissue voxels outside the series mask
-------------------------------------
The series holds the voxels of its own (brain) mask only, so the WM and CSF masks are
*intersected* with it: tissue voxels outside the brain mask are ignored (fMRIPrep likewise
restricts its aCompCor masks to the BOLD brain mask).  An intersection that is empty raises
:class:`~neuroscale.errors.AnalysisError`; the voxel counts used are returned
(``n_voxels_*``) so the caller can report them.

The combined WM+CSF mask is the union of the two (fMRIPrep's ``a_comp_cor``, nipype
``merge_method="union"``); its Gram matrix is ``G_WM + G_CSF - G_overlap`` (each voxel is
normalised on its own, so Gram matrices of disjoint voxel sets add).

Non-steady-state volumes
------------------------
``n_dummy`` leading volumes are left out of the aCompCor estimation and their rows of the
components and cosine regressors are 0, with one ``non_steady_state_outlierNN`` column per
such volume, as nipype's ``CompCor(ignore_initial_volumes=n)`` and fMRIPrep write them.

References
----------
Behzadi et al. 2007, NeuroImage 37:90-101 (CompCor); nipype 1.x
``nipype/algorithms/confounds.py`` (``compute_noise_components``, ``cosine_filter``,
``_cosine_drift``, ``_compute_tSTD``); fMRIPrep ``fmriprep/workflows/bold/confounds.py``
(column names; ``expand_model`` for ``_derivative1`` / ``_power2``: backward differences with
the first row ``n/a``, squares); Satterthwaite et al. 2013, NeuroImage 64:240-256 (24/36P).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from neuroscale.errors import AnalysisError, ConfigurationError
from neuroscale.image import Series
from neuroscale.io.atomic import atomic_write_text

__all__ = [
    "MOTION_COLUMNS",
    "compcor_components",
    "confound_signals",
    "confounds_table",
    "cosine_basis",
    "write_confounds_tsv",
]

#: fMRIPrep's motion parameter columns: translations in mm, rotations in rad (this order).
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_TISSUES = {"w_comp_cor": "WM", "c_comp_cor": "CSF"}


def cosine_basis(n_volumes: int, t_r: float, high_pass_hz: float = 1 / 128) -> np.ndarray:
    """The discrete cosine drift regressors fMRIPrep writes as ``cosine00``, ``cosine01``...

    nipype ``_cosine_drift(period_cut=1/high_pass_hz, frametimes=t_r * arange(T))`` without
    its constant column: ``sqrt(2/T) cos(pi k (n + 1/2) / T)`` for ``k = 1 .. order - 1``,
    ``order = max(floor(2 T t_r high_pass_hz), 1)``.

    Parameters
    ----------
    n_volumes : int
        ``T``.
    t_r : float
        Repetition time, s.
    high_pass_hz : float
        Cut-off, Hz (fMRIPrep: 1/128 Hz, i.e. periods longer than 128 s).

    Returns
    -------
    ndarray, shape (n_volumes, order - 1), float64
        Possibly with no column (short runs).
    """
    n = int(n_volumes)
    order = max(int(np.floor(2 * n * float(high_pass_hz) * float(t_r))), 1)
    k = np.arange(1, order)
    t = np.arange(n)[:, None] + 0.5
    return np.sqrt(2.0 / n) * np.cos((np.pi / n) * t * k[None, :])


def _filter_basis(n: int, t_r: float, high_pass_hz: float) -> np.ndarray:
    """Orthonormal basis of span{cosines, constant} (nipype ``cosine_filter`` design)."""
    x = np.column_stack([cosine_basis(n, t_r, high_pass_hz), np.ones(n)])
    q, _ = np.linalg.qr(x)
    return q


def _tissue_sums_block(block: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """NaN-ignoring sum and count over the selected voxels of one chunk.

    block (T, v), sel (v,) bool -> (1, 2T) float64: ``[sums..., counts...]``.
    """
    x = np.asarray(block[:, sel], dtype=np.float64)
    ok = np.isfinite(x)
    return np.concatenate([np.where(ok, x, 0.0).sum(axis=1), ok.sum(axis=1)])[None, :]


def _gram_block(block: np.ndarray, sel: np.ndarray, *, basis: np.ndarray,
                n_dummy: int) -> np.ndarray:
    """nipype's CompCor pre-processing of one chunk's noise voxels; returns ``M_c M_c^T``.

    block (T, v), sel (v,) bool -> (1, T - n_dummy, T - n_dummy) float64.
    """
    nt = block.shape[0] - n_dummy
    if not sel.any():
        return np.zeros((1, nt, nt), dtype=np.float64)
    m = np.array(block[n_dummy:, sel], dtype=np.float64)
    m[:, ~np.isfinite(m).all(axis=0)] = 0.0          # "Zero-out any bad values"
    m -= basis @ (basis.T @ m)                       # cosine_filter, remove_mean=True
    std = m.std(axis=0)                              # _compute_tSTD(M, 1.)
    std[(std == 0) | ~np.isfinite(std)] = 1.0
    m /= std
    return (m @ m.T)[None]


def _check_tissue(series: Series, tissue: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if not tissue:
        return out  # EPI-only: global signal, motion and cosines only
    for key in ("WM", "CSF"):
        if key not in tissue:
            raise ConfigurationError(f"confound_signals needs a {key!r} tissue mask "
                                     f"(got keys {sorted(tissue)})", series.source)
        m = np.asarray(tissue[key], dtype=bool)
        if m.shape != series.mask.shape:
            raise AnalysisError(f"the {key} mask has shape {m.shape}, the BOLD grid is "
                                f"{series.mask.shape}", series.source)
        vec = m[series.mask]                         # tissue voxels inside the series mask
        if not vec.any():
            raise AnalysisError(f"the {key} mask has no voxel inside the BOLD brain mask "
                                f"({int(m.sum())} voxels outside it)", series.source)
        out[key] = vec
    return out


def confound_signals(
    series: Series,
    tissue: dict[str, np.ndarray],
    *,
    t_r: float,
    n_components: int = 5,
    high_pass_hz: float = 1 / 128,
    n_dummy: int = 0,
) -> dict[str, da.Array]:
    """Lazy tissue signals and aCompCor Gram matrices of a realigned BOLD series.

    Parameters
    ----------
    series : Series
        Realigned raw BOLD, ``(T, n_voxels)``, in its brain mask (``series.mask``, which is
        also the global-signal mask).
    tissue : dict
        ``"WM"`` and ``"CSF"``: ``(x, y, z)`` bool masks on the BOLD grid, already eroded by
        the caller; voxels outside ``series.mask`` are ignored (see the module docstring).
        Empty (EPI-only processing, no T1w): only the global signal is returned.
    t_r : float
        Repetition time, s.
    n_components : int
        Number of aCompCor components per mask that will be kept (checked here against the
        volumes available; the Gram matrices do not depend on it).
    high_pass_hz : float
        Cosine high-pass cut-off before aCompCor, Hz (fMRIPrep: 1/128).
    n_dummy : int
        Leading non-steady-state volumes left out of aCompCor.

    Returns
    -------
    dict of str to dask.array.Array
        ``global_signal``, ``white_matter``, ``csf``: ``(T,)`` float64 means;
        ``gram_w_comp_cor``, ``gram_c_comp_cor``, ``gram_a_comp_cor``: ``(T', T')`` float64
        with ``T' = T - n_dummy``; ``n_voxels_global``, ``n_voxels_wm``, ``n_voxels_csf``,
        ``n_voxels_wm_csf``: 0-d int64 (known counts, wrapped for a uniform compute).
        Nothing is computed.

    Raises
    ------
    ConfigurationError
        A tissue key is missing, ``n_components < 1``, bad ``t_r`` / ``high_pass_hz`` /
        ``n_dummy``.
    AnalysisError
        A tissue mask's shape differs from the BOLD grid, or it has no voxel in the brain
        mask; fewer volumes than ``n_components + 1`` after the dummy volumes.
    """
    src = series.source
    if not (isinstance(n_components, int) and n_components >= 1):
        raise ConfigurationError(f"n_components must be a positive integer, got "
                                 f"{n_components!r}", src)
    for name, v in (("t_r", t_r), ("high_pass_hz", high_pass_hz)):
        if isinstance(v, bool) or not (isinstance(v, (int, float, np.number))
                                       and math.isfinite(float(v)) and v > 0):
            raise ConfigurationError(f"{name} must be positive, got {v!r}", src)
    n_t = series.n_timepoints
    if not (isinstance(n_dummy, int) and 0 <= n_dummy < n_t):
        raise ConfigurationError(f"n_dummy must be in [0, {n_t - 1}], got {n_dummy!r}", src)
    if n_t - n_dummy < n_components + 1:
        raise AnalysisError(f"{n_t - n_dummy} volumes are too few for {n_components} aCompCor "
                            "components", src)
    vecs = _check_tissue(series, tissue)
    data = series.data
    vchunks = data.chunks[1]
    nb = len(vchunks)
    basis = _filter_basis(n_t - n_dummy, t_r, high_pass_hz)

    def sel_array(vec: np.ndarray) -> da.Array:
        return da.from_array(vec, chunks=(vchunks,))

    def tissue_mean(vec: np.ndarray) -> da.Array:
        parts = da.blockwise(_tissue_sums_block, "vt", data, "tv", sel_array(vec), "v",
                             adjust_chunks={"v": 1, "t": 2 * n_t}, dtype=np.float64,
                             meta=np.empty((0, 0), np.float64))
        assert parts.shape[0] == nb
        total = parts.sum(axis=0)
        return total[:n_t] / total[n_t:]

    def gram(vec: np.ndarray) -> da.Array:
        parts = da.blockwise(_gram_block, "vij", data, "tv", sel_array(vec), "v",
                             new_axes={"i": n_t - n_dummy, "j": n_t - n_dummy},
                             adjust_chunks={"v": 1}, dtype=np.float64,
                             meta=np.empty((0, 0, 0), np.float64), concatenate=True,
                             basis=basis, n_dummy=n_dummy)
        return parts.sum(axis=0)

    if not vecs:
        return {
            "global_signal": tissue_mean(np.ones(series.n_voxels, dtype=bool)),
            "n_voxels_global": da.from_array(np.int64(series.n_voxels)),
        }
    wm, csf = vecs["WM"], vecs["CSF"]
    overlap = wm & csf
    g_wm, g_csf = gram(wm), gram(csf)
    g_all = g_wm + g_csf - gram(overlap) if overlap.any() else g_wm + g_csf
    return {
        "global_signal": tissue_mean(np.ones(series.n_voxels, dtype=bool)),
        "white_matter": tissue_mean(wm),
        "csf": tissue_mean(csf),
        "gram_w_comp_cor": g_wm,
        "gram_c_comp_cor": g_csf,
        "gram_a_comp_cor": g_all,
        "n_voxels_global": da.from_array(np.int64(series.n_voxels)),
        "n_voxels_wm": da.from_array(np.int64(wm.sum())),
        "n_voxels_csf": da.from_array(np.int64(csf.sum())),
        "n_voxels_wm_csf": da.from_array(np.int64((wm | csf).sum())),
    }


def compcor_components(gram: np.ndarray, n_components: int = 5
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Leading aCompCor components from a summed Gram matrix.

    Parameters
    ----------
    gram : ndarray, shape (T, T), float64
        ``M M^T`` (see :func:`confound_signals`).
    n_components : int
        Number of components wanted.

    Returns
    -------
    components : ndarray, shape (T, k), float64
        Unit-norm eigenvectors of ``gram`` for its ``k = min(n_components, rank)`` largest
        eigenvalues, in decreasing order; each column's entry of largest magnitude is
        positive.  Equal (up to that sign) to ``u[:, :k]`` of nipype's
        ``numpy.linalg.svd(M, full_matrices=False)``.
    variance_explained : ndarray, shape (T,), float64
        ``s**2 / sum(s**2)`` for all eigenvalues (nipype's metadata), decreasing.
    """
    g = 0.5 * (np.asarray(gram, dtype=np.float64) + np.asarray(gram, dtype=np.float64).T)
    w, v = np.linalg.eigh(g)
    order = np.argsort(w)[::-1]
    w, v = np.clip(w[order], 0.0, None), v[:, order]
    total = w.sum()
    explained = w / total if total > 0 else np.zeros_like(w)
    rank = int((w > w[0] * g.shape[0] * np.finfo(np.float64).eps).sum()) if total > 0 else 0
    k = min(int(n_components), rank)
    comps = v[:, :k].copy()
    if k:
        idx = np.argmax(np.abs(comps), axis=0)
        signs = np.sign(comps[idx, np.arange(k)])
        signs[signs == 0] = 1.0
        comps *= signs
    return comps, explained


def _expand(name: str, x: np.ndarray, order: tuple[str, ...]) -> dict[str, np.ndarray]:
    """fMRIPrep's expansions: backward difference (first row NaN) and squares."""
    d = np.full_like(x, np.nan)
    d[1:] = np.diff(x)
    terms = {"": x, "_derivative1": d, "_power2": x**2, "_derivative1_power2": d**2}
    return {f"{name}{suffix}": terms[suffix] for suffix in order}


def confounds_table(
    computed: dict[str, Any],
    motion_params: np.ndarray,
    fd: np.ndarray,
    *,
    t_r: float,
    n_components: int = 5,
    high_pass_hz: float = 1 / 128,
    n_dummy: int = 0,
) -> pd.DataFrame:
    """The ``desc-confounds_timeseries`` table, with fMRIPrep's column names.

    Parameters
    ----------
    computed : dict
        :func:`confound_signals`' results, computed (numpy arrays).
    motion_params : ndarray, shape (T, 6)
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad), fMRIPrep's order.
    fd : ndarray, shape (T,)
        Framewise displacement, mm (Power et al. 2012); the first row is written ``n/a``
        whatever its value, as fMRIPrep does.
    t_r : float
        Repetition time, s.
    n_components : int
        aCompCor components per mask (``c_comp_cor_00..``, ``w_comp_cor_00..``,
        ``a_comp_cor_00..``).
    high_pass_hz : float
        Must be the value given to :func:`confound_signals` (``cosine00..`` columns).
    n_dummy : int
        As given to :func:`confound_signals`: zero rows in the aCompCor / cosine columns and
        ``non_steady_state_outlierNN`` columns.

    Returns
    -------
    pandas.DataFrame, shape (T, n_columns), float64
        Columns in fMRIPrep's order: ``global_signal``, ``csf``, ``white_matter`` (each with
        ``_derivative1``, ``_derivative1_power2``, ``_power2``), ``framewise_displacement``,
        ``c_comp_cor_NN``, ``w_comp_cor_NN``, ``a_comp_cor_NN``, ``cosineNN``,
        ``non_steady_state_outlierNN``, then the six motion parameters each followed by
        ``_derivative1``, ``_power2``, ``_derivative1_power2``.  Derivative columns have NaN
        in the first row (written ``n/a``).  ``table.attrs["compcor"]`` holds the explained
        variance of each mask's components (fMRIPrep's confounds JSON metadata).

    Raises
    ------
    AnalysisError
        Row counts disagree (motion, FD, signals).
    """
    gs = np.asarray(computed["global_signal"], dtype=np.float64)
    n_t = gs.shape[0]
    motion = np.asarray(motion_params, dtype=np.float64)
    fd = np.asarray(fd, dtype=np.float64).reshape(-1)
    if motion.shape != (n_t, 6):
        raise AnalysisError(f"motion parameters have shape {motion.shape}, expected ({n_t}, 6)")
    if fd.shape != (n_t,):
        raise AnalysisError(f"framewise displacement has {fd.size} rows, expected {n_t}")
    cols: dict[str, np.ndarray] = {}
    tissue_order = ("", "_derivative1", "_derivative1_power2", "_power2")
    for name in ("global_signal", "csf", "white_matter"):
        if name not in computed:
            continue  # EPI-only (no tissue masks)
        x = np.asarray(computed[name], dtype=np.float64)
        if x.shape != (n_t,):
            raise AnalysisError(f"{name} has shape {x.shape}, expected ({n_t},)")
        cols.update(_expand(name, x, tissue_order))
    fd_col = fd.copy()
    fd_col[0] = np.nan
    cols["framewise_displacement"] = fd_col
    meta: dict[str, Any] = {}
    for prefix in ("c_comp_cor", "w_comp_cor", "a_comp_cor"):
        if f"gram_{prefix}" not in computed:
            continue
        comps, explained = compcor_components(computed[f"gram_{prefix}"], n_components)
        if comps.shape[0] != n_t - n_dummy:
            raise AnalysisError(f"the {prefix} Gram matrix is {comps.shape[0]} x "
                                f"{comps.shape[0]}, expected {n_t - n_dummy} (n_dummy?)")
        for j in range(comps.shape[1]):
            col = np.zeros(n_t)
            col[n_dummy:] = comps[:, j]
            cols[f"{prefix}_{j:02d}"] = col
        meta[prefix] = {"variance_explained": [float(v) for v in explained[: comps.shape[1]]],
                        "cumulative_variance_explained":
                            [float(v) for v in np.cumsum(explained)[: comps.shape[1]]]}
    cos = cosine_basis(n_t - n_dummy, t_r, high_pass_hz)
    for j in range(cos.shape[1]):
        col = np.zeros(n_t)
        col[n_dummy:] = cos[:, j]
        cols[f"cosine{j:02d}"] = col
    for j in range(n_dummy):
        col = np.zeros(n_t)
        col[j] = 1.0
        cols[f"non_steady_state_outlier{j:02d}"] = col
    motion_order = ("", "_derivative1", "_power2", "_derivative1_power2")
    for j, name in enumerate(MOTION_COLUMNS):
        cols.update(_expand(name, motion[:, j], motion_order))
    table = pd.DataFrame(cols)
    table.attrs["compcor"] = meta
    return table


def write_confounds_tsv(path: str | Path, table: pd.DataFrame) -> None:
    """Write a confounds table atomically as fMRIPrep does (tab-separated, ``n/a`` for NaN).

    Parameters
    ----------
    path : str or Path
        ``..._desc-confounds_timeseries.tsv``.
    table : pandas.DataFrame
        From :func:`confounds_table` (any numeric columns).

    Raises
    ------
    AnalysisError
        The table has infinite values (fMRIPrep never writes them).
    """

    values = table.to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        raise AnalysisError("the confounds table contains infinite values", path)
    text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.10g",
                        lineterminator="\n")
    atomic_write_text(path, text)
