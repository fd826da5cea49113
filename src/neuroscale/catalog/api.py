"""The catalog's Python API: :class:`Catalog`.

A catalog is a database (SQLite file or PostgreSQL, through SQLAlchemy; schema migrated by
Alembic) plus a content-addressed store (:mod:`neuroscale.catalog.store`).  The design
follows iRODS (Rajasekar et al. 2010, "iRODS Primer"; https://docs.irods.org): logical
collections and data objects, attribute-value-unit metadata, access levels ``null < read <
write < own`` on collections inherited by their members, tickets, and fixity checks.

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
   holds the file (see :class:`IngestResult`).  When storing fails (a store made read-only,
   a full disk), the claims of step 2 are released and one :class:`StoreError` is raised;
4. one transaction turns the blobs ``ok`` and inserts the data objects and their metadata.

A record is thus committed only after its stored copy is durable and verified (SQLite runs in
WAL mode with ``synchronous=NORMAL``: a power loss may lose the last commits, never order).

A data object therefore only ever refers to an ``ok`` blob whose stored copy was verified.
A crash leaves at most a ``tmp/`` file and a ``pending`` blob (maybe with its stored copy);
both name a dead process and are removed automatically by the next ingest on the same host,
or by :meth:`Catalog.cleanup` (``neuroscale catalog cleanup``).  Removal (``rm --force``,
cleanup) first marks a blob ``deleting`` in a transaction that holds the blob row, and an
ingest commits only a ``pending``/``ok`` blob, so a removal racing an ingest makes the ingest
fail rather than leave a record without its object.

Identity
--------
The acting user is a name (``user=``, ``$NEUROSCALE_CATALOG_USER``, else the login name)
trusted as given, like a local iRODS client with a trusted environment; deploy the
PostgreSQL catalog with database roles if users must be authenticated.  Tickets
(:meth:`Catalog.create_ticket`) let unregistered users read (or write) one collection.
Every user has a home collection ``/home/<user>`` that only they (and administrators) can
create and that inherits nothing from ``/home``; a pipeline registers its results under it
by default (:func:`open_for_pipeline`, which checks before any work that they can be).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import io
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import (  # noqa: E402
    Engine,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from neuroscale.catalog import metadata as md  # noqa: E402
from neuroscale.catalog import schema  # noqa: E402
from neuroscale.catalog.errors import (  # noqa: E402
    CatalogConfigError,
    CatalogError,
    CatalogNotFoundError,
    CatalogPermissionError,
    ConflictError,
    MetadataError,
    MissingDependencyError,
    StoredObjectCorruptedError,
    StoredObjectMissingError,
    StoreError,
    TicketError,
    UnsafePathError,
)
from neuroscale.catalog.models import (  # noqa: E402
    AVU,
    LEVEL_NAMES,
    LEVELS,
    Access,
    Blob,
    Collection,
    DataObject,
    Derivation,
    DerivationSource,
    FixityRun,
    Membership,
    Principal,
    Setting,
    Ticket,
    utcnow,
)
from neuroscale.catalog.paths import (  # noqa: E402
    HOME,
    check_object_name,
    check_sha256,
    home_collection,
    is_sha256,
    nfc,
    normalise_collection,
    object_key,
    parent_collection,
)
from neuroscale.catalog.query import parse as parse_query  # noqa: E402
from neuroscale.catalog.query import to_sql  # noqa: E402
from neuroscale.catalog.store import HOST, Store, hash_stream, open_store  # noqa: E402

READ, WRITE, OWN = LEVELS["read"], LEVELS["write"], LEVELS["own"]
#: An ingest batch (one claim transaction, one sync, one commit transaction) holds at most
#: this many files and bytes; a larger file forms a batch of its own.
INGEST_BATCH_FILES = 1000
INGEST_BATCH_BYTES = 256 << 20
#: Files up to this size are read once into memory (hashed, metadata sniffed, then written
#: straight to their final key); a batch holds at most ``INGEST_BATCH_MEMORY`` bytes of them.
SMALL_FILE_BYTES = 1 << 20
INGEST_BATCH_MEMORY = 64 << 20
#: Rows per SQL statement (bound parameters stay far below SQLite's and PostgreSQL's limits).
SQL_CHUNK = 500
BAD_CHECKS = ("corrupt", "missing")
#: A comparison matching fewer triples than this makes a limited ``find`` start from its
#: matches; when all match more, ``find`` walks objects in result order instead.
FIND_DENSE_ROWS = 10000
#: PostgreSQL: time (ms) an ordered walk of a dense query may take before the flat query
#: answers instead (see ``Catalog._run_walk``).
FIND_WALK_BUDGET_MS = 150


def _table(model: Any) -> Table:
    """The Core table of a mapped class (for bulk inserts and updates)."""
    table: Table = model.__table__
    return table


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for k in range(0, len(seq), n):
        yield seq[k : k + n]


def _fault(point: str) -> None:
    """Named point in the ingest protocol; a no-op that crash tests replace to kill the process."""


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectInfo:
    """A data object: logical ``path`` (``/collection/name``), content checksum and size (bytes)."""

    path: str
    collection: str
    name: str
    sha256: str
    size: int
    created: dt.datetime


@dataclass(frozen=True)
class MetaInfo:
    """One attribute-value-unit triple and where it came from."""

    attribute: str
    value: str
    unit: str | None
    source: str


@dataclass(frozen=True)
class IngestResult:
    """Outcome for one file: ``status`` is ``added`` (a new object in the collection) or
    ``unchanged`` (the collection already held this name with this content).

    Whether the content was already in the store (deduplicated: stored once, whoever ingested
    it) is deliberately not reported, and an ingest does the same work either way: otherwise
    a user could test whether anyone, in a collection they cannot read, holds a file.
    """

    source: str
    object: ObjectInfo
    status: str


@dataclass
class IngestReport:
    """All files of one ingest call, and those skipped with the reason."""

    results: list[IngestResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Number of results per status."""
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out


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


@dataclass(frozen=True)
class ListResult:
    """Contents of a collection: its sub-collections (paths) and objects."""

    collection: str
    subcollections: list[str]
    objects: list[ObjectInfo]


@dataclass(frozen=True)
class Problem:
    """A stored content that failed a fixity check, and the objects that use it."""

    sha256: str
    status: str
    objects: list[str]
    detail: str = ""


