"""Errors raised by :mod:`neuroscale.catalog`.

Every class derives from :class:`neuroscale.errors.NeuroscaleError` and from the builtin it
resembles, so ``except PermissionError`` / ``except FileNotFoundError`` / ``except ValueError``
keep working for callers that do not know neuroscale.
"""

from __future__ import annotations

from neuroscale.errors import (
    ConfigurationError,
    CorruptedFileError,
    InputNotFoundError,
    NeuroscaleError,
)


class CatalogError(NeuroscaleError):
    """Root of the catalog's own errors (a failed catalog operation)."""

    exit_code = 6


class MissingDependencyError(CatalogError, ImportError):
    """An optional dependency of the catalog (the ``[catalog]`` extra) is not installed."""

    exit_code = 2


class CatalogConfigError(ConfigurationError):
    """The catalog is not initialised, its configuration or schema version is wrong."""


class CatalogNotFoundError(InputNotFoundError):
    """A collection, object, user or checksum does not exist *or is not readable by the caller*.

    The catalog answers "not found" rather than "forbidden" when the caller cannot read the
    collection, so that the existence of an object is not disclosed.
    """


class CatalogPermissionError(CatalogError, PermissionError):
    """The caller can see the target but lacks the permission level the operation needs."""

    exit_code = 7


class TicketError(CatalogPermissionError):
    """A share ticket is unknown, expired, used up or revoked."""


class UnsafePathError(CatalogError, ValueError):
    """A name or path would escape the store or the collection ('..', absolute, NUL, symlink)."""

    exit_code = 2


class QuerySyntaxError(CatalogError, ValueError):
    """A ``find --where`` expression cannot be parsed."""

    exit_code = 2


class MetadataError(CatalogError, ValueError):
    """An attribute-value-unit triple is malformed (empty name, value too long...)."""

    exit_code = 2


class ConflictError(CatalogError, ValueError):
    """The target exists with different content, or the operation would lose the last copy."""

    exit_code = 8


class StoredObjectCorruptedError(CorruptedFileError):
    """A stored object's SHA-256 does not match its record (or the copy just written)."""


class StoredObjectMissingError(CorruptedFileError, FileNotFoundError):
    """A catalogued object's stored copy is missing from the store (``verify`` lists them)."""


class StoreError(CatalogError, OSError):
    """The store cannot be written or read: permission denied, read-only file system, full disk.

    Raised before anything is recorded (or with the claims of the failed ingest released), so
    the database stays consistent; exit code 6, as every failed catalog operation.
    """


__all__ = [
    "CatalogConfigError",
    "CatalogError",
    "CatalogNotFoundError",
    "CatalogPermissionError",
    "ConflictError",
    "MetadataError",
    "MissingDependencyError",
    "QuerySyntaxError",
    "StoreError",
    "StoredObjectCorruptedError",
    "StoredObjectMissingError",
    "TicketError",
    "UnsafePathError",
]
