"""Voxelwise degree centrality, computed tile by tile (the N x N matrix never exists).

Definitions (C-PAC network centrality, ``CPAC.network_centrality``; Zuo et al. 2012, Cereb
Cortex 22:1862; Buckner et al. 2009, J Neurosci 29:1860): with ``r_ij`` the Pearson correlation
of voxels ``i`` and ``j`` over time,

* binarised degree ``DC_b(i) = #{ j != i : r_ij > threshold }``;
* weighted degree ``DC_w(i) = sum_{ j != i, r_ij > threshold } r_ij``.

Algorithm: each voxel block is centred and scaled to unit norm (``Z``, float32), so that
``Z_a.T @ Z_b`` is the correlation tile between blocks ``a`` and ``b``.  For every pair
``a <= b`` (the symmetric half only) one task forms that tile, thresholds it and reduces it to
row sums (partials for block ``a``) and column sums (partials for block ``b``); the partials
of each block are then summed.  A tile is at most ``block_size**2`` float32 values (64 MB with
the default 4096).  Correlations use float32 GEMM on z-scored data rather than
``np.corrcoef``, which segfaults on >= ~18k rows with OpenBLAS (numpy#19685).
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from neuroscale.errors import AnalysisError, ConfigurationError
from neuroscale.image import Series
from neuroscale.kernels.maps import correlation_tile_degrees, zscore_block
from neuroscale.kernels.xp import array_namespace, is_gpu

__all__ = ["degree_centrality", "default_block_size"]

_TILE_BYTES = 64 * 2**20
#: Tile budget when the chunks are on a GPU: fewer, larger GEMMs keep an H200 busy (a
#: 16k x 16k float32 tile is 1 GiB; a 4k one takes well under a millisecond there).
GPU_TILE_BYTES = 2**30


def default_block_size(n_timepoints: int, tile_bytes: int = _TILE_BYTES) -> int:
    """Voxels per block so that one float32 tile (block x block) is <= ``tile_bytes``.

    Also keeps each z-scored block ``(n_timepoints, block)`` float32 under ``tile_bytes``.
    """
    by_tile = int(np.sqrt(tile_bytes / 4))
    by_block = max(1, tile_bytes // (4 * max(n_timepoints, 1)))
    return max(1, min(by_tile, by_block))


def _sum_partials(*parts: Any) -> Any:
    xp = array_namespace(parts[0])
    total = xp.zeros_like(parts[0])
    for p in parts:
        total += p
    return xp.astype(total, xp.float32)


def _take(part: Any, start: int, stop: int) -> Any:
    return part[:, start:stop]


def _tile_one_blas_thread(zi: Any, zj: Any, threshold: float, diagonal: bool) -> Any:
    """One tile with BLAS limited to one thread: Dask already runs tiles in parallel, and
    nested BLAS threads only oversubscribe the cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return correlation_tile_degrees(zi, zj, threshold, diagonal)


def degree_centrality(
    series: Series, threshold: float = 0.25, block_size: int | None = None
) -> tuple[da.Array, da.Array]:
    """Binarised and weighted degree centrality of every in-mask voxel, lazily.

    Parameters
    ----------
    series : Series
        ``(n_timepoints, n_voxels)`` float32 in-mask time series; its chunks may be CuPy
        arrays (:func:`neuroscale.compute.gpu.to_device`): every tile is then a cuBLAS GEMM
        on the GPU and the maps come back as CuPy chunks.
    threshold : float
        Correlation threshold: an edge is ``r > threshold`` (default 0.25, C-PAC's usual
        correlation threshold).
    block_size : int, optional
        Voxels per block; default :func:`default_block_size` (tiles of <= 64 MB, or
        :data:`GPU_TILE_BYTES` when the chunks are on a GPU).

    Returns
    -------
    dcb : (n_voxels,) dask array of float32
        Number of other voxels with ``r > threshold``.
    dcw : (n_voxels,) dask array of float32
        Sum of those ``r``.

    Both come from the same tasks (compute them together).  Cost: ``n_blocks (n_blocks + 1) / 2``
    tiles of ``2 T block_size**2`` flops each.

    Raises
    ------
    ConfigurationError
        ``threshold`` not in [-1, 1) or ``block_size`` < 1.
    AnalysisError
        Fewer than 3 time points.
    """
    if not -1.0 <= threshold < 1.0:
        raise ConfigurationError(f"correlation threshold must be in [-1, 1), got {threshold}")
    n_t = series.n_timepoints
    if n_t < 3:
        raise AnalysisError(f"degree centrality needs at least 3 time points, got {n_t}",
                            series.source)
    meta = meta_from_array(series.data, ndim=2, dtype=np.float32)
    if block_size is None:
        block_size = default_block_size(n_t, GPU_TILE_BYTES if is_gpu(meta) else _TILE_BYTES)
    if block_size < 1:
        raise ConfigurationError(f"block_size must be >= 1, got {block_size}")
    z = series.data.rechunk({0: -1, 1: int(block_size)}).map_blocks(
        zscore_block, dtype=np.float32, meta=meta
    )
    sizes = z.chunks[1]
    nb = len(sizes)
    zblocks = z.to_delayed().ravel()
    partials: list[list[object]] = [[] for _ in range(nb)]
    tile_fn = dask.delayed(_tile_one_blas_thread, pure=True)
    take = dask.delayed(_take, pure=True)
    for a in range(nb):
        for b in range(a, nb):
            tile = tile_fn(zblocks[a], zblocks[b], float(threshold), a == b)
            partials[a].append(take(tile, 0, sizes[a]))
            if b != a:
                partials[b].append(take(tile, sizes[a], sizes[a] + sizes[b]))
    summer = dask.delayed(_sum_partials, pure=True)
    per_block = [
        da.from_delayed(summer(*partials[a]), shape=(2, sizes[a]), dtype=np.float32,
                        meta=meta)
        for a in range(nb)
    ]
    both = da.concatenate(per_block, axis=1)
    return both[0], both[1]
