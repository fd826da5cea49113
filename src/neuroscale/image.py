"""The core data model: :class:`Image` (x, y, z[, t]) and :class:`Series` (t, voxel).

Both are thin, picklable wrappers around a lazy :class:`dask.array.Array` with the spatial
metadata attached (Thunder's images/series duality, on Dask).

``Image``
    Data shaped ``(x, y, z[, t])``, chunked in space: the natural view for volumes.
``Series``
    The same data inside a brain mask, shaped ``(t, n_voxels)``, chunked over voxels with
    **all time points in each chunk**: the natural view for time-series work (denoising, ALFF,
    correlation).  Voxels are ordered as ``numpy`` boolean indexing of an ``(x, y, z)`` mask
    orders them (C order), which is also nilearn's ``apply_mask`` order, and every chunk covers
    a slab of consecutive x-planes.

Nothing here computes: every method returns a new lazy object.  Only the small 3D results
(maps, masks) are brought into memory by the callers that write them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from neuroscale import settings
from neuroscale.errors import AnalysisError, ImageFormatError, MissingMetadataError
from neuroscale.series_store import read_series_store, series_store_width, store_series

__all__ = [
    "Image",
    "Series",
    "limit_heap_retention",
    "open_image",
    "series_store_width",
    "read_series_store",
    "store_series",
    "values_to_volume",
]
# read_series_store, series_store_width and store_series live in neuroscale.series_store
# (re-exported here: existing imports keep working)


_MALLOC_TUNED = False
#: glibc ``mallopt`` parameters (``malloc.h``): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: Allocations served by ``mmap`` (fresh, zeroed pages each time) rather than the heap.
#: glibc's default rises to 32 MiB as blocks are freed, but setting the trim threshold (as
#: here and as Dask's nanny does) pins it at 128 KiB: then every array a task allocates is
#: faulted in page by page and the system time of an HCP-sized clean was ~45 % of its CPU
#: time (8.8 s -> 6.5 s wall with 32 MiB, peak RSS 0.36 -> 0.37 GB).  In this process only:
#: in Dask workers the memory kept on the heap counts as unmanaged and can pause a worker
#: for good (seen: 800 MB worker, 0.66 GB unmanaged, the run deadlocked), so workers keep
#: the nanny's setting.  The ``neuroscale.mmap-threshold-bytes`` setting
#: (:mod:`neuroscale.settings`).


def limit_heap_retention() -> bool:
    """Make glibc's allocator give freed chunk buffers back to the OS (once per process).

    Chunked work allocates and frees many 10-50 MB arrays from several threads. glibc then
    serves them from per-thread arenas and keeps the freed memory mapped (its mmap threshold
    rises to the largest freed block, up to 32 MB), so the resident size grows far above the
    live data: 1.06-1.09 GB instead of 0.69 GB for the benchmark's masking + cleaning of a
    91 x 109 x 91 x 1200 run (``benchmarks/``).  This caps the arenas at 2 and trims free
    memory above 1 MiB at the top of a heap, as Dask does for its workers with
    ``MALLOC_TRIM_THRESHOLD_``, and keeps blocks below ``neuroscale.mmap-threshold-bytes`` on the
    heap (reused, not faulted in again).  Called by :func:`open_image` for 4D images; a no-op where
    the C library is not glibc, or when ``NEUROSCALE_MALLOC_TUNING=0``.

    Returns
    -------
    bool
        True when the settings were applied (now or by an earlier call).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    import os

    if os.environ.get("NEUROSCALE_MALLOC_TUNING", "1") == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = (bool(libc.mallopt(_M_ARENA_MAX, 2))
              and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**20))
              and bool(libc.mallopt(_M_MMAP_THRESHOLD, settings.get("mmap-threshold-bytes"))))
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = ok
    return ok


