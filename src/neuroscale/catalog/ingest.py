"""Ingest: copy files into the store and catalog them, crash-safely.

Crash safety of ingest (what a SIGKILL at any point leaves behind)
------------------------------------------------------------------
Files are ingested in batches (up to ``INGEST_BATCH_FILES`` files / ``INGEST_BATCH_BYTES``
bytes; a larger file is a batch of its own), each batch step by step:

1. every source is copied into the store's ``tmp/`` area while its SHA-256 is computed (a
   file of at most ``SMALL_FILE_BYTES`` is read into memory and hashed there instead);
2. the ``blobs`` rows of the new contents are *claimed* in state ``pending`` (owner pid and
   host recorded), in one transaction;
3. the copies are moved to ``objects/ab/<sha256>`` (small contents are written there
   directly, never over an existing file) and made durable together (an fsync of each file
   and directory, or one ``syncfs(2)`` for a batch of many files), then read back: each
   SHA-256 must match.  A content that is already stored (whoever ingested it) is not
   stored again, but a throw-away copy of it in ``tmp/`` is made durable and read back in
   the same step, so that the ingest answers and takes the same whether or not someone else
   holds the file (see :class:`~neuroscale.catalog.results.IngestResult`).  When storing
   fails (a store made read-only, a full disk), the claims of step 2 are released and one
   :class:`StoreError` is raised;
4. one transaction turns the blobs ``ok`` and inserts the data objects and their metadata.

A record is thus committed only after its stored copy is durable and verified (SQLite runs in
WAL mode with ``synchronous=NORMAL``: a power loss may lose the last commits, never order).

A data object therefore only ever refers to an ``ok`` blob whose stored copy was verified.
A crash leaves at most a ``tmp/`` file and a ``pending`` blob (maybe with its stored copy);
both name a dead process and are removed automatically by the next ingest on the same host,
or by :meth:`Catalog.cleanup <neuroscale.catalog.api.Catalog.cleanup>` (``neuroscale catalog
cleanup``).  Removal (``rm --force``, cleanup) first marks a blob ``deleting`` in a
transaction that holds the blob row, and an ingest commits only a ``pending``/``ok`` blob, so
a removal racing an ingest makes the ingest fail rather than leave a record without its
object.

The protocol points are named by :func:`_fault` calls (``copied``, ``claimed``, ``moved``,
``verified``, ``before_commit``, ``committed``), where ``tests/catalog/test_crash.py`` kills
the process.  :func:`ingest` runs the protocol on batches; :func:`ingest_one` runs it on one
file whose commit also records something else (a derivation, :mod:`neuroscale.catalog.lineage`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import insert, select, update  # noqa: E402
from sqlalchemy.exc import IntegrityError  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from neuroscale.catalog import blobs, cleanup, permissions  # noqa: E402
from neuroscale.catalog import metadata as md  # noqa: E402
from neuroscale.catalog._util import SQL_CHUNK, chunks, table  # noqa: E402
from neuroscale.catalog.blobs import BAD_CHECKS  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.errors import (  # noqa: E402
    CatalogError,
    ConflictError,
    StoredObjectCorruptedError,
    StoreError,
)
from neuroscale.catalog.localfiles import read_regular, walk  # noqa: E402
from neuroscale.catalog.models import AVU, Blob, Collection, DataObject, utcnow  # noqa: E402
from neuroscale.catalog.paths import check_object_name, object_key  # noqa: E402
from neuroscale.catalog.results import (  # noqa: E402
    IngestReport,
    IngestResult,
    object_info,
    object_path,
)
from neuroscale.catalog.store import Store, TempObject, hash_stream  # noqa: E402

#: An ingest batch (one claim transaction, one sync, one commit transaction) holds at most
#: this many files and bytes; a larger file forms a batch of its own.
INGEST_BATCH_FILES = 1000
INGEST_BATCH_BYTES = 256 << 20
#: Files up to this size are read once into memory (hashed, metadata sniffed, then written
#: straight to their final key); a batch holds at most ``INGEST_BATCH_MEMORY`` bytes of them.
SMALL_FILE_BYTES = 1 << 20
INGEST_BATCH_MEMORY = 64 << 20

#: What :func:`ingest_one` calls inside its commit transaction: ``record(session, sha256)``.
Recorder = Callable[[Session, str], None]


def _fault(point: str) -> None:
    """Named point in the ingest protocol; a no-op that crash tests replace to kill the process."""


@dataclass(frozen=True)
class _Item:
    """A file of an ingest batch: its object name, metadata and (small files) its bytes."""

    local: Path
    name: str
    triples: list[md.Triple]
    content: bytes | None


@dataclass(frozen=True)
class _Staged:
    """A content ready to be stored: a ``tmp/`` copy (``key``) or bytes in memory."""

    sha256: str
    size: int
    key: str | None
    content: bytes | None


# -- batches ------------------------------------------------------------------------------------
def ingest(
    ctx: Context,
    paths: Sequence[str | Path] | str | Path,
    collection: str,
    *,
    meta: Iterable[md.Triple] = (),
    extract: bool = True,
    name: str | None = None,
) -> IngestReport:
    """Copy files (and directory trees) into the store and catalog them in ``collection``.

    The target collection is checked (and created) first, then leftovers of this host's
    crashed ingests are removed (:func:`~neuroscale.catalog.cleanup.recover`), then the files
    go through the protocol of the module docstring in batches.

    Parameters
    ----------
    ctx : Context
    paths : path or sequence of paths
        Files or directories (see :func:`walk`).
    collection : str
        Target collection, created when missing.
    meta : iterable of Triple
        User metadata added to every object.
    extract : bool
        Extract BIDS/NIfTI/sidecar/DICOM metadata.
    name : str, optional
        Object name for a single file.

    Returns
    -------
    IngestReport

    Raises
    ------
    CatalogNotFoundError, CatalogPermissionError
        The collection is not readable / not writable.
    ConflictError
        A different content is already catalogued under the same name.
    StoredObjectCorruptedError
        The stored copy does not hash to what was read (store failure).
    StoreError
        The store cannot be written.
    UnsafePathError
        An object or collection name that would escape.
    InputNotFoundError
        A path does not exist.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    report = IngestReport()
    files: list[tuple[Path, str, int]] = []
    for p in paths:
        files.extend(walk(Path(p), report, name if len(paths) == 1 else None))
    meta = list(meta)
    with ctx.sessions() as s, s.begin():
        me = permissions.caller(ctx, s, required=False)
        levels = permissions.levels(ctx, s, me)
        coll = permissions.ensure_collection(s, collection, me, levels)
        coll_id, coll_path, me_id = coll.id, coll.path, me.id if me else None
    cleanup.recover(ctx)
    for batch in _batches(files, meta, extract):
        report.results.extend(_ingest_batch(ctx, batch, coll_id, coll_path, me_id))
    return report


