"""Provenance sidecars: one function writes the JSON sidecar of every output.

Each derivative ``<name>.<ext>`` gets ``<name>.json`` (BIDS: a data file's metadata sidecar
has the same name with the ``.json`` extension) holding:

``Sources``
    The files used to make the output, as BIDS URIs (BIDS "Common derivatives", ``Sources``:
    ``bids:<dataset>:<path>``; ``bids::<path>`` for a file of the derivative dataset itself,
    ``bids:raw:<path>`` for the input dataset linked as ``raw`` in ``DatasetLinks``); files
    outside any dataset (atlases, templates) as ``file://`` URIs.
``SourcesSHA256``
    ``{source URI: sha256 hex digest}`` of those files' bytes.
``Parameters``
    The parameters of the computation, as canonical JSON values.
``Software``
    Versions of neuroscale, numpy, scipy, nibabel, nilearn, dask, distributed, zarr and python.
``Started`` / ``Ended``
    ISO-8601 UTC timestamps (``2025-01-31T12:00:00.000Z``).
``ProvenanceHash``
    :func:`provenance_hash` of the sources' sha256 and the parameters: a re-run with the same
    inputs, parameters and neuroscale version computes the same hash, so
    :func:`is_up_to_date` lets a pipeline skip outputs that are already complete.

Plus any ``extra`` keys (e.g. BIDS metadata such as ``RepetitionTime`` or ``SkullStripped``).
When the output itself is a JSON file, the provenance keys are merged into it instead.
Everything is written atomically (:mod:`neuroscale.io.atomic`): the JSON text is fully built
before anything touches the disk, so a serialisation error leaves no file behind.
"""

from __future__ import annotations

import datetime as _dt
import enum
import functools
import hashlib
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from neuroscale.errors import ConfigurationError, InputNotFoundError
from neuroscale.io.atomic import atomic_write_text

__all__ = [
    "PROVENANCE_KEYS",
    "SOFTWARE_PACKAGES",
    "canonical_json",
    "is_up_to_date",
    "provenance_hash",
    "read_provenance",
    "sha256_file",
    "sidecar_path",
    "software_versions",
    "write_provenance",
]

#: Distributions whose versions are recorded (plus ``neuroscale`` and ``python``).
SOFTWARE_PACKAGES = ("numpy", "scipy", "nibabel", "nilearn", "dask", "distributed", "zarr")

#: Keys written by :func:`write_provenance`; ``extra`` may not use them.
PROVENANCE_KEYS = ("Sources", "SourcesSHA256", "Parameters", "Software", "Started", "Ended",
                   "ProvenanceHash")

_HEX64 = frozenset("0123456789abcdef")
_DEFAULT_CHUNK = 8 * 1024 * 1024

SourceSpec = tuple[str | os.PathLike[str], str | None, str | None]


def sha256_file(path: str | os.PathLike[str], chunk: int = _DEFAULT_CHUNK) -> str:
    """The sha256 hex digest of a file's bytes, read in ``chunk``-byte pieces.

    Parameters
    ----------
    path : str or Path
        The file.
    chunk : int
        Read size in bytes (default 8 MiB); memory use is one buffer of this size.

    Returns
    -------
    str
        64 lowercase hex digits (same as ``hashlib.file_digest(f, "sha256").hexdigest()`` and
        ``sha256sum``).

    Raises
    ------
    InputNotFoundError
        The file does not exist.
    """
    if chunk <= 0:
        raise ConfigurationError(f"chunk must be a positive number of bytes, got {chunk}")
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                digest.update(view[:n])
    except FileNotFoundError:
        raise InputNotFoundError("file does not exist", Path(path)) from None
    except IsADirectoryError:
        raise InputNotFoundError("is a directory, not a file", Path(path)) from None
    return digest.hexdigest()


@functools.cache
def software_versions() -> dict[str, str | None]:
    """Versions of the software that shapes the results (None when not installed).

    Returns
    -------
    dict
        ``{"neuroscale": ..., "numpy": ..., ..., "zarr": ..., "python": "3.11.7"}``.
    """
    from neuroscale import __version__  # read at call time (tests and forks patch it)

    out: dict[str, str | None] = {"neuroscale": __version__}
    for dist in SOFTWARE_PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["python"] = platform.python_version()
    return out


