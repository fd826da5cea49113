"""The code paths that make the catalog fast at scale: batched ingest (one claim, one sync and
one commit per batch), the threaded hash-while-copy of large files, batched fixity records,
and the two SQL forms of ``find`` (they must return the same objects)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from catalog_helpers import write_files
from sqlalchemy import select
from sqlalchemy.orm import Session

from neuroscale.catalog import ingest, search
from neuroscale.catalog.api import Catalog
from neuroscale.catalog.errors import ConflictError
from neuroscale.catalog.metadata import make_triple
from neuroscale.catalog.models import AVU, Blob, DataObject
from neuroscale.catalog.query import like_range, parse, to_sql
from neuroscale.catalog.store import LocalStore, hash_stream


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 4096, (1 << 20) - 1, 1 << 20, (9 << 20) + 7, 21 << 20])
def test_hash_stream_copies_and_hashes_every_size(size: int) -> None:
    data = np.random.default_rng(size).bytes(size)
    out = io.BytesIO()
    assert hash_stream(io.BytesIO(data), out) == (sha(data), size)
    assert out.getvalue() == data
    assert hash_stream(io.BytesIO(data)) == (sha(data), size)


def test_local_store_sync_one_and_many(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    shas = []
    for i in range(12):  # more than SYNCFS_MIN_FILES: one syncfs; then a single fsync
        data = f"content {i}".encode()
        tmp = store.write_temp(io.BytesIO(data), sync=False)
        store.commit(tmp.key, tmp.sha256, sync=False)
        shas.append(tmp.sha256)
    store.sync(shas)
    store.sync(shas[:1])
    assert all(store.hash_stored(s) is not None for s in shas)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_batched_ingest_statuses_dedup_and_metadata(
    cat: Catalog, tmp_path: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "INGEST_BATCH_FILES", 4)  # several batches, duplicates across them
    files = {f"d/f{i:02d}.bin": f"x{i % 7}".encode() for i in range(20)}
    src = write_files(tmp_path / "src", files)
    rep = cat.ingest([src], "/lab/b", meta=[make_triple("project", "p1")], extract=False)
    assert [r.object.name for r in rep.results] == sorted(files)
    assert rep.counts == {"added": 20}  # 7 contents stored once each (below), never told
    for r in rep.results:
        assert r.object.sha256 == sha(files[r.object.name])
    with Session(cat.engine) as s:
        assert {b.state for b in s.scalars(select(Blob))} == {"ok"}
        assert s.scalar(select(Blob).where(Blob.verified_at.is_(None))) is None
        n_avu = len(s.scalars(select(AVU.id).where(AVU.attribute == "project")).all())
    assert n_avu == 20
    stored = [p for p in (store_dir / "objects").rglob("*") if p.is_file()]
    assert len(stored) == 7
    assert list((store_dir / "tmp").iterdir()) == []
    assert cat.ingest([src], "/lab/b", extract=False).counts == {"unchanged": 20}
    assert cat.verify().ok


def test_conflict_in_a_batch_commits_the_files_before_it(
    cat: Catalog, tmp_path: Path, store_dir: Path
) -> None:
    src = write_files(tmp_path / "src", {"b.txt": b"bravo"})
    cat.ingest([src], "/lab/c", extract=False)
    write_files(src, {"a.txt": b"alpha", "b.txt": b"BRAVO", "c.txt": b"charlie"})
    with pytest.raises(ConflictError, match="different content"):
        cat.ingest([src], "/lab/c", extract=False)
    assert [o.name for o in cat.ls("/lab/c").objects] == ["a.txt", "b.txt"]
    assert cat.stat("/lab/c/b.txt").sha256 == sha(b"bravo")
    assert list((store_dir / "tmp").iterdir()) == []
    with Session(cat.engine) as s:
        assert {b.state for b in s.scalars(select(Blob))} == {"ok"}
        assert s.scalar(select(DataObject).where(DataObject.name == "c.txt")) is None


@pytest.mark.parametrize(
    "where",
    [
        "task = 'oneback' and tr < 2.5",
        "task = 'oneback' and tr < 2.5 and sub = '03'",
        "has task and not task = 'rest'",
        "task != 'rest' and run >= 2",
        "sub like '0%' and (tr = 2 or tr = 3)",
        "tr <= 2 and n > 5",
        "task like 'ONE%' and n > 2",
        "task like '%back' or sub = '01'",
    ],
)
def test_find_plans_agree(
    cat: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Driven (IN + EXISTS), walked (EXISTS only) and all-IN plans return the same objects."""
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    names = []
    for i in range(60):
        name = f"o{i:02d}.bin"
        write_files(src, {name: f"data {i}".encode()})
        names.append(name)
    cat.ingest([src], "/lab/f", extract=False)
    tasks = ["rest", "oneback", "movie"]
    for name in names:
        for t in (
            make_triple("task", tasks[int(rng.integers(0, 3))]),
            make_triple("tr", float(rng.choice([1.5, 2.0, 2.5, 3.0])), "s"),
            make_triple("sub", f"{int(rng.integers(0, 5)):02d}"),
            make_triple("run", int(rng.integers(1, 4))),
            make_triple("n", int(rng.integers(0, 10))),
        ):
            cat.add_meta(f"/lab/f/{name}", t)
    with Session(cat.engine) as s:  # reference: every comparison an uncorrelated IN
        expected = [
            f"/lab/f/{n}"
            for n in s.scalars(
                select(DataObject.name)
                .where(to_sql(parse(where), DataObject.id, AVU))
                .order_by(DataObject.name)
            )
        ]
    assert expected  # the queries do match something
    assert [o.path for o in cat.find(where)] == expected  # a driver, if any
    assert [o.path for o in cat.find(where, limit=1000)] == expected
    assert [o.path for o in cat.find(where, limit=3)] == expected[:3]
    monkeypatch.setattr(search, "FIND_DENSE_ROWS", 1)  # every comparison dense: walk in order
    assert [o.path for o in cat.find(where, limit=1000)] == expected
    assert [o.path for o in cat.find(where, limit=3)] == expected[:3]


def test_like_range_bounds_every_case_variant() -> None:
    assert like_range("%x") is None and like_range("_x") is None
    low, high = like_range("Sub-0%") or ("", "")
    for value in ["sub-0", "SUB-01", "sUb-0x", "Sub-0\u00e9"]:
        assert low <= value <= high
    assert not (low <= "sub-1" <= high) and not (low <= "SUA" <= high)
