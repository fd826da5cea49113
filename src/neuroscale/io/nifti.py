"""NIfTI-1 / NIfTI-2 headers, validation, and small (3D) image writing.

The 4D data itself is never read here in one piece: :mod:`neuroscale.io.zarr_cache` streams it
into a chunked Zarr working copy.  This module reads and validates the header only, so bad
input is rejected before any work starts, with a one-line message naming the file.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import isal.igzip as igzip
import nibabel as nib
import numpy as np

from neuroscale.errors import ImageFormatError, InputNotFoundError, TruncatedDataError
from neuroscale.io.atomic import atomic_path

_HEADER_BYTES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
#: Deflate's largest compression ratio (a run of one byte value: 258 bytes per 2-bit code,
#: about 1032:1, RFC 1951; zlib's technical notes), with room for the gzip framing.
MAX_DEFLATE_RATIO = 1032
#: NIfTI datatype codes of RGB(A) voxels.
_RGB_CODES = {128: "RGB24", 2304: "RGBA32"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def require_regular_file(path: str | Path) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed) if it is a regular file.

    Nothing is opened, so a FIFO never blocks and a device (``/dev/zero``) is never read.

    Raises
    ------
    InputNotFoundError
        ``path`` (or the target of the symlink it is) does not exist.
    ImageFormatError
        ``path`` is a directory, device, FIFO or socket.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise InputNotFoundError(f"broken symbolic link (to {os.readlink(path)})",
                                     path) from None
        raise InputNotFoundError("no such file", path) from None
    except OSError as exc:
        raise ImageFormatError(f"cannot stat the file ({exc.strerror})", path) from exc
    if not stat.S_ISREG(st.st_mode):
        target = f", a symbolic link to {os.readlink(path)}" if path.is_symlink() else ""
        raise ImageFormatError(f"not a regular file ({_file_kind(st.st_mode)}{target})", path)
    return st


def gzip_size_bound(path: str | Path, compressed_size: int) -> int:
    """The largest decompressed size a gzip file of ``compressed_size`` bytes can have.

    Deflate cannot exceed :data:`MAX_DEFLATE_RATIO`; for a single-member gzip (what nibabel,
    FSL, dcm2niix and pigz write) the ISIZE trailer (the size modulo 2**32, RFC 1952) narrows
    it to the largest size congruent to ISIZE within that bound.  Files whose header has
    FEXTRA set (BGZF / bgzip: many members, each with its own trailer), and trailers that
    cannot be a NIfTI's (under 348 bytes: a cut file, or zero padding after the stream), get
    the ratio bound only.

    Parameters
    ----------
    path : str or Path
        A gzip file.
    compressed_size : int
        Its size in bytes.

    Returns
    -------
    int
        Bytes.
    """
    bound = compressed_size * MAX_DEFLATE_RATIO
    with open(path, "rb") as fh:
        head = fh.read(10)
        if compressed_size < 18 or len(head) < 10 or head[3] & 0x04:  # FEXTRA: BGZF
            return bound
        fh.seek(compressed_size - 4)
        isize = int.from_bytes(fh.read(4), "little")
    # not a trailer of a NIfTI (a cut file, or zero padding after the stream, which gzip readers
    # skip): the ratio bound only
    if isize < 348 or isize > bound:
        return bound
    return isize + ((bound - isize) >> 32 << 32)


def is_gzip(path: str | Path) -> bool:
    """True when ``path`` starts with the gzip magic bytes (whatever its suffix)."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_raw(path: str | Path) -> Any:
    """Open ``path`` for reading its *decompressed* bytes (isal inflater for gzip)."""
    if is_gzip(path):
        return igzip.open(path, "rb")
    return open(path, "rb")


