"""Collections and data objects: create and list collections, look objects up, copy them out
of the store (checksum verified), remove them (and their content when it is the last copy).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import delete, func, select, update  # noqa: E402

from neuroscale.catalog import blobs, permissions  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.errors import (  # noqa: E402
    ConflictError,
    StoredObjectCorruptedError,
    StoredObjectMissingError,
)
from neuroscale.catalog.models import AVU, Blob, Collection, DataObject  # noqa: E402
from neuroscale.catalog.permissions import READ, WRITE  # noqa: E402
from neuroscale.catalog.results import ListResult, ObjectInfo, object_info, object_path  # noqa: E402
from neuroscale.errors import ConfigurationError, InputNotFoundError, NeuroscaleError  # noqa: E402


def create_collection(ctx: Context, path: str) -> str:
    """Create ``path`` (and missing parents) with the rules of
    :func:`~neuroscale.catalog.permissions.ensure_collection`.

    Parameters
    ----------
    ctx : Context
    path : str

    Returns
    -------
    str
        The canonical path.

    Raises
    ------
    CatalogPermissionError
        No ``write`` on the parent, or another user's home.
    CatalogNotFoundError
        The collection exists and the caller cannot read it.
    UnsafePathError
        An invalid path.
    """
    with ctx.sessions() as s, s.begin():
        me = permissions.caller(ctx, s, required=False)
        levels = permissions.levels(ctx, s, me)
        coll = permissions.ensure_collection(s, path, me, levels)
        return coll.path


def check_writable(ctx: Context, collection: str) -> str:
    """Check, before any work, that the caller may write (or create) ``collection`` and the
    store; nothing is created (the transaction is rolled back, the store probe removed).

    Parameters
    ----------
    ctx : Context
    collection : str

    Returns
    -------
    str
        The canonical path of ``collection``.

    Raises
    ------
    CatalogPermissionError
        The caller is not registered, or may not write (or create) the collection.
    CatalogNotFoundError
        The collection exists and the caller cannot read it.
    StoreError
        The store cannot be written by this user.
    UnsafePathError
        An invalid path.
    """
    s = ctx.sessions()
    try:
        me = permissions.caller(ctx, s, required=False)
        coll = permissions.ensure_collection(s, collection, me, permissions.levels(ctx, s, me))
        path = coll.path
    finally:
        s.rollback()
        s.close()
    ctx.store.check_writable()
    return path


def collections(ctx: Context) -> list[str]:
    """Paths of every collection the caller can read.

    Parameters
    ----------
    ctx : Context

    Returns
    -------
    list of str
        Sorted.

    Raises
    ------
    CatalogPermissionError
        The caller is not registered and has no ticket.
    TicketError
        The ticket is unknown, revoked, expired or used up.
    """
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        return sorted(
            p
            for cid, p in s.execute(select(Collection.id, Collection.path))
            if permissions.can_read(levels, cid)
        )


def ls(ctx: Context, collection: str) -> ListResult:
    """Readable sub-collections and objects of ``collection`` (needs ``read``).

    Parameters
    ----------
    ctx : Context
    collection : str

    Returns
    -------
    ListResult

    Raises
    ------
    CatalogNotFoundError
        No such collection, or the caller cannot read it.
    """
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        coll = permissions.collection(s, collection, levels, READ)
        subs = sorted(
            p
            for cid, p in s.execute(
                select(Collection.id, Collection.path).where(Collection.parent_id == coll.id)
            )
            if permissions.can_read(levels, cid)
        )
        objs = s.scalars(
            select(DataObject).where(DataObject.collection_id == coll.id).order_by(DataObject.name)
        )
        return ListResult(coll.path, subs, [object_info(o, coll) for o in objs])


def stat(ctx: Context, target: str) -> ObjectInfo:
    """The object at the logical path ``target`` (needs ``read``).

    Parameters
    ----------
    ctx : Context
    target : str

    Returns
    -------
    ObjectInfo

    Raises
    ------
    CatalogNotFoundError
        No such object, or the caller cannot read it.
    """
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        obj, coll = permissions.data_object(s, target, levels, READ)
        return object_info(obj, coll)


def get(ctx: Context, target: str, dest: str | Path) -> Path:
    """Copy an object out of the store to ``dest`` (a file, or a directory to put it in),
    verifying its SHA-256 on the way; ``dest`` is written atomically.

    Parameters
    ----------
    ctx : Context
    target : str
        Logical object path (needs ``read``).
    dest : str or Path

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    CatalogNotFoundError
        No such object, or the caller cannot read it.
    StoredObjectCorruptedError
        The stored copy no longer matches its checksum (``dest`` is not created).
    StoredObjectMissingError
        The stored copy is missing from the store.
    InputNotFoundError
        The directory ``dest`` would be written in does not exist.
    ConfigurationError
        ``dest`` cannot be written (permission denied, read-only, full).
    """
    from neuroscale.io.atomic import atomic_path  # neuroscale.io loads nibabel: CLI start-up

    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        obj, coll = permissions.data_object(s, target, levels, READ)
        sha, name = obj.sha256, obj.name
    out = Path(dest)
    if out.is_dir():
        out = out / name.rsplit("/", 1)[-1]
    if not out.parent.is_dir():
        raise InputNotFoundError("the destination's directory does not exist", out.parent)
    try:
        src_fh = ctx.store.open(sha)
    except FileNotFoundError:
        raise StoredObjectMissingError(
            f"the stored copy of {object_path(coll.path, name)} (sha256 {sha}) is missing "
            "from the store: run 'neuroscale catalog verify' (administrators)",
            ctx.store.url,
        ) from None
    digest = hashlib.sha256()
    try:
        with src_fh as src, atomic_path(out) as tmp, open(tmp, "wb") as fh:
            while block := src.read(1 << 20):
                digest.update(block)
                fh.write(block)
            fh.flush()
            if digest.hexdigest() != sha:
                raise StoredObjectCorruptedError(
                    f"stored copy of {object_path(coll.path, name)} is corrupted "
                    f"(expected sha256 {sha}, read {digest.hexdigest()})"
                )
    except NeuroscaleError:
        raise
    except OSError as exc:  # the destination: permission denied, read-only, full disk
        raise ConfigurationError(
            f"cannot write the copy ({exc.strerror or exc}); nothing written", out
        ) from exc
    return out


def remove(ctx: Context, target: str, *, force: bool = False) -> ObjectInfo:
    """Remove an object (needs ``write``); its stored content goes too when no other object
    uses it, which is refused unless ``force``.

    Parameters
    ----------
    ctx : Context
    target : str
        Logical object path.
    force : bool
        Remove it even when no other object the caller can read holds its content.

    Returns
    -------
    ObjectInfo
        The object removed.

    Raises
    ------
    CatalogNotFoundError
        No such object, or the caller cannot read it.
    CatalogPermissionError
        Readable but not writable.
    ConflictError
        No other object the caller can read holds its content and ``force`` is False
        (whether an unreadable one does is not disclosed: the stored copy then stays).
    """
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        obj, coll = permissions.data_object(s, target, levels, WRITE)
        info = object_info(obj, coll)
        # hold the blob row (SQLite: the write lock; PostgreSQL: the row lock) first
        s.execute(update(Blob).where(Blob.sha256 == obj.sha256).values(state=Blob.state))
        others = s.scalar(
            select(func.count())
            .select_from(DataObject)
            .where(DataObject.sha256 == obj.sha256, DataObject.id != obj.id)
        )
        last = others == 0
        # refuse when no *other object the caller can read* holds the content: whether
        # someone else's (unreadable) object does must not change the answer
        visible = [p for p in permissions.readable_objects(s, obj.sha256, levels) if p != info.path]
        if not visible and not force:
            raise ConflictError(
                f"{info.path} holds the last copy of its content you can read (sha256 "
                f"{obj.sha256}); use --force to delete it"
            )
        s.execute(delete(AVU).where(AVU.object_id == obj.id))
        s.delete(obj)
        if last:
            s.execute(update(Blob).where(Blob.sha256 == obj.sha256).values(state="deleting"))
    if last:
        blobs.finish_delete(ctx, info.sha256)
    return info
