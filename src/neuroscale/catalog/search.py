"""``find``: objects by their metadata, over the collections the caller can read.

The expression language and its translation to SQL are :mod:`neuroscale.catalog.query`'s;
this module plans and runs the query.  The most selective comparison every match must
satisfy (counted with a capped index scan) *drives* (``object_id IN`` its matches) and the
others are probed per candidate; with a limit and no selective comparison, the objects are
walked in result order until ``limit`` hits (PostgreSQL: one ``LATERAL`` walk per
collection, within a time budget, :func:`run_walk`).
"""

from __future__ import annotations

from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import func, select, text, true  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from neuroscale.catalog import permissions  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.models import AVU, Collection, DataObject  # noqa: E402
from neuroscale.catalog.permissions import READ  # noqa: E402
from neuroscale.catalog.query import condition, positive_comparisons, to_sql  # noqa: E402
from neuroscale.catalog.query import parse as parse_query  # noqa: E402
from neuroscale.catalog.results import ObjectInfo, object_path  # noqa: E402

#: A comparison matching fewer triples than this makes a limited ``find`` start from its
#: matches; when all match more, ``find`` walks objects in result order instead.
FIND_DENSE_ROWS = 10000
#: PostgreSQL: time (ms) an ordered walk of a dense query may take before the flat query
#: answers instead (see :func:`run_walk`).
FIND_WALK_BUDGET_MS = 150


def find(
    ctx: Context, where: str, *, collection: str | None = None, limit: int | None = None
) -> list[ObjectInfo]:
    """Objects whose metadata satisfy ``where`` (see :mod:`neuroscale.catalog.query`).

    Only objects in collections the caller can read are searched (an unreadable object
    is never reported).

    Parameters
    ----------
    ctx : Context
    where : str
        e.g. ``"task = 'oneback' and tr < 2.5"``.
    collection : str, optional
        Search only this collection and its sub-collections.
    limit : int, optional
        At most this many results.

    Returns
    -------
    list of ObjectInfo
        Ordered by (collection path, name).

    Raises
    ------
    QuerySyntaxError
        The expression does not parse.
    CatalogNotFoundError
        ``collection`` does not exist or is not readable.
    """
    node = parse_query(where)
    with ctx.sessions() as s, s.begin():
        q, fallback = find_plan(ctx, s, node, collection, limit)
        if q is None:
            return []
        rows = run_walk(s, q, fallback) if fallback is not None else s.execute(q).all()
        return [
            ObjectInfo(object_path(path, name), path, name, sha, size, created)
            for path, name, sha, size, created in rows
        ]


def run_walk(s: Session, walk: Any, flat: Any) -> list[Any]:
    """Run the ordered walk of a dense query within ``FIND_WALK_BUDGET_MS`` (PostgreSQL's
    ``statement_timeout`` inside a savepoint); when the comparisons are dense one by one
    but their combination is rare, the walk would read most objects, so past the budget
    the flat query (hash joins over the matches) answers instead.

    Parameters
    ----------
    s : Session
        On PostgreSQL, inside a transaction.
    walk, flat : Select
        The walk and the flat form of the same query.

    Returns
    -------
    list of Row

    Raises
    ------
    OperationalError
        A database error other than the statement timeout.
    """
    try:
        with s.begin_nested():
            s.execute(text(f"SET LOCAL statement_timeout = {int(FIND_WALK_BUDGET_MS)}"))
            rows = s.execute(walk).all()
            s.execute(text("SET LOCAL statement_timeout TO DEFAULT"))
            return list(rows)
    except OperationalError as exc:
        if "statement timeout" not in str(exc):
            raise
    return list(s.execute(flat).all())


def find_query(
    ctx: Context, s: Session, node: Any, collection: str | None, limit: int | None
) -> Any:
    """The SELECT of :func:`find`: (collection path, name, sha256, size, created) rows.

    Parameters
    ----------
    ctx : Context
    s : Session
        Inside a transaction.
    node : Node
        The parsed expression (:func:`neuroscale.catalog.query.parse`).
    collection : str or None
    limit : int or None

    Returns
    -------
    Select or None
        None when the caller can read no collection.

    Raises
    ------
    CatalogNotFoundError
        ``collection`` does not exist or is not readable.
    """
    return find_plan(ctx, s, node, collection, limit)[0]