@dataclass(frozen=True)
class NiftiInfo:
    """Validated facts from a NIfTI header; small and picklable.

    Attributes
    ----------
    path : Path
        The file.
    shape : tuple of int
        Array shape, (x, y, z[, t]).
    dtype : numpy.dtype
        On-disk data type, with its byte order.
    affine : (4, 4) ndarray of float64
        Voxel-to-world (mm) transform, as nibabel chooses it (sform, else qform).
    zooms : tuple of float
        Voxel size in mm (and the header's time step, in the header's units).
    slope, inter : float
        Scaling applied to the stored values (1.0 and 0.0 when the header has none).
    vox_offset : int
        Byte offset of the data in the decompressed stream.
    compressed : bool
        True for gzip files.
    t_r_header : float or None
        Repetition time from ``pixdim[4]`` converted to seconds, or None when absent/zero.
    header : nibabel header
        The parsed header (NIfTI-1 or NIfTI-2).
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    affine: np.ndarray = field(repr=False)
    zooms: tuple[float, ...]
    slope: float
    inter: float
    vox_offset: int
    compressed: bool
    t_r_header: float | None
    header: Any = field(repr=False)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def volume_bytes(self) -> int:
        """Bytes of one 3D volume on disk."""
        return math.prod(self.shape[:3]) * self.dtype.itemsize

    @property
    def data_bytes(self) -> int:
        """Bytes of the whole data block on disk (decompressed)."""
        return math.prod(self.shape) * self.dtype.itemsize


def read_nifti_info(path: str | Path) -> NiftiInfo:
    """Read and validate a NIfTI-1 or NIfTI-2 header without reading the data.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    NiftiInfo

    Raises
    ------
    InputNotFoundError
        The file does not exist.
    ImageFormatError
        Not a regular file (a FIFO, a device such as ``/dev/zero``), bad magic or header size,
        invalid dimensions, unsupported data type (complex, RGB), non-finite scaling or a
        scaling that takes integer values past the float32 range, zero or non-finite voxel
        size, a non-finite or singular affine.
    TruncatedDataError
        The file is too small for the data its header describes: an uncompressed file shorter
        than ``vox_offset`` + the data, or a gzip file whose decompressed size cannot reach
        it (:func:`gzip_size_bound`); the rest of a gzip file is checked while streaming (see
        :func:`neuroscale.io.zarr_cache.ingest_nifti`).
    """
    path = Path(path)
    size = require_regular_file(path).st_size
    compressed = is_gzip(path)
    raw, sizeof_hdr, header = _read_header(path)
    shape = tuple(int(s) for s in header.get_data_shape())
    if not shape or min(shape) < 1:
        raise ImageFormatError(f"invalid dimensions {shape}", path)
    dtype = _check_dtype(header, path)
    slope, inter = _check_scaling(header, dtype, path)
    zooms = tuple(float(z) for z in header.get_zooms())
    affine = _check_geometry(header, _HEADER_BYTES[sizeof_hdr], raw[:sizeof_hdr], shape, path)
    t_r_header = _header_t_r(header, shape)
    vox_offset = int(header.get_data_offset())
    info = NiftiInfo(
        path=path,
        shape=shape,
        dtype=dtype,
        affine=affine,
        zooms=zooms,
        slope=slope,
        inter=inter,
        vox_offset=vox_offset,
        compressed=compressed,
        t_r_header=t_r_header,
        header=header,
    )
    need = vox_offset + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    _check_data_size(path, size, compressed, need, shape, dtype)
    return info


def _read_header(path: Path) -> tuple[bytes, int, Any]:
    """``(first bytes, header size, nibabel header)`` of a NIfTI-1/2 file, magic checked.

    Raises
    ------
    ImageFormatError
        Unreadable, neither a 348- nor a 540-byte header, invalid header, bad magic.
    TruncatedDataError
        Shorter than a NIfTI-1 header.
    """
    try:
        with open_raw(path) as fh:
            raw = fh.read(540)
    except (OSError, EOFError) as exc:
        raise ImageFormatError(f"cannot read the NIfTI header ({exc})", path) from exc
    if len(raw) < 348:
        raise TruncatedDataError(f"only {len(raw)} bytes: too short for a NIfTI header", path)
    sizeof_hdr = None
    for order in "<>":
        value = struct.unpack(f"{order}i", raw[:4])[0]
        if value in _HEADER_BYTES:
            sizeof_hdr = value
            break
    if sizeof_hdr is None:
        raise ImageFormatError("not a NIfTI file (header size is neither 348 nor 540)", path)
    header_class = _HEADER_BYTES[sizeof_hdr]
    try:
        with open_raw(path) as fh:
            header = header_class.from_fileobj(fh, check=True)
    except Exception as exc:  # nibabel raises HeaderDataError and friends
        raise ImageFormatError(f"invalid NIfTI header ({exc})", path) from exc
    magic = bytes(header["magic"]).rstrip(b"\x00")
    if magic not in (b"n+1", b"n+2"):
        raise ImageFormatError(
            f"bad NIfTI magic {magic!r} (expected 'n+1' or 'n+2' for a single-file image)", path
        )
    return raw, sizeof_hdr, header


def _check_dtype(header: Any, path: Path) -> np.dtype[Any]:
    """The stored data type; raise :class:`ImageFormatError` for RGB, complex or other types."""
    code = int(header["datatype"])
    if code in _RGB_CODES:
        raise ImageFormatError(f"RGB data not supported (datatype {_RGB_CODES[code]})", path)
    try:
        dtype: np.dtype[Any] = header.get_data_dtype()
    except Exception as exc:
        raise ImageFormatError(f"unsupported data type ({exc})", path) from exc
    if dtype.kind == "c":
        raise ImageFormatError(
            f"complex data not supported (datatype {dtype.name}): store the magnitude "
            "(or the real part) as a real image", path)
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise ImageFormatError(f"data type {dtype} not supported", path)
    return dtype


def _check_scaling(header: Any, dtype: np.dtype[Any], path: Path) -> tuple[float, float]:
    """``(slope, inter)`` to apply (``(1, 0)`` for none).

    Raises :class:`ImageFormatError` for a non-finite scaling or one that takes the stored
    integer type past the float32 range.
    """
    raw_slope = float(np.asarray(header["scl_slope"]))
    raw_inter = float(np.asarray(header["scl_inter"]))
    if np.isinf(raw_slope) or (
        np.isfinite(raw_slope) and raw_slope != 0 and not np.isfinite(raw_inter)
    ):
        raise ImageFormatError(
            f"non-finite scaling (scl_slope={raw_slope}, scl_inter={raw_inter})", path
        )
    if np.isfinite(raw_slope) and raw_slope != 0:
        slope, inter = raw_slope, raw_inter
    else:  # NIfTI: slope 0 (or nibabel's NaN) means "no scaling"
        slope, inter = 1.0, 0.0
    if dtype.kind in "iu":  # any stored value may occur: the range of the type must fit
        limits = np.iinfo(dtype)
        reach = max(-int(limits.min), int(limits.max)) * abs(slope) + abs(inter)
        if not reach <= _FLOAT32_MAX:
            raise ImageFormatError(
                f"scl_slope={slope:g} (scl_inter={inter:g}) scales the stored {dtype.name} "
                f"values to up to {reach:.3g}, past the float32 range", path)
    return slope, inter


def _check_geometry(header: Any, header_class: Any, header_bytes: bytes, shape: tuple[int, ...],
                    path: Path) -> np.ndarray:
    """The (4, 4) float64 affine, checked with the stored voxel size (``header_bytes``).

    Raises :class:`ImageFormatError` for an unusable or non-finite qform/sform, a zero or
    non-finite stored voxel size, a singular affine.
    """
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # nibabel's HeaderDataError on an unusable qform
        raise ImageFormatError(f"unusable qform/sform ({exc})", path) from exc
    if not np.all(np.isfinite(affine)):
        raise ImageFormatError("non-finite values in the affine (qform/sform)", path)
    # nibabel's header check silently sets zero pixdims to 1 mm: look at the stored values
    stored = header_class(binaryblock=header_bytes, endianness=header.endianness,
                          check=False)["pixdim"]
    voxel = tuple(float(v) for v in stored[1 : 1 + min(3, len(shape))])
    if not all(math.isfinite(v) and v != 0 for v in voxel):
        raise ImageFormatError(f"voxel size {tuple(voxel)} mm (pixdim[1:4]) is zero or not "
                               "finite", path)
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-9:
        raise ImageFormatError(
            f"singular affine ({'sform' if int(header['sform_code']) > 0 else 'qform'} maps the "
            "voxel grid onto a plane, a line or a point: determinant 0)", path)
    return affine


def _header_t_r(header: Any, shape: tuple[int, ...]) -> float | None:
    """The repetition time of a 4D header in seconds (``pixdim[4]`` in its time unit), or None."""
    t_r_header: float | None = None
    if len(shape) >= 4:
        _, t_unit = header.get_xyzt_units()
        step = float(header["pixdim"][4])
        factor = {"msec": 1e-3, "usec": 1e-6}.get(t_unit, 1.0)
        if np.isfinite(step) and step > 0:
            t_r_header = step * factor
    return t_r_header


def _check_data_size(path: Path, size: int, compressed: bool, need: int,
                     shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    """Raise :class:`TruncatedDataError` when a ``size``-byte file cannot hold ``need`` bytes."""
    if not compressed:
        if size < need:
            raise TruncatedDataError(
                f"truncated data: file has {size} bytes, header needs {need}",
                path,
            )
    else:
        most = gzip_size_bound(path, size)
        if need > most:
            raise TruncatedDataError(
                f"truncated data: the header claims {need} bytes of data (shape {shape}, "
                f"{dtype.name}) but this {size}-byte gzip file decompresses to at most {most} "
                "(gzip size trailer, deflate's 1032:1 ratio)", path)


def save_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    header: Any = None,
    dtype: Any = np.float32,
) -> Path:
    """Write a (small) in-memory array as NIfTI-1, atomically.

    Parameters
    ----------
    data : (x, y, z[, t]) ndarray
        Values to write; cast to ``dtype``.
    affine : (4, 4) ndarray
        Voxel-to-world transform (mm).
    path : str or Path
        Destination, ``.nii`` or ``.nii.gz``.
    header : nibabel header, optional
        Template header (units, qform codes) to copy.
    dtype : numpy dtype
        On-disk data type (default float32).

    Returns
    -------
    Path
        ``path``.
    """
    arr = np.asarray(data).astype(dtype, copy=False)
    hdr = None
    if header is not None:
        hdr = nib.Nifti1Header()
        for key in ("qform_code", "sform_code", "xyzt_units"):
            if key in header:
                hdr[key] = header[key]
    img = nib.Nifti1Image(arr, affine, header=hdr)
    img.header.set_data_dtype(dtype)
    if header is not None and "xyzt_units" in header:
        img.header.set_xyzt_units(*header.get_xyzt_units())
    img.set_qform(affine, code=int(hdr["qform_code"]) if hdr is not None else 1)
    img.set_sform(affine, code=int(hdr["sform_code"]) if hdr is not None else 1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)
