"""Users and groups: registration, group membership, removal (administrators), listing."""

from __future__ import annotations

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import delete, select  # noqa: E402
from sqlalchemy.exc import IntegrityError  # noqa: E402

from neuroscale.catalog import permissions  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.errors import (  # noqa: E402
    CatalogNotFoundError,
    ConflictError,
    MetadataError,
)
from neuroscale.catalog.models import Access, Membership, Principal, Ticket  # noqa: E402
from neuroscale.catalog.results import PrincipalInfo  # noqa: E402


def add_principal(ctx: Context, name: str, kind: str, admin: bool) -> None:
    """Register a user or create a group (administrators only).

    Parameters
    ----------
    ctx : Context
    name : str
        At most 255 characters, no NUL, no surrounding blanks.
    kind : {"user", "group"}
    admin : bool
        Make the user an administrator.

    Raises
    ------
    MetadataError
        An invalid name.
    CatalogPermissionError
        The caller is not an administrator.
    ConflictError
        The name is taken (by a user or a group).
    """
    if not name or "\x00" in name or len(name) > 255 or name.strip() != name:
        raise MetadataError(f"invalid {kind} name {name!r}")
    try:
        with ctx.sessions() as s, s.begin():
            permissions.require_admin(ctx, s)
            s.add(Principal(name=name, kind=kind, is_admin=admin))
    except IntegrityError as exc:
        raise ConflictError(f"a user or group named {name!r} already exists") from exc


def remove_principal(ctx: Context, name: str) -> None:
    """Remove a user or group with its permissions and tickets (administrators only).

    Parameters
    ----------
    ctx : Context
    name : str

    Raises
    ------
    CatalogPermissionError
        The caller is not an administrator.
    CatalogNotFoundError
        No such user or group.
    ConflictError
        The caller would remove themselves.
    """
    with ctx.sessions() as s, s.begin():
        me = permissions.require_admin(ctx, s)
        p = s.scalar(select(Principal).where(Principal.name == name))
        if p is None:
            raise CatalogNotFoundError(f"no such user or group {name!r}")
        if p.id == me.id:
            raise ConflictError("you cannot remove yourself")
        for model, col in (
            (Access, Access.principal_id),
            (Membership, Membership.user_id),
            (Membership, Membership.group_id),
            (Ticket, Ticket.issuer_id),
        ):
            s.execute(delete(model).where(col == p.id))
        s.delete(p)
        s.flush()
        permissions.revalidate_tickets(s)


def set_membership(ctx: Context, group: str, user: str, member: bool = True) -> None:
    """Add ``user`` to ``group`` (or remove with ``member=False``); administrators only.

    Tickets whose issuer lost ownership with a removal are revoked.

    Parameters
    ----------
    ctx : Context
    group : str
    user : str
    member : bool

    Raises
    ------
    CatalogPermissionError
        The caller is not an administrator.
    CatalogNotFoundError
        No such group or user.
    """
    with ctx.sessions() as s, s.begin():
        permissions.require_admin(ctx, s)
        g = s.scalar(select(Principal).where(Principal.name == group, Principal.kind == "group"))
        u = s.scalar(select(Principal).where(Principal.name == user, Principal.kind == "user"))
        if g is None:
            raise CatalogNotFoundError(f"no such group {group!r}")
        if u is None:
            raise CatalogNotFoundError(f"no such user {user!r}")
        existing = s.get(Membership, (g.id, u.id))
        if member and existing is None:
            s.add(Membership(group_id=g.id, user_id=u.id))
        elif not member and existing is not None:
            s.delete(existing)
            s.flush()
            permissions.revalidate_tickets(s)


def principals(ctx: Context) -> list[PrincipalInfo]:
    """All users and groups (any registered user may list them).

    Parameters
    ----------
    ctx : Context

    Returns
    -------
    list of PrincipalInfo
        Groups first, then users, each by name; ``related`` lists a user's groups or a
        group's members.

    Raises
    ------
    CatalogPermissionError
        The caller is not registered.
    """
    with ctx.sessions() as s:
        permissions.caller(ctx, s)
        names = {p.id: p for p in s.scalars(select(Principal))}
        related: dict[int, list[str]] = {pid: [] for pid in names}
        for gid, uid in s.execute(select(Membership.group_id, Membership.user_id)):
            related[uid].append(names[gid].name)
            related[gid].append(names[uid].name)
        return [
            PrincipalInfo(p.name, p.kind, p.is_admin, sorted(related[p.id]))
            for p in sorted(names.values(), key=lambda p: (p.kind, p.name))
        ]
