"""Create and upgrade the catalog schema with Alembic (no ``alembic.ini`` needed)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from neuroscale.catalog._deps import require

require("alembic")

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None, connection: Any = None) -> Config:
    """An Alembic :class:`Config` pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest migration's revision id (read once per process)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Any) -> str | None:
    """The revision the database at ``engine`` is at (None when never initialised)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Any, revision: str = "head") -> None:
    """Migrate the database at ``engine`` to ``revision`` (default: the newest)."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), revision)


def downgrade(engine: Any, revision: str) -> None:
    """Migrate the database at ``engine`` down to ``revision`` (``"base"`` drops everything)."""
    with engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), revision)