def _batches(
    files: list[tuple[Path, str, int]], meta: list[md.Triple], extract: bool
) -> Iterator[list[_Item]]:
    """The files as batches of items (names distinct within a batch), each read (small
    files) and its metadata extracted only when the batch before it was ingested."""
    batch: list[_Item] = []
    names: set[str] = set()
    nbytes = inmemory = 0
    for local, objname, size in files:
        small = size <= SMALL_FILE_BYTES
        if batch and (
            objname in names
            or len(batch) >= INGEST_BATCH_FILES
            or nbytes + size > INGEST_BATCH_BYTES
            or (small and inmemory + size > INGEST_BATCH_MEMORY)
        ):
            yield batch
            batch, names, nbytes, inmemory = [], set(), 0, 0
        content = None
        if small:
            content = read_regular(local)
            inmemory += len(content)
        triples = (md.extract(local, content) if extract else []) + meta
        batch.append(_Item(local, objname, md.dedupe(triples), content))
        names.add(objname)
        nbytes += size
    if batch:
        yield batch


def _ingest_batch(
    ctx: Context,
    items: list[_Item],
    coll_id: int,
    coll_path: str,
    me_id: int | None,
) -> list[IngestResult]:
    """Ingest ``items`` (names distinct) with the protocol of the module docstring applied
    to the whole batch at once.

    Every large file is copied to ``tmp/`` while hashed (a small one was read into memory
    and is hashed there), the contents are claimed (``pending``) in one transaction,
    moved (or written) into place, made durable together (:meth:`Store.sync`, one
    ``syncfs`` for a large batch), re-hashed, and only then are all blobs turned ``ok``
    and all objects and metadata inserted in one transaction.  A file already catalogued
    under its name with the same content is only hashed.  When a file conflicts with a
    different content already catalogued under its name, the files before it are
    committed and :class:`ConflictError` is raised.
    """
    store = ctx.store
    results: dict[int, IngestResult] = {}
    existing = _existing_objects(ctx, coll_id, [item.name for item in items])
    coll = Collection(id=coll_id, path=coll_path)
    staged: dict[int, _Staged] = {}
    moved: set[str] = set()
    conflict: ConflictError | None = None
    with store.batch():
        try:
            conflict = _stage(store, items, existing, coll, staged, results)
            _fault("copied")
            todo = [i for i in sorted(staged) if conflict is None or i < max(staged)]
            if todo:
                _store_and_commit(ctx, items, todo, staged, existing, coll, me_id, results, moved)
        finally:
            for stage in staged.values():
                if stage.key is not None and stage.key not in moved:
                    with contextlib.suppress(StoreError):  # left for recovery
                        store.discard(stage.key)
    if conflict is not None:
        raise conflict
    return [results[i] for i in sorted(results)]


