"""Provenance: derivatives registered with how they were made, and lineage queries.

A derivation links an output content (SHA-256) to its source contents, with the software,
parameters and times of the step; it is one user's record, shown only to those who can read
an object of its output that user created (:func:`permissions.derivation_visible
<neuroscale.catalog.permissions.derivation_visible>`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from neuroscale.catalog._deps import require

require("sqlalchemy")

from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from neuroscale.catalog import cleanup, ingest, permissions  # noqa: E402
from neuroscale.catalog import metadata as md  # noqa: E402
from neuroscale.catalog._util import aware  # noqa: E402
from neuroscale.catalog.context import Context  # noqa: E402
from neuroscale.catalog.errors import CatalogNotFoundError, MetadataError  # noqa: E402
from neuroscale.catalog.models import Derivation, DerivationSource  # noqa: E402
from neuroscale.catalog.paths import check_object_name, check_sha256, is_sha256  # noqa: E402
from neuroscale.catalog.permissions import READ  # noqa: E402
from neuroscale.catalog.results import Lineage, LineageStep, ObjectInfo, SourceInfo  # noqa: E402
from neuroscale.catalog.store import hash_stream  # noqa: E402


def register_derivative(
    ctx: Context,
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
    ctx : Context
    path : path
        The derivative file.
    sources : sequence of str
        SHA-256 of every input; each must be catalogued and readable by the caller.
    software : str
        Name and version.
    collection : str
        Where to catalog the derivative (needs ``write``).
    parameters : JSON-serialisable, optional
    started, ended : datetime, optional
        Timezone-aware start and end time of the step.
    name : str, optional
        Object name (default: the file name).
    meta : iterable of Triple
        User metadata of the object.
    extract : bool
        Extract metadata from the file.

    Returns
    -------
    ObjectInfo

    Raises
    ------
    CatalogNotFoundError
        A source checksum is not in the catalog (or not readable).
    MetadataError
        Naive datetimes, ``ended`` before ``started``, parameters not JSON-serialisable, an
        empty or too long ``software``.
    CatalogPermissionError, ConflictError, StoredObjectCorruptedError, UnsafePathError
        As :func:`neuroscale.catalog.ingest.ingest_one`.
    """
    started, ended = aware(started, "started"), aware(ended, "ended")
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
    with ctx.sessions() as s, s.begin():
        me = permissions.caller(ctx, s, required=False)
        levels = permissions.levels(ctx, s, me)
        for sha in srcs:
            if not permissions.readable_objects(s, sha, levels):
                raise CatalogNotFoundError(f"source {sha} is not in the catalog")
        coll = permissions.ensure_collection(s, collection, me, levels)
        coll_id, coll_path, me_id = coll.id, coll.path, me.id if me else None
    cleanup.recover(ctx)
    triples = (md.extract(local) if extract else []) + list(meta)
    derivation = {
        "sources": srcs,
        "software": software,
        "parameters": params,
        "started": started,
        "ended": ended,
    }

    def record(s: Session, output: str) -> None:
        add_derivation(s, output, derivation, me_id)

    name = check_object_name(name or local.name)
    result = ingest.ingest_one(
        ctx, local, coll_id, coll_path, name, md.dedupe(triples), me_id, record
    )
    return result.object


