"""Small helpers shared by the catalog's services (bulk SQL, argument checks)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import Table  # noqa: E402

from neuroscale.catalog.errors import MetadataError  # noqa: E402

#: Rows per SQL statement (bound parameters stay far below SQLite's and PostgreSQL's limits).
SQL_CHUNK = 500


def table(model: Any) -> Table:
    """The Core table of a mapped class (for bulk inserts and updates).

    Parameters
    ----------
    model : type
        A class of :mod:`neuroscale.catalog.models`.

    Returns
    -------
    Table
    """
    out: Table = model.__table__
    return out


def chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``seq`` of at most ``n`` items.

    Parameters
    ----------
    seq : sequence
    n : int

    Returns
    -------
    iterator of sequence
    """
    for k in range(0, len(seq), n):
        yield seq[k : k + n]


def aware(value: dt.datetime | None, what: str) -> dt.datetime | None:
    """``value`` checked to be a timezone-aware datetime (or None).

    Parameters
    ----------
    value : datetime or None
    what : str
        Its name, for the message.

    Returns
    -------
    datetime or None
        ``value``.

    Raises
    ------
    MetadataError
        Not a datetime, or a naive one.
    """
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise MetadataError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise MetadataError(f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return value
