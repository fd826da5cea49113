"""Fixtures of the catalog tests: real SQLite, a throw-away PostgreSQL server, a moto S3 server.

* ``db_url`` is parametrised over ``sqlite`` and ``postgresql``; every test that takes it (or
  ``cat``) runs against both.  The PostgreSQL server is Debian's ``postgresql`` package
  (``initdb``/``pg_ctl`` under ``/usr/lib/postgresql/*/bin`` or on PATH), initialised in a
  temporary directory and listening on 127.0.0.1 on an unused port, one fresh database per
  test; the PostgreSQL variants skip (with the reason) when it is not installed.
* ``s3_server`` starts moto's S3 server on 127.0.0.1 (skip when moto/s3fs are absent).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy", reason="the catalog needs the [catalog] extra (SQLAlchemy)")
pytest.importorskip("alembic", reason="the catalog needs the [catalog] extra (Alembic)")


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
    )
    for d in reversed(candidates):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(pg_ctl)).parent
    return None


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory (``trust`` auth, 127.0.0.1 only)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="ns-catalog-pg-"))
        self.data = self.base / "data"
        self.run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use the postgres account
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError("running as root and no 'postgres' account exists") from exc
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self.run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.counter = itertools.count()

    def _run(self, *cmd: str) -> None:
        subprocess.run(
            cmd, check=True, capture_output=True, timeout=120, cwd=self.base, **self.run_as
        )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -F"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-t", "60",
            "-l", str(self.base / "log"), "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        import sqlalchemy as sa

        name = f"cat_{os.getpid()}_{next(self.counter)}"
        engine = sa.create_engine(self.admin_url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        import sqlalchemy as sa

        name = url.rsplit("/", 1)[1]
        engine = sa.create_engine(self.admin_url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server, or skip with the reason."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL not installed (no initdb/pg_ctl; apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed (the [catalog] extra)")
    server = PostgresServer(bindir)
    try:
        server.start()
    except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
        server.stop()
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"could not start PostgreSQL from {bindir}: {exc} {detail[-300:]!r}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty catalog database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """The local store directory of the test catalog."""
    return tmp_path / "store"


@pytest.fixture
def cat(db_url: str, store_dir: Path) -> Iterator[Any]:
    """An initialised catalog acting as the administrator ``admin``."""
    from neuroscale.catalog.api import Catalog

    c = Catalog.init(db_url, str(store_dir), admin="admin")
    yield c
    c.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (endpoint URL), with dummy credentials in the environment."""
    pytest.importorskip("s3fs", reason="S3 store needs s3fs (the [catalog] extra)")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] not installed")
    port = free_port()
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
