"""The catalog's database: URLs, engines, the schema check, and the settings it records.

A catalog is a SQLite file or a PostgreSQL database (through SQLAlchemy; schema migrated by
Alembic, :mod:`neuroscale.catalog.schema`) whose ``settings`` table names its store.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import Engine, create_engine, event, func, select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from neuroscale.catalog import schema  # noqa: E402
from neuroscale.catalog.errors import CatalogConfigError, MissingDependencyError  # noqa: E402
from neuroscale.catalog.models import Principal, Setting  # noqa: E402
from neuroscale.catalog.store import Store, open_store  # noqa: E402


def normalise_url(url: str) -> str:
    """Database URL with an installed driver (``postgresql://`` -> ``postgresql+psycopg://``).

    Parameters
    ----------
    url : str
        ``sqlite:///PATH``, ``postgresql://...`` (or ``postgres://``, ``postgresql+DRIVER://``).

    Returns
    -------
    str

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
    """A SQLAlchemy engine for ``url``; SQLite gets WAL, foreign keys and a 60 s busy timeout.

    Parameters
    ----------
    url : str
        Database URL (see :func:`normalise_url`); a SQLite file's directory is created.

    Returns
    -------
    Engine

    Raises
    ------
    MissingDependencyError, CatalogConfigError
        As :func:`normalise_url`.
    """
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
    """``$NEUROSCALE_CATALOG_USER``, else the login name.

    Returns
    -------
    str
    """
    return os.environ.get("NEUROSCALE_CATALOG_USER") or getpass.getuser()


def check_schema(engine: Engine, url: str) -> None:
    """Check that the database at ``url`` is a catalog at the schema revision this code expects.

    Parameters
    ----------
    engine : Engine
        Engine on the database.
    url : str
        Its URL, for the messages.

    Raises
    ------
    CatalogConfigError
        The database was never initialised, or its schema is at another revision.
    """
    rev = schema.current_revision(engine)
    if rev is None:
        raise CatalogConfigError(
            f"{url} is not an initialised catalog: run 'neuroscale catalog init'"
        )
    if rev != schema.head_revision():
        raise CatalogConfigError(
            f"catalog schema is at revision {rev}, this neuroscale expects "
            f"{schema.head_revision()}: run 'neuroscale catalog init' to upgrade"
        )


def initialise(
    url: str,
    store: str | None,
    admin: str | None,
    store_options: dict[str, Any] | None,
) -> tuple[Engine, str]:
    """Create (or upgrade) the schema at ``url``, record the store, register the first admin.

    Parameters
    ----------
    url : str
        Database URL.
    store : str or None
        Store directory or fsspec URL (default for SQLite: ``store/`` beside the database
        file; required for PostgreSQL on first init).
    admin : str or None
        Administrator created when the catalog has no user yet (default :func:`default_user`).
    store_options : dict or None
        fsspec options of the store, recorded with it.

    Returns
    -------
    (Engine, str)
        The engine on the database and the administrator's name.

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
                store = str(Path(url.split(":///", 1)[1]).expanduser().resolve().parent / "store")
            if "://" not in store:
                store = str(Path(store).expanduser().resolve())
            s.add(Setting(key="store_url", value=store))
            s.add(Setting(key="store_options", value=json.dumps(store_options or {})))
        elif store is not None:
            wanted = store if "://" in store else str(Path(store).expanduser().resolve())
            if wanted != current.value:
                raise CatalogConfigError(f"this catalog's store is {current.value}, not {wanted}")
        if s.scalar(select(func.count()).select_from(Principal)) == 0:
            s.add(Principal(name=admin, kind="user", is_admin=True))
    return engine, admin


def recorded_store(sessions: sessionmaker[Session]) -> Store:
    """Open the store recorded in the catalog's settings.

    Parameters
    ----------
    sessions : sessionmaker
        Sessions on the catalog's database.

    Returns
    -------
    Store

    Raises
    ------
    CatalogConfigError
        The catalog has no store recorded.
    """
    with sessions() as s:
        url = s.get(Setting, "store_url")
        opts = s.get(Setting, "store_options")
    if url is None:
        raise CatalogConfigError("the catalog has no store configured: run init --store")
    return open_store(url.value, json.loads(opts.value) if opts else None)
