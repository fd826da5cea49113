"""Fixity: re-hash stored contents, and find what the store holds that the catalog does not.

:func:`verify` checks every ``ok`` content (or, incrementally, those due) in SHA-256 order,
recording its progress after every batch in a ``fixity_runs`` row so that an interrupted run
resumes; :func:`untracked` and :func:`stale_temp` list stored files without a record and
temporary files left by dead writers (:mod:`neuroscale.catalog.cleanup` removes both).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import bindparam, select, update  # noqa: E402

from neuroscale.catalog import permissions  # noqa: E402
from neuroscale.catalog._util import table  # noqa: E402
from neuroscale.catalog.blobs import BAD_CHECKS, pid_alive  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.errors import UnsafePathError  # noqa: E402
from neuroscale.catalog.models import Blob, FixityRun, utcnow  # noqa: E402
from neuroscale.catalog.results import FixityReport, Problem  # noqa: E402
from neuroscale.catalog.store import HOST, Store, TempEntry, stored_sha_from_key  # noqa: E402

#: Contents re-hashed per batch (one query, one transaction recording their results).
VERIFY_BATCH = 200


def verify(
    ctx: Context,
    *,
    incremental: bool = False,
    older_than: dt.timedelta = dt.timedelta(days=30),
    restart: bool = False,
    max_objects: int | None = None,
    progress: Callable[[int, str, str], None] | None = None,
    grace: float = 3600.0,
) -> FixityReport:
    """Re-hash stored objects and report corrupted, missing and untracked ones (admins).

    A run records its progress (the last checksum checked, in SHA-256 order) after every
    batch of up to 200 objects (one transaction per batch), so a run interrupted by a crash
    or ``max_objects`` resumes where it stopped (at most one batch is checked again) at the
    next call with the same mode (unless ``restart``).

    Parameters
    ----------
    ctx : Context
    incremental : bool
        Check only contents never checked, last found bad, or last checked before
        ``older_than`` ago; the default checks everything.
    older_than : timedelta
        Age beyond which ``incremental`` re-checks an object.
    restart : bool
        Abandon an unfinished run of this mode and start afresh.
    max_objects : int, optional
        Stop after checking this many (the run stays resumable).
    progress : callable, optional
        Called as ``progress(n_checked, sha256, status)``.
    grace : float
        Seconds after which a ``tmp/`` file of an unknown or other-host writer is stale.

    Returns
    -------
    FixityReport

    Raises
    ------
    CatalogPermissionError
        The caller is not an administrator.
    """
    mode = "incremental" if incremental else "full"
    run_id, cursor, cutoff, resumed = _open_run(ctx, mode, incremental, older_than, restart)
    complete = _check_contents(ctx, run_id, cursor, cutoff, incremental, max_objects, progress)
    report = _close_run(ctx, run_id, mode, resumed, complete)
    if complete:
        report.untracked = untracked(ctx)
        report.stale_temp = [e.key for e in stale_temp(ctx, grace)]
    return report


def _open_run(
    ctx: Context, mode: str, incremental: bool, older_than: dt.timedelta, restart: bool
) -> tuple[int, str | None, dt.datetime | None, bool]:
    """The unfinished run of ``mode`` to resume, or a new one (after checking the caller is
    an administrator): (run id, cursor, cutoff, resumed)."""
    with ctx.sessions() as s, s.begin():
        permissions.require_admin(ctx, s)
        run = s.scalar(
            select(FixityRun)
            .where(FixityRun.mode == mode, FixityRun.finished.is_(None))
            .order_by(FixityRun.id.desc())
        )
        resumed = run is not None and not restart
        if run is not None and restart:
            run.finished = utcnow()
        if not resumed:
            run = FixityRun(
                mode=mode,
                cutoff=utcnow() - older_than if incremental else None,
                n_checked=0,
                n_ok=0,
                n_corrupt=0,
                n_missing=0,
            )
            s.add(run)
            s.flush()
        assert run is not None
        return run.id, run.cursor, run.cutoff, resumed


def _check_contents(
    ctx: Context,
    run_id: int,
    cursor: str | None,
    cutoff: dt.datetime | None,
    incremental: bool,
    max_objects: int | None,
    progress: Callable[[int, str, str], None] | None,
) -> bool:
    """Re-hash the contents after ``cursor`` batch by batch, recording each batch; returns
    whether the run completed (False when ``max_objects`` stopped it)."""
    store = ctx.store
    done_now = 0
    while True:
        with ctx.sessions() as s:
            q = select(Blob.sha256, Blob.size).where(Blob.state == "ok")
            if cursor is not None:
                q = q.where(Blob.sha256 > cursor)
            if incremental:
                q = q.where(
                    Blob.checked_at.is_(None)
                    | (Blob.check_status != "ok")
                    | (Blob.checked_at < cutoff)
                )
            batch = s.execute(q.order_by(Blob.sha256).limit(VERIFY_BATCH)).all()
        if not batch:
            return True
        budget = None if max_objects is None else max_objects - done_now
        checked = _check_batch(store, batch, budget, done_now, progress)
        done_now += len(checked)
        if checked:
            record_checks(ctx, run_id, checked)
            cursor = checked[-1][0]
        if len(checked) < len(batch):
            return False


def _check_batch(
    store: Store,
    batch: Sequence[Any],
    budget: int | None,
    done: int,
    progress: Callable[[int, str, str], None] | None,
) -> list[tuple[str, str]]:
    """(sha256, status) of the first ``budget`` (all when None) of the (sha256, size) rows
    ``batch``: ``ok``, ``corrupt`` or ``missing``; ``done`` were checked before in this call."""
    checked: list[tuple[str, str]] = []
    with store.batch():
        for sha, size in batch:
            if budget is not None and len(checked) >= budget:
                break
            try:
                got = store.hash_stored(sha)
                status = "missing" if got is None else "ok" if got == (sha, size) else "corrupt"
            except UnsafePathError:
                status = "corrupt"
            checked.append((sha, status))
            if progress is not None:
                progress(done + len(checked), sha, status)
    return checked


def _close_run(ctx: Context, run_id: int, mode: str, resumed: bool, complete: bool) -> FixityReport:
    """Finish the run when ``complete`` and report its counts and problems (the objects
    named only when the caller can read them) and the contents not ``ok``."""
    with ctx.sessions() as s, s.begin():
        run = s.get(FixityRun, run_id)
        assert run is not None
        if complete:
            run.finished = utcnow()
        report = FixityReport(
            run_id=run_id,
            mode=mode,
            resumed=resumed,
            complete=complete,
            checked=run.n_checked,
            n_ok=run.n_ok,
        )
        levels = permissions.levels_for(s, permissions.caller(ctx, s))
        for blob in s.scalars(
            select(Blob)
            .where(Blob.check_run_id == run_id, Blob.check_status.in_(BAD_CHECKS))
            .order_by(Blob.sha256)
        ):
            names = permissions.readable_objects(s, blob.sha256, levels)
            problem = Problem(blob.sha256, blob.check_status or "", names)
            (report.corrupt if blob.check_status == "corrupt" else report.missing).append(problem)
        report.pending = list(
            s.scalars(select(Blob.sha256).where(Blob.state != "ok").order_by(Blob.sha256))
        )
    return report


def record_checks(ctx: Context, run_id: int, checked: list[tuple[str, str]]) -> None:
    """Record a batch of fixity results and the run's cursor in one transaction; blobs no
    longer ``ok`` (removed meanwhile) are not counted.

    Parameters
    ----------
    ctx : Context
    run_id : int
        The ``fixity_runs`` row.
    checked : list of (str, str)
        (sha256, status) in SHA-256 order, status ``ok``, ``corrupt`` or ``missing``.
    """
    now = utcnow()
    with ctx.sessions() as s, s.begin():
        still_ok = set(
            s.scalars(
                select(Blob.sha256).where(
                    Blob.sha256.in_([sha for sha, _ in checked]), Blob.state == "ok"
                )
            )
        )
        rows = [{"b_sha": sha, "b_status": status} for sha, status in checked if sha in still_ok]
        if rows:
            blobs = table(Blob)
            s.execute(
                update(blobs)
                .where(blobs.c.sha256 == bindparam("b_sha"), blobs.c.state == "ok")
                .values(check_status=bindparam("b_status"), checked_at=now, check_run_id=run_id),
                rows,
            )
        counts = {"ok": 0, "corrupt": 0, "missing": 0}
        for sha, status in checked:
            if sha in still_ok:
                counts[status] += 1
        s.execute(
            update(FixityRun)
            .where(FixityRun.id == run_id)
            .values(
                n_ok=FixityRun.n_ok + counts["ok"],
                n_corrupt=FixityRun.n_corrupt + counts["corrupt"],
                n_missing=FixityRun.n_missing + counts["missing"],
                n_checked=FixityRun.n_checked + sum(counts.values()),
                cursor=checked[-1][0],
            )
        )


def untracked(ctx: Context) -> list[str]:
    """Keys of the stored files the catalog has no content record of.

    Parameters
    ----------
    ctx : Context

    Returns
    -------
    list of str
        In the store's listing order.
    """
    out: list[str] = []
    batch: list[tuple[str, str | None]] = []

    def flush() -> None:
        shas = [sha for _, sha in batch if sha is not None]
        with ctx.sessions() as s:
            known = set(s.scalars(select(Blob.sha256).where(Blob.sha256.in_(shas))))
        out.extend(key for key, sha in batch if sha is None or sha not in known)
        batch.clear()

    for key in ctx.store.iter_objects():
        batch.append((key, stored_sha_from_key(key)))
        if len(batch) >= 500:
            flush()
    if batch:
        flush()
    return out


def stale_temp(ctx: Context, grace: float) -> list[TempEntry]:
    """The store's ``tmp/`` files whose writer died on this host or older than ``grace``.

    Parameters
    ----------
    ctx : Context
    grace : float
        Seconds.

    Returns
    -------
    list of TempEntry
    """
    stale = []
    for entry in ctx.store.iter_temp():
        dead_here = entry.host == HOST and not pid_alive(entry.pid)
        if dead_here or entry.age_s > grace:
            stale.append(entry)
    return stale