@dataclass
class FixityReport:
    """Result of :meth:`Catalog.verify`.

    ``checked``/``n_ok`` count the whole run, including the part done before an interruption
    when ``resumed``; ``complete`` is False when ``max_objects`` stopped it early.
    """

    run_id: int
    mode: str
    resumed: bool
    complete: bool
    checked: int
    n_ok: int
    corrupt: list[Problem] = field(default_factory=list)
    missing: list[Problem] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    stale_temp: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is corrupted, missing, untracked or left over from a crash."""
        return not (self.corrupt or self.missing or self.untracked or self.stale_temp)


@dataclass(frozen=True)
class SourceInfo:
    """An input of a derivation: its checksum and the readable objects holding that content."""

    sha256: str
    objects: list[str]


@dataclass(frozen=True)
class LineageStep:
    """One recorded derivation: ``sources`` -> ``output``, with how and when it ran."""

    derivation_id: int
    output: SourceInfo
    sources: list[SourceInfo]
    software: str
    parameters: Any
    started: dt.datetime | None
    ended: dt.datetime | None
    depth: int


@dataclass(frozen=True)
class Lineage:
    """Provenance of ``target``: ``upstream`` steps back to raw data (``raw``: checksums with
    no recorded derivation) and ``downstream`` steps to everything derived from it."""

    target: SourceInfo
    upstream: list[LineageStep]
    downstream: list[LineageStep]
    raw: list[SourceInfo]


@dataclass(frozen=True)
class TicketInfo:
    """A share ticket (never its token)."""

    id: int
    collection: str
    level: str
    issuer: str
    created: dt.datetime
    expires: dt.datetime | None
    uses_limit: int | None
    uses_count: int
    revoked: bool


@dataclass(frozen=True)
class PrincipalInfo:
    """A user or group, its admin flag, and its groups (users) or members (groups)."""

    name: str
    kind: str
    is_admin: bool
    related: list[str]


@dataclass(frozen=True)
class AccessInfo:
    """A direct permission on a collection."""

    collection: str
    principal: str
    kind: str
    level: str


@dataclass
class CleanupReport:
    """What :meth:`Catalog.cleanup` removed."""

    pending: list[str] = field(default_factory=list)
    deleting: list[str] = field(default_factory=list)
    temp: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# engine
# ---------------------------------------------------------------------------------------------
def normalise_url(url: str) -> str:
    """Database URL with an installed driver (``postgresql://`` -> ``postgresql+psycopg://``).

    Raises
    ------
    MissingDependencyError
        A PostgreSQL URL and neither psycopg (3) nor psycopg2 is installed.
    CatalogConfigError
        Not a ``sqlite:`` or ``postgresql:`` URL.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url[len("postgresql://") :]
        if importlib.util.find_spec("psycopg2") is not None:
            return url
        raise MissingDependencyError(
            "a PostgreSQL catalog needs psycopg: pip install 'neuroscale[catalog]'"
        )
    if url.startswith(("sqlite:", "postgresql+")):
        return url
    raise CatalogConfigError(
        f"unsupported catalog URL {url!r}: use sqlite:///PATH or postgresql://"
    )


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine for ``url``; SQLite gets WAL, foreign keys and a 60 s busy timeout."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:" and not path.startswith("file:"):  # not a URI filename
            Path(path.split("?", 1)[0]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash never loses consistency
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def default_user() -> str:
    """``$NEUROSCALE_CATALOG_USER``, else the login name."""
    return os.environ.get("NEUROSCALE_CATALOG_USER") or getpass.getuser()


def pid_alive(pid: int | None) -> bool:
    """True when a process ``pid`` exists on this host (a zombie counts as alive)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _aware(value: dt.datetime | None, what: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise MetadataError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise MetadataError(f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return value


def _level(value: str | int) -> int:
    if isinstance(value, int) and value in LEVEL_NAMES:
        return value
    if isinstance(value, str) and value.lower() in LEVELS:
        return LEVELS[value.lower()]
    raise MetadataError(f"unknown permission level {value!r}: use null, read, write or own")


def _object_path(collection: str, name: str) -> str:
    return f"{collection}/{name}"


def _file_kind(path: Path) -> str:
    """What ``path`` is, in words (it is not a regular file)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "unreadable"
    for test, kind in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return kind + (" behind a symlink" if path.is_symlink() else "")
    return "special file"


def _read_regular(path: Path) -> bytes:
    """The bytes of the regular file ``path``, opened without blocking (a file replaced by a
    FIFO since the walk would block an ordinary open for ever) and checked to be regular."""
    from neuroscale.errors import InputNotFoundError

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputNotFoundError(f"not a regular file any more ({_file_kind(path)})", path)
        os.set_blocking(fd, True)
        return fh.readall()


# ---------------------------------------------------------------------------------------------
# the catalog
# ---------------------------------------------------------------------------------------------
class Catalog:
    """A data catalog: database at ``url`` plus the content-addressed store it names.

    Parameters
    ----------
    url : str
        ``sqlite:///PATH`` or ``postgresql://user@host:port/db``.
    user : str, optional
        Acting user (default :func:`default_user`).
    ticket : str, optional
        A share-ticket token granting access to one collection.

    Raises
    ------
    CatalogConfigError
        The database was never initialised (:meth:`init`) or its schema is not the one this
        code expects.
    """

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        ticket: str | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.url = url
        self.engine = engine if engine is not None else make_engine(url)
        self._owns_engine = engine is None
        if engine is None:
            rev = schema.current_revision(self.engine)
            if rev is None:
                raise CatalogConfigError(
                    f"{url} is not an initialised catalog: run 'neuroscale catalog init'"
                )
            if rev != schema.head_revision():
                raise CatalogConfigError(
                    f"catalog schema is at revision {rev}, this neuroscale expects "
                    f"{schema.head_revision()}: run 'neuroscale catalog init' to upgrade"
                )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.user = user if user is not None else default_user()
        self.ticket = ticket
        self._store: Store | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        url: str,
        store: str | None = None,
        *,
        admin: str | None = None,
        store_options: dict[str, Any] | None = None,
    ) -> Catalog:
        """Create (or upgrade) the catalog schema, record the store, register the first admin.

        Parameters
        ----------
        url : str
            Database URL.
        store : str, optional
            Store directory or fsspec URL.  Default for SQLite: ``store/`` beside the database
            file; required for PostgreSQL on first init.
        admin : str, optional
            Name of the administrator created when the catalog has no user yet (default: the
            current user).
        store_options : dict, optional
            fsspec options of the store (e.g. ``{"endpoint_url": ...}``); keep secrets in the
            environment, this is stored in the database.

        Returns
        -------
        Catalog
            Acting as ``admin``.

        Raises
        ------
        CatalogConfigError
            No store given for a new PostgreSQL catalog, or a different store than recorded.
        """
        engine = make_engine(url)
        schema.upgrade(engine)
        admin = admin or default_user()
        with Session(engine) as s, s.begin():
            current = s.get(Setting, "store_url")
            if current is None:
                if store is None:
                    if not normalise_url(url).startswith("sqlite") or ":///" not in url:
                        raise CatalogConfigError("a new catalog needs --store PATH_OR_URL")
                    store = str(
                        Path(url.split(":///", 1)[1]).expanduser().resolve().parent / "store"
                    )
                if "://" not in store:
                    store = str(Path(store).expanduser().resolve())
                s.add(Setting(key="store_url", value=store))
                s.add(Setting(key="store_options", value=json.dumps(store_options or {})))
            elif store is not None:
                wanted = store if "://" in store else str(Path(store).expanduser().resolve())
                if wanted != current.value:
                    raise CatalogConfigError(
                        f"this catalog's store is {current.value}, not {wanted}"
                    )
            if s.scalar(select(func.count()).select_from(Principal)) == 0:
                s.add(Principal(name=admin, kind="user", is_admin=True))
        cat = cls(url, user=admin, engine=engine)
        cat._owns_engine = True
        cat.store  # noqa: B018  (create the store layout now)
        return cat

    def as_user(self, user: str | None, ticket: str | None = None) -> Catalog:
        """The same catalog (same engine) acting as ``user``, optionally with a ticket."""
        other = Catalog(self.url, user=user or "", ticket=ticket, engine=self.engine)
        other._store = self._store
        return other

    def close(self) -> None:
        """Release the database connections (when this object created the engine)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        """The object store recorded in the catalog's settings."""
        if self._store is None:
            with self._sessions() as s:
                url = s.get(Setting, "store_url")
                opts = s.get(Setting, "store_options")
            if url is None:
                raise CatalogConfigError("the catalog has no store configured: run init --store")
            self._store = open_store(url.value, json.loads(opts.value) if opts else None)
        return self._store

    # -- identity and permissions ------------------------------------------------------------
    def _me(self, s: Session, *, required: bool = True) -> Principal | None:
        me = s.scalar(
            select(Principal).where(Principal.name == self.user, Principal.kind == "user")
        )
        if me is None and self.ticket is None:
            raise CatalogPermissionError(
                f"user {self.user!r} is not registered in this catalog "
                "(an administrator adds users with 'neuroscale catalog users add NAME')"
            )
        if me is None and required:
            raise CatalogPermissionError("this operation needs a registered user, not a ticket")
        return me

    def _require_admin(self, s: Session) -> Principal:
        me = self._me(s)
        if me is None or not me.is_admin:
            raise CatalogPermissionError("this operation needs a catalog administrator")
        return me

    @staticmethod
    def _levels_for(s: Session, me: Principal | None) -> dict[int, int]:
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

    def _levels(self, s: Session, me: Principal | None) -> dict[int, int]:
        levels = self._levels_for(s, me)
        if self.ticket is not None:
            ticket = self._use_ticket(s)
            root = s.get(Collection, ticket.collection_id)
            assert root is not None
            for cid, path in s.execute(select(Collection.id, Collection.path)):
                if path == root.path or path.startswith(root.path + "/"):
                    levels[cid] = max(levels.get(cid, 0), ticket.level)
        return levels

    def _use_ticket(self, s: Session) -> Ticket:
        assert self.ticket is not None
        token_hash = hashlib.sha256(self.ticket.encode("utf-8")).hexdigest()
        ticket = s.scalar(select(Ticket).where(Ticket.token_hash == token_hash))
        if ticket is None:
            raise TicketError("unknown ticket")
        now = utcnow()
        if ticket.revoked:
            raise TicketError(f"ticket {ticket.id} was revoked")
        if ticket.expires is not None and ticket.expires <= now:
            raise TicketError(f"ticket {ticket.id} expired at {ticket.expires.isoformat()}")
        issuer = s.get(Principal, ticket.issuer_id)
        if issuer is None or self._levels_for(s, issuer).get(ticket.collection_id, 0) < OWN:
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

    def _revalidate_tickets(self, s: Session) -> None:
        """Revoke every ticket whose issuer no longer owns its collection."""
        cache: dict[int, dict[int, int]] = {}
        for ticket in s.scalars(select(Ticket).where(Ticket.revoked.is_(False))):
            if ticket.issuer_id not in cache:
                issuer = s.get(Principal, ticket.issuer_id)
                cache[ticket.issuer_id] = self._levels_for(s, issuer) if issuer else {}
            if cache[ticket.issuer_id].get(ticket.collection_id, 0) < OWN:
                ticket.revoked = True

    def _collection(self, s: Session, path: str, levels: dict[int, int], need: int) -> Collection:
        given = path
        path = normalise_collection(path)
        coll = self._find_collection(s, path, given)
        if coll is None or levels.get(coll.id, 0) < READ:
            raise CatalogNotFoundError(f"no such collection {path}")
        self._check(levels, coll, need)
        return coll

    @staticmethod
    def _find_collection(s: Session, path: str, given: str | None = None) -> Collection | None:
        """The collection at the canonical (NFC) ``path``, or at exactly ``given`` when that
        differs and exists: a non-NFC path migration 0003 kept because its NFC twin exists."""
        if given is not None:
            raw = "/" + given.strip("/")
            if raw != path:
                coll = s.scalar(select(Collection).where(Collection.path == raw))
                if coll is not None:
                    return coll
        return s.scalar(select(Collection).where(Collection.path == path))

    @staticmethod
    def _check(levels: dict[int, int], coll: Collection, need: int) -> None:
        have = levels.get(coll.id, 0)
        if have < need:
            raise CatalogPermissionError(
                f"{LEVEL_NAMES[need]} permission on {coll.path} required "
                f"(you have {LEVEL_NAMES[have]})"
            )

    def _object(
        self, s: Session, target: str, levels: dict[int, int], need: int
    ) -> tuple[DataObject, Collection]:
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
                    self._check(levels, coll, need)
                    return obj, coll
        raise CatalogNotFoundError(f"no such object {path}")

    def _target(
        self, s: Session, target: str, levels: dict[int, int], need: int
    ) -> tuple[Collection, DataObject | None]:
        """A collection (exact path) or else an object."""
        try:
            path = normalise_collection(target)
        except UnsafePathError:
            path = None
        if path is not None:
            coll = self._find_collection(s, path, target)
            if coll is not None and levels.get(coll.id, 0) >= READ:
                self._check(levels, coll, need)
                return coll, None
        obj, coll = self._object(s, target, levels, need)
        return coll, obj

    @staticmethod
    def _info(obj: DataObject, coll: Collection) -> ObjectInfo:
        return ObjectInfo(
            path=_object_path(coll.path, obj.name),
            collection=coll.path,
            name=obj.name,
            sha256=obj.sha256,
            size=obj.size,
            created=obj.created,
        )

    # -- users and groups --------------------------------------------------------------------
    def add_user(self, name: str, *, admin: bool = False) -> None:
        """Register a user (administrators only).

        Raises
        ------
        CatalogPermissionError
            The caller is not an administrator.
        ConflictError
            The name is taken.
        """
        self._add_principal(name, "user", admin)

    def add_group(self, name: str) -> None:
        """Create a group (administrators only)."""
        self._add_principal(name, "group", False)

    def _add_principal(self, name: str, kind: str, admin: bool) -> None:
        if not name or "\x00" in name or len(name) > 255 or name.strip() != name:
            raise MetadataError(f"invalid {kind} name {name!r}")
        try:
            with self._sessions() as s, s.begin():
                self._require_admin(s)
                s.add(Principal(name=name, kind=kind, is_admin=admin))
        except IntegrityError as exc:
            raise ConflictError(f"a user or group named {name!r} already exists") from exc

    def remove_principal(self, name: str) -> None:
        """Remove a user or group with its permissions and tickets (administrators only)."""
        with self._sessions() as s, s.begin():
            me = self._require_admin(s)
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
            self._revalidate_tickets(s)

    def set_membership(self, group: str, user: str, member: bool = True) -> None:
        """Add ``user`` to ``group`` (or remove with ``member=False``); administrators only."""
        with self._sessions() as s, s.begin():
            self._require_admin(s)
            g = s.scalar(
                select(Principal).where(Principal.name == group, Principal.kind == "group")
            )
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
                self._revalidate_tickets(s)

    def principals(self) -> list[PrincipalInfo]:
        """All users and groups (any registered user may list them)."""
        with self._sessions() as s:
            self._me(s)
            names = {p.id: p for p in s.scalars(select(Principal))}
            related: dict[int, list[str]] = {pid: [] for pid in names}
            for gid, uid in s.execute(select(Membership.group_id, Membership.user_id)):
                related[uid].append(names[gid].name)
                related[gid].append(names[uid].name)
            return [
                PrincipalInfo(p.name, p.kind, p.is_admin, sorted(related[p.id]))
                for p in sorted(names.values(), key=lambda p: (p.kind, p.name))
            ]

    # -- collections -------------------------------------------------------------------------
    def create_collection(self, path: str) -> str:
        """Create ``path`` (and missing parents); returns the canonical path.

        A top-level collection may be created by any registered user; a sub-collection needs
        ``write`` on its parent.  The creator owns the new collections.  ``/home`` is reserved:
        every user may create their own home ``/home/<user>`` (and anything under it), no one
        else's (administrators excepted), and a home inherits no permission from ``/home``.

        Raises
        ------
        CatalogPermissionError
            No ``write`` on the parent, or another user's home.
        CatalogNotFoundError
            The collection exists and the caller cannot read it.
        UnsafePathError
            An invalid path.
        """
        with self._sessions() as s, s.begin():
            me = self._me(s, required=False)
            levels = self._levels(s, me)
            coll = self._ensure_collection(s, path, me, levels)
            return coll.path

    def _ensure_collection(
        self, s: Session, path: str, me: Principal | None, levels: dict[int, int]
    ) -> Collection:
        path = normalise_collection(path)
        coll = s.scalar(select(Collection).where(Collection.path == path))
        if coll is not None:
            if levels.get(coll.id, 0) < READ:
                raise CatalogNotFoundError(f"no such collection {path}")
            self._check(levels, coll, WRITE)
            return coll
        parent_path = parent_collection(path)
        parent = None
        if path == HOME or parent_path == HOME:
            parent = self._ensure_home(s, path, me)
            if path == HOME:
                return parent
        elif parent_path is not None:
            parent = self._ensure_collection(s, parent_path, me, levels)
        if me is None:
            raise CatalogPermissionError(f"a registered user is needed to create {path}")
        coll = Collection(path=path, parent_id=parent.id if parent else None)
        s.add(coll)
        s.flush()
        s.add(Access(collection_id=coll.id, principal_id=me.id, level=OWN))
        levels[coll.id] = OWN
        return coll

    @staticmethod
    def _ensure_home(s: Session, path: str, me: Principal | None) -> Collection:
        """``/home`` (made without owner: only administrators see it) when ``path`` is
        ``/home`` itself or a home ``/home/<user>`` the caller may create."""
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

    def home(self) -> str:
        """The caller's home collection ``/home/<user>`` (created when first written to).

        Raises
        ------
        UnsafePathError
            The user name cannot be one path component.
        """
        return home_collection(self.user)

    def check_writable(self, collection: str) -> str:
        """Check, before any work, that the caller may write ``collection`` and the store.

        Nothing is created: the collection's creation is tried (with the rules of
        :meth:`create_collection`) inside a transaction that is rolled back, and the store is
        probed by writing and removing a temporary file (:meth:`Store.check_writable`).

        Parameters
        ----------
        collection : str
            The target collection (it may not exist yet).

        Returns
        -------
        str
            The canonical (NFC) path of ``collection``.

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
        s = self._sessions()
        try:
            me = self._me(s, required=False)
            coll = self._ensure_collection(s, collection, me, self._levels(s, me))
            path = coll.path
        finally:
            s.rollback()
            s.close()
        self.store.check_writable()
        return path

    def collections(self) -> list[str]:
        """Paths of every collection the caller can read."""
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            return sorted(
                p
                for cid, p in s.execute(select(Collection.id, Collection.path))
                if levels.get(cid, 0) >= READ
            )

    def ls(self, collection: str) -> ListResult:
        """Sub-collections and objects of ``collection`` (needs ``read``).

        Raises
        ------
        CatalogNotFoundError
            No such collection, or the caller cannot read it.
        """
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            coll = self._collection(s, collection, levels, READ)
            subs = sorted(
                p
                for cid, p in s.execute(
                    select(Collection.id, Collection.path).where(Collection.parent_id == coll.id)
                )
                if levels.get(cid, 0) >= READ
            )
            objs = s.scalars(
                select(DataObject)
                .where(DataObject.collection_id == coll.id)
                .order_by(DataObject.name)
            )
            return ListResult(coll.path, subs, [self._info(o, coll) for o in objs])

    def stat(self, target: str) -> ObjectInfo:
        """The object at the logical path ``target`` (needs ``read``)."""
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            obj, coll = self._object(s, target, levels, READ)
            return self._info(obj, coll)

    # -- ingest ------------------------------------------------------------------------------
    def ingest(
        self,
        paths: Sequence[str | Path] | str | Path,
        collection: str,
        *,
        meta: Iterable[md.Triple] = (),
        extract: bool = True,
        name: str | None = None,
    ) -> IngestReport:
        """Copy files (and directory trees) into the store and catalog them in ``collection``.

        Each file is hashed (SHA-256) while it is copied, the stored copy is re-hashed, and
        only then is the record committed (see the module docstring).  Content already in the
        store is not stored twice; a file already catalogued under the same name with the same
        content is left as it is.  Directories are walked: objects are named by their path
        relative to the directory; symlinks that resolve outside it are skipped.

        Parameters
        ----------
        paths : path or sequence of paths
            Files or directories.
        collection : str
            Target collection, created when missing (see :meth:`create_collection`).
        meta : iterable of Triple
            User metadata added to every object (``metadata.parse_meta_option``).
        extract : bool
            Extract BIDS/NIfTI/sidecar/DICOM metadata (default True).
        name : str, optional
            Object name for a single file (default: its file name).

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
            files.extend(self._walk(Path(p), report, name if len(paths) == 1 else None))
        meta = list(meta)
        with self._sessions() as s, s.begin():
            me = self._me(s, required=False)
            levels = self._levels(s, me)
            coll = self._ensure_collection(s, collection, me, levels)
            coll_id, coll_path, me_id = coll.id, coll.path, me.id if me else None
        self.recover()
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
                report.results.extend(self._ingest_batch(batch, coll_id, coll_path, me_id))
                batch, names, nbytes, inmemory = [], set(), 0, 0
            content = None
            if small:
                content = _read_regular(local)
                inmemory += len(content)
            triples = (md.extract(local, content) if extract else []) + meta
            batch.append(_Item(local, objname, md.dedupe(triples), content))
            names.add(objname)
            nbytes += size
        if batch:
            report.results.extend(self._ingest_batch(batch, coll_id, coll_path, me_id))
        return report

    @staticmethod
    def _walk(path: Path, report: IngestReport, name: str | None) -> list[tuple[Path, str, int]]:
        """(file, object name, size in bytes) of every regular file under ``path``."""
        from neuroscale.errors import InputNotFoundError

        if not path.exists():
            raise InputNotFoundError("no such file or directory", path)
        if path.is_file():
            return [(path, check_object_name(name or path.name), path.stat().st_size)]
        if not path.is_dir():  # /dev/zero, a FIFO, a socket (or a symlink to one)
            report.skipped.append((str(path), f"not a regular file ({_file_kind(path)})"))
            return []
        root = path.resolve()
        out = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, path)
            for fname in sorted(filenames):
                full = os.path.join(dirpath, fname)
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):  # only symlinks need resolving
                    real = Path(full).resolve()
                    if not real.is_relative_to(root):
                        report.skipped.append((full, f"symlink to {real}, outside {root}"))
                        continue
                    try:
                        st = os.stat(real)
                    except OSError:
                        st = None  # type: ignore[assignment]
                if st is None or not stat.S_ISREG(st.st_mode):
                    kind = "broken symlink" if st is None else _file_kind(Path(full))
                    report.skipped.append((full, f"not a regular file ({kind})"))
                    continue
                rel = fname if rel_dir == "." else f"{rel_dir}/{fname}".replace(os.sep, "/")
                out.append((Path(full), check_object_name(rel), st.st_size))
        return out

    def _ingest_batch(
        self,
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
        store = self.store
        results: dict[int, IngestResult] = {}
        existing: dict[str, tuple[DataObject, str | None]] = {}
        names = [item.name for item in items]
        with self._sessions() as s:
            for part in _chunks(names, SQL_CHUNK):
                for obj, check in s.execute(
                    select(DataObject, Blob.check_status)
                    .join(Blob, Blob.sha256 == DataObject.sha256)
                    .where(DataObject.collection_id == coll_id, DataObject.name.in_(part))
                ):
                    existing[obj.name] = (obj, check)
        coll = Collection(id=coll_id, path=coll_path)
        staged: dict[int, _Staged] = {}
        moved: set[str] = set()
        conflict: ConflictError | None = None
        with store.batch():
            try:
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
                        results[i] = IngestResult(
                            str(item.local), self._info(known[0], coll), "unchanged"
                        )
                        continue
                    if item.content is None:
                        with open(item.local, "rb") as src:
                            tmp = store.write_temp(src, sync=False)
                        stage = _Staged(tmp.sha256, tmp.size, tmp.key, None)
                    assert stage is not None
                    staged[i] = stage
                    if known is not None and known[0].sha256 != stage.sha256:
                        conflict = ConflictError(
                            f"{_object_path(coll_path, item.name)} already holds different "
                            f"content (sha256 {known[0].sha256})",
                            item.local,
                        )
                        break
                _fault("copied")
                todo = [i for i in sorted(staged) if conflict is None or i < max(staged)]
                if todo:
                    self._store_and_commit(
                        items, todo, staged, existing, coll, me_id, results, moved
                    )
            finally:
                for stage in staged.values():
                    if stage.key is not None and stage.key not in moved:
                        with contextlib.suppress(StoreError):  # left for recovery
                            store.discard(stage.key)
        if conflict is not None:
            raise conflict
        return [results[i] for i in sorted(results)]

    def _put(self, stage: _Staged, moved: set[str]) -> None:
        """Move (large) or write (small) the staged content to its final key, not yet durable.

        A small content is written with ``O_EXCL``; when a file is already there (a stale copy
        of a content whose claim was taken over, a concurrent writer's, a corrupt one being
        replaced) it goes through ``tmp/`` and an atomic replace instead.
        """
        store = self.store
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
        self,
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
        store = self.store
        sizes = {staged[i].sha256: staged[i].size for i in todo}
        first: dict[str, _Staged] = {}
        for i in todo:
            first.setdefault(staged[i].sha256, staged[i])
        states = self._claim_many(sizes)
        _fault("claimed")
        decoys: dict[str, str] = {}  # already stored content -> its throw-away tmp/ copy
        written: list[str] = []  # tmp/ copies made here for decoys (small contents)
        try:
            self._store_claimed(items, todo, staged, first, sizes, states, decoys, written, moved)
        except BaseException:
            self._release_claims([x for x, st in states.items() if st == "pending"])
            raise
        finally:
            for key in written:
                with contextlib.suppress(StoreError):
                    store.discard(key)
        now = utcnow()
        copied = set(sizes) - set(decoys)
        need_copy = [x for x in sizes if x in copied]
        with self._sessions() as s, s.begin():
            for group, extra in (
                (need_copy, {"verified_at": now, "checked_at": now, "check_status": "ok"}),
                ([x for x in states if x not in copied], {}),
            ):
                for part in _chunks(group, SQL_CHUNK):
                    done = s.execute(
                        update(Blob)
                        .where(Blob.sha256.in_(part), Blob.state.in_(("pending", "ok")))
                        .values(state="ok", owner_pid=None, owner_host=None, **extra)
                        .execution_options(synchronize_session=False)
                    )
                    if done.rowcount != len(part):  # type: ignore[attr-defined]
                        raise CatalogError(
                            "stored content was removed concurrently; ingest again",
                            items[todo[0]].local,
                        )
            new = [i for i in todo if items[i].name not in existing]
            ids: dict[str, int] = {}
            if new:
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
                try:
                    for part in _chunks(rows, SQL_CHUNK):
                        for oid, oname in s.execute(
                            insert(_table(DataObject)).returning(
                                _table(DataObject).c.id, _table(DataObject).c.name
                            ),
                            part,
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
                for part in _chunks(avus, SQL_CHUNK):
                    s.execute(insert(_table(AVU)), part)
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
            results[i] = IngestResult(str(item.local), self._info(obj, coll), status)

    def _store_claimed(
        self,
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
        store = self.store
        need_copy: list[str] = []
        with self._sessions() as s:  # (every content, new or not: the same query either way)
            bad = {
                sha
                for part in _chunks(list(states), SQL_CHUNK)
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
            self._put(first[sha], moved)
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

    def _release_claims(self, shas: list[str]) -> None:
        """Give up the ``pending`` claims this process holds on ``shas`` after a failure (what
        cleanup does for a dead writer); best effort: what is left, recovery removes."""
        for sha in shas:
            with contextlib.suppress(Exception):
                with self._sessions() as s, s.begin():
                    done = s.execute(
                        update(Blob)
                        .where(Blob.sha256 == sha, Blob.state == "pending")
                        .where(Blob.owner_pid == os.getpid(), Blob.owner_host == HOST)
                        .values(state="deleting")
                    )
                    if done.rowcount != 1:  # type: ignore[attr-defined]
                        continue
                self._finish_delete(sha)

    def _claim_many(self, sizes: dict[str, int]) -> dict[str, str]:
        """:meth:`_claim` for many contents: one transaction inserts every new ``pending`` blob;
        contents already known (or raced) go through :meth:`_claim` one by one."""
        states: dict[str, str] = {}
        known: dict[str, str] = {}
        with self._sessions() as s:
            for part in _chunks(list(sizes), SQL_CHUNK):
                known.update(
                    s.execute(select(Blob.sha256, Blob.state).where(Blob.sha256.in_(part))).all()
                )
        fresh = [sha for sha in sizes if sha not in known]
        stored = [sha for sha, state in known.items() if state == "ok"]
        if fresh or stored:
            try:
                with self._sessions() as s, s.begin():
                    created = utcnow()
                    # a content already stored gets the same write transaction as a new claim
                    # (its row rewritten unchanged), so that claiming takes as long whether or
                    # not anyone holds the content
                    for part in _chunks(stored, SQL_CHUNK):
                        s.execute(
                            update(Blob)
                            .where(Blob.sha256.in_(part))
                            .values(state=Blob.state)
                            .execution_options(synchronize_session=False)
                        )
                    for part in _chunks(fresh, SQL_CHUNK):
                        s.execute(
                            insert(_table(Blob)),
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
            states[sha] = "ok" if state == "ok" else self._claim(sha, sizes[sha])
        return states

    def _ingest_one(
        self,
        local: Path,
        coll_id: int,
        coll_path: str,
        name: str,
        triples: list[md.Triple],
        me_id: int | None,
        derivation: dict[str, Any] | None = None,
    ) -> IngestResult:
        check_object_name(name)
        store = self.store
        with self._sessions() as s:
            known = s.scalar(
                select(DataObject.sha256)
                .join(Blob, Blob.sha256 == DataObject.sha256)
                .where(DataObject.collection_id == coll_id, DataObject.name == name)
                .where(Blob.check_status.not_in(("corrupt", "missing")))
            )
        if known is not None and derivation is None:
            # already catalogued under this name: hash (no copy) and leave it as it is
            with open(local, "rb") as src:
                digest, _ = hash_stream(src)
            if digest == known and store.stored_size(known) is not None:
                with self._sessions() as s:
                    row = s.execute(
                        select(DataObject, Collection)
                        .join(Collection, Collection.id == DataObject.collection_id)
                        .where(DataObject.collection_id == coll_id, DataObject.name == name)
                    ).one()
                return IngestResult(str(local), self._info(row[0], row[1]), "unchanged")
        with open(local, "rb") as src:
            tmp = store.write_temp(src)
        _fault("copied")
        try:
            with self._sessions() as s:
                existing = s.scalar(
                    select(DataObject).where(
                        DataObject.collection_id == coll_id, DataObject.name == name
                    )
                )
                existing_info = (existing.sha256, existing.id) if existing is not None else None
            if existing_info is not None and existing_info[0] != tmp.sha256:
                raise ConflictError(
                    f"{_object_path(coll_path, name)} already holds different content "
                    f"(sha256 {existing_info[0]})",
                    local,
                )
            status = "unchanged" if existing_info is not None else "added"
            state = self._claim(tmp.sha256, tmp.size)
            _fault("claimed")
            need_copy = state == "pending"
            if not need_copy:
                with self._sessions() as s:
                    blob = s.get(Blob, tmp.sha256)
                    bad = blob is None or blob.check_status in ("corrupt", "missing")
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
                # stored already (by anyone): re-hash the throw-away copy instead, the same
                # work as for new content, so the duration does not tell (see _store_claimed)
                raise StoredObjectCorruptedError(
                    f"copy of {local.name} in the store's tmp/ does not match what was read",
                    store.url,
                )
            now = utcnow()
            with self._sessions() as s, s.begin():
                done = s.execute(
                    update(Blob)
                    .where(Blob.sha256 == tmp.sha256, Blob.state.in_(("pending", "ok")))
                    .values(
                        state="ok",
                        owner_pid=None,
                        owner_host=None,
                        **(
                            {"verified_at": now, "checked_at": now, "check_status": "ok"}
                            if need_copy
                            else {}
                        ),
                    )
                )
                if done.rowcount != 1:  # type: ignore[attr-defined]
                    raise CatalogError(
                        f"the stored copy of {local.name} was removed concurrently; ingest again",
                        local,
                    )
                if existing_info is None:
                    obj = DataObject(
                        collection_id=coll_id,
                        name=name,
                        sha256=tmp.sha256,
                        size=tmp.size,
                        creator_id=me_id,
                    )
                    s.add(obj)
                    try:
                        s.flush()
                    except IntegrityError as exc:
                        raise ConflictError(
                            f"{_object_path(coll_path, name)} was created concurrently", local
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
                if derivation is not None:
                    self._add_derivation(s, tmp.sha256, derivation, me_id)
                _fault("before_commit")
            _fault("committed")
            coll = Collection(id=coll_id, path=coll_path)
            return IngestResult(str(local), self._info(obj, coll), status)
        finally:
            with contextlib.suppress(StoreError):  # left for recovery
                store.discard(tmp.key)

    def _claim(self, sha256: str, size: int) -> str:
        """Register ``sha256`` as being stored: returns ``"ok"`` (already stored) or ``"pending"``."""
        for _ in range(600):
            try:
                with self._sessions() as s, s.begin():
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
            with self._sessions() as s, s.begin():
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

    # -- provenance --------------------------------------------------------------------------
    def register_derivative(
        self,
        path: str | Path,
        *,
        sources: Sequence[str],
        software: str,
        collection: str,
        parameters: Any = None,
        started: dt.datetime | None = None,
        ended: dt.datetime | None = None,
        name: str | None = None,
        meta: Iterable[md.Triple] = (),
        extract: bool = True,
    ) -> ObjectInfo:
        """Ingest a derivative a pipeline wrote and record how it was made.

        Parameters
        ----------
        path : path
            The derivative file.
        sources : sequence of str
            SHA-256 of every input; each must be catalogued and readable by the caller.
        software : str
            Name and version, e.g. ``"neuroscale 0.3.0 confounds"``.
        collection : str
            Where to catalog the derivative (needs ``write``).
        parameters : JSON-serialisable, optional
            Parameters of the step.
        started, ended : datetime, optional
            Timezone-aware start and end time of the step.
        name : str, optional
            Object name (default: the file name).
        meta, extract
            As in :meth:`ingest`.

        Returns
        -------
        ObjectInfo

        Raises
        ------
        CatalogNotFoundError
            A source checksum is not in the catalog (or not readable).
        MetadataError
            Naive datetimes, ``ended`` before ``started``, parameters not JSON-serialisable.
        """
        started, ended = _aware(started, "started"), _aware(ended, "ended")
        if started and ended and ended < started:
            raise MetadataError("ended is before started")
        try:
            params = json.dumps(parameters, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"parameters are not JSON-serialisable ({exc})") from exc
        if not software or len(software) > 255:
            raise MetadataError("software must be a non-empty name of at most 255 characters")
        srcs = sorted({check_sha256(x) for x in sources})
        local = Path(path)
        with self._sessions() as s, s.begin():
            me = self._me(s, required=False)
            levels = self._levels(s, me)
            for sha in srcs:
                if not self._readable_objects(s, sha, levels):
                    raise CatalogNotFoundError(f"source {sha} is not in the catalog")
            coll = self._ensure_collection(s, collection, me, levels)
            coll_id, coll_path, me_id = coll.id, coll.path, me.id if me else None
        self.recover()
        triples = (md.extract(local) if extract else []) + list(meta)
        derivation = {
            "sources": srcs,
            "software": software,
            "parameters": params,
            "started": started,
            "ended": ended,
        }
        result = self._ingest_one(
            local,
            coll_id,
            coll_path,
            check_object_name(name or local.name),
            md.dedupe(triples),
            me_id,
            derivation,
        )
        return result.object

    @staticmethod
    def _add_derivation(s: Session, output: str, d: dict[str, Any], me_id: int | None) -> None:
        # a derivation is one user's record (lineage shows it to those who can read an object
        # of its output that user holds): another user's identical record is not shared
        for existing in s.scalars(
            select(Derivation).where(
                Derivation.output_sha256 == output, Derivation.user_id.is_not_distinct_from(me_id)
            )
        ):
            srcs = sorted(
                s.scalars(
                    select(DerivationSource.source_sha256).where(
                        DerivationSource.derivation_id == existing.id
                    )
                )
            )
            if (
                srcs == d["sources"]
                and existing.software == d["software"]
                and existing.parameters == d["parameters"]
            ):
                return
        der = Derivation(
            output_sha256=output,
            software=d["software"],
            parameters=d["parameters"],
            started=d["started"],
            ended=d["ended"],
            user_id=me_id,
        )
        s.add(der)
        s.flush()
        for sha in d["sources"]:
            s.add(DerivationSource(derivation_id=der.id, source_sha256=sha))

    @staticmethod
    def _derivation_visible(s: Session, der: Derivation, levels: dict[int, int]) -> bool:
        """Whether the caller may see ``der``: it can read an object holding its output that
        the derivation's recorder created.  Derivations are recorded per content, so without
        this a user who ingests a guessed copy of someone's private result would read, in
        its lineage, how that person made it (and learn that they have it)."""
        rows = s.execute(
            select(DataObject.collection_id).where(
                DataObject.sha256 == der.output_sha256,
                DataObject.creator_id.is_not_distinct_from(der.user_id),
            )
        )
        return any(levels.get(cid, 0) >= READ for (cid,) in rows)

    @staticmethod
    def _readable_objects(s: Session, sha: str, levels: dict[int, int]) -> list[str]:
        rows = s.execute(
            select(Collection.id, Collection.path, DataObject.name)
            .join(DataObject, DataObject.collection_id == Collection.id)
            .where(DataObject.sha256 == sha)
            .order_by(Collection.path, DataObject.name)
        )
        return [_object_path(p, n) for cid, p, n in rows if levels.get(cid, 0) >= READ]

    def _resolve_checksum(self, s: Session, target: str | Path, levels: dict[int, int]) -> str:
        text = str(target)
        if is_sha256(text.lower()):
            sha = text.lower()
        elif text.startswith("/") and not Path(text).is_file():
            return self._object(s, text, levels, READ)[0].sha256
        elif Path(text).is_file():
            with open(text, "rb") as fh:
                sha = hash_stream(fh)[0]
        else:
            return self._object(s, text, levels, READ)[0].sha256
        if not self._readable_objects(s, sha, levels):
            raise CatalogNotFoundError(f"no catalogued object has checksum {sha}")
        return sha

    def lineage(self, target: str | Path, *, max_depth: int = 100) -> Lineage:
        """Provenance chain of an object (logical path), a checksum, or a local file's content.

        Upstream steps go back to raw data (contents with no recorded derivation); downstream
        steps lead to everything derived from it.  Only what the caller can read is shown:
        sources it cannot read appear as bare checksums and are not followed; derivatives it
        cannot read are left out; a derivation is shown only to those who can read an object
        of its output that its recorder created (a copy of the same content elsewhere does
        not reveal another user's record).

        Raises
        ------
        CatalogNotFoundError
            The target is not catalogued or not readable.
        """
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            sha = self._resolve_checksum(s, target, levels)

            def info(x: str) -> SourceInfo:
                return SourceInfo(x, self._readable_objects(s, x, levels))

            def step(der: Derivation, depth: int) -> LineageStep:
                srcs = sorted(
                    s.scalars(
                        select(DerivationSource.source_sha256).where(
                            DerivationSource.derivation_id == der.id
                        )
                    )
                )
                return LineageStep(
                    derivation_id=der.id,
                    output=info(der.output_sha256),
                    sources=[info(x) for x in srcs],
                    software=der.software,
                    parameters=json.loads(der.parameters),
                    started=der.started,
                    ended=der.ended,
                    depth=depth,
                )

            upstream: list[LineageStep] = []
            raw: list[SourceInfo] = []
            seen = {sha}
            frontier = [sha]
            depth = 0
            while frontier and depth < max_depth:
                depth += 1
                nxt = []
                for x in frontier:
                    ders = [
                        der
                        for der in s.scalars(
                            select(Derivation)
                            .where(Derivation.output_sha256 == x)
                            .order_by(Derivation.id)
                        )
                        if self._derivation_visible(s, der, levels)
                    ]
                    if not ders:
                        raw.append(info(x))
                    for der in ders:
                        st = step(der, depth)
                        upstream.append(st)
                        for src in st.sources:
                            if src.sha256 not in seen and src.objects:
                                seen.add(src.sha256)
                                nxt.append(src.sha256)
                frontier = nxt
            downstream: list[LineageStep] = []
            seen_down = {sha}
            frontier = [sha]
            depth = 0
            while frontier and depth < max_depth:
                depth += 1
                nxt = []
                for x in frontier:
                    users_of = s.scalars(
                        select(Derivation)
                        .join(DerivationSource, DerivationSource.derivation_id == Derivation.id)
                        .where(DerivationSource.source_sha256 == x)
                        .order_by(Derivation.id)
                    )
                    for der in users_of:
                        if not self._derivation_visible(s, der, levels):
                            continue
                        if any(st.derivation_id == der.id for st in downstream):
                            continue
                        downstream.append(step(der, depth))
                        if der.output_sha256 not in seen_down:
                            seen_down.add(der.output_sha256)
                            nxt.append(der.output_sha256)
                frontier = nxt
            return Lineage(info(sha), upstream, downstream, raw)

    # -- metadata and queries ----------------------------------------------------------------
    def meta(self, target: str) -> list[MetaInfo]:
        """Metadata of an object or collection (needs ``read``)."""
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            coll, obj = self._target(s, target, levels, READ)
            where = AVU.object_id == obj.id if obj else AVU.collection_id == coll.id
            return [
                MetaInfo(a.attribute, a.value, a.unit, a.source)
                for a in s.scalars(select(AVU).where(where).order_by(AVU.attribute, AVU.id))
            ]

    def add_meta(
        self, target: str, attribute: str | md.Triple, value: Any = None, unit: str | None = None
    ) -> None:
        """Add a triple to an object or collection (needs ``write``)."""
        triple = (
            attribute
            if isinstance(attribute, md.Triple)
            else md.make_triple(attribute, value, unit, "user")
        )
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            coll, obj = self._target(s, target, levels, WRITE)
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

    def remove_meta(self, target: str, attribute: str, value: Any = None) -> int:
        """Remove triples of ``attribute`` (only those equal to ``value`` if given); returns how many."""
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            coll, obj = self._target(s, target, levels, WRITE)
            q = delete(AVU).where(
                AVU.object_id == obj.id if obj else AVU.collection_id == coll.id,
                AVU.attribute == nfc(attribute),
            )
            if value is not None:
                q = q.where(AVU.value == nfc(md.format_value(value)))
            return int(s.execute(q).rowcount)  # type: ignore[attr-defined]

    def find(
        self, where: str, *, collection: str | None = None, limit: int | None = None
    ) -> list[ObjectInfo]:
        """Objects whose metadata satisfy ``where`` (see :mod:`neuroscale.catalog.query`).

        Only objects in collections the caller can read are searched (an unreadable object
        is never reported).

        Parameters
        ----------
        where : str
            e.g. ``"task = 'oneback' and tr < 2.5"``.
        collection : str, optional
            Search only this collection and its sub-collections.
        limit : int, optional
            At most this many results (ordered by path).

        Raises
        ------
        QuerySyntaxError
            The expression does not parse.
        """
        node = parse_query(where)
        with self._sessions() as s, s.begin():
            q, fallback = self._find_plan(s, node, collection, limit)
            if q is None:
                return []
            rows = self._run_walk(s, q, fallback) if fallback is not None else s.execute(q).all()
            return [
                ObjectInfo(_object_path(path, name), path, name, sha, size, created)
                for path, name, sha, size, created in rows
            ]

    @staticmethod
    def _run_walk(s: Session, walk: Any, flat: Any) -> list[Any]:
        """Run the ordered walk of a dense query within ``FIND_WALK_BUDGET_MS`` (PostgreSQL's
        ``statement_timeout`` inside a savepoint); when the comparisons are dense one by one
        but their combination is rare, the walk would read most objects, so past the budget
        the flat query (hash joins over the matches) answers instead."""
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

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

    def _find_query(self, s: Session, node: Any, collection: str | None, limit: int | None) -> Any:
        """The SELECT of :meth:`find`: (collection path, name, sha256, size, created) rows;
        None when the caller can read no collection."""
        return self._find_plan(s, node, collection, limit)[0]

    def _find_plan(
        self, s: Session, node: Any, collection: str | None, limit: int | None
    ) -> tuple[Any, Any]:
        """(query, fallback): :meth:`_find_query`'s SELECT, and the flat form to run instead
        when the walk of a dense PostgreSQL query exceeds ``FIND_WALK_BUDGET_MS`` (None
        otherwise)."""
        levels = self._levels(s, self._me(s, required=False))
        readable = [cid for cid, lv in levels.items() if lv >= READ]
        if collection is not None:
            root = self._collection(s, collection, levels, READ)
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
        driver, count = self._driver(s, node, True)
        if limit is not None and count >= FIND_DENSE_ROWS:
            driver = None
        walk = None
        if driver is None and limit is not None and s.get_bind().dialect.name == "postgresql":
            walk = self._find_walk_lateral(node, readable, int(limit))
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

    @staticmethod
    def _find_walk_lateral(node: Any, readable: list[int], limit: int) -> Any:
        """PostgreSQL form of a dense query with a limit: collections in path order, and in
        each (``LATERAL``) its objects in name order through the ``(collection_id, name)``
        index, probing the metadata per object and stopping at ``limit``; the planner's
        own plan for the flat query sorted a whole collection before the limit (2.7 s at
        1,000,000 objects).  SQLite walks the flat query this way by itself."""
        from sqlalchemy import true

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

    @staticmethod
    def _driver(s: Session, node: Any, prefix_ranges: bool) -> tuple[Any, int]:
        """The comparison every match must satisfy that matches the fewest triples, and that
        number (capped at ``FIND_DENSE_ROWS``); (None, 0) when there is none (e.g. an ``or``)."""
        from neuroscale.catalog.query import condition, positive_comparisons

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

    # -- retrieval and removal ---------------------------------------------------------------
    def get(self, target: str, dest: str | Path) -> Path:
        """Copy an object out of the store to ``dest`` (a file, or a directory to put it in),
        verifying its SHA-256 on the way; ``dest`` is written atomically.

        Raises
        ------
        StoredObjectCorruptedError
            The stored copy no longer matches its checksum (``dest`` is not created).
        StoredObjectMissingError
            The stored copy is missing from the store (``verify`` lists such objects).
        InputNotFoundError
            The directory ``dest`` would be written in does not exist.
        ConfigurationError
            ``dest`` cannot be written (permission denied, read-only, full).
        """
        from neuroscale.errors import ConfigurationError, InputNotFoundError, NeuroscaleError
        from neuroscale.io.atomic import atomic_path

        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            obj, coll = self._object(s, target, levels, READ)
            sha, name = obj.sha256, obj.name
        out = Path(dest)
        if out.is_dir():
            out = out / name.rsplit("/", 1)[-1]
        if not out.parent.is_dir():
            raise InputNotFoundError("the destination's directory does not exist", out.parent)
        try:
            src_fh = self.store.open(sha)
        except FileNotFoundError:
            raise StoredObjectMissingError(
                f"the stored copy of {_object_path(coll.path, name)} (sha256 {sha}) is missing "
                "from the store: run 'neuroscale catalog verify' (administrators)",
                self.store.url,
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
                        f"stored copy of {_object_path(coll.path, name)} is corrupted "
                        f"(expected sha256 {sha}, read {digest.hexdigest()})"
                    )
        except NeuroscaleError:
            raise
        except OSError as exc:  # the destination: permission denied, read-only, full disk
            raise ConfigurationError(
                f"cannot write the copy ({exc.strerror or exc}); nothing written", out
            ) from exc
        return out

    def remove(self, target: str, *, force: bool = False) -> ObjectInfo:
        """Remove an object (needs ``write``); its stored content goes too when no other object
        uses it, which is refused unless ``force``.

        Raises
        ------
        ConflictError
            No other object the caller can read holds its content and ``force`` is False
            (whether an unreadable one does is not disclosed: the stored copy then stays).
        """
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            obj, coll = self._object(s, target, levels, WRITE)
            info = self._info(obj, coll)
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
            visible = [p for p in self._readable_objects(s, obj.sha256, levels) if p != info.path]
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
            self._finish_delete(info.sha256)
        return info

    def _finish_delete(self, sha: str) -> None:
        self.store.delete(sha)
        with self._sessions() as s, s.begin():
            s.execute(delete(Blob).where(Blob.sha256 == sha, Blob.state == "deleting"))

    # -- sharing -----------------------------------------------------------------------------
    def grant(self, collection: str, principal: str, level: str | int) -> None:
        """Set ``principal``'s level on ``collection`` (``null`` removes it); needs ``own``.

        Lowering someone's ``own`` revokes the tickets they can no longer back.
        """
        lv = _level(level)
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            coll = self._collection(s, collection, levels, OWN)
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
            self._revalidate_tickets(s)

    def access(self, collection: str) -> list[AccessInfo]:
        """Direct permissions on ``collection`` and its ancestors (needs ``read``)."""
        with self._sessions() as s, s.begin():
            levels = self._levels(s, self._me(s, required=False))
            coll = self._collection(s, collection, levels, READ)
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
        self,
        collection: str,
        *,
        level: str = "read",
        expires: dt.datetime | dt.timedelta | None = None,
        uses: int | None = None,
    ) -> str:
        """Issue a share ticket on ``collection`` (needs ``own``); returns the secret token.

        Parameters
        ----------
        level : {"read", "write"}
        expires : datetime or timedelta, optional
            Absolute (timezone-aware) expiry or a lifetime from now.
        uses : int, optional
            Number of operations the ticket allows (each catalog call using it counts one).
        """
        lv = _level(level)
        if lv not in (READ, WRITE):
            raise MetadataError("a ticket grants read or write")
        if isinstance(expires, dt.timedelta):
            expires = utcnow() + expires
        expires = _aware(expires, "expires")
        if uses is not None and uses < 1:
            raise MetadataError("uses must be at least 1")
        token = "nsct_" + secrets.token_urlsafe(24)  # a prefix: never starts with "-"
        with self._sessions() as s, s.begin():
            me = self._me(s)
            if self.ticket is not None:
                raise CatalogPermissionError("a ticket cannot be used to issue tickets")
            levels = self._levels(s, me)
            coll = self._collection(s, collection, levels, OWN)
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

    def tickets(self) -> list[TicketInfo]:
        """Tickets the caller issued or that are on collections the caller owns."""
        with self._sessions() as s, s.begin():
            me = self._me(s)
            assert me is not None
            levels = self._levels_for(s, me)
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
                if t.issuer_id == me.id or levels.get(t.collection_id, 0) >= OWN
            ]

    def revoke_ticket(self, ticket_id: int) -> None:
        """Revoke a ticket (its issuer, or an owner of its collection)."""
        with self._sessions() as s, s.begin():
            me = self._me(s)
            assert me is not None
            t = s.get(Ticket, ticket_id)
            if t is None or (
                t.issuer_id != me.id and self._levels_for(s, me).get(t.collection_id, 0) < OWN
            ):
                raise CatalogNotFoundError(f"no such ticket {ticket_id}")
            t.revoked = True

    # -- fixity ------------------------------------------------------------------------------
    def verify(
        self,
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
        """
        mode = "incremental" if incremental else "full"
        with self._sessions() as s, s.begin():
            self._require_admin(s)
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
            run_id, cursor, cutoff = run.id, run.cursor, run.cutoff
        store = self.store
        done_now = 0
        complete = True
        while True:
            with self._sessions() as s:
                q = select(Blob.sha256, Blob.size).where(Blob.state == "ok")
                if cursor is not None:
                    q = q.where(Blob.sha256 > cursor)
                if incremental:
                    q = q.where(
                        Blob.checked_at.is_(None)
                        | (Blob.check_status != "ok")
                        | (Blob.checked_at < cutoff)
                    )
                batch = s.execute(q.order_by(Blob.sha256).limit(200)).all()
            if not batch:
                break
            checked: list[tuple[str, str]] = []
            with store.batch():
                for sha, size in batch:
                    if max_objects is not None and done_now >= max_objects:
                        complete = False
                        break
                    try:
                        got = store.hash_stored(sha)
                        status = (
                            "missing" if got is None else "ok" if got == (sha, size) else "corrupt"
                        )
                    except UnsafePathError:
                        status = "corrupt"
                    checked.append((sha, status))
                    done_now += 1
                    if progress is not None:
                        progress(done_now, sha, status)
            if checked:
                self._record_checks(run_id, checked)
                cursor = checked[-1][0]
            if not complete:
                break
        with self._sessions() as s, s.begin():
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
            levels = self._levels_for(s, self._me(s))
            for blob in s.scalars(
                select(Blob)
                .where(Blob.check_run_id == run_id, Blob.check_status.in_(("corrupt", "missing")))
                .order_by(Blob.sha256)
            ):
                names = self._readable_objects(s, blob.sha256, levels)
                problem = Problem(blob.sha256, blob.check_status or "", names)
                (report.corrupt if blob.check_status == "corrupt" else report.missing).append(
                    problem
                )
            report.pending = list(
                s.scalars(select(Blob.sha256).where(Blob.state != "ok").order_by(Blob.sha256))
            )
        if complete:
            report.untracked = self._untracked()
            report.stale_temp = [e.key for e in self._stale_temp(grace)]
        return report

    def _record_checks(self, run_id: int, checked: list[tuple[str, str]]) -> None:
        """Record a batch of fixity results (sha256, status) and the run's cursor in one
        transaction; blobs no longer ``ok`` (removed meanwhile) are not counted."""
        now = utcnow()
        with self._sessions() as s, s.begin():
            still_ok = set(
                s.scalars(
                    select(Blob.sha256).where(
                        Blob.sha256.in_([sha for sha, _ in checked]), Blob.state == "ok"
                    )
                )
            )
            rows = [
                {"b_sha": sha, "b_status": status} for sha, status in checked if sha in still_ok
            ]
            if rows:
                table = _table(Blob)
                s.execute(
                    update(table)
                    .where(table.c.sha256 == bindparam("b_sha"), table.c.state == "ok")
                    .values(
                        check_status=bindparam("b_status"), checked_at=now, check_run_id=run_id
                    ),
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

    def _untracked(self) -> list[str]:
        from neuroscale.catalog.store import stored_sha_from_key

        out: list[str] = []
        batch: list[tuple[str, str | None]] = []

        def flush() -> None:
            shas = [sha for _, sha in batch if sha is not None]
            with self._sessions() as s:
                known = set(s.scalars(select(Blob.sha256).where(Blob.sha256.in_(shas))))
            out.extend(key for key, sha in batch if sha is None or sha not in known)
            batch.clear()

        for key in self.store.iter_objects():
            batch.append((key, stored_sha_from_key(key)))
            if len(batch) >= 500:
                flush()
        if batch:
            flush()
        return out

    def _stale_temp(self, grace: float) -> list[Any]:
        stale = []
        for entry in self.store.iter_temp():
            dead_here = entry.host == HOST and not pid_alive(entry.pid)
            if dead_here or entry.age_s > grace:
                stale.append(entry)
        return stale

    def recover(self) -> CleanupReport:
        """Remove what crashed ingests *on this host* left (dead owner pid); no permission needed.

        Called automatically at the start of every ingest.
        """
        return self._cleanup(grace=None, untracked=False)

    def cleanup(self, *, grace: float = 3600.0, untracked: bool = False) -> CleanupReport:
        """Remove leftovers of crashed ingests and removals (administrators).

        Pending contents whose writer is dead (this host) or older than ``grace`` seconds
        (another host), half-finished removals, stale ``tmp/`` files, and, with
        ``untracked=True``, stored files the catalog has no record of.
        """
        with self._sessions() as s:
            self._require_admin(s)
        return self._cleanup(grace=grace, untracked=untracked)

    def _cleanup(self, grace: float | None, untracked: bool) -> CleanupReport:
        report = CleanupReport()
        now = utcnow()
        with self._sessions() as s:
            rows = s.execute(
                select(
                    Blob.sha256, Blob.state, Blob.owner_host, Blob.owner_pid, Blob.created
                ).where(Blob.state != "ok")
            ).all()
        for sha, state, host, pid, created in rows:
            if state == "pending":
                dead = host == HOST and not pid_alive(pid)
                old = grace is not None and (now - created).total_seconds() > grace
                if not (dead or old):
                    continue
                with self._sessions() as s, s.begin():
                    claimed = s.execute(
                        update(Blob)
                        .where(Blob.sha256 == sha, Blob.state == "pending")
                        .where(
                            Blob.owner_pid == pid if pid is not None else Blob.owner_pid.is_(None)
                        )
                        .values(state="deleting")
                    )
                    if claimed.rowcount != 1:  # type: ignore[attr-defined]
                        continue
                self._finish_delete(sha)
                report.pending.append(sha)
            elif state == "deleting":
                with self._sessions() as s:
                    used = s.scalar(
                        select(func.count()).select_from(DataObject).where(DataObject.sha256 == sha)
                    )
                if used == 0:
                    self._finish_delete(sha)
                    report.deleting.append(sha)
        for entry in self._stale_temp(grace if grace is not None else float("inf")):
            self.store.discard(entry.key)
            report.temp.append(entry.key)
        if untracked:
            for key in self._untracked():
                self.store.discard(key)
                report.untracked.append(key)
        return report


#: Sub-collection of the caller's home that a pipeline's results go to by default.
PIPELINE_COLLECTION = "neuroscale"


def open_for_pipeline(
    url: str, collection: str | None = None, *, user: str | None = None
) -> tuple[Catalog, str]:
    """Open the catalog at ``url`` for a pipeline and check, before any work, that its results
    can be registered: the caller may write ``collection`` and the store.

    Parameters
    ----------
    url : str
        Catalog database URL.
    collection : str, optional
        Target collection; default the caller's ``/home/<user>/neuroscale``, which no other
        user can create first (see :meth:`Catalog.create_collection`).
    user : str, optional
        Acting user (default :func:`default_user`).

    Returns
    -------
    (Catalog, str)
        The open catalog (close it when done) and the canonical target collection.

    Raises
    ------
    CatalogConfigError
        (exit code 2) The catalog cannot be opened, the user is not registered, the
        collection cannot be written or created by the user, or the store is not writable.
    """
    try:
        cat = Catalog(url, user=user)
    except CatalogConfigError:
        raise
    except (CatalogError, OSError) as exc:
        raise CatalogConfigError(f"--catalog {url}: {exc}") from exc
    try:
        target = collection or f"{home_collection(cat.user)}/{PIPELINE_COLLECTION}"
        path = cat.check_writable(target)
    except (CatalogError, CatalogNotFoundError, CatalogPermissionError) as exc:
        cat.close()
        about_collection = isinstance(exc, CatalogNotFoundError | CatalogPermissionError)
        hint = " (pass --catalog-collection)" if about_collection and not collection else ""
        raise CatalogConfigError(
            f"--catalog: results cannot be registered in {nfc(target)}: {exc}{hint}"
        ) from exc
    except BaseException:
        cat.close()
        raise
    return cat, path