def _slab_bounds(x_chunks: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    bounds = []
    start = 0
    for size in x_chunks:
        bounds.append((start, start + size))
        start += size
    return tuple(bounds)


#: Volumes masked at a time inside :func:`_mask_slab` (bounds its raw-dtype temporary).
_MASK_ROWS = 64
# Tunables (neuroscale.settings, one validated section of the Dask config that workers see):
# read-block-bytes, the largest raw read inside _read_masked_slab (a slab is read in a few
# even time blocks: fewer Zarr calls cost less CPU, smaller blocks less memory);
# direct-reads / direct-writes, the working copy's shards and Series stores read and written
# by neuroscale.io.shards where their layout allows (false: through zarr-python, the same
# store either way); series-store-chunk-bytes, one stored chunk of a written Series.


def _mask_slab(block: np.ndarray, mask_slab: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """(t, xs, y, z) raw block -> (t, n_in_mask) float32 scaled values.

    The in-mask values go straight into the float32 output, :data:`_MASK_ROWS` volumes at a
    time, so no full-size raw-dtype copy of the selection is made.
    """
    flat = block.reshape(block.shape[0], -1)
    sel = np.flatnonzero(mask_slab.reshape(-1))
    out = np.empty((flat.shape[0], sel.size), dtype=np.float32)
    for t0 in range(0, flat.shape[0], _MASK_ROWS):
        # np.take along the voxel axis: ~3x faster than fancy or boolean indexing here
        out[t0 : t0 + _MASK_ROWS] = np.take(flat[t0 : t0 + _MASK_ROWS], sel, axis=1)
    if slope != 1.0:
        out *= np.float32(slope)
    if inter != 0.0:
        out += np.float32(inter)
    return out


def _read_masked_slab(store: str, a: int, b: int, mask_slab: np.ndarray, slope: float,
                      inter: float, t_block: int) -> np.ndarray:
    """Read x-planes ``a:b`` of a working copy and keep the in-mask voxels, as float32.

    The Zarr ``data`` array (t, x, y, z) is read ``t_block`` volumes at a time straight into
    the ``(t, n_in_mask)`` output, so a task holds its output plus one small raw block
    (``neuroscale.read-block-bytes``) rather than the whole raw slab and its copies.

    Parameters
    ----------
    store : str
        The ``.zarr`` working copy (see :mod:`neuroscale.io.zarr_cache`).
    a, b : int
        x-plane range.
    mask_slab : (b - a, y, z) ndarray of bool
        The brain mask on those planes.
    slope, inter : float
        NIfTI scaling applied to the raw values.
    t_block : int
        Volumes per read (a multiple of the stored time chunk).

    Returns
    -------
    ndarray, shape (n_timepoints, n_in_mask), float32
    """
    import zarr

    from neuroscale.io.shards import ShardedArray

    reads = settings.get("direct-reads")
    direct = ShardedArray.open(Path(store) / "data") if reads else None
    if direct is None and reads:
        settings.log_fallback_once("working-copy reads", store)
    arr: Any = direct if direct is not None else zarr.open_array(store, path="data", mode="r")
    nt = int(arr.shape[0])
    sel = np.flatnonzero(mask_slab.reshape(-1))
    out = np.empty((nt, sel.size), dtype=np.float32)
    for t0 in range(0, nt, t_block):
        t1 = min(nt, t0 + t_block)
        raw = direct.read(t0, t1, a, b) if direct is not None else np.asarray(arr[t0:t1, a:b])
        out[t0:t1] = np.take(raw.reshape(t1 - t0, -1), sel, axis=1)  # faster than [:, sel]
        del raw
    if slope != 1.0:
        out *= np.float32(slope)
    if inter != 0.0:
        out += np.float32(inter)
    return out


def _unmask_slab(block: np.ndarray, mask_slab: np.ndarray) -> np.ndarray:
    """(t, n_in_mask) -> (xs, y, z, t) with zeros outside the mask."""
    out = np.zeros((block.shape[0], mask_slab.size), dtype=block.dtype)
    out[:, mask_slab.reshape(-1)] = block
    return out.reshape((block.shape[0], *mask_slab.shape)).transpose(1, 2, 3, 0)


@dataclass(frozen=True, eq=False)
class Image:
    """A lazy image with its space attached.

    Parameters
    ----------
    data : dask.array.Array, shape (x, y, z) or (x, y, z, t)
        Voxel values (float32 after scaling, for images opened from NIfTI).
    affine : (4, 4) ndarray of float64
        Voxel-to-world transform, mm.
    t_r : float or None
        Repetition time, seconds (4D images).
    header : nibabel header or None
        The source header, for writing outputs with the same units/codes.
    source : Path or None
        The file the image was opened from.
    meta : dict
        Extra facts (e.g. the source sha256, the Zarr working copy).

    Examples
    --------
    >>> img = open_image("sub-02_task-oneback_run-1_bold.nii.gz")  # doctest: +SKIP
    >>> img.shape, img.t_r                                          # doctest: +SKIP
    ((80, 80, 35, 156), 2.0)
    >>> series = img.to_series(mask)                                # doctest: +SKIP
    """

    data: da.Array
    affine: np.ndarray
    t_r: float | None = None
    header: Any = None
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # raw-storage view used by to_series: (t, x, y, z) raw-dtype array with scaling
    _raw_txyz: da.Array | None = field(default=None, repr=False)
    _scaling: tuple[float, float] = (1.0, 0.0)

    def _raw(self, chunks: dict[int, int]) -> tuple[da.Array, float, float]:
        """The raw (t, x, y, z) data with ``chunks`` ({axis: size}, -1 = whole axis).

        From a Zarr working copy, each dask chunk is ONE zarr read (zarr batches the inner
        chunks of its shards), rather than many small reads merged by dask tasks.
        """
        store = self.meta.get("store")
        if self._raw_txyz is not None and store is not None:
            base = self._raw_txyz
            want = tuple(
                base.shape[ax] if chunks.get(ax, 0) == -1 else int(chunks.get(ax) or base.chunksize[ax])
                for ax in range(4)
            )
            raw = da.from_zarr(str(store), component="data", chunks=want)
            return raw, *self._scaling
        if self._raw_txyz is not None:
            return self._raw_txyz.rechunk(chunks), *self._scaling
        return self.data.transpose(3, 0, 1, 2).rechunk(chunks), 1.0, 0.0

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape (x, y, z[, t])."""
        return tuple(int(s) for s in self.data.shape)

    @property
    def ndim(self) -> int:
        """3 or 4."""
        return int(self.data.ndim)

    @property
    def n_volumes(self) -> int:
        """Number of time points (1 for a 3D image)."""
        return self.shape[3] if self.ndim == 4 else 1

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size along x, y, z in mm (column norms of the affine)."""
        z = np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))
        return (float(z[0]), float(z[1]), float(z[2]))

    def require_4d(self, min_volumes: int = 2) -> None:
        """Raise :class:`ImageFormatError` unless the image is 4D with ``min_volumes``."""
        if self.ndim != 4 or self.n_volumes < min_volumes:
            raise ImageFormatError(
                f"expected a 4D image with at least {min_volumes} volumes, got shape {self.shape}",
                self.source,
            )

    def require_t_r(self) -> float:
        """The repetition time in seconds; raise :class:`MissingMetadataError` if unknown."""
        if self.t_r is None or not np.isfinite(self.t_r) or self.t_r <= 0:
            raise MissingMetadataError(
                f"repetition time missing or not positive (t_r={self.t_r}); set RepetitionTime "
                "in the BIDS sidecar or pixdim[4] in the header",
                self.source,
            )
        return float(self.t_r)

    def mean(self) -> Image:
        """Mean over time (lazy 3D image); uses the mean stored at ingest when available."""
        self.require_4d(1)
        stored = self.meta.get("mean")
        if stored is not None:
            return replace(self, data=stored, _raw_txyz=None, meta={**self.meta})
        return replace(self, data=self.data.mean(axis=3, dtype=np.float64).astype(np.float32),
                       _raw_txyz=None)

    def to_series(self, mask: np.ndarray) -> Series:
        """The in-mask time series, ``(t, n_voxels)``, all time points per chunk.

        Parameters
        ----------
        mask : (x, y, z) ndarray of bool
            Brain mask on this image's grid.

        Returns
        -------
        Series
            Lazy; chunk ``i`` holds the in-mask voxels of x-slab ``i``.

        Raises
        ------
        AnalysisError
            The mask's shape differs from the image's or the mask is empty.
        """
        self.require_4d(1)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.shape[:3]:
            raise AnalysisError(
                f"mask shape {mask.shape} does not match the image grid {self.shape[:3]}",
                self.source,
            )
        if not mask.any():
            raise AnalysisError("the brain mask is empty", self.source)
        nt = self.n_volumes
        store = self.meta.get("store")
        if self._raw_txyz is not None and store is not None:
            return self._series_from_store(str(store), mask)
        raw, slope, inter = self._raw({0: -1, 2: -1, 3: -1})
        bounds = _slab_bounds(raw.chunks[1])
        counts = tuple(int(mask[a:b].sum()) for a, b in bounds)
        blocks = []
        for i, (a, b) in enumerate(bounds):
            if counts[i] == 0:
                continue
            blk = raw.blocks[0, i, 0, 0]
            blocks.append(
                blk.map_blocks(
                    _mask_slab,
                    mask[a:b],
                    slope,
                    inter,
                    chunks=(nt, counts[i]),
                    drop_axis=[2, 3],
                    dtype=np.float32,
                    meta=np.empty((0, 0), np.float32),
                )
            )
        data = da.concatenate(blocks, axis=1)
        return Series(data=data, mask=mask, affine=self.affine, t_r=self.t_r,
                      header=self.header, source=self.source, meta=dict(self.meta))

    def _series_from_store(self, store: str, mask: np.ndarray) -> Series:
        """:meth:`to_series` for a Zarr working copy: one read-and-mask task per x-slab."""
        assert self._raw_txyz is not None
        base = self._raw_txyz
        nt = int(base.shape[0])
        t_stored = int(base.chunksize[0])
        slope, inter = self._scaling
        bounds = _slab_bounds(base.chunks[1])
        blocks = []
        for a, b in bounds:
            count = int(mask[a:b].sum())
            if count == 0:
                continue
            per_t = (b - a) * int(np.prod(base.shape[2:])) * base.dtype.itemsize
            # as few reads as fit read-block-bytes, of even size, in whole stored time chunks
            n_reads = max(1, -(-nt * per_t // settings.get("read-block-bytes")))
            t_block = t_stored * max(1, -(-nt // (n_reads * t_stored)))
            blocks.append(
                da.map_blocks(
                    _read_masked_slab,
                    store,
                    a,
                    b,
                    mask[a:b],
                    slope,
                    inter,
                    min(nt, t_block),
                    chunks=((nt,), (count,)),
                    dtype=np.float32,
                    meta=np.empty((0, 0), np.float32),
                )
            )
        data = da.concatenate(blocks, axis=1)
        return Series(data=data, mask=mask, affine=self.affine, t_r=self.t_r,
                      header=self.header, source=self.source, meta=dict(self.meta))

    def masked_volume_blocks(self, mask: np.ndarray, block_bytes: int = 64 * 2**20) -> da.Array:
        """In-mask data ``(t, n_voxels)`` float32 chunked by blocks of whole volumes.

        The volume-wise counterpart of :meth:`to_series` (for statistics across voxels of each
        volume, e.g. ranks): each x-slab is masked before the slabs are joined, so a task holds
        ``time_block x n_voxels`` in-mask values, never whole field-of-view volumes.

        Parameters
        ----------
        mask : (x, y, z) ndarray of bool
            Brain mask on this image's grid.
        block_bytes : int
            Target size of one output block (float32), bytes.

        Returns
        -------
        dask.array.Array, shape (n_timepoints, n_voxels), float32
        """
        mask = np.asarray(mask, dtype=bool)
        n_vox = int(mask.sum())
        nt = self.n_volumes
        tb = int(max(1, min(nt, block_bytes // max(1, 4 * n_vox))))
        stored = max(self._raw_txyz.chunks[0]) if self._raw_txyz is not None else 1
        tb = max(stored, (tb // stored) * stored)  # whole stored time chunks: no re-reads
        raw, slope, inter = self._raw({0: tb, 1: -1, 2: -1, 3: -1})
        masked: da.Array = da.map_blocks(_mask_slab, raw, mask, slope, inter,
                                         chunks=(raw.chunks[0], (n_vox,)), drop_axis=[2, 3],
                                         dtype=np.float32, meta=np.empty((0, 0), np.float32))
        return masked

    def compute_volume(self) -> np.ndarray:
        """Compute a 3D image into memory (refuses 4D: use the chunked path)."""
        if self.ndim != 3:
            raise ImageFormatError("compute_volume is for 3D images only", self.source)
        return np.asarray(self.data.compute())


@dataclass(frozen=True, eq=False)
class Series:
    """In-mask time series, ``(t, n_voxels)``, with all time points in each chunk.

    Parameters
    ----------
    data : dask.array.Array, shape (n_timepoints, n_voxels), float32
        Chunked over voxels only.
    mask : (x, y, z) ndarray of bool
        The voxels, in C order of the mask.
    affine : (4, 4) ndarray
        Voxel-to-world transform, mm.
    t_r : float or None
        Repetition time, seconds.
    """

    data: da.Array
    mask: np.ndarray
    affine: np.ndarray
    t_r: float | None = None
    header: Any = None
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 2:
            raise AnalysisError(f"a Series is 2D (t, voxel), got shape {self.data.shape}")
        if len(self.data.chunks[0]) != 1:
            raise AnalysisError("a Series keeps all time points in one chunk")
        if int(self.mask.sum()) != self.data.shape[1]:
            raise AnalysisError(
                f"mask has {int(self.mask.sum())} voxels, data has {self.data.shape[1]}"
            )

    @property
    def n_timepoints(self) -> int:
        """Number of volumes."""
        return int(self.data.shape[0])

    @property
    def n_voxels(self) -> int:
        """Number of in-mask voxels."""
        return int(self.data.shape[1])

    def with_data(self, data: da.Array, **changes: Any) -> Series:
        """A Series with the same space and new (t, voxel) data."""
        return replace(self, data=data, **changes)

    def map_voxels(self, func: Any, *args: Any, dtype: Any = np.float32, **kwargs: Any) -> Series:
        """Apply ``func(block (t, v), *args, **kwargs) -> (t, v)`` to every chunk."""
        data = self.data.map_blocks(func, *args, dtype=dtype, **kwargs)
        return self.with_data(data)

    def slab_bounds(self, max_voxels: int | None = None) -> tuple[tuple[int, int], ...]:
        """x-slab bounds such that chunk ``i`` after :meth:`align_to_slabs` covers slab ``i``.

        Slabs of whole x-planes hold about the median column chunk in in-mask voxels, or at most
        ``max_voxels`` when given (a plane with more is a slab of its own); slabs with no
        in-mask voxel are dropped.
        """
        nx = self.mask.shape[0]
        per_x = self.mask.reshape(nx, -1).sum(axis=1)
        target = max(1, int(np.median(self.data.chunks[1])))
        if max_voxels is not None:
            target = min(target, max(1, int(max_voxels)))
        bounds: list[tuple[int, int]] = []
        start = 0
        acc = 0
        for x in range(nx):
            acc += int(per_x[x])
            if acc >= target and x + 1 < nx:
                bounds.append((start, x + 1))
                start, acc = x + 1, 0
        bounds.append((start, nx))
        return tuple(b for b in bounds if per_x[b[0] : b[1]].sum() > 0)

    def to_image(self) -> Image:
        """Scatter back to a lazy ``(x, y, z, t)`` image (zeros outside the mask)."""
        nx = self.mask.shape[0]
        per_x = self.mask.reshape(nx, -1).sum(axis=1)
        bounds = [(a, b) for a, b in self.slab_bounds()]
        # cover empty x-planes too, so that the slabs tile the whole x axis
        edges = [0] + [b for _, b in bounds[:-1]] + [nx]
        counts = [int(per_x[a:b].sum()) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        data = self.data.rechunk({0: -1, 1: tuple(counts)}) if all(counts) else None
        nt = self.n_timepoints
        pieces = []
        offset = 0
        for a, b, n in zip(edges[:-1], edges[1:], counts, strict=True):
            slab_mask = self.mask[a:b]
            if n == 0:
                pieces.append(da.zeros((b - a, *self.mask.shape[1:], nt), dtype=self.data.dtype,
                                       chunks=(b - a, *self.mask.shape[1:], nt)))
                continue
            src = (data.blocks[0, len(pieces)] if data is not None
                   else self.data[:, offset : offset + n].rechunk({1: -1}))
            pieces.append(
                src.map_blocks(_unmask_slab, slab_mask, chunks=(b - a, *self.mask.shape[1:], nt),
                               new_axis=[2, 3], dtype=self.data.dtype,
                               meta=np.empty((0, 0, 0, 0), self.data.dtype))
            )
            offset += n
        return Image(data=da.concatenate(pieces, axis=0), affine=self.affine, t_r=self.t_r,
                     header=self.header, source=self.source, meta=dict(self.meta))

    def to_zarr(self, path: str | Path) -> Series:
        """Write the data to a Zarr store (atomically, replacing one already at ``path``) and
        return a Series reading from it."""
        from neuroscale.io.atomic import atomic_path

        path = Path(path)
        with atomic_path(path, is_dir=True) as tmp:
            store_series(self.data, tmp)
            (tmp / "_series.json").write_text(json.dumps({"shape": list(self.data.shape)}))
        # read back with this Series' own (x-slab) chunks
        return self.with_data(read_series_store(path, chunks=self.data.chunks))


def values_to_volume(values: np.ndarray, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Scatter ``values`` (n_voxels,) or (k, n_voxels) into ``(x, y, z[, k])`` volumes."""
    values = np.asarray(values)
    if values.ndim == 1:
        out = np.full(mask.shape, fill, dtype=values.dtype)
        out[mask] = values
        return out
    out = np.full((*mask.shape, values.shape[0]), fill, dtype=values.dtype)
    out[mask] = values.T
    return out


def _scaled(block: np.ndarray, slope: float, inter: float) -> np.ndarray:
    out = block.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if inter != 0.0:
        out += np.float32(inter)
    return out


#: When this process imported neuroscale.image (seconds since the epoch).
_PROCESS_START = time.time()


def _written_before_this_process(store: Path) -> bool:
    from neuroscale.io.zarr_cache import MANIFEST

    try:
        return (store / MANIFEST).stat().st_mtime < _PROCESS_START
    except OSError:
        return True


def open_image(
    path: str | Path,
    *,
    cache_dir: str | Path | None = None,
    t_r: float | None = None,
) -> Image:
    """Open a NIfTI-1/NIfTI-2 image (``.nii`` or ``.nii.gz``) lazily.

    4D images are streamed once into a chunked Zarr working copy under ``cache_dir`` (reused
    while the source is unchanged; see :mod:`neuroscale.io.zarr_cache`) and read from there;
    3D images (masks, atlases, maps) are small and are read with nibabel.

    Parameters
    ----------
    path : str or Path
        The image file.
    cache_dir : str or Path, optional
        Where working copies live (default ``$NEUROSCALE_CACHE`` or ``~/.cache/neuroscale``).
    t_r : float, optional
        Repetition time in seconds, overriding the header's ``pixdim[4]`` (BIDS sidecars are
        authoritative: the pipelines pass ``RepetitionTime`` here).  When both are known and
        differ by more than 0.1 %, the override wins and a warning says so.

    Returns
    -------
    Image
        float32 data (x, y, z[, t]) with scaling applied lazily.  For 4D images
        ``meta["input_checks"]`` records what the ingest found (``n_nonfinite_voxels``,
        ``n_nonfinite_values``, ``varies``, ``first_volume_all_zero``, ``t_r_header_s``,
        ``t_r_sidecar_s``, ``working_copy_reingested``) and ``meta["warnings"]`` the one-line
        warnings a user must see (non-finite voxels, a TR mismatch, a working copy that failed
        its checksum and was rebuilt from the source).

    Raises
    ------
    InputNotFoundError, ImageFormatError, TruncatedDataError, CorruptedFileError
        See :func:`neuroscale.io.nifti.read_nifti_info` and
        :func:`neuroscale.io.zarr_cache.ingest_nifti`.
    """
    import nibabel as nib

    from neuroscale.io.nifti import read_nifti_info
    from neuroscale.io.zarr_cache import default_cache_root, ingest_nifti, read_manifest

    info = read_nifti_info(path)
    if info.ndim == 3 or (info.ndim > 3 and int(np.prod(info.shape[3:])) == 1):
        img: Any = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32).reshape(info.shape[:3])
        return Image(data=da.from_array(arr, chunks=arr.shape), affine=info.affine,
                     header=info.header, source=Path(path))
    if info.ndim != 4:
        raise ImageFormatError(f"unsupported number of dimensions {info.ndim}", path)
    from neuroscale.io.zarr_cache import cache_dir_for, remove_cache, verify_store

    limit_heap_retention()
    root = cache_dir or default_cache_root()
    warnings: list[str] = []
    reingested = None
    existing = cache_dir_for(path, root)
    if read_manifest(existing) is not None and _written_before_this_process(existing):
        # reused from an earlier run: every chunk checksum checked first (a store written since
        # this process started, e.g. by the ingest task a pipeline ran on a worker, is fresh)
        problem = verify_store(existing)
        if problem is not None:
            remove_cache(existing)
            reingested = problem
            warnings.append(f"working copy {existing} failed its checksum ({problem}): "
                            f"re-ingested from {Path(path).name}")
    store = ingest_nifti(path, root, info=info)
    manifest = read_manifest(store)
    assert manifest is not None
    name = Path(path).name
    n_bad = int(manifest.get("n_nonfinite_voxels", 0))
    if n_bad:
        warnings.append(
            f"{n_bad} voxel{'s' if n_bad != 1 else ''} with non-finite values (NaN or Inf; "
            f"{manifest.get('n_nonfinite_values', 0)} values) in {name}: left out of the brain "
            "mask (set to 0 in the working copy)")
    t_r_header = info.t_r_header
    if t_r is not None and t_r_header is not None and not np.isclose(t_r, t_r_header,
                                                                     rtol=1e-3, atol=0):
        warnings.append(
            f"RepetitionTime {t_r:g} s (JSON sidecar) differs from the header of {name} "
            f"(pixdim[4] = {t_r_header:g} s): using {t_r:g} s, as BIDS says the sidecar wins")
    for line in warnings:  # on the terminal now; the pipelines also put them in the report
        logging.getLogger(__name__).warning(line)
    nonfinite = None
    if n_bad:
        import zarr

        nonfinite = np.asarray(zarr.open_array(str(store), path="nonfinite", mode="r")[:]) > 0
    checks = {
        "n_nonfinite_voxels": n_bad,
        "n_nonfinite_values": int(manifest.get("n_nonfinite_values", 0)),
        "varies": bool(manifest.get("varies", True)),
        "first_volume_all_zero": bool(manifest.get("first_volume_all_zero", False)),
        "t_r_header_s": t_r_header,
        "t_r_sidecar_s": t_r,
        "working_copy_reingested": reingested,
    }
    chunks = tuple(manifest["chunks"])
    raw = da.from_zarr(str(store), component="data", chunks=chunks)
    slope, inter = float(manifest["slope"]), float(manifest["inter"])
    data = raw.map_blocks(_scaled, slope, inter, dtype=np.float32).transpose(1, 2, 3, 0)
    mean = da.from_zarr(str(store), component="mean")
    return Image(
        data=data,
        affine=info.affine,
        t_r=t_r if t_r is not None else info.t_r_header,
        header=info.header,
        source=Path(path),
        meta={"sha256": manifest["sha256"], "store": str(store), "mean": mean,
              "input_checks": checks, "warnings": warnings, "nonfinite": nonfinite},
        _raw_txyz=raw,
        _scaling=(slope, inter),
    )