def find_plan(
    ctx: Context, s: Session, node: Any, collection: str | None, limit: int | None
) -> tuple[Any, Any]:
    """:func:`find_query`'s SELECT, and the flat form to run instead when the walk of a dense
    PostgreSQL query exceeds ``FIND_WALK_BUDGET_MS``.

    Parameters
    ----------
    ctx, s, node, collection, limit
        As :func:`find_query`.

    Returns
    -------
    (Select or None, Select or None)
        The query (None: nothing readable) and its fallback (None unless a walk).

    Raises
    ------
    CatalogNotFoundError
        ``collection`` does not exist or is not readable.
    """
    levels = permissions.caller_levels(ctx, s)
    readable = permissions.readable_collections(levels)
    if collection is not None:
        root = permissions.collection(s, collection, levels, READ)
        allowed = {
            cid
            for cid, p in s.execute(select(Collection.id, Collection.path))
            if p == root.path or p.startswith(root.path + "/")
        }
        readable = [c for c in readable if c in allowed]
    if not readable:
        return None, None
    # Plan: the most selective comparison every match must satisfy (counted with a capped
    # index scan) "drives" (object_id IN its matches); every other comparison is probed
    # per candidate (EXISTS).  With a limit and no selective comparison, nothing drives:
    # the objects are walked in result order and the walk stops after `limit` hits.
    # both databases compare metadata values in binary collation (migration 0002), so a
    # like pattern's literal prefix is an index range on either
    driver, count = _driver(s, node, True)
    if limit is not None and count >= FIND_DENSE_ROWS:
        driver = None
    walk = None
    if driver is None and limit is not None and s.get_bind().dialect.name == "postgresql":
        walk = _find_walk_lateral(node, readable, int(limit))
    q = (
        select(
            Collection.path,
            DataObject.name,
            DataObject.sha256,
            DataObject.size,
            DataObject.created,
        )
        .join(Collection, Collection.id == DataObject.collection_id)
        .where(
            DataObject.collection_id.in_(readable),
            to_sql(
                node,
                DataObject.id,
                AVU,
                correlated=driver is not None or limit is not None,
                driver=driver,
                prefix_ranges=True,
            ),
        )
        .order_by(Collection.path, DataObject.name)
    )
    if limit is not None:
        q = q.limit(int(limit))
    return (q, None) if walk is None else (walk, q)


def _find_walk_lateral(node: Any, readable: list[int], limit: int) -> Any:
    """PostgreSQL form of a dense query with a limit: collections in path order, and in
    each (``LATERAL``) its objects in name order through the ``(collection_id, name)``
    index, probing the metadata per object and stopping at ``limit``; the planner's
    own plan for the flat query sorted a whole collection before the limit (2.7 s at
    1,000,000 objects).  SQLite walks the flat query this way by itself."""
    inner = (
        select(DataObject.name, DataObject.sha256, DataObject.size, DataObject.created)
        .where(
            DataObject.collection_id == Collection.id,
            to_sql(node, DataObject.id, AVU, correlated=True, prefix_ranges=True),
        )
        .order_by(DataObject.name)
        .limit(limit)
        .lateral("hits")
    )
    return (
        select(Collection.path, inner.c.name, inner.c.sha256, inner.c.size, inner.c.created)
        .select_from(Collection)
        .join(inner, true())
        .where(Collection.id.in_(readable))
        .order_by(Collection.path, inner.c.name)
        .limit(limit)
    )


def _driver(s: Session, node: Any, prefix_ranges: bool) -> tuple[Any, int]:
    """The comparison every match must satisfy that matches the fewest triples, and that
    number (capped at ``FIND_DENSE_ROWS``); (None, 0) when there is none (e.g. an ``or``)."""
    best, best_n = None, 0
    for c in positive_comparisons(node):
        where = [AVU.attribute == c.attribute, AVU.object_id.is_not(None)]
        if c.op != "has":
            where.append(condition(c, AVU, prefix_ranges))
        capped = select(AVU.object_id).where(*where).limit(FIND_DENSE_ROWS).subquery()
        n = s.scalar(select(func.count()).select_from(capped)) or 0
        if best is None or n < best_n:
            best, best_n = c, n
        if n == 0:
            break
    return best, best_n
