"""Direct reads and writes of the working copy's Zarr v3 shards, without zarr-python's per-chunk path.

The working copy (:mod:`neuroscale.io.zarr_cache`) is a Zarr v3 array ``(t, x, y, z)`` whose
shards hold ``t_chunk`` whole volumes, cut into inner chunks of ``x_chunk`` x-planes
(codec ``sharding_indexed``: inner chunks ``bytes`` + ``blosc`` + ``crc32c``; index ``bytes`` +
``crc32c`` at the end of the shard).  A series slab reads a few inner chunks out of every shard.
zarr-python 3.1 reads each inner chunk as its own ranged ``get`` (one ``open`` + ``seek`` +
``read`` on a local store), through its asyncio pipeline on one event-loop thread per
process: measured at ~350 MB/s on an HCP-sized run, whatever the number of threads, while the
same bytes read here -- one ``pread`` per shard for all the inner chunks a slab needs, blosc
decoding with the GIL released -- come at the disk's speed (warm: ~10x faster, 2 threads
scale).

Everything here is the Zarr v3 specification's sharding format
(https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/v1.0.html), and only
the exact layout :func:`~neuroscale.io.zarr_cache.ingest_nifti` writes is taken on this path:
:meth:`ShardedArray.open` returns ``None`` for anything else (another codec chain, a remote
store, big-endian data) and callers then read through zarr.  The stores stay ordinary Zarr:
zarr-python reads what :func:`write_shard` writes (tested), and the index checksum -- and,
where the inner chunks carry one (Zarr v3's ``crc32c`` codec, last in the chain: 4 bytes,
little-endian CRC-32C of the encoded chunk), every inner chunk's checksum -- is verified on
every read (:class:`ChunkChecksumError` on a mismatch; :meth:`ShardedArray.verify` checks a
whole array without decoding it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroscale.errors import CorruptedFileError

__all__ = ["ChunkChecksumError", "ColumnChunkedArray", "ShardedArray"]


class ChunkChecksumError(CorruptedFileError):
    """An inner chunk's or a shard index's CRC-32C does not match its bytes."""

#: "missing" marker of an empty inner chunk in a shard index (offset and length).
_EMPTY = 2**64 - 1
#: Shards opened (and read ahead) together by one read: bounds the open files per thread.
PREFETCH_SHARDS = 16
_INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _blosc_settings(codecs: list[dict[str, Any]]) -> tuple[str, int, int, int]:
    codecs = codecs[:-1] if _has_crc(codecs) else codecs
    conf = codecs[-1].get("configuration", {}) if codecs[-1].get("name") == "blosc" else {}
    return (str(conf.get("cname", "lz4")), int(conf.get("clevel", 5)),
            _SHUFFLE.get(str(conf.get("shuffle", "shuffle")), 1), int(conf.get("blocksize", 0)))


def _inner_codecs_ok(codecs: list[dict[str, Any]]) -> str | None:
    """``"blosc"``, ``"raw"`` or None (unsupported) for an inner codec chain (a trailing
    ``crc32c``, see :func:`_has_crc`, left out)."""
    codecs = codecs[:-1] if _has_crc(codecs) else codecs
    if not codecs or codecs[0].get("name") != "bytes":
        return None
    if codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    if len(codecs) == 1:
        return "raw"
    if len(codecs) == 2 and codecs[1].get("name") == "blosc":
        return "blosc"
    return None


def _has_crc(codecs: list[dict[str, Any]]) -> bool:
    """True when the chain ends with Zarr v3's ``crc32c`` codec (a checksum per chunk)."""
    return bool(codecs) and codecs[-1].get("name") == "crc32c"


def _check_crc(data: bytes | memoryview, name: Path, what: str = "inner chunk") -> memoryview:
    """Strip and verify the 4-byte little-endian CRC-32C that Zarr's ``crc32c`` codec appends."""
    import google_crc32c

    view = memoryview(data)
    if len(view) < 4:
        raise ChunkChecksumError(f"{what} of {len(view)} bytes has no room for its crc32c", name)
    body = view[:-4]
    # (as a uint8 array: the C extension takes no memoryview, and this copies nothing)
    if google_crc32c.value(np.frombuffer(body, np.uint8)) != int.from_bytes(view[-4:], "little"):
        raise ChunkChecksumError(f"{what} checksum (crc32c) mismatch", name)
    return body


