"""The Series store: a ``(t, voxel)`` array written to Zarr v3 in narrow column chunks.

:func:`store_series` writes the data of a :class:`~neuroscale.image.Series` (its x-slab
chunks are not regular, and Zarr needs regular chunks) as chunks of all time points by
:func:`series_store_width` voxels; :func:`read_series_store` reads them back lazily in any
column chunks (e.g. the Series' own slabs).  The chunk files are read and written by
:class:`neuroscale.io.shards.ColumnChunkedArray` where the layout allows, else through
zarr-python (the ``neuroscale.direct-reads`` / ``direct-writes`` settings).  Moved here from
:mod:`neuroscale.image`, which re-exports the public names.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from neuroscale import settings
from neuroscale.io.shards import ColumnChunkedArray

__all__ = ["read_series_store", "series_store_width", "store_series"]


def series_store_width(n_timepoints: int, n_voxels: int) -> int:
    """Voxel columns per stored chunk of a written Series (``neuroscale.series-store-chunk-
    bytes``)."""
    budget = settings.get("series-store-chunk-bytes")
    return int(max(1, min(n_voxels, budget // max(1, 4 * n_timepoints))))


def store_series(data: da.Array, path: str | Path, *, compute: bool = True) -> Any:
    """Write ``(t, voxel)`` data to a new Zarr v3 array at ``path``, in narrow column chunks.

    Zarr needs regular chunks, and a Series' x-slab chunks are not.  Rather than evening them
    out to the widest slab (a 20-25 MB float32 chunk per task for an HCP-sized run, with the
    compressor's copy of it), the data are stored in chunks of all time points by
    :func:`series_store_width` voxels (about ``neuroscale.series-store-chunk-bytes``): each slab is
    split into a few small writes as soon as it is computed, which keeps the writer's memory
    small.  Read it back with :func:`read_series_store` (or ``da.from_zarr(path,
    chunks=series.data.chunks)``) to get the slab chunks again.  Compression: blosc-lz4 with
    byte shuffle, then a crc32c per chunk (as the working copy).  The chunks are written by
    :class:`neuroscale.io.shards.ColumnChunkedArray` (zarr-python writes the metadata and
    reads the chunks; its own per-chunk write path costs several times the CPU) unless
    ``neuroscale.direct-writes`` is off.

    Parameters
    ----------
    data : dask.array.Array, shape (n_timepoints, n_voxels)
        Series data (any chunks; time is joined into one chunk).
    path : str or Path
        The store directory (created; an existing one is overwritten).
    compute : bool
        Write now (``True``) or return the lazy write for a later ``dask.compute`` together
        with other outputs.

    Returns
    -------
    None or dask collection
        ``None`` when ``compute``; otherwise a lazy dask collection whose computation writes
        the chunks (its value, the bytes written, is of no further use).
    """
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec

    n_t, n_v = (int(s) for s in data.shape)
    width = series_store_width(n_t, n_v)
    arr: Any = zarr.create_array(
        store=str(path), shape=(n_t, n_v), chunks=(n_t, width), dtype=data.dtype,
        # a crc32c per chunk (checked by every read, ours and zarr's)
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()],
        fill_value=0,
        zarr_format=3, overwrite=True,
    )
    writes = settings.get("direct-writes")
    direct = ColumnChunkedArray.open(path) if writes else None
    if direct is None and writes:
        settings.log_fallback_once("Series store writes", path)
    if direct is None:
        # method="tasks": neighbouring slabs are split and merged locally (never a shuffle,
        # so never distributed's p2p rechunk, and no import of distributed in a plain process)
        pieces = data.rechunk({0: -1, 1: width}, method="tasks")
        return da.store(pieces, arr, lock=False, compute=compute)
    written = _store_series_direct(data.rechunk({0: -1}), direct)
    if compute:
        written.compute()
        return None
    return written


def _store_series_direct(data: da.Array, target: Any) -> Any:
    """The write graph of :func:`store_series` with chunk files written by the slab tasks.

    Each slab task writes the stored chunks that lie wholly inside its columns and hands on
    only the fragments of the (at most two) chunks it shares with its neighbours; one small
    task per shared chunk joins the fragments and writes it.  Compared with a rechunk to the
    stored width followed by one write per chunk, this moves only the fragments between
    workers and has about a fifth of the tasks (1,111 -> ~220 for an HCP-sized run).
    """
    width = int(target.width)
    n_v = int(data.shape[1])
    edges = np.cumsum((0, *data.chunks[1])).tolist()
    slabs = data.to_delayed().ravel().tolist()
    write_slab = dask.delayed(_write_series_slab, pure=True)
    write_joined = dask.delayed(_write_series_joined, pure=True)
    get = dask.delayed(operator.getitem, pure=True)
    results = []
    shared: dict[int, list[Any]] = {}
    for i, block in enumerate(slabs):
        a, b = int(edges[i]), int(edges[i + 1])
        if b == a:
            continue
        res = write_slab(block, target, a)
        results.append(get(res, -1))
        for j in _shared_chunks(a, b, width, n_v):
            shared.setdefault(j, []).append(get(res, j))
    for j, fragments in sorted(shared.items()):
        results.append(write_joined(target, j, fragments))
    return dask.delayed(sum, pure=True)(results)


def _shared_chunks(a: int, b: int, width: int, n_v: int) -> list[int]:
    """Stored chunks touched by columns ``a:b`` but not lying wholly inside them."""
    out = []
    for j in range(a // width, (b - 1) // width + 1):
        c0, c1 = j * width, min((j + 1) * width, n_v)
        if not (a <= c0 and c1 <= b):
            out.append(j)
    return out


def _write_series_slab(block: np.ndarray, target: Any, a: int) -> dict[int, Any]:
    """Write the chunks wholly inside columns ``a : a + block.shape[1]``; return the rest.

    Returns
    -------
    dict
        ``{-1: bytes written, j: (first column, (n_t, k) array) for each shared chunk j}``.
    """
    width, n_v = int(target.width), int(target.shape[1])
    b = a + int(block.shape[1])
    written = 0
    for j in range(-(-a // width), b // width + 1):
        c0, c1 = j * width, min((j + 1) * width, n_v)
        if c0 >= c1 or not (a <= c0 and c1 <= b):
            continue
        written += target.write(c0, block[:, c0 - a : c1 - a])
    out: dict[int, Any] = {-1: written}
    for j in _shared_chunks(a, b, width, n_v):
        c0, c1 = max(a, j * width), min(b, (j + 1) * width, n_v)
        out[j] = (c0, np.array(block[:, c0 - a : c1 - a]))
    return out


def _write_series_joined(target: Any, j: int, fragments: list[tuple[int, np.ndarray]]) -> int:
    """Join the fragments of stored chunk ``j`` (from neighbouring slabs) and write it."""
    width, n_v = int(target.width), int(target.shape[1])
    c0, c1 = j * width, min((j + 1) * width, n_v)
    chunk = np.empty((int(target.shape[0]), c1 - c0), dtype=target.dtype)
    covered = 0
    for start, values in fragments:
        chunk[:, start - c0 : start - c0 + values.shape[1]] = values
        covered += values.shape[1]
    if covered != c1 - c0:
        raise RuntimeError(f"stored chunk {j}: fragments cover {covered} of {c1 - c0} columns")
    return int(target.write(c0, chunk))


def _read_series_columns(path: str, a: int, b: int, stamp: int) -> np.ndarray:
    """Columns ``a:b`` of a Series store (``stamp``: its metadata's mtime, for the task key)."""
    store = ColumnChunkedArray.open(path)
    if store is None:  # changed under us: read through zarr
        import zarr

        return np.asarray(zarr.open_array(path, mode="r")[:, a:b])
    return store.read(a, b)


def read_series_store(path: str | Path, chunks: tuple[tuple[int, ...], tuple[int, ...]] | None
                      = None) -> da.Array:
    """Lazy ``(t, voxel)`` data of a store written by :func:`store_series`, in ``chunks``.

    Parameters
    ----------
    path : str or Path
        The store directory.
    chunks : ((n_timepoints,), column chunks), optional
        Dask chunks to read in (e.g. a Series' x-slab chunks); default the stored chunks.
        Time must be one chunk.

    Returns
    -------
    dask.array.Array, shape (n_timepoints, n_voxels), the stored dtype
        One task per column chunk, each reading the stored chunks it overlaps straight from
        their files (:class:`neuroscale.io.shards.ColumnChunkedArray`), or through zarr for
        any other layout.

    Raises
    ------
    ValueError
        ``chunks`` that do not match the stored shape or split time.
    """
    reads = settings.get("direct-reads")
    store = ColumnChunkedArray.open(path) if reads else None
    if store is None and reads:
        settings.log_fallback_once("Series store reads", path)
    if store is None:
        lazy: da.Array = da.from_zarr(str(path), chunks=chunks)
        return lazy
    n_t, n_v = store.shape
    if chunks is None:
        chunks = ((n_t,), tuple(min(store.width, n_v - j) for j in range(0, n_v, store.width)))
    if tuple(chunks[0]) != (n_t,) or sum(chunks[1]) != n_v:
        raise ValueError(f"chunks {chunks} do not cover the stored shape {(n_t, n_v)} with "
                         "all time points in one chunk")
    edges = np.cumsum((0, *chunks[1]))
    stamp = (Path(path) / "zarr.json").stat().st_mtime_ns  # a rewritten store: new task keys
    read = dask.delayed(_read_series_columns, pure=True)
    blocks = [
        da.from_delayed(read(str(path), int(a), int(b), stamp),
                        shape=(n_t, int(b - a)), dtype=store.dtype,
                        meta=np.empty((0, 0), store.dtype))
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    joined: da.Array = da.concatenate(blocks, axis=1)
    return joined
