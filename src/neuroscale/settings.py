"""neuroscale's tunables: one validated ``neuroscale`` section of the Dask configuration.

Worker processes see what the client sees: distributed's nannies start each worker with the
client's ``dask.config``, and environment variables reach every process.  Set a value in any
file Dask reads (``~/.config/dask/neuroscale.yaml``)::

    neuroscale:
      direct-reads: false

with ``dask.config.set({"neuroscale.direct-reads": False})``, or in the environment as
``DASK_NEUROSCALE__DIRECT_READS=False``.  Sizes accept bytes or strings (``"16 MiB"``).

=========================== ========= =====================================================
key                         default   what
=========================== ========= =====================================================
direct-reads                true      read neuroscale's own Zarr layouts (the sharded working
                                      copy, the column-chunked Series store) with its own
                                      chunk reader (:mod:`neuroscale.io.shards`), not
                                      zarr-python's; other layouts always go through zarr
direct-writes               true      write those layouts' chunks with the same module
compress                    true      Blosc-LZ4 chunks in the working copy (false: raw)
read-block-bytes            16 MiB    bytes of the working copy read per task when a Series
                                      is built from an Image
series-store-chunk-bytes    4 MiB     one stored chunk of a written Series (all time points
                                      of a few voxel columns)
mmap-threshold-bytes        32 MiB    glibc ``M_MMAP_THRESHOLD`` of the client process
                                      (:func:`neuroscale.image.limit_heap_retention`)
=========================== ========= =====================================================
"""

from __future__ import annotations

import logging
from typing import Any

import dask.config
from dask.utils import parse_bytes

from neuroscale.errors import ConfigurationError

__all__ = ["DEFAULTS", "get", "log_fallback_once", "validate"]

#: The defaults, merged into Dask's configuration when this module is imported.
DEFAULTS: dict[str, Any] = {
    "direct-reads": True,
    "direct-writes": True,
    "compress": True,
    "read-block-bytes": 16 * 2**20,
    "series-store-chunk-bytes": 4 * 2**20,
    "mmap-threshold-bytes": 32 * 2**20,
}
_BOOLS = {"direct-reads", "direct-writes", "compress"}

dask.config.update_defaults({"neuroscale": dict(DEFAULTS)})

_log = logging.getLogger("neuroscale")
_fallbacks_logged: set[str] = set()


def get(key: str) -> Any:
    """The validated value of ``neuroscale.<key>`` (see the module docstring for the keys).

    Parameters
    ----------
    key : str
        One of :data:`DEFAULTS`' keys (``"-"`` or ``"_"``).

    Returns
    -------
    bool or int
        Booleans for the switches; positive integers (bytes) for the sizes.

    Raises
    ------
    ConfigurationError
        An unknown key, or a value of the wrong kind (``"neuroscale.compress: expected true
        or false, got 'maybe'"``).
    """
    key = key.replace("_", "-")
    if key not in DEFAULTS:
        raise ConfigurationError(f"unknown neuroscale setting {key!r}; known: "
                                 f"{', '.join(sorted(DEFAULTS))}")
    value = dask.config.get(f"neuroscale.{key}", default=DEFAULTS[key])
    if key in _BOOLS:
        if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0"}:
            return value.strip().lower() in {"true", "1"}
        if not isinstance(value, bool):
            raise ConfigurationError(f"neuroscale.{key}: expected true or false, got {value!r}")
        return value
    try:
        size = int(parse_bytes(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"neuroscale.{key}: expected a size in bytes (e.g. 16MiB), got {value!r}") from None
    if isinstance(value, bool) or size < 1:
        raise ConfigurationError(f"neuroscale.{key}: expected a positive size, got {value!r}")
    return size


def validate() -> dict[str, Any]:
    """Every setting's validated value (the CLI checks them before any work starts).

    Raises
    ------
    ConfigurationError
        The first setting with a value of the wrong kind, or an unknown key in the section.
    """
    section = dask.config.get("neuroscale", default={}) or {}
    known = set(DEFAULTS) | {"profiles"}  # cluster profiles: neuroscale.compute.config
    unknown = sorted(k for k in (str(k).replace("_", "-") for k in section) if k not in known)
    if unknown:
        raise ConfigurationError(f"unknown neuroscale setting(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(sorted(known))}")
    return {key: get(key) for key in DEFAULTS}


def log_fallback_once(what: str, path: Any) -> None:
    """Say once per process (logger ``neuroscale``, level INFO) that ``what`` went through
    zarr-python instead of neuroscale's direct chunk I/O, naming the first such store."""
    if what in _fallbacks_logged:
        return
    _fallbacks_logged.add(what)
    _log.info("%s: %s is not a layout neuroscale reads and writes itself; using zarr-python "
              "(slower; logged once)", what, path)