def _regular_array_meta(path: Path, ndim: int) -> dict[str, Any] | None:
    """``zarr.json`` of a Zarr v3 array of ``ndim`` dimensions on a regular chunk grid with
    ``c/``-prefixed, "/"-separated chunk keys; None for anything else or an unreadable file."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            return None
        if len(meta["shape"]) != ndim or meta["chunk_grid"]["name"] != "regular":
            return None
        key = meta["chunk_key_encoding"]
        if key["name"] != "default" or key.get("configuration", {}).get("separator") != "/":
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return dict(meta)


def _span(sub: np.ndarray) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` covering the non-empty inner chunks of an index slice."""
    ok = sub[:, 0] != _EMPTY
    if not ok.any():
        return 0, 0
    return int(sub[ok, 0].min()), int((sub[ok, 0] + sub[ok, 1]).max())


def _encode_chunk(chunk: np.ndarray, codec: str, blosc_params: Any, checksum: bool) -> bytes:
    """One chunk's stored bytes: raw or blosc (``blosc_params`` = cname, clevel, shuffle,
    blocksize), then the 4-byte little-endian CRC-32C of Zarr's ``crc32c`` codec when ``checksum``."""
    if codec == "raw":
        encoded = chunk.tobytes()
    else:
        from numcodecs import blosc

        cname, clevel, shuffle, blocksize = blosc_params
        encoded = bytes(blosc.compress(chunk, cname.encode(), clevel, shuffle, blocksize))
    if checksum:
        import google_crc32c

        encoded += google_crc32c.value(encoded).to_bytes(4, "little")
    return encoded