def add_derivation(s: Session, output: str, d: dict[str, Any], me_id: int | None) -> None:
    """Record the derivation ``d`` of the content ``output`` by the user ``me_id``, unless
    that user recorded the same one (sources, software, parameters) already.

    A derivation is one user's record (lineage shows it to those who can read an object of
    its output that user holds): another user's identical record is not shared.

    Parameters
    ----------
    s : Session
        Inside the transaction that commits the output.
    output : str
        SHA-256 of the output.
    d : dict
        ``sources`` (sorted SHA-256), ``software``, ``parameters`` (JSON text), ``started``,
        ``ended``.
    me_id : int or None
    """
    for existing in s.scalars(
        select(Derivation).where(
            Derivation.output_sha256 == output, Derivation.user_id.is_not_distinct_from(me_id)
        )
    ):
        if (
            _sources(s, existing) == d["sources"]
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


def _sources(s: Session, der: Derivation) -> list[str]:
    """The sorted source checksums of ``der``."""
    return sorted(
        s.scalars(
            select(DerivationSource.source_sha256).where(DerivationSource.derivation_id == der.id)
        )
    )


def resolve_checksum(s: Session, target: str | Path, levels: dict[int, int]) -> str:
    """The content checksum ``target`` stands for: a SHA-256, a logical object path, or a
    local file (hashed), which some readable object must hold.

    Parameters
    ----------
    s : Session
    target : str or Path
    levels : dict of int to int
        The caller's levels.

    Returns
    -------
    str

    Raises
    ------
    CatalogNotFoundError
        No readable object holds the content (or no such object).
    """
    text = str(target)
    if is_sha256(text.lower()):
        sha = text.lower()
    elif text.startswith("/") and not Path(text).is_file():
        return permissions.data_object(s, text, levels, READ)[0].sha256
    elif Path(text).is_file():
        with open(text, "rb") as fh:
            sha = hash_stream(fh)[0]
    else:
        return permissions.data_object(s, text, levels, READ)[0].sha256
    if not permissions.readable_objects(s, sha, levels):
        raise CatalogNotFoundError(f"no catalogued object has checksum {sha}")
    return sha


def lineage(ctx: Context, target: str | Path, *, max_depth: int = 100) -> Lineage:
    """Provenance chain of an object (logical path), a checksum, or a local file's content.

    Upstream steps go back to raw data (contents with no recorded derivation); downstream
    steps lead to everything derived from it.  Only what the caller can read is shown:
    sources it cannot read appear as bare checksums and are not followed; derivatives it
    cannot read are left out; a derivation is shown only to those who can read an object
    of its output that its recorder created.

    Parameters
    ----------
    ctx : Context
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
    with ctx.sessions() as s, s.begin():
        levels = permissions.caller_levels(ctx, s)
        sha = resolve_checksum(s, target, levels)
        upstream, raw = _upstream(s, sha, levels, max_depth)
        downstream = _downstream(s, sha, levels, max_depth)
        return Lineage(_source_info(s, sha, levels), upstream, downstream, raw)


def _source_info(s: Session, sha: str, levels: dict[int, int]) -> SourceInfo:
    return SourceInfo(sha, permissions.readable_objects(s, sha, levels))


def _step(s: Session, der: Derivation, depth: int, levels: dict[int, int]) -> LineageStep:
    return LineageStep(
        derivation_id=der.id,
        output=_source_info(s, der.output_sha256, levels),
        sources=[_source_info(s, x, levels) for x in _sources(s, der)],
        software=der.software,
        parameters=json.loads(der.parameters),
        started=der.started,
        ended=der.ended,
        depth=depth,
    )


def _upstream(
    s: Session, sha: str, levels: dict[int, int], max_depth: int
) -> tuple[list[LineageStep], list[SourceInfo]]:
    """The visible derivations back from ``sha`` (breadth first, readable sources followed)
    and the raw contents reached (no visible derivation)."""
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
                    select(Derivation).where(Derivation.output_sha256 == x).order_by(Derivation.id)
                )
                if permissions.derivation_visible(s, der, levels)
            ]
            if not ders:
                raw.append(_source_info(s, x, levels))
            for der in ders:
                st = _step(s, der, depth, levels)
                upstream.append(st)
                for src in st.sources:
                    if src.sha256 not in seen and src.objects:
                        seen.add(src.sha256)
                        nxt.append(src.sha256)
        frontier = nxt
    return upstream, raw


def _downstream(s: Session, sha: str, levels: dict[int, int], max_depth: int) -> list[LineageStep]:
    """The visible derivations that used ``sha``, and what used their outputs (breadth first)."""
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
                if not permissions.derivation_visible(s, der, levels):
                    continue
                if any(st.derivation_id == der.id for st in downstream):
                    continue
                downstream.append(_step(s, der, depth, levels))
                if der.output_sha256 not in seen_down:
                    seen_down.add(der.output_sha256)
                    nxt.append(der.output_sha256)
        frontier = nxt
    return downstream
