"""Access control: the one place where the catalog decides who may read, write or own what.

After iRODS: access levels ``null < read < write < own`` are granted to users and groups on
collections and inherited by their members (objects and sub-collections); administrators own
everything; a share ticket adds its level on one collection (and below it) for whoever
presents its token.  A home ``/home/<user>`` inherits nothing from ``/home``.

Every public entry point of the catalog resolves the caller here (:func:`caller`,
:func:`levels`, :func:`caller_levels`) and looks collections and objects up through
:func:`collection`, :func:`data_object` and :func:`target`, which answer "not found" for
anything the caller cannot read: *not readable* is never distinguishable from *not found*.
Queries filter with :func:`can_read` / :func:`readable_collections` /
:func:`readable_objects`; a level lower than needed on something readable is a
:class:`~neuroscale.catalog.errors.CatalogPermissionError`.

The ``levels`` dictionaries map a collection id to the caller's effective level on it.
"""

from __future__ import annotations

import hashlib

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import select, update  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.errors import (  # noqa: E402
    CatalogNotFoundError,
    CatalogPermissionError,
    MetadataError,
    TicketError,
    UnsafePathError,
)
from neuroscale.catalog.models import (  # noqa: E402
    LEVEL_NAMES,
    LEVELS,
    Access,
    Collection,
    DataObject,
    Derivation,
    Membership,
    Principal,
    Ticket,
    utcnow,
)
from neuroscale.catalog.paths import (  # noqa: E402
    HOME,
    home_collection,
    nfc,
    normalise_collection,
    parent_collection,
)
from neuroscale.catalog.results import object_path  # noqa: E402

READ, WRITE, OWN = LEVELS["read"], LEVELS["write"], LEVELS["own"]


def parse_level(value: str | int) -> int:
    """The level ``value`` (a name ``null|read|write|own`` or its number) as a number.

    Parameters
    ----------
    value : str or int

    Returns
    -------
    int
        0 (null) to 3 (own).

    Raises
    ------
    MetadataError
        Not a level.
    """
    if isinstance(value, int) and value in LEVEL_NAMES:
        return value
    if isinstance(value, str) and value.lower() in LEVELS:
        return LEVELS[value.lower()]
    raise MetadataError(f"unknown permission level {value!r}: use null, read, write or own")


# -- who is calling -----------------------------------------------------------------------------
def caller(ctx: Context, s: Session, *, required: bool = True) -> Principal | None:
    """The registered user ``ctx.user``, or None for an unregistered holder of a ticket.

    Parameters
    ----------
    ctx : Context
        The acting catalog handle.
    s : Session
        Open session.
    required : bool
        Refuse a ticket holder who is not a registered user.

    Returns
    -------
    Principal or None

    Raises
    ------
    CatalogPermissionError
        The user is not registered and has no ticket, or ``required`` and not registered.
    """
    me = s.scalar(select(Principal).where(Principal.name == ctx.user, Principal.kind == "user"))
    if me is None and ctx.ticket is None:
        raise CatalogPermissionError(
            f"user {ctx.user!r} is not registered in this catalog "
            "(an administrator adds users with 'neuroscale catalog users add NAME')"
        )
    if me is None and required:
        raise CatalogPermissionError("this operation needs a registered user, not a ticket")
    return me


def require_admin(ctx: Context, s: Session) -> Principal:
    """The calling user, who must be an administrator.

    Parameters
    ----------
    ctx : Context
    s : Session

    Returns
    -------
    Principal

    Raises
    ------
    CatalogPermissionError
        The caller is not a registered administrator.
    """
    me = caller(ctx, s)
    if me is None or not me.is_admin:
        raise CatalogPermissionError("this operation needs a catalog administrator")
    return me


def require_no_ticket(ctx: Context, what: str) -> None:
    """Refuse an operation (``what``, e.g. ``"issue tickets"``) to a handle using a ticket.

    Parameters
    ----------
    ctx : Context
    what : str
        The operation, for the message.

    Raises
    ------
    CatalogPermissionError
        ``ctx`` acts with a ticket.
    """
    if ctx.ticket is not None:
        raise CatalogPermissionError(f"a ticket cannot be used to {what}")


