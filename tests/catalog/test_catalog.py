"""Core catalog behaviour on SQLite *and* PostgreSQL (``db_url`` is parametrised)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from catalog_helpers import write_files

from neuroscale.catalog.api import Catalog
from neuroscale.catalog.errors import (
    CatalogConfigError,
    CatalogNotFoundError,
    ConflictError,
    MetadataError,
    QuerySyntaxError,
    StoredObjectCorruptedError,
    UnsafePathError,
)
from neuroscale.catalog.metadata import make_triple
from neuroscale.catalog.paths import object_key
from neuroscale.errors import InputNotFoundError, NeuroscaleError

UTC = dt.UTC

# (subject, task, run, TR s, shape, voxel mm)
RUNS = [
    ("01", "oneback", 1, 2.0, (4, 5, 3, 6), (3.0, 3.0, 3.3)),
    ("01", "oneback", 2, 2.0, (4, 5, 3, 7), (3.0, 3.0, 3.3)),
    ("01", "rest", 1, 3.0, (4, 5, 3, 5), (2.0, 2.0, 2.0)),
    ("02", "oneback", 1, 2.5, (4, 5, 3, 8), (3.0, 3.0, 3.3)),
    ("03", "oneback", 1, 1.5, (6, 5, 3, 4), (2.5, 2.5, 2.5)),
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_bids(root: Path) -> Path:
    """A small BIDS dataset with real NIfTI headers and JSON sidecars (TRs known)."""
    rng = np.random.default_rng(0)
    write_files(root, {"dataset_description.json": b'{"Name": "t", "BIDSVersion": "1.9.0"}'})
    (root / "task-oneback_bold.json").write_text(
        json.dumps({"TaskName": "oneback", "EchoTime": 0.03})
    )
    for sub, task, run, tr, shape, zooms in RUNS:
        d = root / f"sub-{sub}" / "func"
        d.mkdir(parents=True, exist_ok=True)
        stem = f"sub-{sub}_task-{task}_run-{run}_bold"
        img = nib.Nifti1Image(rng.integers(0, 100, shape).astype(np.int16), np.diag([*zooms, 1]))
        img.header.set_zooms((*zooms, tr))
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, d / f"{stem}.nii.gz")
        (d / f"{stem}.json").write_text(json.dumps({"RepetitionTime": tr, "RunLabel": run}))
    return root


# ---------------------------------------------------------------------------------------------
def test_init_is_idempotent_and_schema_matches_models(db_url: str, store_dir: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from neuroscale.catalog import schema
    from neuroscale.catalog.models import Base

    c1 = Catalog.init(db_url, str(store_dir), admin="admin")
    c1.close()
    c2 = Catalog.init(db_url, str(store_dir), admin="someone-else")  # no second admin, no error
    assert [p.name for p in c2.as_user("admin").principals()] == ["admin"]
    with c2.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert schema.current_revision(c2.engine) == schema.head_revision()
    with pytest.raises(CatalogConfigError, match="store"):
        Catalog.init(db_url, str(store_dir.parent / "elsewhere"))
    # downgrade to nothing: opening must then refuse with a clear message
    schema.downgrade(c2.engine, "base")
    c2.close()
    with pytest.raises(CatalogConfigError, match="not an initialised catalog"):
        Catalog(db_url)


def test_open_uninitialised_and_unknown_user(db_url: str, cat: Catalog) -> None:
    stranger = cat.as_user("mallory")
    with pytest.raises(PermissionError, match="not registered"):
        stranger.collections()
    with pytest.raises(NeuroscaleError):
        stranger.ingest([], "/x")


def test_ingest_dedupe_and_verify_on_store(cat: Catalog, tmp_path: Path, store_dir: Path) -> None:
    src = write_files(
        tmp_path / "src",
        {"a.txt": b"alpha", "b.txt": b"beta", "sub/c.txt": b"alpha", "sub/d.bin": os.urandom(3000)},
    )
    rep = cat.ingest([src], "/lab/raw")
    assert {r.object.name: r.status for r in rep.results} == {
        "a.txt": "added",
        "b.txt": "added",
        "sub/c.txt": "added",  # same content as a.txt: stored once (below), never told
        "sub/d.bin": "added",
    }
    for r in rep.results:
        data = (src / r.object.name).read_bytes()
        assert r.object.sha256 == sha(data)
        assert r.object.size == len(data)
        stored = store_dir / object_key(sha(data))
        assert stored.read_bytes() == data
    # exactly one stored copy per distinct content, nothing left in tmp/
    stored_files = sorted(p for p in (store_dir / "objects").rglob("*") if p.is_file())
    assert len(stored_files) == 3
    assert list((store_dir / "tmp").iterdir()) == []
    # re-ingesting identical content adds nothing
    before = sorted(p.stat().st_mtime_ns for p in stored_files)
    rep2 = cat.ingest([src], "/lab/raw")
    assert rep2.counts == {"unchanged": 4}
    assert len(cat.ls("/lab/raw").objects) == 4
    assert sorted(p.stat().st_mtime_ns for p in stored_files) == before
    # same name, different content: refused, catalog untouched
    (src / "a.txt").write_bytes(b"ALPHA")
    with pytest.raises(ConflictError, match="different content"):
        cat.ingest([src / "a.txt"], "/lab/raw")
    assert cat.stat("/lab/raw/a.txt").sha256 == sha(b"alpha")
    assert list((store_dir / "tmp").iterdir()) == []
    with pytest.raises(InputNotFoundError):
        cat.ingest([tmp_path / "nope"], "/lab/raw")


def test_ingest_name_and_unsafe_names(cat: Catalog, tmp_path: Path) -> None:
    f = write_files(tmp_path, {"x.dat": b"x"}) / "x.dat"
    assert cat.ingest(f, "/c", name="deep/er/y.dat").results[0].object.path == "/c/deep/er/y.dat"
    for bad in ["../escape", "/abs/name", "a/../../b", "nul\x00byte", "a//b", "back\\slash", "."]:
        with pytest.raises(UnsafePathError):
            cat.ingest(f, "/c", name=bad)
    for bad in ["/../x", "a/../b", "/x/\x00", "", "/", "a/./b"]:
        with pytest.raises(UnsafePathError):
            cat.ingest(f, bad)
    assert [o.name for o in cat.ls("/c").objects] == ["deep/er/y.dat"]


def test_ingest_skips_symlinks_pointing_outside(cat: Catalog, tmp_path: Path) -> None:
    outside = write_files(tmp_path / "outside", {"secret.txt": b"secret"})
    src = write_files(tmp_path / "src", {"inside.txt": b"in"})
    (src / "link_out.txt").symlink_to(outside / "secret.txt")
    (src / "link_in.txt").symlink_to(src / "inside.txt")
    rep = cat.ingest([src], "/c")
    assert sorted(r.object.name for r in rep.results) == ["inside.txt", "link_in.txt"]
    assert [Path(p).name for p, _ in rep.skipped] == ["link_out.txt"]
    assert cat.find("has sub") == []
    assert not any(o.sha256 == sha(b"secret") for o in cat.ls("/c").objects)


def test_bids_metadata_and_find(cat: Catalog, tmp_path: Path) -> None:
    root = make_bids(tmp_path / "ds")
    cat.ingest([root], "/lab/ds", meta=[make_triple("project", "p1")])
    bold = "/lab/ds/sub-01/func/sub-01_task-oneback_run-1_bold.nii.gz"
    meta = {(m.attribute, m.value, m.unit) for m in cat.meta(bold)}
    expected = {
        ("sub", "01", None),
        ("task", "oneback", None),
        ("run", "1", None),
        ("suffix", "bold", None),
        ("datatype", "func", None),
        ("shape", "4x5x3x6", None),
        ("n_volumes", "6", None),
        ("voxel_size", "3x3x3.3", "mm"),
        ("tr", "2", "s"),
        ("dtype", "int16", None),
        ("RepetitionTime", "2", "s"),
        ("TaskName", "oneback", None),  # inherited from the top-level sidecar
        ("EchoTime", "0.03", "s"),
        ("project", "p1", None),
    }
    assert expected <= meta

    def reference(pred: object) -> list[str]:
        out = []
        for sub, task, run, tr, shape, _zooms in RUNS:
            if pred(sub, task, run, tr, shape):  # type: ignore[operator]
                out.append(f"/lab/ds/sub-{sub}/func/sub-{sub}_task-{task}_run-{run}_bold.nii.gz")
        return sorted(out)

    cases = {
        "task = 'oneback' and tr < 2.5": lambda s, t, r, tr, sh: t == "oneback" and tr < 2.5,
        "task = 'oneback' and tr <= 2.5": lambda s, t, r, tr, sh: t == "oneback" and tr <= 2.5,
        "tr >= 2 and not task = 'rest'": lambda s, t, r, tr, sh: tr >= 2 and t != "rest",
        "(sub = '01' or (tr > 2.2 and tr < 2.8)) and extension = '.nii.gz'": lambda s, t, r, tr, sh: (
            s == "01" or 2.2 < tr < 2.8
        ),
        "task != 'oneback' and has tr": lambda s, t, r, tr, sh: t != "oneback",
        "run = 2 and has ndim": lambda s, t, r, tr, sh: r == 2,
        "n_volumes > 5 and suffix = 'bold'": lambda s, t, r, tr, sh: sh[3] > 5,
        "sub like '0%' and TASK = 'x'": lambda *a: False,  # attribute names are case-sensitive
        "task like 'ONE%' and has ndim": lambda s, t, r, tr, sh: (
            t == "oneback"
        ),  # like is case-insensitive
        "shape like '6x%'": lambda s, t, r, tr, sh: sh[0] == 6,
    }
    for where, pred in cases.items():
        assert [o.path for o in cat.find(where)] == reference(pred), where
    assert len(cat.find("has project")) == len(cat.ls("/lab/ds").objects) + sum(
        len(cat.ls(c).objects) for c in cat.ls("/lab/ds").subcollections
    )
    assert len(cat.find("task = 'oneback'", limit=2)) == 2
    assert cat.find("task = 'oneback'", collection="/lab") == cat.find("task = 'oneback'")
    # a quote inside a value is data, never SQL
    assert cat.find("task = 'x'' or ''1''=''1'") == []
    with pytest.raises(QuerySyntaxError):
        cat.find("task = 'oneback'; DROP TABLE avus")
    assert len(cat.find("task = 'oneback' and suffix = 'bold' and extension = '.nii.gz'")) == 4
    assert len(cat.find("task = 'oneback'")) == 9  # runs, their sidecars, the top-level sidecar


def test_indexes_answer_queries(cat: Catalog) -> None:
    """The find query uses the (attribute, value, object) / (attribute, value_num, object) indexes."""
    from sqlalchemy import select

    from neuroscale.catalog.models import AVU, DataObject
    from neuroscale.catalog.query import parse, to_sql

    q = select(DataObject.id).where(to_sql(parse("task = 'a' and tr < 2.5"), DataObject.id, AVU))
    with cat.engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            pytest.skip("EXPLAIN QUERY PLAN is SQLite's; PostgreSQL picks plans by table size")
        compiled = q.compile(conn, compile_kwargs={"literal_binds": True})
        plan = " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
    assert "ix_avus_attr_value_obj" in plan and "ix_avus_attr_num_obj" in plan


def test_meta_add_remove_and_collection_meta(cat: Catalog, tmp_path: Path) -> None:
    f = write_files(tmp_path, {"f.txt": b"f"}) / "f.txt"
    cat.ingest(f, "/c", extract=False)
    cat.add_meta("/c/f.txt", "weight", 3.5, "kg")
    cat.add_meta("/c/f.txt", "weight", "4")
    cat.add_meta("/c", "study", "s1")
    assert [(m.attribute, m.value, m.unit) for m in cat.meta("/c/f.txt")] == [
        ("weight", "3.5", "kg"),
        ("weight", "4", None),
    ]
    assert [(m.attribute, m.value) for m in cat.meta("/c")] == [("study", "s1")]
    assert [o.path for o in cat.find("weight > 3.9")] == ["/c/f.txt"]
    assert [o.path for o in cat.find("weight != 5")] == ["/c/f.txt"]
    assert cat.find("weight != 4") == []
    assert cat.remove_meta("/c/f.txt", "weight", "4") == 1
    assert cat.find("weight > 3.9") == []
    assert cat.remove_meta("/c/f.txt", "weight") == 1
    for bad in [("", "v"), ("a", "x" * 3000), ("a\x00", "v")]:
        with pytest.raises(MetadataError):
            cat.add_meta("/c/f.txt", *bad)


def test_lineage_chain(cat: Catalog, tmp_path: Path) -> None:
    files = write_files(
        tmp_path,
        {"raw1.nii": b"raw-1", "raw2.nii": b"raw-2", "mc.nii": b"motion", "conf.tsv": b"conf",
         "fc.npy": b"connectivity", "other.txt": b"unrelated"},
    )  # fmt: skip
    cat.ingest([files / "raw1.nii", files / "raw2.nii", files / "other.txt"], "/lab/raw")
    t0 = dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    mc = cat.register_derivative(
        files / "mc.nii", sources=[sha(b"raw-1")], software="neuroscale 0.1 mc",
        parameters={"ref": "mean"}, started=t0, ended=t0 + dt.timedelta(minutes=2),
        collection="/lab/deriv",
    )  # fmt: skip
    conf = cat.register_derivative(
        files / "conf.tsv", sources=[mc.sha256], software="neuroscale 0.1 confounds",
        parameters={"fd_radius_mm": 50}, collection="/lab/deriv",
    )  # fmt: skip
    fc = cat.register_derivative(
        files / "fc.npy", sources=[mc.sha256, conf.sha256, sha(b"raw-2")],
        software="neuroscale 0.1 fc", parameters=None, collection="/lab/deriv",
    )  # fmt: skip
    lin = cat.lineage(fc.path)
    assert lin.target.sha256 == sha(b"connectivity")
    assert lin.target.objects == ["/lab/deriv/fc.npy"]
    up = {st.output.sha256: st for st in lin.upstream}
    assert set(up) == {fc.sha256, conf.sha256, mc.sha256}
    assert sorted(s.sha256 for s in up[fc.sha256].sources) == sorted(
        [mc.sha256, conf.sha256, sha(b"raw-2")]
    )
    assert up[mc.sha256].parameters == {"ref": "mean"}
    assert up[mc.sha256].started == t0 and up[mc.sha256].software == "neuroscale 0.1 mc"
    assert sorted(r.sha256 for r in lin.raw) == sorted([sha(b"raw-1"), sha(b"raw-2")])
    assert lin.downstream == []
    # forward from raw data, by checksum and by local file
    fwd = cat.lineage(sha(b"raw-1"))
    assert [st.output.objects for st in fwd.downstream] == [
        ["/lab/deriv/mc.nii"], ["/lab/deriv/conf.tsv"], ["/lab/deriv/fc.npy"]
    ]  # fmt: skip
    assert [st.depth for st in fwd.downstream] == [1, 2, 2]
    assert cat.lineage(files / "raw1.nii").downstream == fwd.downstream
    assert cat.lineage("/lab/raw/other.txt").downstream == []
    # registering the same derivation twice records it once
    cat.register_derivative(
        files / "conf.tsv", sources=[mc.sha256], software="neuroscale 0.1 confounds",
        parameters={"fd_radius_mm": 50}, collection="/lab/deriv",
    )  # fmt: skip
    assert len(cat.lineage(conf.path).upstream) == 2
    with pytest.raises(CatalogNotFoundError, match="source"):
        cat.register_derivative(
            files / "fc.npy", sources=["0" * 64], software="x", collection="/lab/deriv"
        )
    with pytest.raises(MetadataError, match="timezone"):
        cat.register_derivative(
            files / "fc.npy", sources=[mc.sha256], software="x", collection="/lab/deriv",
            started=dt.datetime(2024, 1, 1),
        )  # fmt: skip
    with pytest.raises(CatalogNotFoundError):
        cat.lineage("f" * 64)


def test_verify_finds_flipped_byte_missing_untracked_and_resumes(
    cat: Catalog, tmp_path: Path, store_dir: Path
) -> None:
    contents = {f"f{i:02d}.bin": os.urandom(500 + i) for i in range(12)}
    src = write_files(tmp_path / "src", contents)
    cat.ingest([src], "/lab/raw")
    rep = cat.verify()
    assert rep.ok and rep.checked == 12 and rep.n_ok == 12 and not rep.resumed
    # flip one byte of one object, delete another, plant an untracked file and a stale temp
    victim = store_dir / object_key(sha(contents["f03.bin"]))
    data = bytearray(victim.read_bytes())
    data[100] ^= 0x01
    victim.write_bytes(bytes(data))
    (store_dir / object_key(sha(contents["f07.bin"]))).unlink()
    stray = store_dir / object_key(sha(b"stray"))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"stray")
    (store_dir / "tmp" / "99999999~otherhost~abc.part").write_bytes(b"half")
    os.utime(store_dir / "tmp" / "99999999~otherhost~abc.part", (0, 0))
    # interrupted after 5 objects, then resumed: every object checked exactly once
    seen: list[str] = []
    part = cat.verify(max_objects=5, progress=lambda n, s, st: seen.append(s))
    assert not part.complete and part.checked == 5
    rest = cat.verify(progress=lambda n, s, st: seen.append(s))
    assert rest.resumed and rest.complete and rest.run_id == part.run_id
    assert sorted(seen) == sorted(sha(c) for c in contents.values())
    assert rest.checked == 12 and rest.n_ok == 10
    assert [(p.sha256, p.objects) for p in rest.corrupt] == [
        (sha(contents["f03.bin"]), ["/lab/raw/f03.bin"])
    ]
    assert [(p.sha256, p.objects) for p in rest.missing] == [
        (sha(contents["f07.bin"]), ["/lab/raw/f07.bin"])
    ]
    assert rest.untracked == [object_key(sha(b"stray"))]
    assert rest.stale_temp == ["tmp/99999999~otherhost~abc.part"]
    assert not rest.ok
    # reading a corrupted object fails loudly and writes nothing
    with pytest.raises(StoredObjectCorruptedError):
        cat.get("/lab/raw/f03.bin", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    # incremental: only what failed (or was never checked) is re-checked
    inc_seen: list[str] = []
    inc = cat.verify(incremental=True, progress=lambda n, s, st: inc_seen.append(s))
    assert sorted(inc_seen) == sorted([sha(contents["f03.bin"]), sha(contents["f07.bin"])])
    assert inc.mode == "incremental" and not inc.ok
    # re-ingesting the original content repairs the store; cleanup removes the leftovers
    cat.ingest([src / "f03.bin", src / "f07.bin"], "/lab/raw")
    cleaned = cat.cleanup(untracked=True)
    assert cleaned.untracked == [object_key(sha(b"stray"))]
    assert cleaned.temp == ["tmp/99999999~otherhost~abc.part"]
    final = cat.verify()
    assert final.ok and final.checked == 12
    assert cat.get("/lab/raw/f03.bin", tmp_path).read_bytes() == contents["f03.bin"]


def test_verify_reports_symlink_in_store(cat: Catalog, tmp_path: Path, store_dir: Path) -> None:
    src = write_files(tmp_path / "src", {"a.bin": b"aaaa"})
    outside = write_files(tmp_path / "outside", {"fake.bin": b"aaaa"})
    cat.ingest([src], "/c")
    key = store_dir / object_key(sha(b"aaaa"))
    key.unlink()
    key.symlink_to(outside / "fake.bin")  # same bytes, but outside the store
    rep = cat.verify()
    assert [p.objects for p in rep.corrupt] == [["/c/a.bin"]]
    with pytest.raises(UnsafePathError):
        cat.get("/c/a.bin", tmp_path / "o.bin")
    with pytest.raises(UnsafePathError):
        cat.store.hash_stored("../../etc/passwd")  # type: ignore[arg-type]


def test_remove_last_copy_needs_force(cat: Catalog, tmp_path: Path, store_dir: Path) -> None:
    src = write_files(tmp_path / "src", {"a.txt": b"same", "b.txt": b"same", "c.txt": b"only"})
    cat.ingest([src], "/c")
    cat.remove("/c/a.txt")  # another object still holds the content
    assert (store_dir / object_key(sha(b"same"))).exists()
    with pytest.raises(ConflictError, match="last copy"):
        cat.remove("/c/b.txt")
    with pytest.raises(ConflictError, match="last copy"):
        cat.remove("/c/c.txt")
    assert [o.name for o in cat.ls("/c").objects] == ["b.txt", "c.txt"]
    cat.remove("/c/c.txt", force=True)
    assert not (store_dir / object_key(sha(b"only"))).exists()
    assert [o.name for o in cat.ls("/c").objects] == ["b.txt"]
    with pytest.raises(CatalogNotFoundError):
        cat.remove("/c/c.txt", force=True)
    assert cat.verify().ok


def test_get_copies_and_verifies(cat: Catalog, tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)
    src = write_files(tmp_path / "src", {"big.bin": payload})
    cat.ingest([src], "/c")
    out = cat.get("/c/big.bin", tmp_path / "dest.bin")
    assert out.read_bytes() == payload


def test_text_order_and_like_are_the_same_on_both_databases(cat: Catalog, tmp_path: Path) -> None:
    # values compare in binary collation on SQLite and PostgreSQL (migration 0002): upper case
    # sorts before lower case, and a like pattern stays case-insensitive with its prefix range
    src = write_files(tmp_path / "src", {f"f{i}.txt": str(i).encode() for i in range(4)})
    cat.ingest([src], "/c", extract=False)
    for i, fruit in enumerate(["apple", "Banana", "cherry", "APRICOT"]):
        cat.add_meta(f"/c/f{i}.txt", "fruit", fruit)
    names = lambda where: sorted(o.name for o in cat.find(where))  # noqa: E731
    assert names("fruit < 'b'") == ["f0.txt", "f1.txt", "f3.txt"]  # 'B' and 'A' < 'b' < 'c'
    assert names("fruit >= 'a'") == ["f0.txt", "f2.txt"]
    assert names("fruit like 'ap%'") == ["f0.txt", "f3.txt"]
    assert names("fruit like 'BAN%'") == ["f1.txt"]
    assert [o.name for o in cat.find("fruit like 'a%'", limit=1)] == ["f0.txt"]


def test_find_with_limit_walks_in_order(
    cat: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every comparison counted as dense: the limit is reached by walking the objects in
    # (collection path, name) order (PostgreSQL: one LATERAL walk per collection); the result
    # must be the first `limit` rows of the unlimited answer, whatever the plan
    import neuroscale.catalog.search as search_mod

    for c in ("b", "a", "a/sub"):
        src = write_files(tmp_path / c, {f"f{i:02d}.txt": f"{c}{i}".encode() for i in range(12)})
        cat.ingest([src], f"/{c}", extract=False)
        for i in range(12):
            cat.add_meta(f"/{c}/f{i:02d}.txt", "run", i % 3)
            cat.add_meta(f"/{c}/f{i:02d}.txt", "task", "rest" if i % 2 else "oneback")
    monkeypatch.setattr(search_mod, "FIND_DENSE_ROWS", 0)
    for where in ("task = 'oneback' and run < 2", "has run", "run = 1 or task = 'rest'"):
        full = [o.path for o in cat.find(where)]
        assert full == sorted(full, key=lambda p: (p.rsplit("/", 1)[0], p.rsplit("/", 1)[1]))
        for limit in (1, 5, 13, 100):
            assert [o.path for o in cat.find(where, limit=limit)] == full[:limit], (where, limit)
        assert [o.path for o in cat.find(where, collection="/a", limit=7)] == [
            p for p in full if p.startswith("/a/")
        ][:7]


def test_walk_over_budget_falls_back_to_the_flat_query(
    cat: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import func, literal, select

    import neuroscale.catalog.search as search_mod

    with cat.engine.connect() as conn:
        if conn.dialect.name != "postgresql":
            pytest.skip("the walk budget is PostgreSQL's statement_timeout")
    monkeypatch.setattr(search_mod, "FIND_WALK_BUDGET_MS", 20)
    with cat._sessions() as s, s.begin():
        slow = select(literal("walk"), func.pg_sleep(0.5))
        flat = select(literal("flat"), literal(1))
        assert [tuple(r) for r in Catalog._run_walk(s, slow, flat)] == [("flat", 1)]
        fast = select(literal("walk"), literal(2))
        assert [tuple(r) for r in Catalog._run_walk(s, fast, flat)] == [("walk", 2)]
        # the budget does not outlive the walk
        assert s.execute(select(func.current_setting("statement_timeout"))).scalar() == "0"
    # and find() gives the same answer whichever ran
    src = write_files(tmp_path / "c", {f"f{i:02d}.txt": str(i).encode() for i in range(9)})
    cat.ingest([src], "/c", extract=False)
    for i in range(9):
        cat.add_meta(f"/c/f{i:02d}.txt", "run", i % 3)
    monkeypatch.setattr(search_mod, "FIND_DENSE_ROWS", 0)
    full = [o.path for o in cat.find("run < 2")]
    monkeypatch.setattr(search_mod, "FIND_WALK_BUDGET_MS", 1)
    assert [o.path for o in cat.find("run < 2", limit=4)] == full[:4]
