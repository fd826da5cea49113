"""Per-chunk kernels for voxelwise maps: ALFF/fALFF, ReHo, degree centrality, seed r.

Pure functions on one ``(n_timepoints, n_voxels)`` block (voxels in columns); no Dask, no I/O.
The graph-level wrappers live in :mod:`neuroscale.analysis` (``alff``, ``reho``,
``centrality``, ``seed``), where the definitions and their sources are documented.

ALFF/fALFF, the z-scoring and correlation tiles of degree centrality and the seed
correlations are written against the array API (:mod:`neuroscale.kernels.xp`): a CuPy block
is computed on its GPU, a NumPy block exactly as before.  ReHo's ranking is NumPy only.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np

from neuroscale.kernels.xp import array_namespace, device, is_cupy_namespace, sum_of_squares

__all__ = [
    "alff_block",
    "correlation_tile_degrees",
    "kendall_w_block",
    "kendall_w_ranked",
    "neighbour_index",
    "pearson_with_seed_block",
    "rank_block",
    "seed_fisher_z_block",
    "zscore_block",
]

# columns processed at once inside a kernel, to bound float64 temporaries (~8 MB per array)
_BATCH_ELEMENTS = 1 << 20
_GPU_BATCH_ELEMENTS = 1 << 26  # 512 MB float64 temporaries


def _batches(n_rows: int, n_cols: int, xp: Any = None) -> list[slice]:
    """Column slices of at most ~``_BATCH_ELEMENTS`` elements (``_GPU_BATCH_ELEMENTS`` for a
    CuPy block: there each batch costs kernel launches, and memory is plentiful)."""
    budget = _GPU_BATCH_ELEMENTS if xp is not None and is_cupy_namespace(xp) else _BATCH_ELEMENTS
    step = max(1, budget // max(n_rows, 1))
    return [slice(a, min(a + step, n_cols)) for a in range(0, n_cols, step)]


def _linear_detrend(x: Any) -> Any:
    """Remove the least-squares line from each column (as ``scipy.signal.detrend``), float64."""
    xp = array_namespace(x)
    n = x.shape[0]
    x = xp.astype(x, xp.float64, copy=False)
    if n < 2:
        return x - xp.mean(x, axis=0)
    t = xp.arange(n, dtype=xp.float64, device=device(x))
    t -= xp.mean(t)
    x = x - xp.mean(x, axis=0)
    slope = (t @ x) / (t @ t)
    return x - t[:, None] * slope[None, :]


def alff_block(block: Any, t_r: float, low: float, high: float) -> Any:
    """ALFF and fALFF of each column.

    Parameters
    ----------
    block : (n_timepoints, n_voxels) array (NumPy, CuPy or another array-API library)
        Time series in columns.
    t_r : float
        Sampling interval, seconds.
    low, high : float
        Band limits, Hz (inclusive).

    Returns
    -------
    (2, n_voxels) array of float32, ``block``'s library and device
        Row 0: ALFF, the mean single-sided amplitude ``2 |X_k| / T`` over the FFT bins
        ``k`` with ``low <= f_k <= high`` of the linearly detrended series; row 1: fALFF,
        the sum of the amplitudes in the band over their sum over all bins ``f_k > 0`` (0 for
        a constant series). The Nyquist bin of an even ``T`` has amplitude ``|X_k| / T``.
        Definitions of Zang et al. (2007) / Zou et al. (2008) as in REST / DPABI.
    """
    xp = array_namespace(block)
    dev = device(block)
    n_t, n_v = block.shape
    out = xp.zeros((2, n_v), dtype=xp.float32, device=dev)
    if n_t < 2 or n_v == 0:
        return out
    freqs = np.fft.rfftfreq(n_t, d=t_r)  # the bins and their weights: small, on the host
    scale_np = np.full(freqs.shape, 2.0 / n_t)
    scale_np[0] = 1.0 / n_t
    if n_t % 2 == 0:
        scale_np[-1] = 1.0 / n_t
    scale = xp.asarray(scale_np, device=dev)
    tol = 1e-9 * freqs[1]
    in_band = np.flatnonzero((freqs >= low - tol) & (freqs <= high + tol) & (freqs > 0))
    n_band = int(in_band.size)
    # the band's bins are one contiguous run: a slice sums them as the boolean selection did
    band = slice(int(in_band[0]), int(in_band[-1]) + 1) if n_band else slice(0, 0)
    for sl in _batches(n_t, n_v, xp):
        x = _linear_detrend(block[:, sl])
        amp = xp.abs(xp.fft.rfft(x, axis=0)) * scale[:, None]
        band_sum = xp.sum(amp[band, :], axis=0)
        total = xp.sum(amp[1:, :], axis=0)
        out[0, sl] = xp.astype(band_sum / n_band, xp.float32) if n_band else 0.0
        ok = total > 0
        out[1, sl] = xp.astype(xp.where(ok, band_sum / xp.where(ok, total, 1.0), 0.0),
                               xp.float32)
    return out


def neighbour_index(mask_ext: np.ndarray, x_lo: int, x_hi: int) -> np.ndarray:
    """Column indices of the 27-voxel neighbourhood of every in-mask voxel of a slab.

    Parameters
    ----------
    mask_ext : (xs, y, z) ndarray of bool
        Mask of the slab with its halo planes; its in-mask voxels, in C order, are the columns
        of the block the indices point into.
    x_lo, x_hi : int
        The slab proper is ``mask_ext[x_lo:x_hi]`` (the rest is halo).

    Returns
    -------
    (n_center, 27) ndarray of intp
        For each in-mask voxel of the slab proper (C order), the column of each of its 27
        neighbours (itself included), or ``n_ext`` (one past the last column) where the
        neighbour is outside the mask or the grid.
    """
    n_ext = int(mask_ext.sum())
    idx = np.full(mask_ext.shape, n_ext, dtype=np.intp)
    idx[mask_ext] = np.arange(n_ext)
    pad = np.pad(idx, 1, constant_values=n_ext)
    cx, cy, cz = np.nonzero(mask_ext[x_lo:x_hi])
    cx = cx + x_lo
    out = np.empty((cx.size, 27), dtype=np.intp)
    for j, (dx, dy, dz) in enumerate(product((-1, 0, 1), repeat=3)):
        out[:, j] = pad[cx + 1 + dx, cy + 1 + dy, cz + 1 + dz]
    return out


def rank_block(block: np.ndarray) -> np.ndarray:
    """Average ranks over time (1..T, ties averaged) of each column of ``block``.

    Parameters
    ----------
    block : (n_timepoints, n_voxels) ndarray

    Returns
    -------
    (n_timepoints, n_voxels) ndarray of float32
        ``scipy.stats.rankdata(block, axis=0, method="average")`` (exact in float32: ranks and
        half ranks below 2**23).
    """
    from scipy.stats import rankdata

    out = np.empty(block.shape, dtype=np.float32)
    for sl in _batches(*block.shape):
        out[:, sl] = rankdata(block[:, sl], axis=0, method="average")
    return out


def kendall_w_block(block_ext: np.ndarray, mask_ext: np.ndarray, x_lo: int,
                    x_hi: int) -> np.ndarray:
    """Kendall's W (ReHo) of each in-mask voxel of a slab with its in-mask 26 neighbours.

    Parameters
    ----------
    block_ext : (n_timepoints, n_ext) ndarray
        Time series of the in-mask voxels of ``mask_ext`` (C order): the slab and its halo.
    mask_ext : (xs, y, z) ndarray of bool
        Slab mask including the halo x-planes.
    x_lo, x_hi : int
        x-range of the slab proper within ``mask_ext``.

    Returns
    -------
    (n_center,) ndarray of float32
        ``W = 12 S / (n**2 (T**3 - T))`` with ``S = sum_t (R_t - n (T + 1) / 2)**2``,
        ``R_t`` the sum over the ``n`` in-mask neighbourhood voxels of their rank at time
        ``t`` (average ranks for ties, no tie correction), as C-PAC's ``f_kendall``
        (Zang et al. 2004).
    """
    return kendall_w_ranked([rank_block(block_ext)], mask_ext, x_lo, x_hi)


def kendall_w_ranked(ranks_parts: list[np.ndarray], mask_ext: np.ndarray, x_lo: int,
                     x_hi: int) -> np.ndarray:
    """:func:`kendall_w_block` from ranks already computed (:func:`rank_block`), given as
    consecutive column pieces (e.g. the halo plane before the slab, the slab, the plane
    after it), which are copied once into one array instead of being concatenated first.

    Parameters
    ----------
    ranks_parts : list of (n_timepoints, n_i) ndarray of float32
        Ranks over time of the in-mask voxels of ``mask_ext`` (C order), split in columns.
    mask_ext : (xs, y, z) ndarray of bool
    x_lo, x_hi : int
        As :func:`kendall_w_block`.

    Returns
    -------
    (n_center,) ndarray of float32
        W of each in-mask voxel of the slab proper (see :func:`kendall_w_block`).
    """
    n_t = ranks_parts[0].shape[0]
    n_ext = sum(p.shape[1] for p in ranks_parts)
    nbr = neighbour_index(mask_ext, x_lo, x_hi)
    n_center = nbr.shape[0]
    out = np.zeros(n_center, dtype=np.float32)
    if n_center == 0 or n_t < 2:
        return out
    # one extra zero column: the index of neighbours outside the mask (neighbour_index)
    ranks = np.empty((n_t, n_ext + 1), dtype=np.float32)
    ranks[:, -1] = 0.0
    col = 0
    for part in ranks_parts:
        ranks[:, col : col + part.shape[1]] = part
        col += part.shape[1]
    n = (nbr < n_ext).sum(axis=1).astype(np.float64)
    denom = n**2 * (float(n_t) ** 3 - n_t)
    for sl in _batches(n_t, n_center):
        rsum = np.zeros((n_t, sl.stop - sl.start), dtype=np.float32)
        for j in range(27):
            rsum += ranks[:, nbr[sl, j]]  # exact: integer/half sums < 2**23
        dev = rsum.astype(np.float64) - n[sl] * (n_t + 1) / 2.0
        s = np.einsum("ij,ij->j", dev, dev)
        out[sl] = 12.0 * s / denom[sl]
    return out


def zscore_block(block: Any) -> Any:
    """Centre each column and scale it to unit Euclidean norm (float32).

    Then ``Z[:, i] @ Z[:, j]`` is the Pearson r of columns ``i`` and ``j``; constant columns
    become 0 (r = 0 with everything).

    Parameters
    ----------
    block : (n_timepoints, n_voxels) array (NumPy, CuPy or another array-API library)

    Returns
    -------
    (n_timepoints, n_voxels) array of float32, ``block``'s library and device
    """
    xp = array_namespace(block)
    out = xp.empty(block.shape, dtype=xp.float32, device=device(block))
    for sl in _batches(block.shape[0], block.shape[1], xp):
        x = xp.astype(block[:, sl], xp.float64, copy=False)
        x = x - xp.mean(x, axis=0)
        norm = xp.sqrt(sum_of_squares(xp, x))
        out[:, sl] = xp.astype(x / xp.where(norm > 0, norm, xp.inf), xp.float32)
    return out


def correlation_tile_degrees(zi: Any, zj: Any, threshold: float, diagonal: bool) -> Any:
    """Partial degree centralities from one tile ``r = zi.T @ zj`` of the correlation matrix.

    Parameters
    ----------
    zi, zj : (n_timepoints, n_i) and (n_timepoints, n_j) arrays of float32
        Unit-norm, centred columns (:func:`zscore_block`), of one library and device (NumPy,
        CuPy: the tile's GEMM then runs on the GPU, in plain float32, never TF32).
    threshold : float
        Edges are pairs with ``r > threshold``.
    diagonal : bool
        ``zi`` and ``zj`` are the same block: self-pairs are excluded and only the row
        partials are returned (the tile is symmetric).

    Returns
    -------
    (2, n_i + n_j) array of float64, the inputs' library and device
        Rows: binarised degree (count of r > threshold), weighted degree (sum of those r);
        the first ``n_i`` columns are the partials of ``zi``'s voxels (row sums), the last
        ``n_j`` those of ``zj``'s (column sums, zero when ``diagonal``).
    """
    xp = array_namespace(zi, zj)
    dev = device(zi)
    n_i, n_j = zi.shape[1], zj.shape[1]
    out = xp.zeros((2, n_i + n_j), dtype=xp.float64, device=dev)
    # no copy of float32 inputs (as np.asarray): OpenBLAS's sgemm rounds by the operands' alignment
    tile = xp.astype(zi, xp.float32, copy=False).T @ xp.astype(zj, xp.float32, copy=False)
    # binary edges as 0/1 float32 (the same numbers as multiplying by a bool tile)
    edge = xp.astype(tile > threshold, xp.float32)
    if diagonal:  # no self-pairs
        edge = xp.where(xp.eye(n_i, n_j, dtype=xp.bool, device=dev), 0.0, edge)
    # Reductions as matrix-vector products (BLAS / cuBLAS, float32, exact for counts < 2**24):
    # several times faster than axis sums over a bool or float64-accumulated tile.
    ones_i = xp.ones(n_i, dtype=xp.float32, device=dev)
    ones_j = xp.ones(n_j, dtype=xp.float32, device=dev)
    out[0, :n_i] = xp.astype(edge @ ones_j, xp.float64)
    if not diagonal:
        out[0, n_i:] = xp.astype(ones_i @ edge, xp.float64)
    tile *= edge  # weighted edges
    out[1, :n_i] = xp.astype(tile @ ones_j, xp.float64)
    if not diagonal:
        out[1, n_i:] = xp.astype(ones_i @ tile, xp.float64)
    return out


def pearson_with_seed_block(block: Any, seed: Any) -> Any:
    """Pearson r of each column of ``block`` with the vector ``seed``, float64.

    Parameters
    ----------
    block : (n_timepoints, n_voxels) array (NumPy, CuPy or another array-API library)
    seed : (n_timepoints,) array-like
        Moved to ``block``'s library and device.

    Returns
    -------
    (n_voxels,) array of float64, ``block``'s library and device
        r; 0 where either series is constant.
    """
    xp = array_namespace(block)
    dev = device(block)
    s = xp.reshape(xp.asarray(seed, dtype=xp.float64, device=dev), (-1,))
    s = s - xp.mean(s)
    s_norm = float(xp.sqrt(s @ s))
    out = xp.zeros(block.shape[1], dtype=xp.float64, device=dev)
    if s_norm == 0:
        return out
    s /= s_norm
    for sl in _batches(block.shape[0], block.shape[1], xp):
        x = xp.astype(block[:, sl], xp.float64, copy=False)
        x = x - xp.mean(x, axis=0)
        norm = xp.sqrt(sum_of_squares(xp, x))
        out[sl] = (s @ x) / xp.where(norm > 0, norm, xp.inf)
    return out


def seed_fisher_z_block(block: Any, seed: Any, r_max: float) -> Any:
    """Fisher z, ``arctanh(r)``, of each column's Pearson r with ``seed``, float32.

    ``r`` is clipped to ``[-r_max, r_max]`` first so that perfectly correlated voxels (the seed
    itself) give a finite value.  Same arguments as :func:`pearson_with_seed_block`; returns
    ``(n_voxels,)`` float32 in ``block``'s library.
    """
    xp = array_namespace(block)
    r = pearson_with_seed_block(block, seed)
    return xp.astype(xp.atanh(xp.clip(r, -r_max, r_max)), xp.float32)
