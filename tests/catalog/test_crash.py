"""Crash safety of ingest: SIGKILL at random points (>= 100 runs) and at every protocol point.

After every kill: no data object refers to content that is missing, unverified or wrong; no
content is marked verified that does not hash to its name; the automatic recovery (run by the
next ingest, or ``cleanup``) removes every leftover.  Children are forked from a
multiprocessing forkserver that has the catalog pre-imported, which keeps each run cheap.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import crash_worker
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from neuroscale.catalog.api import SMALL_FILE_BYTES, Catalog
from neuroscale.catalog.models import Blob, DataObject

POINTS = ["copied", "claimed", "moved", "verified", "before_commit", "committed"]


@pytest.fixture(scope="module")
def ctx() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["neuroscale.catalog.api", "crash_worker"])
    return context


def check_invariants(cat: Catalog, known_good: set[str] | None = None) -> dict[str, int]:
    """Assert the catalog's safety invariants; returns counts of blobs per state.

    Contents in ``known_good`` (verified by an earlier call, content-addressed so they cannot
    change without a crash-independent corruption) are not re-hashed; new ones are added.
    """
    with Session(cat.engine) as s:
        objects = s.execute(select(DataObject.name, DataObject.sha256, DataObject.size)).all()
        blobs = {b.sha256: b for b in s.scalars(select(Blob))}
    for name, sha, size in objects:
        blob = blobs.get(sha)
        assert blob is not None and blob.state == "ok", f"{name}: content {sha} not ok"
        assert blob.size == size
    states: dict[str, int] = {}
    for sha, blob in blobs.items():
        states[blob.state] = states.get(blob.state, 0) + 1
        if blob.state == "ok":
            assert blob.verified_at is not None and blob.check_status == "ok"
            if known_good is not None and sha in known_good:
                continue
            assert cat.store.hash_stored(sha) == (sha, blob.size), f"ok blob {sha} is not intact"
            if known_good is not None:
                known_good.add(sha)
    return states


def leftovers(cat: Catalog) -> tuple[int, int]:
    with Session(cat.engine) as s:
        pending = len(s.scalars(select(Blob.sha256).where(Blob.state != "ok")).all())
    return pending, len(list(cat.store.iter_temp()))


@pytest.mark.slow
def test_sigkill_during_ingest_loop(cat: Catalog, db_url: str, tmp_path: Path, ctx: Any) -> None:
    # 100 runs on SQLite; fewer on PostgreSQL, whose per-process connection set-up is slower
    runs = 100 if db_url.startswith("sqlite") else 40
    rng = random.Random(1234)
    cat.create_collection("/crash")
    src = tmp_path / "src"
    killed_with_leftovers = 0
    known_good: set[str] = set()
    t0 = time.monotonic()
    for i in range(runs):
        cat.engine.dispose()
        ready = ctx.Event()
        p = ctx.Process(target=crash_worker.ingest_forever, args=(cat.url, str(src), i, ready))
        p.start()
        assert ready.wait(30), "child did not start"
        time.sleep(rng.uniform(0.0, 0.08))
        p.kill()
        p.join(30)
        assert p.exitcode is not None and p.exitcode < 0
        check_invariants(cat, known_good)
        if any(leftovers(cat)):
            killed_with_leftovers += 1
        if i % 10 == 9:  # the automatic recovery (what the next ingest runs) removes leftovers
            cat.recover()
            assert leftovers(cat) == (0, 0)
    cat.recover()
    assert leftovers(cat) == (0, 0)
    states = check_invariants(cat)
    assert states.get("ok", 0) > runs  # the children did real work
    assert cat.verify().ok
    # the kills did land inside the protocol (not only between ingests)
    assert killed_with_leftovers > 0
    assert time.monotonic() - t0 < 120


@pytest.mark.parametrize(
    ("point", "size"), [(p, 64) for p in POINTS] + [("copied", 3 << 20), ("moved", 3 << 20)]
)
def test_sigkill_at_each_protocol_point(
    cat: Catalog, tmp_path: Path, ctx: Any, point: str, size: int
) -> None:
    # small files (<= SMALL_FILE_BYTES) are hashed in memory and written straight to their
    # final key after the claim; larger ones go through tmp/
    cat.create_collection("/crash")
    src = tmp_path / "one.bin"
    payload = b"payload " + point.encode()
    src.write_bytes((payload * (size // len(payload) + 1))[:size])
    cat.engine.dispose()
    ready = ctx.Event()
    p = ctx.Process(target=crash_worker.crash_at, args=(cat.url, str(src), point, ready))
    p.start()
    p.join(60)
    assert p.exitcode == -9, f"child exit code {p.exitcode}"
    check_invariants(cat)
    names = [o.name for o in cat.ls("/crash").objects]
    assert names == (["one.bin"] if point == "committed" else [])
    if point in ("claimed", "moved", "verified", "before_commit"):
        assert leftovers(cat)[0] == 1  # the pending claim
    if point == "copied":  # a large file's tmp/ copy; nothing at all for a small one
        assert leftovers(cat) == ((0, 1) if size > SMALL_FILE_BYTES else (0, 0))
    cat.recover()
    assert leftovers(cat) == (0, 0)
    assert cat.verify().ok
    # and ingesting again just works
    assert cat.ingest(src, "/crash").results[0].status in ("added", "unchanged")
    check_invariants(cat)
