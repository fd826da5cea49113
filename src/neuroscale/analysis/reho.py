"""ReHo (regional homogeneity): Kendall's W of each voxel with its 26 neighbours.

Zang Y, Jiang T, Lu Y, He Y, Tian L (2004) Regional homogeneity approach to fMRI data analysis.
NeuroImage 22:394-400.  For each in-mask voxel, the time series of the in-mask voxels of its
27-voxel neighbourhood (itself, 6 face, 12 edge and 8 corner neighbours; neighbours outside the
mask or the grid are left out, as AFNI ``3dReHo -mask`` does) are ranked over time (ties get
their average rank) and::

    W = 12 * sum_t (R_t - n (T + 1) / 2)**2 / (n**2 (T**3 - T))

with ``R_t`` the sum of the ``n`` ranks at time ``t`` and ``T`` the number of time points: the
formula of C-PAC's ``CPAC.reho.utils.f_kendall`` (no correction for ties; a voxel with no
in-mask neighbour gets W = 1).

Blockwise: the Series is rechunked into slabs of whole x-planes, each at most
``REHO_SLAB_BYTES`` of float32 time series (and no larger than the Series' own column chunks);
each task holds one slab plus a halo of one x-plane on each side (the last plane of the
previous slab and the first of the next), so no task ever holds the whole run, and a longer
run gets thinner slabs rather than larger tasks.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from neuroscale.errors import AnalysisError
from neuroscale.image import Series
from neuroscale.kernels.maps import kendall_w_ranked, rank_block

__all__ = ["reho", "REHO_SLAB_BYTES"]

#: Bytes of float32 time series in one ReHo slab (without its halo).  A task holds about four
#: such arrays at once (its inputs, their concatenation with the halo, the ranks, scipy's
#: float64 rank batches), so 32 MiB keeps a task near 0.25 GB whatever the run's length.
REHO_SLAB_BYTES = 32 << 20


def reho(series: Series) -> da.Array:
    """ReHo (Kendall's W over the 27-voxel neighbourhood) of every in-mask voxel, lazily.

    Parameters
    ----------
    series : Series
        ``(n_timepoints, n_voxels)`` float32 in-mask time series.

    Returns
    -------
    (n_voxels,) dask array of float32
        W in [0, 1], mask order; one task per x-slab (see the module docstring for the
        definition and its sources).

    Raises
    ------
    AnalysisError
        Fewer than 3 time points.
    """
    n_t = series.n_timepoints
    if n_t < 3:
        raise AnalysisError(f"ReHo needs at least 3 time points, got {n_t}", series.source)
    mask = series.mask
    nx = mask.shape[0]
    per_x = mask.reshape(nx, -1).sum(axis=1)
    bounds = series.slab_bounds(max_voxels=REHO_SLAB_BYTES // (4 * n_t))
    counts = tuple(int(per_x[a:b].sum()) for a, b in bounds)
    data = series.data.rechunk({0: -1, 1: counts})
    # rank each slab once (a task per slab); the W task of a slab then gets the ranks of its
    # halo planes and itself as separate pieces, copied once into its working array
    ranks = data.map_blocks(rank_block, dtype=np.float32, meta=np.empty((0, 0), np.float32))
    pieces = []
    for i, (a, b) in enumerate(bounds):
        parts = []
        lo = a
        # halo planes: x = a - 1 is the last plane of slab i - 1 (or empty), x = b the first
        # plane of slab i + 1 (or empty); in C order they are the chunk's last/first columns
        if a > 0 and per_x[a - 1] > 0:
            parts.append(ranks.blocks[0, i - 1][:, -int(per_x[a - 1]):])
            lo = a - 1
        parts.append(ranks.blocks[0, i])
        hi = b
        if b < nx and per_x[b] > 0:
            parts.append(ranks.blocks[0, i + 1][:, : int(per_x[b])])
            hi = b + 1
        w = dask.delayed(kendall_w_ranked, pure=True)(
            [p.to_delayed().ravel()[0] for p in parts], mask[lo:hi], a - lo, b - lo
        )
        pieces.append(da.from_delayed(w, shape=(counts[i],), dtype=np.float32,
                                      meta=np.empty((0,), np.float32)))
    return da.concatenate(pieces, axis=0)