def _existing_objects(
    ctx: Context, coll_id: int, names: list[str]
) -> dict[str, tuple[DataObject, str | None]]:
    """The objects of the collection ``coll_id`` named ``names``, with their content's last
    fixity status."""
    existing: dict[str, tuple[DataObject, str | None]] = {}
    with ctx.sessions() as s:
        for part in chunks(names, SQL_CHUNK):
            for obj, check in s.execute(
                select(DataObject, Blob.check_status)
                .join(Blob, Blob.sha256 == DataObject.sha256)
                .where(DataObject.collection_id == coll_id, DataObject.name.in_(part))
            ):
                existing[obj.name] = (obj, check)
    return existing


def _stage(
    store: Store,
    items: list[_Item],
    existing: dict[str, tuple[DataObject, str | None]],
    coll: Collection,
    staged: dict[int, _Staged],
    results: dict[int, IngestResult],
) -> ConflictError | None:
    """Step 1 for every item, in order: an item already catalogued under its name with the
    same (intact) content goes to ``results`` as ``unchanged``; any other is hashed (small)
    or copied to ``tmp/`` while hashed (large) into ``staged``.  Stops at the first item
    whose name holds a different content and returns the conflict (None when none)."""
    for i, item in enumerate(items):
        known = existing.get(item.name)
        check = known[1] if known is not None else None
        good = check is not None and check not in BAD_CHECKS
        stage: _Staged | None = None
        digest: str | None = None
        if item.content is not None:
            digest = hashlib.sha256(item.content).hexdigest()
            stage = _Staged(digest, len(item.content), None, item.content)
        elif good:
            with open(item.local, "rb") as src:
                digest, _ = hash_stream(src)
        if (
            good
            and known is not None
            and digest == known[0].sha256
            and store.stored_size(digest) is not None
        ):
            # already catalogued under this name: leave it as it is
            results[i] = IngestResult(str(item.local), object_info(known[0], coll), "unchanged")
            continue
        if item.content is None:
            with open(item.local, "rb") as src:
                tmp = store.write_temp(src, sync=False)
            stage = _Staged(tmp.sha256, tmp.size, tmp.key, None)
        assert stage is not None
        staged[i] = stage
        if known is not None and known[0].sha256 != stage.sha256:
            return ConflictError(
                f"{object_path(coll.path, item.name)} already holds different "
                f"content (sha256 {known[0].sha256})",
                item.local,
            )
    return None


def _put(store: Store, stage: _Staged, moved: set[str]) -> None:
    """Move (large) or write (small) the staged content to its final key, not yet durable.

    A small content is written with ``O_EXCL``; when a file is already there (a stale copy
    of a content whose claim was taken over, a concurrent writer's, a corrupt one being
    replaced) it goes through ``tmp/`` and an atomic replace instead.
    """
    if stage.content is None:
        assert stage.key is not None
        store.commit(stage.key, stage.sha256, sync=False)
        moved.add(stage.key)
        return
    if store.write_new(stage.sha256, stage.content):
        return
    tmp = store.write_temp(io.BytesIO(stage.content), sync=False)
    try:
        store.commit(tmp.key, stage.sha256, sync=False)
    except BaseException:
        store.discard(tmp.key)
        raise


