"""neuroscale's data-management catalog (after iRODS): a content-addressed store, metadata,
queries, provenance, fixity checks and access control.

Needs the ``[catalog]`` extra (SQLAlchemy, Alembic, fsspec; s3fs for S3, psycopg for
PostgreSQL, pydicom for DICOM metadata).  Importing this package needs nothing; the names
below are loaded on first use and raise :class:`~neuroscale.catalog.errors.MissingDependencyError`
naming the extra when a dependency is missing.

Examples
--------
>>> from neuroscale.catalog import Catalog                            # doctest: +SKIP
>>> cat = Catalog.init("sqlite:////data/catalog.sqlite", "/data/store")  # doctest: +SKIP
>>> cat.ingest(["/data/bids/ds001"], "/lab/ds001")                    # doctest: +SKIP
>>> cat.find("task = 'oneback' and tr < 2.5")                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from neuroscale.catalog.errors import (
    CatalogConfigError,
    CatalogError,
    CatalogNotFoundError,
    CatalogPermissionError,
    ConflictError,
    MetadataError,
    MissingDependencyError,
    QuerySyntaxError,
    StoredObjectCorruptedError,
    StoredObjectMissingError,
    StoreError,
    TicketError,
    UnsafePathError,
)

_LAZY = {
    "Catalog": "neuroscale.catalog.api",
    "ObjectInfo": "neuroscale.catalog.api",
    "Lineage": "neuroscale.catalog.api",
    "FixityReport": "neuroscale.catalog.api",
    "IngestReport": "neuroscale.catalog.api",
    "Triple": "neuroscale.catalog.metadata",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'neuroscale.catalog' has no attribute {name!r}")


__all__ = [
    "Catalog",
    "CatalogConfigError",
    "CatalogError",
    "CatalogNotFoundError",
    "CatalogPermissionError",
    "ConflictError",
    "FixityReport",
    "IngestReport",
    "Lineage",
    "MetadataError",
    "MissingDependencyError",
    "ObjectInfo",
    "QuerySyntaxError",
    "StoreError",
    "StoredObjectCorruptedError",
    "StoredObjectMissingError",
    "TicketError",
    "Triple",
    "UnsafePathError",
]
