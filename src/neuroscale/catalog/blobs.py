"""The life of a stored content (a ``blobs`` row): claimed ``pending`` by an ingest, ``ok``
once its stored copy was verified, ``deleting`` while it is removed.

A ``pending`` claim records its owner (pid and host): a claim whose owner died on this host
may be taken over by the next ingest (:func:`claim`) or removed by cleanup
(:mod:`neuroscale.catalog.cleanup`); a removal first turns the row ``deleting`` in a
transaction, then deletes the stored copy and the row (:func:`finish_delete`).
"""

from __future__ import annotations

import contextlib
import os
import time

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import delete, insert, select, update  # noqa: E402
from sqlalchemy.exc import IntegrityError  # noqa: E402

from neuroscale.catalog._util import SQL_CHUNK, chunks, table  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.errors import CatalogError  # noqa: E402
from neuroscale.catalog.models import Blob, utcnow  # noqa: E402
from neuroscale.catalog.store import HOST  # noqa: E402

#: Fixity outcomes after which a content is stored again by the next ingest of it.
BAD_CHECKS = ("corrupt", "missing")


def pid_alive(pid: int | None) -> bool:
    """True when a process ``pid`` exists on this host (a zombie counts as alive).

    Parameters
    ----------
    pid : int or None

    Returns
    -------
    bool
        False for None or a non-positive pid.
    """
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(ctx: Context, sha256: str, size: int) -> str:
    """Register ``sha256`` as being stored by this process.

    A ``pending`` claim of a dead process on this host is taken over; a content being
    removed (``deleting``) is waited for (up to about 30 s).

    Parameters
    ----------
    ctx : Context
    sha256 : str
    size : int
        Bytes.

    Returns
    -------
    str
        ``"ok"`` (already stored) or ``"pending"`` (this process, or a live one, stores it).

    Raises
    ------
    CatalogError
        The content is still being removed by another process.
    """
    for _ in range(600):
        try:
            with ctx.sessions() as s, s.begin():
                s.add(
                    Blob(
                        sha256=sha256,
                        size=size,
                        state="pending",
                        owner_pid=os.getpid(),
                        owner_host=HOST,
                    )
                )
            return "pending"
        except IntegrityError:
            pass
        with ctx.sessions() as s, s.begin():
            blob = s.get(Blob, sha256)
            if blob is None:
                continue
            if blob.state == "ok":
                return "ok"
            if blob.state == "pending":
                if blob.owner_host == HOST and not pid_alive(blob.owner_pid):
                    s.execute(
                        update(Blob)
                        .where(
                            Blob.sha256 == sha256,
                            Blob.state == "pending",
                            Blob.owner_pid == blob.owner_pid,
                        )
                        .values(owner_pid=os.getpid(), owner_host=HOST, created=utcnow())
                    )
                return "pending"
        time.sleep(0.05)  # "deleting": wait for the removal to finish
    raise CatalogError(f"content {sha256} is being removed by another process; try again")


def claim_many(ctx: Context, sizes: dict[str, int]) -> dict[str, str]:
    """:func:`claim` for many contents: one transaction inserts every new ``pending`` blob;
    contents already known (or raced) go through :func:`claim` one by one.

    Parameters
    ----------
    ctx : Context
    sizes : dict of str to int
        SHA-256 -> size in bytes.

    Returns
    -------
    dict of str to str
        SHA-256 -> ``"ok"`` or ``"pending"``.

    Raises
    ------
    CatalogError
        As :func:`claim`.
    """
    states: dict[str, str] = {}
    known: dict[str, str] = {}
    with ctx.sessions() as s:
        for part in chunks(list(sizes), SQL_CHUNK):
            known.update(
                s.execute(select(Blob.sha256, Blob.state).where(Blob.sha256.in_(part))).all()
            )
    fresh = [sha for sha in sizes if sha not in known]
    stored = [sha for sha, state in known.items() if state == "ok"]
    if fresh or stored:
        try:
            with ctx.sessions() as s, s.begin():
                created = utcnow()
                # a content already stored gets the same write transaction as a new claim
                # (its row rewritten unchanged), so that claiming takes as long whether or
                # not anyone holds the content
                for part in chunks(stored, SQL_CHUNK):
                    s.execute(
                        update(Blob)
                        .where(Blob.sha256.in_(part))
                        .values(state=Blob.state)
                        .execution_options(synchronize_session=False)
                    )
                for part in chunks(fresh, SQL_CHUNK):
                    s.execute(
                        insert(table(Blob)),
                        [
                            {
                                "sha256": sha,
                                "size": sizes[sha],
                                "state": "pending",
                                "created": created,
                                "owner_pid": os.getpid(),
                                "owner_host": HOST,
                            }
                            for sha in part
                        ],
                    )
            states.update(dict.fromkeys(fresh, "pending"))
        except IntegrityError:  # a concurrent ingest claimed one of them: one by one
            known.update(dict.fromkeys(fresh, "raced"))
    for sha, state in known.items():
        states[sha] = "ok" if state == "ok" else claim(ctx, sha, sizes[sha])
    return states


def release_claims(ctx: Context, shas: list[str]) -> None:
    """Give up the ``pending`` claims this process holds on ``shas`` after a failure (what
    cleanup does for a dead writer); best effort: what is left, recovery removes.

    Parameters
    ----------
    ctx : Context
    shas : list of str
    """
    for sha in shas:
        with contextlib.suppress(Exception):
            with ctx.sessions() as s, s.begin():
                done = s.execute(
                    update(Blob)
                    .where(Blob.sha256 == sha, Blob.state == "pending")
                    .where(Blob.owner_pid == os.getpid(), Blob.owner_host == HOST)
                    .values(state="deleting")
                )
                if done.rowcount != 1:  # type: ignore[attr-defined]
                    continue
            finish_delete(ctx, sha)


def finish_delete(ctx: Context, sha: str) -> None:
    """Delete the stored copy of a ``deleting`` content, then its row.

    Parameters
    ----------
    ctx : Context
    sha : str

    Raises
    ------
    StoreError
        The stored copy cannot be deleted (the row stays ``deleting`` for cleanup).
    """
    ctx.store.delete(sha)
    with ctx.sessions() as s, s.begin():
        s.execute(delete(Blob).where(Blob.sha256 == sha, Blob.state == "deleting"))
