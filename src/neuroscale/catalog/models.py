"""SQLAlchemy models of the catalog (the schema Alembic migrates).

Tables, after iRODS's ICAT:

* ``principals`` — users and groups (``kind``), ``memberships`` links users to groups.
* ``collections`` — a hierarchy of logical paths (``/lab/study``); ``access`` holds the
  permission level of a principal on a collection (``0`` null < ``1`` read < ``2`` write <
  ``3`` own), inherited by the collection's objects and sub-collections.
* ``blobs`` — one row per stored content (SHA-256); ``state`` is ``pending`` while an
  ingest is copying and verifying it, ``ok`` once the stored copy was verified, ``deleting``
  while it is removed.  Only ``ok`` blobs are ever referenced by ``data_objects``.
* ``data_objects`` — a named entry (``collection_id``, ``name``) pointing to a blob.
* ``avus`` — attribute-value-unit metadata on objects or collections, with a numeric shadow
  column ``value_num`` so comparisons such as ``tr < 2.5`` use an index.
* ``derivations`` / ``derivation_sources`` — provenance, by checksum.
* ``tickets`` — share tickets (only a SHA-256 of the token is stored).
* ``fixity_runs`` — progress of ``verify`` so that an interrupted run resumes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import (  # noqa: E402
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column  # noqa: E402
from sqlalchemy.types import TypeDecorator  # noqa: E402

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA_LEN = 64
NAME_LEN = 1024
VALUE_LEN = 2000


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime stored as naive UTC (same on SQLite and PostgreSQL)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog: use timezone-aware values")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention (stable constraint names for migrations)."""

    metadata = MetaData(naming_convention=NAMING)


class Setting(Base):
    """Catalog-wide settings (the store URL and its options)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Principal(Base):
    """A user or a group."""

    __tablename__ = "principals"
    __table_args__ = (CheckConstraint("kind IN ('user', 'group')", name="kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Membership(Base):
    """A user's membership of a group."""

    __tablename__ = "memberships"
    group_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Collection(Base):
    """A logical collection, ``/a/b``; ``parent_id`` is the collection ``/a``."""

    __tablename__ = "collections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("collections.id"), nullable=True, index=True
    )
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Access(Base):
    """Permission ``level`` (1 read, 2 write, 3 own) of a principal on a collection."""

    __tablename__ = "access"
    __table_args__ = (CheckConstraint("level BETWEEN 1 AND 3", name="level"),)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    principal_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    level: Mapped[int] = mapped_column(Integer)


class Blob(Base):
    """Stored content, addressed by its SHA-256."""

    __tablename__ = "blobs"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'ok', 'deleting')", name="state"),
        Index("ix_blobs_state", "state"),
    )
    sha256: Mapped[str] = mapped_column(String(SHA_LEN), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12))
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    owner_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    owner_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    check_status: Mapped[str | None] = mapped_column(String(12), nullable=True)
    check_run_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DataObject(Base):
    """A named object in a collection; its content is the blob ``sha256``."""

    __tablename__ = "data_objects"
    __table_args__ = (UniqueConstraint("collection_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    creator_id: Mapped[int | None] = mapped_column(
        ForeignKey("principals.id", ondelete="SET NULL"), nullable=True
    )


class AVU(Base):
    """An attribute-value-unit triple on an object (``object_id``) or a collection."""

    __tablename__ = "avus"
    __table_args__ = (
        Index("ix_avus_attr_value_obj", "attribute", "value", "object_id"),
        Index("ix_avus_attr_num_obj", "attribute", "value_num", "object_id"),
        Index("ix_avus_object_id", "object_id"),
        Index("ix_avus_collection_id", "collection_id"),
        CheckConstraint("(object_id IS NULL) <> (collection_id IS NULL)", name="one_target"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_id: Mapped[int | None] = mapped_column(
        ForeignKey("data_objects.id", ondelete="CASCADE"), nullable=True
    )
    collection_id: Mapped[int | None] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), nullable=True
    )
    attribute: Mapped[str] = mapped_column(String(255))
    # binary collation on PostgreSQL (SQLite's is binary already): prefix patterns use the
    # (attribute, value) index and text compares in byte order on both (migration 0002)
    value: Mapped[str] = mapped_column(
        String(VALUE_LEN).with_variant(String(VALUE_LEN, collation="C"), "postgresql")
    )
    value_num: Mapped[float | None] = mapped_column(Float, nullable=True)
    unit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="user")


class Derivation(Base):
    """How the content ``output_sha256`` was made (one pipeline step)."""

    __tablename__ = "derivations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_sha256: Mapped[str] = mapped_column(String(SHA_LEN), index=True)
    software: Mapped[str] = mapped_column(String(255))
    parameters: Mapped[str] = mapped_column(Text)
    started: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("principals.id", ondelete="SET NULL"), nullable=True
    )


class DerivationSource(Base):
    """One input (by checksum) of a derivation."""

    __tablename__ = "derivation_sources"
    derivation_id: Mapped[int] = mapped_column(
        ForeignKey("derivations.id", ondelete="CASCADE"), primary_key=True
    )
    source_sha256: Mapped[str] = mapped_column(String(SHA_LEN), primary_key=True, index=True)


class Ticket(Base):
    """A share ticket on a collection; the token itself is never stored, only its SHA-256."""

    __tablename__ = "tickets"
    __table_args__ = (CheckConstraint("level BETWEEN 1 AND 2", name="level"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(SHA_LEN), unique=True)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    level: Mapped[int] = mapped_column(Integer)
    issuer_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), index=True
    )
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    uses_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uses_count: Mapped[int] = mapped_column(Integer, default=0)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class FixityRun(Base):
    """One ``verify`` pass; ``cursor`` is the last checksum checked (for resuming)."""

    __tablename__ = "fixity_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    started: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cursor: Mapped[str | None] = mapped_column(String(SHA_LEN), nullable=True)
    cutoff: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    n_checked: Mapped[int] = mapped_column(Integer, default=0)
    n_ok: Mapped[int] = mapped_column(Integer, default=0)
    n_corrupt: Mapped[int] = mapped_column(Integer, default=0)
    n_missing: Mapped[int] = mapped_column(Integer, default=0)


LEVELS = {"null": 0, "read": 1, "write": 2, "own": 3}
LEVEL_NAMES = {v: k for k, v in LEVELS.items()}