# -- effective levels ---------------------------------------------------------------------------
def levels_for(s: Session, me: Principal | None) -> dict[int, int]:
    """Effective level of ``me`` (directly, through its groups, inherited) on every collection.

    Parameters
    ----------
    s : Session
    me : Principal or None
        None: nobody (every level 0).

    Returns
    -------
    dict of int to int
        Collection id -> level (administrators: ``OWN`` everywhere).
    """
    cols = s.execute(select(Collection.id, Collection.parent_id, Collection.path)).all()
    if me is not None and me.is_admin:
        return {cid: OWN for cid, _, _ in cols}
    direct: dict[int, int] = {}
    if me is not None:
        ids = [me.id] + list(
            s.scalars(select(Membership.group_id).where(Membership.user_id == me.id))
        )
        for cid, level in s.execute(
            select(Access.collection_id, Access.level).where(Access.principal_id.in_(ids))
        ):
            direct[cid] = max(direct.get(cid, 0), level)
    eff: dict[int, int] = {}
    for cid, parent, path in sorted(cols, key=lambda r: r[2].count("/")):
        # a home (/home/<user>) inherits nothing from /home: whoever may write /home
        # (an older catalog let any user create it) reads no one's home through it
        inherited = 0
        if parent is not None and parent_collection(path) != HOME:
            inherited = eff.get(parent, 0)
        eff[cid] = max(direct.get(cid, 0), inherited)
    return eff


def levels(ctx: Context, s: Session, me: Principal | None) -> dict[int, int]:
    """:func:`levels_for` ``me``, raised by the handle's ticket (which uses it once).

    Parameters
    ----------
    ctx : Context
    s : Session
        Inside a transaction (a ticket's use is counted in it).
    me : Principal or None

    Returns
    -------
    dict of int to int

    Raises
    ------
    TicketError
        The ticket is unknown, revoked, expired, used up, or its issuer lost ownership.
    """
    out = levels_for(s, me)
    if ctx.ticket is not None:
        ticket = use_ticket(ctx, s)
        root = s.get(Collection, ticket.collection_id)
        assert root is not None
        for cid, path in s.execute(select(Collection.id, Collection.path)):
            if path == root.path or path.startswith(root.path + "/"):
                out[cid] = max(out.get(cid, 0), ticket.level)
    return out


def caller_levels(ctx: Context, s: Session) -> dict[int, int]:
    """The caller's levels: :func:`levels` of :func:`caller` (a ticket holder allowed).

    Parameters
    ----------
    ctx : Context
    s : Session
        Inside a transaction.

    Returns
    -------
    dict of int to int

    Raises
    ------
    CatalogPermissionError, TicketError
        As :func:`caller` and :func:`levels`.
    """
    return levels(ctx, s, caller(ctx, s, required=False))