def _jsonable(obj: Any, where: str, nonfinite_as_null: bool = False) -> Any:
    """Convert ``obj`` into plain JSON values, or raise ConfigurationError naming ``where``.

    Non-finite floats become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (parameters:
    distinct values must hash differently), or ``null`` with ``nonfinite_as_null`` (metadata
    values, as pandas reads them back as NaN).
    """

    def conv(o: Any, w: str) -> Any:
        if o is None or isinstance(o, bool | str):
            return o
        if isinstance(o, int):
            return int(o)
        if isinstance(o, float):
            value = float(o)
            if math.isfinite(value):
                return value
            if nonfinite_as_null:
                return None
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if isinstance(o, Mapping):
            out = {}
            for key, value in o.items():
                if not isinstance(key, str):
                    raise ConfigurationError(f"{w}: keys must be strings, got {key!r}")
                out[key] = conv(value, f"{w}.{key}")
            return out
        if isinstance(o, list | tuple):
            return [conv(v, f"{w}[{i}]") for i, v in enumerate(o)]
        if isinstance(o, set | frozenset):
            items = [conv(v, f"{w}{{}}") for v in o]
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
        if isinstance(o, PurePath):
            return o.as_posix()
        if isinstance(o, _dt.datetime | _dt.date):
            return o.isoformat()
        if isinstance(o, enum.Enum):
            return conv(o.value, w)
        # numpy scalars and (small) arrays, without importing numpy here
        tolist = getattr(o, "tolist", None)
        if type(o).__module__ == "numpy" and callable(tolist):
            return conv(tolist(), w)
        raise ConfigurationError(f"{w} of type {type(o).__name__} is not JSON-serialisable")

    return conv(obj, where)


