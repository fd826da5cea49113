"""Sharing: permissions granted on collections, and share tickets.

A ticket is a secret token (only its SHA-256 is stored) that gives ``read`` or ``write`` on
one collection to whoever presents it, within its expiry and use count, for as long as its
issuer owns the collection; :mod:`neuroscale.catalog.permissions` checks and counts its uses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import select  # noqa: E402

from neuroscale.catalog import permissions  # noqa: E402
from neuroscale.catalog._util import aware  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.errors import CatalogNotFoundError, MetadataError  # noqa: E402
from neuroscale.catalog.models import (  # noqa: E402
    LEVEL_NAMES,
    Access,
    Collection,
    Principal,
    Ticket,
    utcnow,
)
from neuroscale.catalog.paths import parent_collection  # noqa: E402
from neuroscale.catalog.permissions import OWN, READ, WRITE  # noqa: E402
from neuroscale.catalog.results import AccessInfo, TicketInfo  # noqa: E402


def grant(ctx: Context, collection: str, principal: str, level: str | int) -> None:
    """Set ``principal``'s level on ``collection`` (``null`` removes it); needs ``own``.

    Lowering someone's ``own`` revokes the tickets they can no longer back.

    Parameters
    ----------
    ctx : Context
    collection : str
    principal : str
        A user or group name.
    level : str or int
        ``null``, ``read``, ``write`` or ``own`` (or 0-3).

    Raises
    ------
    MetadataError
        An unknown level.
    CatalogNotFoundError
        No such collection (or not readable), or no such principal.
    CatalogPermissionError
        The caller does not own the collection.
    """
    lv = permissions.parse_level(level)
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        coll = permissions.collection(s, collection, levels, OWN)
        p = s.scalar(select(Principal).where(Principal.name == principal))
        if p is None:
            raise CatalogNotFoundError(f"no such user or group {principal!r}")
        row = s.get(Access, (coll.id, p.id))
        if lv == 0:
            if row is not None:
                s.delete(row)
        elif row is None:
            s.add(Access(collection_id=coll.id, principal_id=p.id, level=lv))
        else:
            row.level = lv
        s.flush()
        permissions.revalidate_tickets(s)


def access(ctx: Context, collection: str) -> list[AccessInfo]:
    """Direct permissions on ``collection`` and its ancestors (needs ``read``).

    Parameters
    ----------
    ctx : Context
    collection : str

    Returns
    -------
    list of AccessInfo
        By collection path, then principal name.

    Raises
    ------
    CatalogNotFoundError
        No such collection, or not readable.
    """
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        coll = permissions.collection(s, collection, levels, READ)
        paths = [coll.path]
        while (parent := parent_collection(paths[-1])) is not None:
            paths.append(parent)
        rows = s.execute(
            select(Collection.path, Principal.name, Principal.kind, Access.level)
            .join(Access, Access.collection_id == Collection.id)
            .join(Principal, Principal.id == Access.principal_id)
            .where(Collection.path.in_(paths))
            .order_by(Collection.path, Principal.name)
        )
        return [AccessInfo(p, n, k, LEVEL_NAMES[lv]) for p, n, k, lv in rows]


def create_ticket(
    ctx: Context,
    collection: str,
    *,
    level: str = "read",
    expires: dt.datetime | dt.timedelta | None = None,
    uses: int | None = None,
) -> str:
    """Issue a share ticket on ``collection`` (needs ``own``); returns the secret token.

    Parameters
    ----------
    ctx : Context
        A registered user, not acting with a ticket.
    collection : str
    level : {"read", "write"}
    expires : datetime or timedelta, optional
        Absolute (timezone-aware) expiry or a lifetime from now.
    uses : int, optional
        Number of operations the ticket allows (each catalog call using it counts one).

    Returns
    -------
    str
        The token (``nsct_...``), shown once: only its hash is stored.

    Raises
    ------
    MetadataError
        A level other than read or write, a naive expiry, ``uses`` below 1.
    CatalogPermissionError
        Not a registered user, acting with a ticket, or not an owner of the collection.
    CatalogNotFoundError
        No such collection, or not readable.
    """
    lv = permissions.parse_level(level)
    if lv not in (READ, WRITE):
        raise MetadataError("a ticket grants read or write")
    if isinstance(expires, dt.timedelta):
        expires = utcnow() + expires
    expires = aware(expires, "expires")
    if uses is not None and uses < 1:
        raise MetadataError("uses must be at least 1")
    token = "nsct_" + secrets.token_urlsafe(24)  # a prefix: never starts with "-"
    with ctx.sessions() as s, s.begin():
        me = permissions.caller(ctx, s)
        permissions.require_no_ticket(ctx, "issue tickets")
        levels = permissions.levels(ctx, s, me)
        coll = permissions.collection(s, collection, levels, OWN)
        assert me is not None
        s.add(
            Ticket(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                collection_id=coll.id,
                level=lv,
                issuer_id=me.id,
                expires=expires,
                uses_limit=uses,
                uses_count=0,
                revoked=False,
            )
        )
    return token


def tickets(ctx: Context) -> list[TicketInfo]:
    """Tickets the caller issued or that are on collections the caller owns.

    Parameters
    ----------
    ctx : Context
        A registered user.

    Returns
    -------
    list of TicketInfo
        By ticket id (never a token).

    Raises
    ------
    CatalogPermissionError
        Not a registered user.
    """
    with ctx.sessions() as s, s.begin():
        me = permissions.caller(ctx, s)
        assert me is not None
        levels = permissions.levels_for(s, me)
        rows = s.execute(
            select(Ticket, Collection.path, Principal.name)
            .join(Collection, Collection.id == Ticket.collection_id)
            .join(Principal, Principal.id == Ticket.issuer_id)
            .order_by(Ticket.id)
        )
        return [
            TicketInfo(
                t.id,
                path,
                LEVEL_NAMES[t.level],
                issuer,
                t.created,
                t.expires,
                t.uses_limit,
                t.uses_count,
                t.revoked,
            )  # fmt: skip
            for t, path, issuer in rows
            if permissions.manages_ticket(t, me, levels)
        ]


def revoke_ticket(ctx: Context, ticket_id: int) -> None:
    """Revoke a ticket (its issuer, or an owner of its collection).

    Parameters
    ----------
    ctx : Context
        A registered user.
    ticket_id : int

    Raises
    ------
    CatalogNotFoundError
        No such ticket, or one the caller may not manage (the same answer).
    CatalogPermissionError
        Not a registered user.
    """
    with ctx.sessions() as s, s.begin():
        me = permissions.caller(ctx, s)
        assert me is not None
        t = s.get(Ticket, ticket_id)
        if t is None or not permissions.manages_ticket(t, me, permissions.levels_for(s, me)):
            raise CatalogNotFoundError(f"no such ticket {ticket_id}")
        t.revoked = True