@dataclass(frozen=True)
class ShardedArray:
    """A local Zarr v3 array laid out as the working copy: shards of whole ``(x, y, z)`` volumes.

    Attributes
    ----------
    path : Path
        The array directory (holding ``zarr.json`` and ``c/``).
    shape : tuple of int
        ``(t, x, y, z)``.
    dtype : numpy.dtype
        Stored dtype (little-endian).
    shard_t : int
        Volumes per shard (the shard spans all of x, y and z).
    inner_x : int
        x-planes per inner chunk (an inner chunk spans all of y and z and the shard's volumes).
    n_inner : int
        Inner chunks per shard.
    codec : {"blosc", "raw"}
        Inner chunk encoding.
    fill_value : int or float
        Value of chunks never written.
    blosc : (cname, clevel, shuffle, blocksize)
        Blosc settings of the inner chunks (for :meth:`write_shard`; shuffle 0/1/2 = none /
        byte / bit).
    checksum : bool
        The inner chunks end with a CRC-32C (Zarr's ``crc32c`` codec), verified on every read.
    """

    path: Path
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    shard_t: int
    inner_x: int
    n_inner: int
    codec: str
    fill_value: Any
    blosc: tuple[str, int, int, int] = ("lz4", 5, 1, 0)
    checksum: bool = False

    @classmethod
    def open(cls, path: str | Path) -> ShardedArray | None:
        """Describe the array at ``path``, or None if it is not exactly the supported layout.

        Parameters
        ----------
        path : str or Path
            Array directory (e.g. ``<store>.zarr/data``).

        Returns
        -------
        ShardedArray or None
            None for a missing/unreadable ``zarr.json``, another Zarr format, chunk grid,
            chunk key encoding or codec chain, shards that do not span whole volumes, or
            big-endian data: read those through zarr.
        """
        path = Path(path)
        if not hasattr(os, "pread"):  # not POSIX: zarr reads it
            return None
        meta = _regular_array_meta(path, 4)
        if meta is None:
            return None
        try:
            shape = tuple(int(s) for s in meta["shape"])
            codecs = meta["codecs"]
            if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
                return None
            conf = codecs[0]["configuration"]
            if conf.get("index_location", "end") != "end" or conf["index_codecs"] != _INDEX_CODECS:
                return None
            codec = _inner_codecs_ok(conf["codecs"])
            settings = _blosc_settings(conf["codecs"]) if codec == "blosc" else ("lz4", 5, 1, 0)
            checksum = _has_crc(conf["codecs"])
            dtype = np.dtype(meta["data_type"]).newbyteorder("<")
            shard = [int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"]]
            inner = [int(s) for s in conf["chunk_shape"]]
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        if codec is None or dtype.kind not in "iuf":
            return None
        # shards of whole volumes, inner chunks of whole (y, z) planes and the shard's volumes
        if shard[1] < shape[1] or shard[2:] != list(shape[2:]) or inner[2:] != list(shape[2:]):
            return None
        if inner[0] != shard[0] or shard[1] % inner[1]:
            return None
        fill = meta.get("fill_value", 0)
        if not isinstance(fill, int | float):
            return None
        return cls(path=path, shape=(shape[0], shape[1], shape[2], shape[3]), dtype=dtype,
                   shard_t=shard[0], inner_x=inner[1], n_inner=shard[1] // inner[1],
                   codec=codec, fill_value=fill, blosc=settings, checksum=checksum)

    # ------------------------------------------------------------------------------------
    def _shard_file(self, s: int) -> Path:
        return self.path / "c" / str(s) / "0" / "0" / "0"

    def _index(self, fd: int, size: int, name: Path) -> np.ndarray:
        """The ``(n_inner, 2)`` uint64 (offset, nbytes) index of an open shard, checksum verified."""
        import google_crc32c

        n = self.n_inner * 16
        if size < n + 4:
            raise CorruptedFileError(f"shard of {size} bytes is shorter than its index", name)
        raw = os.pread(fd, n + 4, size - n - 4)
        if len(raw) != n + 4:
            raise CorruptedFileError("short read of a shard index", name)
        want = int.from_bytes(raw[n:], "little")
        if google_crc32c.value(raw[:n]) != want:
            raise ChunkChecksumError("shard index checksum (crc32c) mismatch", name)
        index = np.frombuffer(raw[:n], dtype="<u8").reshape(self.n_inner, 2)
        ok = index[:, 0] != _EMPTY
        if np.any(index[ok, 0] + index[ok, 1] > size - n - 4):
            raise CorruptedFileError("shard index points past the end of the shard", name)
        return index

    def _decode(self, data: bytes | memoryview, name: Path) -> np.ndarray:
        """One inner chunk -> ``(shard_t, inner_x, y, z)`` array (read-only view or copy)."""
        shape = (self.shard_t, self.inner_x, self.shape[2], self.shape[3])
        want = int(np.prod(shape)) * self.dtype.itemsize
        if self.checksum:
            data = _check_crc(data, name)
        if self.codec == "blosc":
            from numcodecs import blosc

            try:
                data = blosc.decompress(data)
            except Exception as exc:  # numcodecs raises RuntimeError on bad data
                raise CorruptedFileError(f"blosc cannot decode an inner chunk ({exc})",
                                         name) from exc
        if len(data) != want:
            raise CorruptedFileError(
                f"inner chunk decodes to {len(data)} bytes, expected {want}", name)
        return np.frombuffer(data, dtype=self.dtype).reshape(shape)

    def read(self, t0: int, t1: int, a: int, b: int, out: np.ndarray | None = None) -> np.ndarray:
        """Volumes ``t0:t1`` of x-planes ``a:b``: ``(t1 - t0, b - a, y, z)`` in the stored dtype.

        One ``pread`` per shard covers every inner chunk the planes need (those are adjacent
        in the shard), with the kernel asked to read ahead the ranges of all shards first
        (``posix_fadvise(WILLNEED)``), so a cold read queues its I/O instead of waiting for
        each piece in turn.

        Parameters
        ----------
        t0, t1 : int
            Volume range, ``0 <= t0 < t1 <= t``.
        a, b : int
            x-plane range, ``0 <= a < b <= x``.
        out : ndarray, optional
            C-contiguous destination of the result's shape and the stored dtype.

        Returns
        -------
        ndarray, shape (t1 - t0, b - a, y, z), stored dtype

        Raises
        ------
        ValueError
            Ranges out of bounds, or ``out`` of the wrong shape/dtype.
        ChunkChecksumError
            A shard index's or an inner chunk's CRC-32C does not match.
        CorruptedFileError
            A shard whose offsets or inner chunks are otherwise invalid.
        """
        nt, nx, ny, nz = self.shape
        if not (0 <= t0 < t1 <= nt and 0 <= a < b <= nx):
            raise ValueError(f"region t {t0}:{t1}, x {a}:{b} is outside the shape {self.shape}")
        if out is None:
            out = np.empty((t1 - t0, b - a, ny, nz), dtype=self.dtype)
        elif out.shape != (t1 - t0, b - a, ny, nz) or out.dtype != self.dtype:
            raise ValueError(f"out must be {(t1 - t0, b - a, ny, nz)} {self.dtype}")
        ia, ib = a // self.inner_x, -(-b // self.inner_x)  # inner chunks covering a:b
        shards = list(range(t0 // self.shard_t, -(-t1 // self.shard_t)))
        for g in range(0, len(shards), PREFETCH_SHARDS):
            self._read_shards(shards[g : g + PREFETCH_SHARDS], t0, t1, a, b, ia, ib, out)
        return out

    def _read_shards(self, shards: list[int], t0: int, t1: int, a: int, b: int, ia: int,
                     ib: int, out: np.ndarray) -> None:
        """:meth:`read` for a group of shards: open all, ask for read-ahead, then read each."""
        opened: list[tuple[int, int, np.ndarray | None, Path]] = []
        try:
            for s in shards:
                name = self._shard_file(s)
                try:
                    fd = os.open(name, os.O_RDONLY)
                except FileNotFoundError:
                    opened.append((s, -1, None, name))  # never written: the fill value
                    continue
                opened.append((s, fd, None, name))
                index = self._index(fd, os.fstat(fd).st_size, name)[ia:ib]
                opened[-1] = (s, fd, index, name)
                lo, hi = _span(index)
                if hi > lo and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, lo, hi - lo, os.POSIX_FADV_WILLNEED)
            for s, fd, sub, name in opened:
                s_t0 = s * self.shard_t
                r0, r1 = max(t0, s_t0), min(t1, s_t0 + self.shard_t)  # rows of this shard
                dst = out[r0 - t0 : r1 - t0]
                if sub is None:
                    dst[...] = self.fill_value
                    continue
                lo, hi = _span(sub)
                buf = os.pread(fd, hi - lo, lo) if hi > lo else b""
                if len(buf) != hi - lo:
                    raise CorruptedFileError("short read of a shard", name)
                view = memoryview(buf)
                for k in range(ib - ia):
                    x0 = (ia + k) * self.inner_x  # first plane of this inner chunk
                    p0, p1 = max(a, x0), min(b, x0 + self.inner_x)
                    off, length = int(sub[k, 0]), int(sub[k, 1])
                    if off == _EMPTY:
                        dst[:, p0 - a : p1 - a] = self.fill_value
                        continue
                    chunk = self._decode(view[off - lo : off - lo + length], name)
                    dst[:, p0 - a : p1 - a] = chunk[r0 - s_t0 : r1 - s_t0, p0 - x0 : p1 - x0]
        finally:
            for _, fd, _sub, _name in opened:
                if fd >= 0:
                    os.close(fd)

    def verify(self) -> int:
        """Check every shard's index checksum and every inner chunk's CRC-32C, without decoding.

        One sequential read of each shard file; CRC-32C runs at several GB/s, so this costs
        about the time it takes to read the (compressed) array once.

        Returns
        -------
        int
            Bytes checked.

        Raises
        ------
        ChunkChecksumError
            The first shard whose index or an inner chunk fails its checksum.
        CorruptedFileError
            A shard whose index points outside it.
        """
        checked = 0
        for s in range(-(-self.shape[0] // self.shard_t)):
            name = self._shard_file(s)
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                continue  # never written: the fill value
            try:
                size = os.fstat(fd).st_size
                index = self._index(fd, size, name)
                if self.checksum:
                    lo, hi = _span(index)
                    buf = memoryview(os.pread(fd, hi - lo, lo) if hi > lo else b"")
                    if len(buf) != hi - lo:
                        raise CorruptedFileError("short read of a shard", name)
                    for off, length in index:
                        if int(off) != _EMPTY:
                            _check_crc(buf[int(off) - lo : int(off) - lo + int(length)], name)
                checked += size
            finally:
                os.close(fd)
        return checked

    # ------------------------------------------------------------------------------------
    @property
    def inner_shape(self) -> tuple[int, int, int, int]:
        """Shape of one inner chunk, ``(shard_t, inner_x, y, z)``."""
        return (self.shard_t, self.inner_x, self.shape[2], self.shape[3])

    def write_shard(self, s: int, chunks: Iterable[np.ndarray]) -> int:
        """Encode the inner chunks of shard ``s`` and write the shard file (index last).

        Every inner chunk is written, even one holding only the fill value (valid Zarr; zarr
        itself leaves those out).  The file is written in place: callers write into a
        directory that is renamed into place once complete (see
        :func:`neuroscale.io.atomic.atomic_path`).

        Parameters
        ----------
        s : int
            Shard number along time (volumes ``s * shard_t`` onwards).
        chunks : iterable of ndarray, each shape :attr:`inner_shape`, the stored dtype
            The :attr:`n_inner` inner chunks in x order, volumes past the end of the run
            holding the fill value.  Each is encoded before the next is taken, so one buffer
            can be refilled and yielded again.

        Returns
        -------
        int
            Bytes written.

        Raises
        ------
        ValueError
            Wrong number, shape or dtype of chunks, or ``s`` outside the shard grid.
        """
        import google_crc32c

        if not 0 <= s < -(-self.shape[0] // self.shard_t):
            raise ValueError(f"shard {s} is outside the grid of {self.shape[0]} volumes")
        parts: list[bytes] = []
        index = np.empty((self.n_inner, 2), dtype="<u8")
        offset = 0
        for k, chunk in enumerate(chunks):
            if k >= self.n_inner:
                raise ValueError(f"more than {self.n_inner} inner chunks for one shard")
            if chunk.shape != self.inner_shape or chunk.dtype != self.dtype:
                raise ValueError(f"inner chunk must be {self.inner_shape} {self.dtype}, "
                                 f"got {chunk.shape} {chunk.dtype}")
            encoded = self._encode(np.ascontiguousarray(chunk))
            index[k] = (offset, len(encoded))
            offset += len(encoded)
            parts.append(encoded)
        if len(parts) != self.n_inner:
            raise ValueError(f"shard needs {self.n_inner} inner chunks, got {len(parts)}")
        raw_index = index.tobytes()
        parts.append(raw_index + google_crc32c.value(raw_index).to_bytes(4, "little"))
        name = self._shard_file(s)
        name.parent.mkdir(parents=True, exist_ok=True)
        with open(name, "wb") as fh:
            fh.writelines(parts)
        return offset + len(parts[-1])

    def _encode(self, chunk: np.ndarray) -> bytes:
        return _encode_chunk(chunk, self.codec, self.blosc, self.checksum)


@dataclass(frozen=True)
class ColumnChunkedArray:
    """A local 2D Zarr v3 array ``(t, voxel)`` in chunks of all rows by ``width`` columns.

    The layout of a stored :class:`~neuroscale.image.Series`
    (:func:`~neuroscale.series_store.store_series`): no sharding, inner codecs ``bytes`` (little
    endian) and optionally ``blosc``.  Chunk ``j`` is the file ``c/0/j``; an edge chunk is
    stored at full width, padded with the fill value (the Zarr specification's rule).

    Attributes
    ----------
    path : Path
        The array directory.
    shape : (int, int)
        ``(n_rows, n_columns)``.
    dtype : numpy.dtype
        Stored dtype (little-endian).
    width : int
        Columns per chunk.
    codec : {"blosc", "raw"}
    fill_value : int or float
    blosc : (cname, clevel, shuffle, blocksize)
    checksum : bool
        Chunks end with a CRC-32C (Zarr's ``crc32c`` codec), verified on every read.
    """

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype
    width: int
    codec: str
    fill_value: Any
    blosc: tuple[str, int, int, int] = ("lz4", 5, 1, 0)
    checksum: bool = False

    @classmethod
    def open(cls, path: str | Path) -> ColumnChunkedArray | None:
        """Describe the array at ``path``, or None if it is not exactly this layout.

        Returns
        -------
        ColumnChunkedArray or None
            None for a missing ``zarr.json``, another format, chunk grid, key encoding or
            codec chain, chunks that do not hold all rows, or big-endian data.
        """
        path = Path(path)
        meta = _regular_array_meta(path, 2)
        if meta is None:
            return None
        try:
            shape = tuple(int(s) for s in meta["shape"])
            codec = _inner_codecs_ok(meta["codecs"])
            settings = _blosc_settings(meta["codecs"]) if codec == "blosc" else ("lz4", 5, 1, 0)
            checksum = _has_crc(meta["codecs"])
            dtype = np.dtype(meta["data_type"]).newbyteorder("<")
            chunks = [int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"]]
            fill = meta.get("fill_value", 0)
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        if codec is None or dtype.kind not in "iuf" or chunks[0] != shape[0]:
            return None
        if not isinstance(fill, int | float):
            return None
        return cls(path=path, shape=(shape[0], shape[1]), dtype=dtype, width=chunks[1],
                   codec=codec, fill_value=fill, blosc=settings, checksum=checksum)

    def _chunk_file(self, j: int) -> Path:
        return self.path / "c" / "0" / str(j)

    def write(self, start: int, block: np.ndarray) -> int:
        """Write the columns ``start : start + block.shape[1]``: exactly one chunk.

        Parameters
        ----------
        start : int
            First column, a multiple of :attr:`width`.
        block : ndarray, shape (n_rows, width) or (n_rows, n_columns - start) at the edge
            Values, cast to the stored dtype.

        Returns
        -------
        int
            Bytes written.

        Raises
        ------
        ValueError
            ``start`` not on a chunk boundary, or a block that is not one whole chunk.
        """
        n_rows, n_cols = self.shape
        if start % self.width or not 0 <= start < n_cols:
            raise ValueError(f"column {start} is not the start of a chunk of {self.width}")
        cols = min(self.width, n_cols - start)
        if block.shape != (n_rows, cols):
            raise ValueError(f"chunk at column {start} must be {(n_rows, cols)}, got {block.shape}")
        if cols == self.width and block.dtype == self.dtype and block.flags.c_contiguous:
            full = block
        else:
            full = np.full((n_rows, self.width), self.fill_value, dtype=self.dtype)
            full[:, :cols] = block
        encoded = _encode_chunk(full, self.codec, self.blosc, self.checksum)
        name = self._chunk_file(start // self.width)
        name.parent.mkdir(parents=True, exist_ok=True)
        name.write_bytes(encoded)
        return len(encoded)

    def read(self, a: int, b: int) -> np.ndarray:
        """Columns ``a:b``, all rows: ``(n_rows, b - a)`` in the stored dtype.

        Raises
        ------
        ValueError
            Columns out of bounds.
        ChunkChecksumError
            A chunk whose CRC-32C does not match.
        CorruptedFileError
            A chunk that does not decode to its size.
        """
        n_rows, n_cols = self.shape
        if not 0 <= a < b <= n_cols:
            raise ValueError(f"columns {a}:{b} are outside {n_cols}")
        out = np.empty((n_rows, b - a), dtype=self.dtype)
        want = n_rows * self.width * self.dtype.itemsize
        for j in range(a // self.width, -(-b // self.width)):
            c0 = j * self.width
            p0, p1 = max(a, c0), min(b, c0 + self.width)
            name = self._chunk_file(j)
            try:
                data: bytes | memoryview = name.read_bytes()
            except FileNotFoundError:
                out[:, p0 - a : p1 - a] = self.fill_value
                continue
            if self.checksum:
                data = _check_crc(data, name, "chunk")
            if self.codec == "blosc":
                from numcodecs import blosc

                try:
                    data = blosc.decompress(data)
                except Exception as exc:
                    raise CorruptedFileError(f"blosc cannot decode a chunk ({exc})",
                                             name) from exc
            if len(data) != want:
                raise CorruptedFileError(f"chunk decodes to {len(data)} bytes, expected {want}",
                                         name)
            chunk = np.frombuffer(data, dtype=self.dtype).reshape(n_rows, self.width)
            out[:, p0 - a : p1 - a] = chunk[:, p0 - c0 : p1 - c0]
        return out