def canonical_json(obj: Any) -> str:
    """Canonical JSON text: keys sorted, no whitespace, ASCII only (used for hashing).

    Raises
    ------
    ConfigurationError
        A value that cannot be represented in JSON.
    """
    return json.dumps(_jsonable(obj, "parameters"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)


def _check_sha(value: Any, what: str) -> str:
    if not (isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64):
        raise ConfigurationError(f"{what}: expected a sha256 hex digest (64 lowercase hex "
                                 f"digits), got {value!r}")
    return value


def provenance_hash(sources_sha256: Sequence[str], parameters: Mapping[str, Any]) -> str:
    """The provenance hash of an output: same inputs + parameters + version -> same hash.

    Parameters
    ----------
    sources_sha256 : sequence of str
        The sha256 hex digests of the source files, in the order the pipeline lists them.
    parameters : mapping
        The computation's parameters (JSON-representable; numpy scalars and Paths accepted).

    Returns
    -------
    str
        sha256 hex digest of the canonical JSON of
        ``{"neuroscale": <version>, "parameters": ..., "sources_sha256": [...]}``.

    Raises
    ------
    ConfigurationError
        A digest that is not 64 hex digits, or a parameter that is not JSON-serialisable.
    """
    from neuroscale import __version__  # read at call time (tests and forks patch it)

    shas = [_check_sha(s, f"source {i}") for i, s in enumerate(sources_sha256)]
    text = canonical_json({"neuroscale": __version__, "parameters": parameters,
                           "sources_sha256": shas})
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def sidecar_path(output_path: str | os.PathLike[str]) -> Path:
    """``<output without extension>.json``; a ``.json`` output is its own sidecar.

    The extension is everything from the first dot of the file name (BIDS names have no other
    dots): ``x_bold.nii.gz`` -> ``x_bold.json``, ``x_bold.func.gii`` -> ``x_bold.json``.
    """
    path = Path(output_path)
    stem = path.name.split(".", 1)[0] if not path.name.startswith(".") else path.name
    return path.with_name(stem + ".json")


def _utc(value: _dt.datetime, what: str) -> _dt.datetime:
    if not isinstance(value, _dt.datetime):
        raise ConfigurationError(f"{what} must be a datetime, got {type(value).__name__}")
    return value.astimezone(_dt.UTC)  # naive values are taken as local time


def _iso(value: _dt.datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dataset_root(start: Path) -> Path | None:
    for parent in [start, *start.parents]:
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def _source_uri(path: Path, bids_ref: str | None, out_root: Path | None) -> str:
    if bids_ref is not None:
        if not isinstance(bids_ref, str) or not bids_ref:
            raise ConfigurationError(f"invalid BIDS path {bids_ref!r} for source {path}")
        if bids_ref.startswith("bids:"):
            return bids_ref
        rel = PurePosixPath(bids_ref.replace(os.sep, "/"))
        if rel.is_absolute() or ".." in rel.parts:
            raise ConfigurationError(
                f"BIDS path {bids_ref!r} of source {path} must be relative to the dataset root"
            )
        from neuroscale.bids.derivatives import RAW_DATASET_NAME

        return f"bids:{RAW_DATASET_NAME}:{rel}"
    absolute = Path(os.path.abspath(path))
    if out_root is not None:
        try:
            return f"bids::{absolute.relative_to(out_root).as_posix()}"
        except ValueError:
            pass
    return absolute.as_uri()


def _normalize_sources(
    sources: Iterable[SourceSpec], out_root: Path | None
) -> list[tuple[str, str]]:
    out = []
    for i, spec in enumerate(sources):
        try:
            path, bids_ref, sha = spec
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"source {i} must be a (path, bids_relpath or None, sha256 or None) tuple, "
                f"got {spec!r}"
            ) from None
        path = Path(path)
        sha = sha256_file(path) if sha is None else _check_sha(sha, f"source {path}")
        out.append((_source_uri(path, bids_ref, out_root), sha))
    return out


def write_provenance(
    output_path: str | os.PathLike[str],
    *,
    sources: Iterable[SourceSpec],
    parameters: Mapping[str, Any],
    started: _dt.datetime,
    ended: _dt.datetime,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the provenance sidecar of ``output_path`` atomically.

    Parameters
    ----------
    output_path : str or Path
        The derivative file (``.nii.gz``, ``.tsv``, ``.json``...).  It need not exist yet.
    sources : iterable of (path, bids_relpath or None, sha256 or None)
        Each input file; ``bids_relpath`` is its path relative to the input BIDS dataset
        (-> ``bids:raw:<relpath>``) or a full ``bids:`` URI; None -> ``bids::<path>`` when the
        file lies inside the derivative dataset holding ``output_path`` (the nearest parent
        with a ``dataset_description.json``), else a ``file://`` URI.  ``sha256`` None: the
        file is hashed here (pass known digests, e.g. ``Image.meta["sha256"]``, for big files).
    parameters : mapping
        The computation's parameters.  Values must be JSON-representable (numpy scalars and
        arrays, Paths, tuples, sets, enums and datetimes are converted).
    started, ended : datetime
        Wall-clock start and end of the computation (naive values are local time); written
        as ISO-8601 UTC.
    extra : mapping, optional
        More top-level keys (BIDS metadata of the output); may not reuse
        :data:`PROVENANCE_KEYS`.  Non-finite floats here (and in an existing ``.json``
        output being merged) are written as ``null``, so the file stays strict JSON;
        in ``parameters`` they become ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"``.

    Returns
    -------
    Path
        The sidecar, :func:`sidecar_path` of ``output_path``.

    Raises
    ------
    ConfigurationError
        A non-serialisable parameter or extra value, an invalid sha256, ``ended`` before
        ``started``, ``extra`` reusing a provenance key, or a ``.json`` output that is not a
        JSON object.  Nothing is written.
    InputNotFoundError
        A source without a digest does not exist.
    """
    output_path = Path(output_path)
    target = sidecar_path(output_path)
    t0, t1 = _utc(started, "started"), _utc(ended, "ended")
    if t1 < t0:
        raise ConfigurationError(f"ended ({_iso(t1)}) is before started ({_iso(t0)})",
                                 output_path)
    out_root = _dataset_root(Path(os.path.abspath(output_path)).parent)
    srcs = _normalize_sources(sources, out_root)
    params = _jsonable(dict(parameters), "parameters")
    extras = _jsonable(dict(extra or {}), "extra", nonfinite_as_null=True)
    clash = sorted(set(extras) & set(PROVENANCE_KEYS))
    if clash:
        raise ConfigurationError(f"extra keys {clash} are reserved for provenance", output_path)

    payload: dict[str, Any] = {}
    if target == output_path and output_path.exists():
        try:
            existing = json.loads(output_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot add provenance to this JSON output ({exc})",
                                     output_path) from None
        if not isinstance(existing, dict):
            raise ConfigurationError("cannot add provenance to a JSON output that is not an "
                                     "object", output_path)
        payload.update(_jsonable(existing, str(output_path), nonfinite_as_null=True))
    payload.update(extras)
    payload.update({
        "Sources": [uri for uri, _ in srcs],
        "SourcesSHA256": {uri: sha for uri, sha in srcs},
        "Parameters": params,
        "Software": software_versions(),
        "Started": _iso(t0),
        "Ended": _iso(t1),
        "ProvenanceHash": provenance_hash([sha for _, sha in srcs], params),
    })
    text = json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_text(target, text)
    return target


def read_provenance(output_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of ``output_path`` as a dict, or None if missing or unreadable."""
    try:
        data = json.loads(sidecar_path(output_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_up_to_date(output_path: str | os.PathLike[str], expected_hash: str) -> bool:
    """True only if the output and its sidecar exist and the sidecar's hash matches.

    Parameters
    ----------
    output_path : str or Path
        The derivative file (or directory, e.g. a Zarr store).
    expected_hash : str
        :func:`provenance_hash` of the inputs and parameters of the planned computation.

    Returns
    -------
    bool
        Never raises on missing or corrupt files (they mean "not up to date").
    """
    if not Path(output_path).exists():
        return False
    data = read_provenance(output_path)
    return data is not None and data.get("ProvenanceHash") == expected_hash
