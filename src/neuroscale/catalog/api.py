"""The catalog's Python API: :class:`Catalog`, a facade over the catalog's services.

A catalog is a database (SQLite file or PostgreSQL, through SQLAlchemy; schema migrated by
Alembic) plus a content-addressed store (:mod:`neuroscale.catalog.store`).  The design
follows iRODS (Rajasekar et al. 2010, "iRODS Primer"; https://docs.irods.org): logical
collections and data objects, attribute-value-unit metadata, access levels ``null < read <
write < own`` on collections inherited by their members, tickets, and fixity checks.

Each method of :class:`Catalog` delegates to one service module, a set of functions that
take the catalog as their context (:class:`~neuroscale.catalog.context.Context`):

* :mod:`~neuroscale.catalog.permissions`: who may read, write or own what; every entry
  point checks access there, and "not readable" answers as "not found";
* :mod:`~neuroscale.catalog.principals`: users and groups;
* :mod:`~neuroscale.catalog.objects`: collections and data objects (list, stat, get, rm);
* :mod:`~neuroscale.catalog.ingest`: the crash-safe ingest protocol (claim ``pending`` ->
  store -> sync -> re-hash -> commit; its module docstring says what a SIGKILL at any
  point leaves behind), with :mod:`~neuroscale.catalog.blobs` (the life of a stored
  content) and :mod:`~neuroscale.catalog.localfiles` (the files it reads);
* :mod:`~neuroscale.catalog.lineage`: derivatives and their provenance;
* :mod:`~neuroscale.catalog.avus` and :mod:`~neuroscale.catalog.search`: metadata, and
  ``find`` over it;
* :mod:`~neuroscale.catalog.sharing`: grants and share tickets;
* :mod:`~neuroscale.catalog.integrity` and :mod:`~neuroscale.catalog.cleanup`: fixity
  checks, and removal of what crashes left;
* :mod:`~neuroscale.catalog.engine`: database URLs, engines, schema check, settings;
* :mod:`~neuroscale.catalog.results`: the dataclasses every operation returns.

Tuning knobs live in the module that reads them (``ingest.INGEST_BATCH_FILES``,
``search.FIND_DENSE_ROWS``, ...); this module re-exports their values.

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

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import Engine  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from neuroscale.catalog import avus, ingest, lineage, objects, search  # noqa: E402
from neuroscale.catalog import metadata as md  # noqa: E402
from neuroscale.catalog._util import SQL_CHUNK  # noqa: E402
from neuroscale.catalog.api_admin import AdminMethods  # noqa: E402
from neuroscale.catalog.blobs import BAD_CHECKS, pid_alive  # noqa: E402
from neuroscale.catalog.engine import (  # noqa: E402
    check_schema,
    default_user,
    initialise,
    make_engine,
    normalise_url,
    recorded_store,
)
from neuroscale.catalog.errors import (  # noqa: E402
    CatalogConfigError,
    CatalogError,
    CatalogNotFoundError,
    CatalogPermissionError,
)
from neuroscale.catalog.ingest import (  # noqa: E402
    INGEST_BATCH_BYTES,
    INGEST_BATCH_FILES,
    INGEST_BATCH_MEMORY,
    SMALL_FILE_BYTES,
)
from neuroscale.catalog.models import AVU, Access, Setting, utcnow  # noqa: E402
from neuroscale.catalog.paths import home_collection, nfc  # noqa: E402
from neuroscale.catalog.permissions import OWN, READ, WRITE  # noqa: E402
from neuroscale.catalog.results import (  # noqa: E402
    AccessInfo,
    CleanupReport,
    FixityReport,
    IngestReport,
    IngestResult,
    Lineage,
    LineageStep,
    ListResult,
    MetaInfo,
    ObjectInfo,
    PrincipalInfo,
    Problem,
    SourceInfo,
    TicketInfo,
)
from neuroscale.catalog.search import FIND_DENSE_ROWS, FIND_WALK_BUDGET_MS  # noqa: E402
from neuroscale.catalog.store import Store  # noqa: E402

__all__ = [
    "AVU",
    "BAD_CHECKS",
    "FIND_DENSE_ROWS",
    "FIND_WALK_BUDGET_MS",
    "INGEST_BATCH_BYTES",
    "INGEST_BATCH_FILES",
    "INGEST_BATCH_MEMORY",
    "OWN",
    "PIPELINE_COLLECTION",
    "READ",
    "SMALL_FILE_BYTES",
    "SQL_CHUNK",
    "WRITE",
    "Access",
    "AccessInfo",
    "Catalog",
    "CleanupReport",
    "FixityReport",
    "IngestReport",
    "IngestResult",
    "Lineage",
    "LineageStep",
    "ListResult",
    "MetaInfo",
    "ObjectInfo",
    "PrincipalInfo",
    "Problem",
    "Setting",
    "SourceInfo",
    "TicketInfo",
    "default_user",
    "make_engine",
    "normalise_url",
    "open_for_pipeline",
    "pid_alive",
    "utcnow",
]


class Catalog(AdminMethods):
    """A data catalog: database at ``url`` plus the content-addressed store it names.

    The methods for users and groups, sharing, fixity and cleanup come from its base
    :class:`~neuroscale.catalog.api_admin.AdminMethods`.

    Parameters
    ----------
    url : str
        ``sqlite:///PATH`` or ``postgresql://user@host:port/db``.
    user : str, optional
        Acting user (default :func:`default_user`).
    ticket : str, optional
        A share-ticket token granting access to one collection.
    engine : Engine, optional
        An engine on ``url`` to share (its schema is then not checked, and :meth:`close`
        leaves it open).

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
            check_schema(self.engine, url)
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
        engine, admin = initialise(url, store, admin, store_options)
        cat = cls(url, user=admin, engine=engine)
        cat._owns_engine = True
        cat.store  # noqa: B018  (create the store layout now)
        return cat

    def as_user(self, user: str | None, ticket: str | None = None) -> Catalog:
        """The same catalog (same engine and store) acting as ``user``, optionally with a ticket.

        Parameters
        ----------
        user : str or None
            The acting user (None: no registered user, e.g. a ticket holder).
        ticket : str, optional
            A share-ticket token.

        Returns
        -------
        Catalog
            Closing it leaves this catalog's engine open.
        """
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
    def sessions(self) -> sessionmaker[Session]:
        """Factory of sessions on the catalog's database (what the services use)."""
        return self._sessions

    @property
    def store(self) -> Store:
        """The object store recorded in the catalog's settings (opened on first use).

        Raises
        ------
        CatalogConfigError
            The catalog has no store recorded.
        """
        if self._store is None:
            self._store = recorded_store(self._sessions)
        return self._store

    # -- collections -------------------------------------------------------------------------
    def create_collection(self, path: str) -> str:
        """Create ``path`` (and missing parents); returns the canonical path.

        A top-level collection may be created by any registered user; a sub-collection needs
        ``write`` on its parent.  The creator owns the new collections.  ``/home`` is reserved:
        every user may create their own home ``/home/<user>`` (and anything under it), no one
        else's (administrators excepted), and a home inherits no permission from ``/home``.

        Parameters
        ----------
        path : str

        Returns
        -------
        str

        Raises
        ------
        CatalogPermissionError
            No ``write`` on the parent, or another user's home.
        CatalogNotFoundError
            The collection exists and the caller cannot read it.
        UnsafePathError
            An invalid path.
        """
        return objects.create_collection(self, path)

    def home(self) -> str:
        """The caller's home collection ``/home/<user>`` (created when first written to).

        Returns
        -------
        str

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
        return objects.check_writable(self, collection)

    def collections(self) -> list[str]:
        """Paths of every collection the caller can read.

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
        return objects.collections(self)

    def ls(self, collection: str) -> ListResult:
        """Sub-collections and objects of ``collection`` (needs ``read``).

        Parameters
        ----------
        collection : str

        Returns
        -------
        ListResult

        Raises
        ------
        CatalogNotFoundError
            No such collection, or the caller cannot read it.
        """
        return objects.ls(self, collection)

    def stat(self, target: str) -> ObjectInfo:
        """The object at the logical path ``target`` (needs ``read``).

        Parameters
        ----------
        target : str

        Returns
        -------
        ObjectInfo

        Raises
        ------
        CatalogNotFoundError
            No such object, or the caller cannot read it.
        """
        return objects.stat(self, target)

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
        only then is the record committed (see :mod:`neuroscale.catalog.ingest`).  Content
        already in the store is not stored twice; a file already catalogued under the same
        name with the same content is left as it is.  Directories are walked: objects are
        named by their path relative to the directory; symlinks that resolve outside it are
        skipped.

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
        return ingest.ingest(self, paths, collection, meta=meta, extract=extract, name=name)

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
        CatalogPermissionError, ConflictError, StoredObjectCorruptedError
            As :meth:`ingest`.
        """
        return lineage.register_derivative(
            self, path, sources=sources, software=software, collection=collection,
            parameters=parameters, started=started, ended=ended, name=name, meta=meta,
            extract=extract,
        )  # fmt: skip

    def lineage(self, target: str | Path, *, max_depth: int = 100) -> Lineage:
        """Provenance chain of an object (logical path), a checksum, or a local file's content.

        Upstream steps go back to raw data (contents with no recorded derivation); downstream
        steps lead to everything derived from it.  Only what the caller can read is shown:
        sources it cannot read appear as bare checksums and are not followed; derivatives it
        cannot read are left out; a derivation is shown only to those who can read an object
        of its output that its recorder created (a copy of the same content elsewhere does
        not reveal another user's record).

        Parameters
        ----------
        target : str or Path
            Logical object path, SHA-256, or a local file.
        max_depth : int
            Steps followed in each direction at most.

        Returns
        -------
        Lineage

        Raises
        ------
        CatalogNotFoundError
            The target is not catalogued or not readable.
        """
        return lineage.lineage(self, target, max_depth=max_depth)

    # -- metadata and queries ----------------------------------------------------------------
    def meta(self, target: str) -> list[MetaInfo]:
        """Metadata of an object or collection (needs ``read``).

        Parameters
        ----------
        target : str
            A collection path or a logical object path.

        Returns
        -------
        list of MetaInfo

        Raises
        ------
        CatalogNotFoundError
            No such collection or object, or not readable.
        """
        return avus.meta(self, target)

    def add_meta(
        self, target: str, attribute: str | md.Triple, value: Any = None, unit: str | None = None
    ) -> None:
        """Add a triple to an object or collection (needs ``write``).

        Parameters
        ----------
        target : str
            A collection path or a logical object path.
        attribute : str or Triple
            The attribute, or a whole triple (``value`` and ``unit`` then ignored).
        value : Any
            Text or number.
        unit : str, optional

        Raises
        ------
        MetadataError
            An invalid attribute, value or unit.
        CatalogNotFoundError
            No such collection or object, or not readable.
        CatalogPermissionError
            Readable but not writable.
        """
        avus.add_meta(self, target, attribute, value, unit)

    def remove_meta(self, target: str, attribute: str, value: Any = None) -> int:
        """Remove triples of ``attribute`` (only those equal to ``value`` if given).

        Parameters
        ----------
        target : str
        attribute : str
        value : Any, optional

        Returns
        -------
        int
            How many were removed.

        Raises
        ------
        CatalogNotFoundError
            No such collection or object, or not readable.
        CatalogPermissionError
            Readable but not writable.
        """
        return avus.remove_meta(self, target, attribute, value)

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

        Returns
        -------
        list of ObjectInfo

        Raises
        ------
        QuerySyntaxError
            The expression does not parse.
        CatalogNotFoundError
            ``collection`` does not exist or is not readable.
        """
        return search.find(self, where, collection=collection, limit=limit)

    _run_walk = staticmethod(search.run_walk)

    def _find_query(self, s: Session, node: Any, collection: str | None, limit: int | None) -> Any:
        """The SELECT of :meth:`find` (:func:`neuroscale.catalog.search.find_query`)."""
        return search.find_query(self, s, node, collection, limit)

    # -- retrieval and removal ---------------------------------------------------------------
    def get(self, target: str, dest: str | Path) -> Path:
        """Copy an object out of the store to ``dest`` (a file, or a directory to put it in),
        verifying its SHA-256 on the way; ``dest`` is written atomically.

        Parameters
        ----------
        target : str
            Logical object path (needs ``read``).
        dest : str or Path

        Returns
        -------
        Path
            The file written.

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
        return objects.get(self, target, dest)

    def remove(self, target: str, *, force: bool = False) -> ObjectInfo:
        """Remove an object (needs ``write``); its stored content goes too when no other object
        uses it, which is refused unless ``force``.

        Parameters
        ----------
        target : str
            Logical object path.
        force : bool
            Remove even the last copy of its content the caller can read.

        Returns
        -------
        ObjectInfo
            The object removed.

        Raises
        ------
        ConflictError
            No other object the caller can read holds its content and ``force`` is False
            (whether an unreadable one does is not disclosed: the stored copy then stays).
        """
        return objects.remove(self, target, force=force)


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