def _store_and_commit(
    ctx: Context,
    items: list[_Item],
    todo: list[int],
    staged: dict[int, _Staged],
    existing: dict[str, tuple[DataObject, str | None]],
    coll: Collection,
    me_id: int | None,
    results: dict[int, IngestResult],
    moved: set[str],
) -> None:
    """Claim, store, sync, verify and commit the contents ``staged[i]`` for ``i`` in
    ``todo`` (the keys of the temporary copies moved into place are added to ``moved``).

    A content already stored (by anyone) is not stored again, but its copy is written to
    ``tmp/``, made durable and re-hashed all the same, then discarded: the ingest takes as
    long, and says the same (``added``), as for new content, so that neither its answer
    nor its duration tells whether someone else holds the file.  When storing fails (a
    store made read-only, a full disk), the contents this call claimed are released before
    the error propagates.
    """
    store = ctx.store
    sizes = {staged[i].sha256: staged[i].size for i in todo}
    first: dict[str, _Staged] = {}
    for i in todo:
        first.setdefault(staged[i].sha256, staged[i])
    states = blobs.claim_many(ctx, sizes)
    _fault("claimed")
    decoys: dict[str, str] = {}  # already stored content -> its throw-away tmp/ copy
    written: list[str] = []  # tmp/ copies made here for decoys (small contents)
    try:
        _store_claimed(ctx, items, todo, staged, first, sizes, states, decoys, written, moved)
    except BaseException:
        blobs.release_claims(ctx, [x for x, st in states.items() if st == "pending"])
        raise
    finally:
        for key in written:
            with contextlib.suppress(StoreError):
                store.discard(key)
    now = utcnow()
    copied = set(sizes) - set(decoys)
    new = [i for i in todo if items[i].name not in existing]
    with ctx.sessions() as s, s.begin():
        need_copy = [x for x in sizes if x in copied]
        decoyed = [x for x in states if x not in copied]
        _mark_ok(s, need_copy, decoyed, now, items[todo[0]].local)
        ids = _insert_objects(s, items, new, staged, coll, me_id, now) if new else {}
        _fault("before_commit")
    _fault("committed")
    for i in todo:
        item, stage = items[i], staged[i]
        if item.name in existing:
            obj, status = existing[item.name][0], "unchanged"
        else:
            obj = DataObject(
                id=ids[item.name],
                collection_id=coll.id,
                name=item.name,
                sha256=stage.sha256,
                size=stage.size,
                created=now,
            )
            status = "added"  # stored now or before, by anyone: never told (see above)
        results[i] = IngestResult(str(item.local), object_info(obj, coll), status)


