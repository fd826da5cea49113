"""What the catalog's operations return: plain dataclasses, no database rows.

Every service of :mod:`neuroscale.catalog` answers with these (the CLI prints them, or dumps
them as JSON); :func:`object_info` turns a data object row and its collection into an
:class:`ObjectInfo`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from neuroscale.catalog.models import Collection, DataObject


def object_path(collection: str, name: str) -> str:
    """The logical path ``/collection/name`` of the object ``name`` in ``collection``.

    Parameters
    ----------
    collection : str
        Canonical collection path.
    name : str
        Object name (may contain ``/``).

    Returns
    -------
    str
    """
    return f"{collection}/{name}"


def object_info(obj: DataObject, coll: Collection) -> ObjectInfo:
    """The :class:`ObjectInfo` of the data object row ``obj`` in the collection ``coll``.

    Parameters
    ----------
    obj : DataObject
        The row (or a transient copy of one).
    coll : Collection
        Its collection (only ``path`` is read).

    Returns
    -------
    ObjectInfo
    """
    return ObjectInfo(
        path=object_path(coll.path, obj.name),
        collection=coll.path,
        name=obj.name,
        sha256=obj.sha256,
        size=obj.size,
        created=obj.created,
    )


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
