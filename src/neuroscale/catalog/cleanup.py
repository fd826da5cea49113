"""Removal of what crashed ingests and removals left: ``pending`` contents of dead writers,
half-finished removals (``deleting``), stale ``tmp/`` files and, on request, stored files
without a record.

:func:`recover` runs at the start of every ingest and touches only this host's dead
writers; :func:`cleanup` (administrators) also removes what is older than a grace period.
"""

from __future__ import annotations

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import func, select, update  # noqa: E402

from neuroscale.catalog import permissions  # noqa: E402
from neuroscale.catalog.blobs import finish_delete, pid_alive  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.integrity import stale_temp, untracked  # noqa: E402
from neuroscale.catalog.models import Blob, DataObject, utcnow  # noqa: E402
from neuroscale.catalog.results import CleanupReport  # noqa: E402
from neuroscale.catalog.store import HOST  # noqa: E402


def recover(ctx: Context) -> CleanupReport:
    """Remove what crashed ingests *on this host* left (dead owner pid); no permission needed.

    Called automatically at the start of every ingest.

    Parameters
    ----------
    ctx : Context

    Returns
    -------
    CleanupReport
    """
    return sweep(ctx, grace=None, untracked_files=False)


def cleanup(ctx: Context, *, grace: float = 3600.0, untracked: bool = False) -> CleanupReport:
    """Remove leftovers of crashed ingests and removals (administrators).

    Pending contents whose writer is dead (this host) or older than ``grace`` seconds
    (another host), half-finished removals, stale ``tmp/`` files, and, with
    ``untracked=True``, stored files the catalog has no record of.

    Parameters
    ----------
    ctx : Context
    grace : float
        Seconds.
    untracked : bool
        Also delete stored files without a record.

    Returns
    -------
    CleanupReport

    Raises
    ------
    CatalogPermissionError
        The caller is not an administrator.
    """
    with ctx.sessions() as s:
        permissions.require_admin(ctx, s)
    return sweep(ctx, grace=grace, untracked_files=untracked)


def sweep(ctx: Context, grace: float | None, untracked_files: bool) -> CleanupReport:
    """Remove leftovers without a permission check (see :func:`cleanup`).

    Parameters
    ----------
    ctx : Context
    grace : float or None
        Seconds after which a ``pending`` content or a ``tmp/`` file of another writer is
        stale; None: only this host's dead writers.
    untracked_files : bool
        Also delete stored files without a record.

    Returns
    -------
    CleanupReport
    """
    report = CleanupReport()
    now = utcnow()
    with ctx.sessions() as s:
        rows = s.execute(
            select(Blob.sha256, Blob.state, Blob.owner_host, Blob.owner_pid, Blob.created).where(
                Blob.state != "ok"
            )
        ).all()
    for sha, state, host, pid, created in rows:
        if state == "pending":
            dead = host == HOST and not pid_alive(pid)
            old = grace is not None and (now - created).total_seconds() > grace
            if not (dead or old):
                continue
            with ctx.sessions() as s, s.begin():
                claimed = s.execute(
                    update(Blob)
                    .where(Blob.sha256 == sha, Blob.state == "pending")
                    .where(Blob.owner_pid == pid if pid is not None else Blob.owner_pid.is_(None))
                    .values(state="deleting")
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    continue
            finish_delete(ctx, sha)
            report.pending.append(sha)
        elif state == "deleting":
            with ctx.sessions() as s:
                used = s.scalar(
                    select(func.count()).select_from(DataObject).where(DataObject.sha256 == sha)
                )
            if used == 0:
                finish_delete(ctx, sha)
                report.deleting.append(sha)
    for entry in stale_temp(ctx, grace if grace is not None else float("inf")):
        ctx.store.discard(entry.key)
        report.temp.append(entry.key)
    if untracked_files:
        for key in untracked(ctx):
            ctx.store.discard(key)
            report.untracked.append(key)
    return report