def _mark_ok(
    s: Session, copied: list[str], decoyed: list[str], now: dt.datetime, local: Path
) -> None:
    """Step 4, blobs: turn the contents stored now (``copied``, verified at ``now``) and
    those already stored (``decoyed``) ``ok``, in the commit transaction ``s``.

    Raises
    ------
    CatalogError
        A content was removed concurrently (no longer ``pending`` or ``ok``).
    """
    for group, extra in (
        (copied, {"verified_at": now, "checked_at": now, "check_status": "ok"}),
        (decoyed, {}),
    ):
        for part in chunks(group, SQL_CHUNK):
            done = s.execute(
                update(Blob)
                .where(Blob.sha256.in_(part), Blob.state.in_(("pending", "ok")))
                .values(state="ok", owner_pid=None, owner_host=None, **extra)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != len(part):  # type: ignore[attr-defined]
                raise CatalogError("stored content was removed concurrently; ingest again", local)


def _insert_objects(
    s: Session,
    items: list[_Item],
    new: list[int],
    staged: dict[int, _Staged],
    coll: Collection,
    me_id: int | None,
    now: dt.datetime,
) -> dict[str, int]:
    """Step 4, records: insert the data objects ``items[i]`` for ``i`` in ``new`` and their
    metadata in the commit transaction ``s``; returns object name -> id.

    Raises
    ------
    ConflictError
        An object of the same name was created concurrently.
    """
    rows = [
        {
            "collection_id": coll.id,
            "name": items[i].name,
            "sha256": staged[i].sha256,
            "size": staged[i].size,
            "created": now,
            "creator_id": me_id,
        }
        for i in new
    ]
    ids: dict[str, int] = {}
    objects = table(DataObject)
    try:
        for part in chunks(rows, SQL_CHUNK):
            for oid, oname in s.execute(
                insert(objects).returning(objects.c.id, objects.c.name), part
            ):
                ids[oname] = oid
    except IntegrityError as exc:
        raise ConflictError(
            f"an object of {coll.path} was created concurrently", items[new[0]].local
        ) from exc
    avus = [
        {
            "object_id": ids[items[i].name],
            "collection_id": None,
            "attribute": t.attribute,
            "value": t.value,
            "value_num": t.value_num,
            "unit": t.unit,
            "source": t.source,
        }
        for i in new
        for t in items[i].triples
    ]
    for part in chunks(avus, SQL_CHUNK):
        s.execute(insert(table(AVU)), part)
    return ids


def _store_claimed(
    ctx: Context,
    items: list[_Item],
    todo: list[int],
    staged: dict[int, _Staged],
    first: dict[str, _Staged],
    sizes: dict[str, int],
    states: dict[str, str],
    decoys: dict[str, str],
    written: list[str],
    moved: set[str],
) -> None:
    """Steps 3 of the protocol for claimed contents: store what is not stored yet, write
    a throw-away ``tmp/`` copy (``decoys``) of what is, sync both, re-hash both."""
    store = ctx.store
    need_copy: list[str] = []
    with ctx.sessions() as s:  # (every content, new or not: the same query either way)
        bad = {
            sha
            for part in chunks(list(states), SQL_CHUNK)
            for sha, check in s.execute(
                select(Blob.sha256, Blob.check_status).where(Blob.sha256.in_(part))
            )
            if check in BAD_CHECKS and states[sha] == "ok"
        }
    for sha, state in states.items():
        on_disk = store.stored_size(sha)  # (asked for new content too: the same work)
        if state == "pending" or sha in bad or on_disk != sizes[sha]:
            need_copy.append(sha)
        else:
            decoys[sha] = ""
    for sha in need_copy:
        _put(store, first[sha], moved)
    for sha in decoys:
        stage = first[sha]
        if stage.key is not None:  # a large file: its tmp/ copy is already written
            decoys[sha] = stage.key
        else:
            assert stage.content is not None
            decoys[sha] = store.write_temp(io.BytesIO(stage.content), sync=False).key
            written.append(decoys[sha])
    store.sync(need_copy, list(decoys.values()))
    _fault("moved")
    checks = [(sha, object_key(sha)) for sha in need_copy] + list(decoys.items())
    for sha, key in checks:
        got = store.hash_stored(sha) if key.startswith("objects/") else store.hash_temp(key)
        if got != (sha, sizes[sha]):
            local = next(items[i].local for i in todo if staged[i].sha256 == sha)
            raise StoredObjectCorruptedError(
                f"stored copy of {local.name} does not match (sha256 {sha}, read back {got})",
                store.url,
            )
    _fault("verified")


# -- one file -----------------------------------------------------------------------------------
def ingest_one(
    ctx: Context,
    local: Path,
    coll_id: int,
    coll_path: str,
    name: str,
    triples: list[md.Triple],
    me_id: int | None,
    record: Recorder | None = None,
) -> IngestResult:
    """Ingest one file with the protocol of the module docstring (steps one by one, each
    durable on its own), calling ``record`` in the commit transaction.

    Parameters
    ----------
    ctx : Context
    local : Path
        The file.
    coll_id, coll_path : int, str
        The target collection (checked writable by the caller).
    name : str
        Object name.
    triples : list of Triple
        Its metadata (only for a new object).
    me_id : int or None
        The creator's principal id.
    record : callable, optional
        ``record(session, sha256)``, run before the commit; without it a file already
        catalogued under ``name`` with the same content is only hashed.

    Returns
    -------
    IngestResult

    Raises
    ------
    ConflictError
        ``name`` holds a different content, or was created concurrently.
    StoredObjectCorruptedError
        A stored or temporary copy does not hash to what was read.
    CatalogError
        The content was removed concurrently.
    UnsafePathError
        An invalid name.
    """
    check_object_name(name)
    store = ctx.store
    with ctx.sessions() as s:
        known = s.scalar(
            select(DataObject.sha256)
            .join(Blob, Blob.sha256 == DataObject.sha256)
            .where(DataObject.collection_id == coll_id, DataObject.name == name)
            .where(Blob.check_status.not_in(BAD_CHECKS))
        )
    if known is not None and record is None:
        unchanged = _unchanged_one(ctx, local, coll_id, name, known)
        if unchanged is not None:
            return unchanged
    with open(local, "rb") as src:
        tmp = store.write_temp(src)
    _fault("copied")
    try:
        with ctx.sessions() as s:
            existing = s.scalar(
                select(DataObject).where(
                    DataObject.collection_id == coll_id, DataObject.name == name
                )
            )
            existing_info = (existing.sha256, existing.id) if existing is not None else None
        if existing_info is not None and existing_info[0] != tmp.sha256:
            raise ConflictError(
                f"{object_path(coll_path, name)} already holds different content "
                f"(sha256 {existing_info[0]})",
                local,
            )
        status = "unchanged" if existing_info is not None else "added"
        state = blobs.claim(ctx, tmp.sha256, tmp.size)
        _fault("claimed")
        need_copy = _store_one(ctx, local, tmp, state)
        obj = _commit_one(
            ctx,
            local,
            tmp,
            (coll_id, coll_path, name),
            triples,
            me_id,
            existing_info,
            need_copy,
            record,
        )
        _fault("committed")
        coll = Collection(id=coll_id, path=coll_path)
        return IngestResult(str(local), object_info(obj, coll), status)
    finally:
        with contextlib.suppress(StoreError):  # left for recovery
            store.discard(tmp.key)


def _unchanged_one(
    ctx: Context, local: Path, coll_id: int, name: str, known: str
) -> IngestResult | None:
    """An ``unchanged`` result when ``local`` hashes to ``known``, the intact content already
    catalogued under ``name`` (hashed, not copied), else None."""
    with open(local, "rb") as src:
        digest, _ = hash_stream(src)
    if digest != known or ctx.store.stored_size(known) is None:
        return None
    with ctx.sessions() as s:
        row = s.execute(
            select(DataObject, Collection)
            .join(Collection, Collection.id == DataObject.collection_id)
            .where(DataObject.collection_id == coll_id, DataObject.name == name)
        ).one()
    return IngestResult(str(local), object_info(row[0], row[1]), "unchanged")


def _store_one(ctx: Context, local: Path, tmp: TempObject, state: str) -> bool:
    """Step 3 for one claimed content: move the ``tmp/`` copy into place and re-hash it, or
    (already stored and intact) re-hash the throw-away copy instead, the same work as for
    new content, so the duration does not tell (see :func:`_store_claimed`); returns
    whether it was stored now."""
    store = ctx.store
    need_copy = state == "pending"
    if not need_copy:
        with ctx.sessions() as s:
            blob = s.get(Blob, tmp.sha256)
            bad = blob is None or blob.check_status in BAD_CHECKS
        need_copy = bad or store.stored_size(tmp.sha256) != tmp.size
    if need_copy:
        store.commit(tmp.key, tmp.sha256)
        _fault("moved")
        got = store.hash_stored(tmp.sha256)
        if got != (tmp.sha256, tmp.size):
            raise StoredObjectCorruptedError(
                f"stored copy of {local.name} does not match (sha256 {tmp.sha256}, "
                f"read back {got})",
                store.url,
            )
        _fault("verified")
    elif store.hash_temp(tmp.key) != (tmp.sha256, tmp.size):
        raise StoredObjectCorruptedError(
            f"copy of {local.name} in the store's tmp/ does not match what was read",
            store.url,
        )
    return need_copy


def _commit_one(
    ctx: Context,
    local: Path,
    tmp: TempObject,
    where: tuple[int, str, str],
    triples: list[md.Triple],
    me_id: int | None,
    existing_info: tuple[str, int] | None,
    need_copy: bool,
    record: Recorder | None,
) -> DataObject:
    """Step 4 for one content, in one transaction: its blob ``ok`` (verified now when
    ``need_copy``), the object at ``where`` = (collection id, path, name) and its metadata
    unless it exists (``existing_info``: sha256, id), then ``record``."""
    coll_id, coll_path, name = where
    now = utcnow()
    verified = {"verified_at": now, "checked_at": now, "check_status": "ok"} if need_copy else {}
    with ctx.sessions() as s, s.begin():
        done = s.execute(
            update(Blob)
            .where(Blob.sha256 == tmp.sha256, Blob.state.in_(("pending", "ok")))
            .values(state="ok", owner_pid=None, owner_host=None, **verified)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]
            raise CatalogError(
                f"the stored copy of {local.name} was removed concurrently; ingest again",
                local,
            )
        if existing_info is None:
            obj = DataObject(
                collection_id=coll_id, name=name, sha256=tmp.sha256, size=tmp.size, creator_id=me_id
            )
            s.add(obj)
            try:
                s.flush()
            except IntegrityError as exc:
                raise ConflictError(
                    f"{object_path(coll_path, name)} was created concurrently", local
                ) from exc
            for t in triples:
                s.add(
                    AVU(
                        object_id=obj.id,
                        attribute=t.attribute,
                        value=t.value,
                        value_num=t.value_num,
                        unit=t.unit,
                        source=t.source,
                    )
                )
        else:
            obj = s.get(DataObject, existing_info[1])  # type: ignore[assignment]
        if record is not None:
            record(s, tmp.sha256)
        _fault("before_commit")
    return obj