def use_ticket(ctx: Context, s: Session) -> Ticket:
    """Check the handle's ticket and count one use of it.

    Parameters
    ----------
    ctx : Context
        Acting with a ticket.
    s : Session
        Inside a transaction.

    Returns
    -------
    Ticket

    Raises
    ------
    TicketError
        Unknown, revoked, expired, used up, or its issuer no longer owns its collection
        (the ticket is then revoked).
    """
    assert ctx.ticket is not None
    token_hash = hashlib.sha256(ctx.ticket.encode("utf-8")).hexdigest()
    ticket = s.scalar(select(Ticket).where(Ticket.token_hash == token_hash))
    if ticket is None:
        raise TicketError("unknown ticket")
    now = utcnow()
    if ticket.revoked:
        raise TicketError(f"ticket {ticket.id} was revoked")
    if ticket.expires is not None and ticket.expires <= now:
        raise TicketError(f"ticket {ticket.id} expired at {ticket.expires.isoformat()}")
    issuer = s.get(Principal, ticket.issuer_id)
    if issuer is None or levels_for(s, issuer).get(ticket.collection_id, 0) < OWN:
        s.execute(update(Ticket).where(Ticket.id == ticket.id).values(revoked=True))
        raise TicketError(f"ticket {ticket.id} is no longer valid: its issuer lost ownership")
    used = s.execute(
        update(Ticket)
        .where(Ticket.id == ticket.id, Ticket.revoked.is_(False))
        .where((Ticket.uses_limit.is_(None)) | (Ticket.uses_count < Ticket.uses_limit))
        .values(uses_count=Ticket.uses_count + 1)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise TicketError(f"ticket {ticket.id} has no uses left")
    return ticket


def revalidate_tickets(s: Session) -> None:
    """Revoke every ticket whose issuer no longer owns its collection.

    Parameters
    ----------
    s : Session
        Inside the transaction that changed permissions, memberships or principals.
    """
    cache: dict[int, dict[int, int]] = {}
    for ticket in s.scalars(select(Ticket).where(Ticket.revoked.is_(False))):
        if ticket.issuer_id not in cache:
            issuer = s.get(Principal, ticket.issuer_id)
            cache[ticket.issuer_id] = levels_for(s, issuer) if issuer else {}
        if cache[ticket.issuer_id].get(ticket.collection_id, 0) < OWN:
            ticket.revoked = True


def manages_ticket(ticket: Ticket, me: Principal, levels: dict[int, int]) -> bool:
    """Whether ``me`` may see and revoke ``ticket``: its issuer, or an owner of its collection.

    Parameters
    ----------
    ticket : Ticket
    me : Principal
    levels : dict of int to int
        :func:`levels_for` ``me``.

    Returns
    -------
    bool
    """
    return ticket.issuer_id == me.id or levels.get(ticket.collection_id, 0) >= OWN


# -- readable things ----------------------------------------------------------------------------
def can_read(levels: dict[int, int], collection_id: int) -> bool:
    """Whether the collection ``collection_id`` (and so its objects) is readable.

    Parameters
    ----------
    levels : dict of int to int
    collection_id : int

    Returns
    -------
    bool
    """
    return levels.get(collection_id, 0) >= READ


def readable_collections(levels: dict[int, int]) -> list[int]:
    """Ids of the readable collections.

    Parameters
    ----------
    levels : dict of int to int

    Returns
    -------
    list of int
    """
    return [cid for cid, lv in levels.items() if lv >= READ]


def check(levels: dict[int, int], coll: Collection, need: int) -> None:
    """Require level ``need`` on the (readable) collection ``coll``.

    Parameters
    ----------
    levels : dict of int to int
    coll : Collection
    need : int

    Raises
    ------
    CatalogPermissionError
        The caller's level is lower.
    """
    have = levels.get(coll.id, 0)
    if have < need:
        raise CatalogPermissionError(
            f"{LEVEL_NAMES[need]} permission on {coll.path} required (you have {LEVEL_NAMES[have]})"
        )


def find_collection(s: Session, path: str, given: str | None = None) -> Collection | None:
    """The collection at the canonical (NFC) ``path``, or at exactly ``given`` when that
    differs and exists: a non-NFC path migration 0003 kept because its NFC twin exists.

    No access check: callers check the result (:func:`collection`, :func:`target`).

    Parameters
    ----------
    s : Session
    path : str
        Canonical path.
    given : str, optional
        The path as the caller wrote it.

    Returns
    -------
    Collection or None
    """
    if given is not None:
        raw = "/" + given.strip("/")
        if raw != path:
            coll = s.scalar(select(Collection).where(Collection.path == raw))
            if coll is not None:
                return coll
    return s.scalar(select(Collection).where(Collection.path == path))


def collection(s: Session, path: str, levels: dict[int, int], need: int) -> Collection:
    """The collection at ``path``, on which the caller has level ``need``.

    Parameters
    ----------
    s : Session
    path : str
    levels : dict of int to int
    need : int

    Returns
    -------
    Collection

    Raises
    ------
    CatalogNotFoundError
        No such collection, or not readable (the same answer).
    CatalogPermissionError
        Readable, but a lower level than ``need``.
    UnsafePathError
        An invalid path.
    """
    given = path
    path = normalise_collection(path)
    coll = find_collection(s, path, given)
    if coll is None or levels.get(coll.id, 0) < READ:
        raise CatalogNotFoundError(f"no such collection {path}")
    check(levels, coll, need)
    return coll


def data_object(
    s: Session, target: str, levels: dict[int, int], need: int
) -> tuple[DataObject, Collection]:
    """The object at the logical path ``target`` and its collection (level ``need`` on it).

    Parameters
    ----------
    s : Session
    target : str
        ``/collection/name`` (the name may contain ``/``).
    levels : dict of int to int
    need : int

    Returns
    -------
    (DataObject, Collection)

    Raises
    ------
    CatalogNotFoundError
        No such object, or not readable (the same answer).
    CatalogPermissionError
        Readable, but a lower level than ``need``.
    UnsafePathError
        Not a string, or a NUL in it.
    """
    if not isinstance(target, str) or "\x00" in target:
        raise UnsafePathError(f"invalid object path {target!r}")
    raw = "/" + target.strip("/")
    path = nfc(raw)
    # the exact text first when it is not NFC (a name migration 0003 kept because its NFC
    # twin exists), then the NFC form, which every name has since
    for form in dict.fromkeys((raw, path)):
        parts = form.split("/")
        for cut in range(len(parts) - 1, 1, -1):
            cpath, name = "/".join(parts[:cut]), "/".join(parts[cut:])
            coll = s.scalar(select(Collection).where(Collection.path == cpath))
            if coll is None or levels.get(coll.id, 0) < READ:
                continue
            obj = s.scalar(
                select(DataObject).where(
                    DataObject.collection_id == coll.id, DataObject.name == name
                )
            )
            if obj is not None:
                check(levels, coll, need)
                return obj, coll
    raise CatalogNotFoundError(f"no such object {path}")


def target(
    s: Session, target: str, levels: dict[int, int], need: int
) -> tuple[Collection, DataObject | None]:
    """A collection (exact path) or else an object, with level ``need`` on its collection.

    Parameters
    ----------
    s : Session
    target : str
    levels : dict of int to int
    need : int

    Returns
    -------
    (Collection, DataObject or None)
        The object is None when ``target`` is a collection.

    Raises
    ------
    CatalogNotFoundError, CatalogPermissionError, UnsafePathError
        As :func:`data_object`.
    """
    try:
        path = normalise_collection(target)
    except UnsafePathError:
        path = None
    if path is not None:
        coll = find_collection(s, path, target)
        if coll is not None and levels.get(coll.id, 0) >= READ:
            check(levels, coll, need)
            return coll, None
    obj, coll = data_object(s, target, levels, need)
    return coll, obj


def readable_objects(s: Session, sha: str, levels: dict[int, int]) -> list[str]:
    """Logical paths of the readable objects holding the content ``sha``.

    Parameters
    ----------
    s : Session
    sha : str
        SHA-256 (hex).
    levels : dict of int to int

    Returns
    -------
    list of str
        In (collection path, name) order; empty when none is readable.
    """
    rows = s.execute(
        select(Collection.id, Collection.path, DataObject.name)
        .join(DataObject, DataObject.collection_id == Collection.id)
        .where(DataObject.sha256 == sha)
        .order_by(Collection.path, DataObject.name)
    )
    return [object_path(p, n) for cid, p, n in rows if levels.get(cid, 0) >= READ]


def derivation_visible(s: Session, der: Derivation, levels: dict[int, int]) -> bool:
    """Whether the caller may see ``der``: it can read an object holding its output that
    the derivation's recorder created.  Derivations are recorded per content, so without
    this a user who ingests a guessed copy of someone's private result would read, in
    its lineage, how that person made it (and learn that they have it).

    Parameters
    ----------
    s : Session
    der : Derivation
    levels : dict of int to int

    Returns
    -------
    bool
    """
    rows = s.execute(
        select(DataObject.collection_id).where(
            DataObject.sha256 == der.output_sha256,
            DataObject.creator_id.is_not_distinct_from(der.user_id),
        )
    )
    return any(levels.get(cid, 0) >= READ for (cid,) in rows)


# -- collections one may create -----------------------------------------------------------------
def ensure_collection(
    s: Session, path: str, me: Principal | None, levels: dict[int, int]
) -> Collection:
    """The collection ``path``, which the caller may write, created (with missing parents,
    owned by the caller) when it does not exist.

    A top-level collection may be created by any registered user; a sub-collection needs
    ``write`` on its parent; ``/home`` is reserved (see :func:`ensure_home`).  ``levels``
    gains ``OWN`` on every collection created.

    Parameters
    ----------
    s : Session
        Inside a transaction.
    path : str
    me : Principal or None
    levels : dict of int to int

    Returns
    -------
    Collection

    Raises
    ------
    CatalogNotFoundError
        The collection exists and the caller cannot read it.
    CatalogPermissionError
        No ``write`` on it or its parent, another user's home, or no registered user.
    UnsafePathError
        An invalid path.
    """
    path = normalise_collection(path)
    coll = s.scalar(select(Collection).where(Collection.path == path))
    if coll is not None:
        if levels.get(coll.id, 0) < READ:
            raise CatalogNotFoundError(f"no such collection {path}")
        check(levels, coll, WRITE)
        return coll
    parent_path = parent_collection(path)
    parent = None
    if path == HOME or parent_path == HOME:
        parent = ensure_home(s, path, me)
        if path == HOME:
            return parent
    elif parent_path is not None:
        parent = ensure_collection(s, parent_path, me, levels)
    if me is None:
        raise CatalogPermissionError(f"a registered user is needed to create {path}")
    coll = Collection(path=path, parent_id=parent.id if parent else None)
    s.add(coll)
    s.flush()
    s.add(Access(collection_id=coll.id, principal_id=me.id, level=OWN))
    levels[coll.id] = OWN
    return coll


def ensure_home(s: Session, path: str, me: Principal | None) -> Collection:
    """``/home`` (made without owner: only administrators see it) when ``path`` is
    ``/home`` itself or a home ``/home/<user>`` the caller may create.

    Parameters
    ----------
    s : Session
    path : str
        ``/home`` or a home collection.
    me : Principal or None

    Returns
    -------
    Collection
        ``/home``.

    Raises
    ------
    CatalogPermissionError
        No registered user, ``/home`` itself by a non-administrator, or another user's home.
    """
    if me is None:
        raise CatalogPermissionError(f"a registered user is needed to create {path}")
    if path == HOME and not me.is_admin:
        raise CatalogPermissionError(
            f"{HOME} holds the users' home collections; create yours, {home_collection(me.name)}"
        )
    if path != HOME and not me.is_admin and path != home_collection(me.name):
        raise CatalogPermissionError(
            f"{path} is another user's home collection; yours is {home_collection(me.name)}"
        )
    home = s.scalar(select(Collection).where(Collection.path == HOME))
    if home is None:
        home = Collection(path=HOME, parent_id=None)
        s.add(home)
        s.flush()
    return home
