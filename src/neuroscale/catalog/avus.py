"""Attribute-value-unit metadata of objects and collections: list, add, remove.

Extraction of metadata from files is :mod:`neuroscale.catalog.metadata`'s; queries over it
are :mod:`neuroscale.catalog.search`'s.
"""

from __future__ import annotations

from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import delete, select  # noqa: E402

from neuroscale.catalog import metadata as md  # noqa: E402
from neuroscale.catalog import permissions  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.models import AVU  # noqa: E402
from neuroscale.catalog.paths import nfc  # noqa: E402
from neuroscale.catalog.permissions import READ, WRITE  # noqa: E402
from neuroscale.catalog.results import MetaInfo  # noqa: E402


def meta(ctx: Context, target: str) -> list[MetaInfo]:
    """Metadata of an object or collection (needs ``read``).

    Parameters
    ----------
    ctx : Context
    target : str
        A collection path or a logical object path.

    Returns
    -------
    list of MetaInfo
        By attribute, then in the order added.

    Raises
    ------
    CatalogNotFoundError
        No such collection or object, or not readable.
    """
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        coll, obj = permissions.target(s, target, levels, READ)
        where = AVU.object_id == obj.id if obj else AVU.collection_id == coll.id
        return [
            MetaInfo(a.attribute, a.value, a.unit, a.source)
            for a in s.scalars(select(AVU).where(where).order_by(AVU.attribute, AVU.id))
        ]


def add_meta(
    ctx: Context,
    target: str,
    attribute: str | md.Triple,
    value: Any = None,
    unit: str | None = None,
) -> None:
    """Add a triple to an object or collection (needs ``write``).

    Parameters
    ----------
    ctx : Context
    target : str
        A collection path or a logical object path.
    attribute : str or Triple
        The attribute name, or a whole triple (then ``value`` and ``unit`` are ignored).
    value : Any
        Its value (text or number).
    unit : str, optional

    Raises
    ------
    MetadataError
        An invalid attribute, value or unit.
    CatalogNotFoundError
        No such collection or object, or not readable.
    CatalogPermissionError
        Readable but not writable.
    """
    triple = (
        attribute
        if isinstance(attribute, md.Triple)
        else md.make_triple(attribute, value, unit, "user")
    )
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        coll, obj = permissions.target(s, target, levels, WRITE)
        s.add(
            AVU(
                object_id=obj.id if obj else None,
                collection_id=None if obj else coll.id,
                attribute=triple.attribute,
                value=triple.value,
                value_num=triple.value_num,
                unit=triple.unit,
                source=triple.source,
            )
        )


def remove_meta(ctx: Context, target: str, attribute: str, value: Any = None) -> int:
    """Remove the triples of ``attribute`` (only those equal to ``value`` if given).

    Parameters
    ----------
    ctx : Context
    target : str
        A collection path or a logical object path.
    attribute : str
    value : Any, optional

    Returns
    -------
    int
        How many triples were removed.

    Raises
    ------
    CatalogNotFoundError
        No such collection or object, or not readable.
    CatalogPermissionError
        Readable but not writable.
    """
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        coll, obj = permissions.target(s, target, levels, WRITE)
        q = delete(AVU).where(
            AVU.object_id == obj.id if obj else AVU.collection_id == coll.id,
            AVU.attribute == nfc(attribute),
        )
        if value is not None:
            q = q.where(AVU.value == nfc(md.format_value(value)))
        return int(s.execute(q).rowcount)  # type: ignore[attr-defined]
