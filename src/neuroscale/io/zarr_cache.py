"""The Zarr working copy of a 4D NIfTI: stream once, compute many times.

Gzip has no random access, so a ``.nii.gz`` is read **once**, front to back, with the isal
inflater (2.5-3x faster than zlib on this kind of machine, see ``PERFORMANCE.md``), while

* its compressed bytes are hashed (sha256, for provenance and cache validation),
* its gzip CRC-32 is checked (nibabel alone does not notice a flipped byte),
* the voxel mean over time is accumulated (the mean EPI for the brain mask, for free),
* non-finite values (NaN, +-Inf; float data only) are set to 0 in the working copy, and the
  voxels holding any are counted and stored as a ``nonfinite`` (x, y, z) array, so the brain
  mask leaves them out and every output stays finite,
* whether any voxel varies over time is noted (the first volume against every block, until
  one differs: on real data one comparison of the first block), so constant or all-zero data
  are refused before any analysis,

and the volumes are written to a Zarr v3 array laid out for the access that follows.  The
decoder, the writer and the hash run in three threads (the decoder is the critical path; the
others use the second core), with a small ring of recycled block buffers, so memory is a few
stream blocks whatever the size of the run.

Layout
------
The array is stored *time first*, shape ``(t, x, y, z)``, in the file's own dtype (scaling is
applied lazily when read), chunked ``(t_chunk, x_chunk, y, z)`` inside shards of
``(t_chunk, x, y, z)`` (one shard per block of whole volumes streamed, at most
:data:`STREAM_BLOCK_BYTES`, so memory while streaming is bounded and every shard is written
once).  A slab of ``x_chunk``
x-planes over all time points is then a handful of chunk reads and, once reshaped to
``(t, x_chunk * y * z)``, is exactly the C-order (x, y, z) voxel order nilearn uses, so the
:class:`neuroscale.image.Series` view is a reshape plus a mask, with no transpose.  Volumes
(the :class:`neuroscale.image.Image` view) are ``x / x_chunk`` reads each.

Every inner chunk ends with a CRC-32C (Zarr v3's ``crc32c`` codec, which zarr-python checks
too), verified on every direct read (:mod:`neuroscale.io.shards`) and over the whole store by
:func:`verify_store` when a working copy is reused.

A ``_neuroscale.json`` manifest is written **last**; a store without it is incomplete and is
rebuilt (zarr reads missing chunks back as the fill value without an error).  The store is
reused while the source's size and modification time are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from neuroscale import settings
from neuroscale.errors import CorruptedFileError, ImageFormatError, TruncatedDataError
from neuroscale.io.atomic import atomic_path
from neuroscale.io.nifti import NiftiInfo, read_nifti_info
from neuroscale.io.shards import ShardedArray

MANIFEST = "_neuroscale.json"
#: 3: inner chunks carry a crc32c; the manifest records the non-finite and constant-data facts
LAYOUT_VERSION = 3

#: Target size of one series chunk (all time points of an x-slab, float32), bytes.
SERIES_CHUNK_BYTES = 16 * 2**20
#: Target size of one stored Zarr chunk (raw dtype), bytes.
STORE_CHUNK_BYTES = 8 * 2**20
#: Largest block of whole volumes held while streaming (raw dtype), bytes: one shard.
STREAM_BLOCK_BYTES = 32 * 2**20
#: Decoded blocks in flight between the decoder thread and the writer (a recycled ring).
N_STREAM_BUFFERS = 3
_HASH_READ_BYTES = 4 * 2**20
#: Bytes inflated per ``readinto`` call of the decoder (isal's own read buffer size).
_DECODE_STEP = 512 * 2**10
# Settings read here (neuroscale.settings): compress (blosc-lz4 + byte shuffle, or raw
# chunks) and direct-writes (the shards written by ShardedArray.write_shard rather than
# through zarr-python; the same store either way).


def _compressors() -> Any:
    from zarr.codecs import BloscCodec, Crc32cCodec

    if not settings.get("compress"):
        return [Crc32cCodec()]
    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()]


def choose_layout(shape: tuple[int, ...], itemsize: int, min_slabs: int = 8) -> tuple[int, int]:
    """Choose ``(t_chunk, x_chunk)`` for a 4D image of ``shape`` (x, y, z, t).

    ``x_chunk`` makes a float32 series slab about :data:`SERIES_CHUNK_BYTES` (and at least
    ``min_slabs`` slabs, for parallelism); ``t_chunk`` makes one stored chunk about
    :data:`STORE_CHUNK_BYTES`.
    """
    nx, ny, nz, nt = shape[:4]
    per_x = nt * ny * nz * 4
    x_chunk = max(1, min(SERIES_CHUNK_BYTES // max(per_x, 1), math.ceil(nx / min_slabs)))
    per_t = x_chunk * ny * nz * itemsize
    t_chunk = int(max(1, min(nt, STORE_CHUNK_BYTES // max(per_t, 1),
                             STREAM_BLOCK_BYTES // max(nx * ny * nz * itemsize, 1))))
    return t_chunk, int(x_chunk)


def _source_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_dir_for(path: str | Path, cache_root: str | Path) -> Path:
    """The Zarr working-copy directory for ``path`` under ``cache_root``."""
    path = Path(path)
    key = _source_key(path)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    return Path(cache_root) / f"{name}-{digest}.zarr"


def read_manifest(store: str | Path) -> dict[str, Any] | None:
    """The manifest of a complete working copy, or None if it is missing or incomplete."""
    marker = Path(store) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(marker.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if manifest.get("layout_version") != LAYOUT_VERSION:
        return None
    return manifest


def _hash_file(path: Path, result: dict[str, Any], stop: threading.Event) -> None:
    """Third thread: sha256 of the file's bytes (as stored), read independently.

    Hashing here rather than inside the decoder's reads takes ~1 s per 2 GB off the
    critical path (the decoder); ``hashlib`` releases the GIL on large buffers.
    """
    try:
        digest = hashlib.sha256()
        buf = bytearray(_HASH_READ_BYTES)
        view = memoryview(buf)
        with open(path, "rb") as fh:
            while (n := fh.readinto(view)) and not stop.is_set():
                digest.update(view[:n])
        result["sha256"] = digest.hexdigest()
    except BaseException as exc:  # reported by the consumer
        result["error"] = exc


def _read_blocks(stream: Any, info: NiftiInfo, t_chunk: int, out: queue.Queue[Any],
                 free: queue.Queue[Any], stop: threading.Event) -> None:
    """Producer: decompress ``t_chunk`` volumes at a time into recycled buffers.

    Buffers come from ``free`` (a small ring allocated once: touching fresh memory is slow on
    some VMs) and go to ``out`` as ``(t0, n_volumes, buffer)``; the consumer gives them back.
    """
    try:
        nt = info.shape[3] if info.ndim == 4 else 1
        vb = info.volume_bytes
        skip = info.vox_offset
        while skip > 0:
            got = stream.read(min(skip, 1 << 20))
            if not got:
                raise TruncatedDataError("file ends inside the header/extensions", info.path)
            skip -= len(got)
        for t0 in range(0, nt, t_chunk):
            n = min(t_chunk, nt - t0)
            while True:
                try:
                    buf = free.get(timeout=0.5)
                    break
                except queue.Empty:
                    if stop.is_set():
                        return
            view = memoryview(buf)[: n * vb]
            filled = 0
            while filled < len(view):
                # in steps of _DECODE_STEP: isal inflates ~20 % faster into a small, cache-warm
                # window than into a whole 32 MiB block at once
                got = stream.readinto(view[filled : filled + _DECODE_STEP])
                if not got:
                    raise TruncatedDataError(
                        f"truncated data: ended in volume {t0 + filled // vb} of {nt}", info.path
                    )
                filled += got
            out.put((t0, n, buf))
        # read to the end so that the gzip CRC-32 and length are checked
        while stream.read(1 << 20):
            pass
        out.put(None)
    except BaseException as exc:  # handed to the consumer thread
        out.put(exc)


def _add_volume_sums(total: np.ndarray, block: np.ndarray) -> None:
    """``total += block.sum(axis=0)``; exact integer partial sums for integer data.

    Summing int16 volumes in int32 (exact for up to 32,768 volumes per block) and adding the partial sum
    to the float64 total is ~1.5x faster than numpy's float64 casting reduction.
    """
    if block.dtype.kind in "iu" and block.dtype.itemsize <= 2 and block.shape[0] <= 32_768:
        total += block.sum(axis=0, dtype=np.int32)
    else:
        total += block.sum(axis=0, dtype=np.float64)


class _ValueChecks:
    """Facts about the values gathered block by block while streaming (one pass, no re-read).

    * ``bad`` (z, y, x) bool: voxels with at least one non-finite value (float data only); those
      values are set to 0 in the block, in place, before it is stored;
    * ``varies``: some voxel differs from its value in the first volume;
    * ``lo``, ``hi``: the smallest and largest finite stored value, kept only where scaling or a
      float64 source could take a value past the float32 range.
    """

    def __init__(self, dtype: np.dtype, shape_zyx: tuple[int, int, int], scaled: bool) -> None:
        self.is_float = dtype.kind == "f"
        self.bad = np.zeros(shape_zyx, dtype=bool) if self.is_float else None
        self.n_bad_values = 0
        self.first: np.ndarray | None = None
        self.varies = False
        self.track_range = self.is_float and (scaled or dtype.itemsize > 4)
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, block: np.ndarray) -> None:
        """Check one ``(n, z, y, x)`` block (writable: non-finite values are zeroed in place)."""
        if self.is_float:
            finite = np.isfinite(block)
            if not finite.all():
                assert self.bad is not None
                nonfinite = ~finite
                self.n_bad_values += int(nonfinite.sum())
                self.bad |= nonfinite.any(axis=0)
                block[nonfinite] = 0
            del finite
            if self.track_range and block.size:
                self.lo = min(self.lo, float(block.min()))
                self.hi = max(self.hi, float(block.max()))
        if self.first is None:
            self.first = block[0].copy()
        if not self.varies:
            self.varies = bool((block != self.first).any())

    def check_range(self, slope: float, inter: float, path: Path) -> None:
        """Refuse float data whose scaled values leave the float32 range."""
        if not self.track_range or self.lo > self.hi:
            return
        top = float(np.finfo(np.float32).max)
        ends = [self.lo * slope + inter, self.hi * slope + inter]
        if not all(math.isfinite(v) and abs(v) <= top for v in ends):
            raise ImageFormatError(
                f"scaled values reach {max(abs(v) for v in ends):.3g} (stored {self.lo:.3g} .. "
                f"{self.hi:.3g}, scl_slope={slope:g}, scl_inter={inter:g}): past the float32 range",
                path)


def _inner_chunks(ordered: np.ndarray, piece: np.ndarray) -> Iterator[np.ndarray]:
    """The inner chunks of one shard, ``ordered[:, k * w : (k + 1) * w]``, copied into ``piece``."""
    w = piece.shape[1]
    for k in range(ordered.shape[1] // w):
        np.copyto(piece, ordered[:, k * w : (k + 1) * w])
        yield piece


def ingest_nifti(
    path: str | Path,
    cache_root: str | Path,
    *,
    info: NiftiInfo | None = None,
    t_chunk: int | None = None,
    x_chunk: int | None = None,
) -> Path:
    """Stream a 4D NIfTI once into its Zarr working copy (or reuse a complete one).

    Three threads overlap: the decoder (isal, releases the GIL) fills a ring of
    :data:`N_STREAM_BUFFERS` buffers of ``t_chunk`` volumes; this thread adds each block to
    the voxel sums (in the file's own (z, y, x) order: contiguous, fast), transposes it to
    ``(t, x, y, z)`` into one preallocated buffer and writes it as one Zarr shard; a third
    thread hashes the file.  Peak memory is about ``(N_STREAM_BUFFERS + 2) x`` one block
    (:data:`STREAM_BLOCK_BYTES`), whatever the image size.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` with 4 dimensions.
    cache_root : str or Path
        Directory holding working copies.
    info : NiftiInfo, optional
        Already-validated header.
    t_chunk, x_chunk : int, optional
        Override the layout chosen by :func:`choose_layout`.

    Returns
    -------
    Path
        The ``.zarr`` store directory; its manifest holds the source's sha256, the affine,
        scaling, ``n_nonfinite_voxels`` / ``n_nonfinite_values`` (NaN or Inf, set to 0 in the
        copy; the voxels in the ``nonfinite`` array, uint8, (x, y, z)), ``varies`` (False:
        every voxel is constant over time) and ``first_volume_all_zero``; the store also holds
        the voxel-wise mean (``mean`` array, float32, (x, y, z)).

    Raises
    ------
    ImageFormatError
        Not 4D, bad header, float values that scaling takes past the float32 range.
    TruncatedDataError
        Data or gzip stream ends early.
    CorruptedFileError
        Gzip CRC-32 or deflate data corrupted.
    """
    path = Path(path)
    info = info or read_nifti_info(path)
    if info.ndim != 4:
        raise ImageFormatError(f"expected a 4D image, got shape {info.shape}", path)
    store = cache_dir_for(path, cache_root)
    if read_manifest(store) is not None:
        return store
    nx, ny, nz, nt = info.shape
    auto_t, auto_x = choose_layout(info.shape, info.dtype.itemsize)
    t_chunk = t_chunk or auto_t
    x_chunk = x_chunk or auto_x
    dtype = info.dtype.newbyteorder("=")
    raw = open(path, "rb")
    import isal.igzip as igzip

    stream: Any = igzip.IGzipFile(fileobj=raw, mode="rb") if info.compressed else raw
    total = np.zeros((nz, ny, nx), dtype=np.float64)  # file order
    checks = _ValueChecks(info.dtype, (nz, ny, nx), info.slope != 1.0 or info.inter != 0.0)
    q: queue.Queue[Any] = queue.Queue()
    free: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    hashed: dict[str, Any] = {}
    producer = threading.Thread(target=_read_blocks, args=(stream, info, t_chunk, q, free, stop),
                                daemon=True)
    hasher = threading.Thread(target=_hash_file, args=(path, hashed, stop),
                              daemon=True)
    try:
        with atomic_path(store, is_dir=True) as tmp:
            group, arr = _create_store(tmp, info.shape, dtype, t_chunk, x_chunk)
            for _ in range(min(N_STREAM_BUFFERS, -(-nt // t_chunk))):
                free.put(bytearray(t_chunk * info.volume_bytes))
            n_inner = -(-nx // x_chunk)
            direct = _direct_writer(tmp)
            # (t, x, y, z), x padded to whole inner chunks; volumes past the end stay 0
            ordered = np.zeros((t_chunk, n_inner * x_chunk, ny, nz), dtype=dtype)
            piece = np.zeros((t_chunk, x_chunk, ny, nz), dtype=dtype)
            hasher.start()
            producer.start()
            _write_blocks(q, free, info, checks, total, ordered, piece, arr, direct)
            producer.join()
            hasher.join()
            if "error" in hashed:
                raise hashed["error"]
            checks.check_range(info.slope, info.inter, path)
            _write_summary(group, tmp, path, info, dtype, (t_chunk, x_chunk), checks, total,
                           hashed["sha256"])
    except (EOFError, TruncatedDataError) as exc:
        if isinstance(exc, TruncatedDataError):
            raise
        raise TruncatedDataError(f"truncated gzip stream ({exc})", path) from exc
    except (OSError, zlib.error, ValueError) as exc:
        if isinstance(exc, ImageFormatError):
            raise
        name = type(exc).__name__
        if "gzip" in name.lower() or "crc" in str(exc).lower() or isinstance(exc, zlib.error):
            raise CorruptedFileError(f"corrupted gzip data ({exc})", path) from exc
        if "isal" in type(exc).__module__ or "Error -3" in str(exc):
            raise CorruptedFileError(f"corrupted gzip data ({exc})", path) from exc
        raise
    finally:
        stop.set()
        if producer.is_alive():
            producer.join(timeout=5)
        raw.close()
    return store


def _create_store(tmp: Path, shape: tuple[int, ...], dtype: np.dtype[Any], t_chunk: int,
                  x_chunk: int) -> tuple[Any, Any]:
    """The new working copy's Zarr v3 group and its empty ``data`` array (t, x, y, z)."""
    import zarr

    nx, ny, nz, nt = shape
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    arr = group.create_array(
        "data",
        shape=(nt, nx, ny, nz),
        # one shard per streamed block of whole volumes: few files, and each block
        # is written exactly once (no read-modify-write of partial chunks)
        shards=(t_chunk, -(-nx // x_chunk) * x_chunk, ny, nz),
        chunks=(t_chunk, x_chunk, ny, nz),
        dtype=dtype,
        compressors=_compressors(),
        fill_value=0,
    )
    return group, arr


def _direct_writer(tmp: Path) -> ShardedArray | None:
    """The direct shard writer of a new working copy, or None (write through zarr-python).

    Shards are written here, not through zarr-python (whose per-chunk pipeline cost ~13 CPU s
    for an HCP-sized run and was the ingest's critical path): zarr wrote the metadata and
    reads the shards back (see :mod:`neuroscale.io.shards`).
    """
    writes = settings.get("direct-writes")
    direct = ShardedArray.open(tmp / "data") if writes else None
    if direct is None and writes:
        settings.log_fallback_once("working-copy writes", tmp)
    return direct


def _write_blocks(q: queue.Queue[Any], free: queue.Queue[Any], info: NiftiInfo,
                  checks: _ValueChecks, total: np.ndarray, ordered: np.ndarray,
                  piece: np.ndarray, arr: Any, direct: ShardedArray | None) -> None:
    """Take the decoded blocks off ``q`` until its end marker and write each as one shard.

    Each block is checked (``checks``), added to the voxel sums ``total`` (file order),
    transposed to ``(t, x, y, z)`` into ``ordered`` (x padded to whole inner chunks of
    ``piece``'s width) and written, directly or through zarr (``arr``); its buffer goes back
    to ``free``.  An exception the reader thread put on ``q`` is raised here.
    """
    import zarr

    nx, ny, nz, _ = info.shape
    t_chunk = ordered.shape[0]
    n_inner = ordered.shape[1] // piece.shape[1]
    while True:
        item = q.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        t0, n, buf = item
        # on disk: x fastest, so (t, z, y, x) in C order; store as (t, x, y, z)
        block = np.frombuffer(buf, dtype=info.dtype, count=n * nx * ny * nz)
        block = block.reshape(n, nz, ny, nx)
        checks.add(block)
        _add_volume_sums(total, block)
        # one (z, x) plane transpose per y: ~1.6x faster than one 4D copyto
        for y in range(ny):
            np.copyto(ordered[:n, :nx, y, :], block[:, :, y, :].transpose(0, 2, 1))
        del block
        free.put(buf)
        if direct is not None:
            if n < t_chunk:
                ordered[n:] = 0  # the last, partial shard: fill value past the end
            direct.write_shard(t0 // t_chunk, _inner_chunks(ordered, piece))
        else:
            # encode all inner chunks of a shard in one batch: ~35 % less CPU than
            # zarr's default of one chunk at a time
            with zarr.config.set({"codec_pipeline.batch_size": n_inner}):
                arr[t0 : t0 + n] = ordered[:n, :nx]


def _write_summary(group: Any, tmp: Path, path: Path, info: NiftiInfo, dtype: np.dtype[Any],
                   chunks: tuple[int, int], checks: _ValueChecks, total: np.ndarray,
                   sha256: str) -> None:
    """Write the mean, the non-finite voxels and, last, the manifest of a streamed copy."""
    _, ny, nz, nt = info.shape
    t_chunk, x_chunk = chunks
    mean = (total.transpose(2, 1, 0) / nt) * info.slope + info.inter
    group.create_array("mean", data=mean.astype(np.float32))
    n_bad = 0
    if checks.bad is not None and checks.bad.any():
        n_bad = int(checks.bad.sum())
        group.create_array("nonfinite",
                           data=checks.bad.transpose(2, 1, 0).astype(np.uint8))
    manifest = {
        "layout_version": LAYOUT_VERSION,
        "source": _source_key(path),
        "sha256": sha256,
        "shape": list(info.shape),
        "dtype": dtype.str,
        "chunks": [t_chunk, x_chunk, ny, nz],
        "affine": np.asarray(info.affine).tolist(),
        "slope": info.slope,
        "inter": info.inter,
        "zooms": list(info.zooms),
        "t_r_header": info.t_r_header,
        "n_nonfinite_voxels": n_bad,
        "n_nonfinite_values": checks.n_bad_values,
        "varies": checks.varies,
        "first_volume_all_zero": bool(checks.first is not None
                                      and not checks.first.any()),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def verify_store(store: str | Path) -> str | None:
    """Check every chunk checksum of a working copy without decoding it.

    Parameters
    ----------
    store : str or Path
        A ``.zarr`` working copy.

    Returns
    -------
    str or None
        None when every shard index and inner chunk matches its CRC-32C (or the layout is not
        the direct one, which zarr-python checks itself on reading), else what failed (one line,
        naming the shard).
    """
    arr = ShardedArray.open(Path(store) / "data")
    if arr is None:
        return None
    try:
        arr.verify()
    except CorruptedFileError as exc:
        return str(exc)
    return None


def remove_cache(store: str | Path) -> None:
    """Delete a working copy."""
    shutil.rmtree(store, ignore_errors=True)


def default_cache_root() -> Path:
    """``$NEUROSCALE_CACHE`` or ``~/.cache/neuroscale``."""
    env = os.environ.get("NEUROSCALE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "neuroscale"
