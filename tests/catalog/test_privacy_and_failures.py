"""Issue 11, catalog: what one user can learn of another's content, per-user target collections,
store failures, non-regular inputs and Unicode normalisation (both backends where a database is
involved).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from catalog_helpers import write_files
from sqlalchemy import select
from sqlalchemy.orm import Session

from neuroscale.catalog import api, schema
from neuroscale.catalog.api import Catalog, open_for_pipeline
from neuroscale.catalog.errors import (
    CatalogConfigError,
    CatalogNotFoundError,
    CatalogPermissionError,
    ConflictError,
    StoredObjectMissingError,
    StoreError,
)
from neuroscale.catalog.models import Blob, Collection, DataObject, Principal
from neuroscale.catalog.paths import object_key
from neuroscale.errors import ConfigurationError

NFC_NAME = unicodedata.normalize("NFC", "café_bold.json")
NFD_NAME = unicodedata.normalize("NFD", "café_bold.json")
assert NFC_NAME != NFD_NAME


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def two_users(cat: Catalog) -> tuple[Catalog, Catalog]:
    cat.add_user("alice")
    cat.add_user("bob")
    return cat.as_user("alice"), cat.as_user("bob")


class StoreWork:
    """Counts what an ingest makes the store do: bytes written, files synced, bytes re-hashed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Any) -> None:
        self.written = self.synced = self.hashed = 0
        cls = type(store)
        write_temp, write_new, sync = cls.write_temp, cls.write_new, cls.sync
        hash_stored, hash_temp = cls.hash_stored, cls.hash_temp

        def w_temp(s: Any, src: Any, **kw: Any) -> Any:
            tmp = write_temp(s, src, **kw)
            self.written += tmp.size
            return tmp

        def w_new(s: Any, digest: str, data: bytes) -> bool:
            done = write_new(s, digest, data)
            self.written += len(data) if done else 0
            return bool(done)

        def w_sync(s: Any, shas: Any, temp_keys: Any = ()) -> None:
            self.synced += len(shas) + len(temp_keys)
            sync(s, shas, temp_keys)

        def h_stored(s: Any, digest: str) -> Any:
            got = hash_stored(s, digest)
            self.hashed += got[1] if got else 0
            return got

        def h_temp(s: Any, key: str) -> Any:
            got = hash_temp(s, key)
            self.hashed += got[1]
            return got

        for name, fn in [("write_temp", w_temp), ("write_new", w_new), ("sync", w_sync),
                         ("hash_stored", h_stored), ("hash_temp", h_temp)]:  # fmt: skip
            monkeypatch.setattr(cls, name, fn)

    def take(self) -> tuple[int, int, int]:
        out = (self.written, self.synced, self.hashed)
        self.written = self.synced = self.hashed = 0
        return out


@pytest.mark.parametrize("size", [64, api.SMALL_FILE_BYTES + 4096])
def test_a_guessed_copy_of_private_content_is_answered_as_any_new_file(
    two_users: tuple[Catalog, Catalog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    alice, bob = two_users
    secret = (b"alice's private result " * (size // 23 + 1))[:size]
    wrong = secret[:-1] + b"?"
    write_files(tmp_path / "a", {"secret.bin": secret})
    write_files(tmp_path / "b", {"guess.bin": secret, "wrong.bin": wrong})
    alice.ingest(tmp_path / "a" / "secret.bin", "/home/alice/private")
    work = StoreWork(monkeypatch, bob.store)
    right = bob.ingest(tmp_path / "b" / "guess.bin", "/home/bob/guesses")
    right_work = work.take()
    other = bob.ingest(tmp_path / "b" / "wrong.bin", "/home/bob/guesses")
    other_work = work.take()
    # the same answer, and the same work in the store (bytes written, files synced, re-hashed)
    assert [r.status for r in right.results] == [r.status for r in other.results] == ["added"]
    assert right.counts == other.counts == {"added": 1}
    assert right_work == other_work and right_work[0] == size
    # stored once; bob's own object points at it; nothing left in tmp/
    store = Path(bob.store.url)
    assert (store / object_key(sha(secret))).read_bytes() == secret
    assert sorted(os.listdir(store / "tmp")) == []
    assert bob.stat("/home/bob/guesses/guess.bin").sha256 == sha(secret)
    # bob sees nothing of alice's
    assert bob.collections() == ["/home/bob", "/home/bob/guesses"]
    assert bob.find("size >= 0 or size < 0") == [] or all(
        o.collection.startswith("/home/bob") for o in bob.find("size >= 0 or size < 0")
    )
    # removing without --force: refused the same way for the right and the wrong guess
    for name in ("guess.bin", "wrong.bin"):
        with pytest.raises(ConflictError, match="last copy of its content you can read"):
            bob.remove(f"/home/bob/guesses/{name}")
    for name in ("guess.bin", "wrong.bin"):
        assert bob.remove(f"/home/bob/guesses/{name}", force=True).name == name
    # alice's copy is intact
    assert alice.get("/home/alice/private/secret.bin", tmp_path / "out.bin").read_bytes() == secret
    assert alice.as_user("admin").verify().ok


def test_lineage_does_not_show_another_users_derivation(
    two_users: tuple[Catalog, Catalog], tmp_path: Path
) -> None:
    alice, bob = two_users
    write_files(tmp_path / "a", {"raw.bin": b"raw data", "result.bin": b"private result"})
    raw = alice.ingest(tmp_path / "a" / "raw.bin", "/home/alice/raw").results[0].object
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    alice.register_derivative(
        tmp_path / "a" / "result.bin", sources=[raw.sha256], software="secret-tool 1.0",
        collection="/home/alice/derived", parameters={"threshold": 0.3}, started=t0, ended=t0,
    )  # fmt: skip
    assert [st.software for st in alice.lineage("/home/alice/derived/result.bin").upstream] == [
        "secret-tool 1.0"
    ]
    write_files(tmp_path / "b", {"guess.bin": b"private result", "guess-raw.bin": b"raw data"})
    bob.ingest(tmp_path / "b", "/home/bob/g")
    for target in ("/home/bob/g/guess.bin", sha(b"private result"), tmp_path / "b" / "guess.bin"):
        lin = bob.lineage(target)
        assert lin.upstream == [] and [r.sha256 for r in lin.raw] == [sha(b"private result")]
    assert bob.lineage("/home/bob/g/guess-raw.bin").downstream == []
    # bob's own identical record is his, and shown to him
    bob.register_derivative(
        tmp_path / "b" / "guess.bin", sources=[sha(b"raw data")], software="secret-tool 1.0",
        collection="/home/bob/d", parameters={"threshold": 0.3}, started=t0, ended=t0,
    )  # fmt: skip
    assert len(bob.lineage("/home/bob/d/guess.bin").upstream) == 1
    assert len(alice.lineage("/home/alice/derived/result.bin").upstream) == 1
    # once alice shares her collection, bob sees her record too
    alice.grant("/home/alice/derived", "bob", "read")
    assert len(bob.lineage("/home/alice/derived/result.bin").upstream) == 2


def test_home_collections_are_per_user(
    cat: Catalog, two_users: tuple[Catalog, Catalog], tmp_path: Path
) -> None:
    alice, bob = two_users
    cat.add_user("eve")
    eve = cat.as_user("eve")
    # eve may not create /home itself, nor anyone else's home
    with pytest.raises(CatalogPermissionError, match="home collections"):
        eve.create_collection("/home")
    with pytest.raises(CatalogPermissionError, match="another user's home"):
        eve.create_collection("/home/alice/neuroscale")
    with pytest.raises(CatalogPermissionError, match="another user's home"):
        eve.check_writable("/home/alice/neuroscale")
    # the old fixed /neuroscale taken by eve blocks nobody: the default is per user
    eve.create_collection("/neuroscale")
    before = cat.collections()
    assert bob.check_writable("/home/bob/neuroscale") == "/home/bob/neuroscale"
    assert cat.collections() == before  # the check created nothing
    with pytest.raises(CatalogNotFoundError, match="no such collection /neuroscale"):
        bob.check_writable("/neuroscale")  # exists, unreadable: not found, not forbidden
    alice.create_collection("/home/alice/neuroscale")
    assert "/home/alice/neuroscale" in alice.collections()
    assert eve.collections() == ["/neuroscale"]
    # an older catalog where a user created (and owns) /home: no inherited access to homes
    with Session(cat.engine) as s, s.begin():
        home = s.scalar(select(Collection).where(Collection.path == "/home"))
        eve_id = s.scalar(select(Principal.id).where(Principal.name == "eve"))
        assert home is not None
        s.add(api.Access(collection_id=home.id, principal_id=eve_id, level=api.OWN))
    with pytest.raises(CatalogNotFoundError):
        eve.ls("/home/alice/neuroscale")
    with pytest.raises(CatalogPermissionError, match="another user's home"):
        eve.create_collection("/home/mallory")


def test_open_for_pipeline_checks_before_any_work(
    cat: Catalog, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat.add_user("bob")
    opened, path = open_for_pipeline(db_url, user="bob")
    opened.close()
    assert path == "/home/bob/neuroscale"
    cat.create_collection("/lab")
    cat.grant("/lab", "bob", "read")
    for user, collection, message in [
        ("mallory", None, "not registered"),
        ("bob", "/lab", "write permission on /lab required"),
        ("bob", "/home/admin/x", "another user's home"),
    ]:
        with pytest.raises(CatalogConfigError, match=message) as info:
            open_for_pipeline(db_url, collection, user=user)
        assert info.value.exit_code == 2
    # a store this user cannot write (here: tmp/ is not a directory)
    tmp = Path(cat.store.url) / "tmp"
    os.rmdir(tmp)
    tmp.write_text("")
    with pytest.raises(CatalogConfigError, match="cannot create the store's directories") as e:
        open_for_pipeline(db_url, user="bob")
    assert "--catalog-collection" not in str(e.value)


def test_store_failure_mid_ingest_is_one_error_and_releases_claims(
    cat: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_files(tmp_path / "src", {f"f{i}.bin": f"content {i}".encode() for i in range(4)})
    cat.ingest(src / "f0.bin", "/c")
    calls = {"n": 0}
    write_new = type(cat.store).write_new

    def failing(store: Any, digest: str, data: bytes) -> bool:
        calls["n"] += 1
        if calls["n"] >= 2:  # the store turns read-only after the first new file
            with store._writing(f"write {object_key(digest)}"):
                raise PermissionError(13, "Permission denied")
        return bool(write_new(store, digest, data))

    monkeypatch.setattr(type(cat.store), "write_new", failing)
    with pytest.raises(StoreError, match=r"cannot write objects/.*Permission denied") as info:
        cat.ingest(src, "/c")
    assert info.value.exit_code == 6 and "\n" not in str(info.value)
    with Session(cat.engine) as s:  # consistent: no claim left, only the committed object
        assert {b.state for b in s.scalars(select(Blob))} == {"ok"}
        assert s.scalars(select(DataObject.name)).all() == ["f0.bin"]
    monkeypatch.undo()
    assert cat.ingest(src, "/c").counts == {"added": 3, "unchanged": 1}
    assert cat.verify().ok


def test_large_file_into_an_unwritable_tmp(cat: Catalog, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(api.SMALL_FILE_BYTES + 1))
    tmp = Path(cat.store.url) / "tmp"
    os.rmdir(tmp)
    tmp.write_text("")
    with pytest.raises(StoreError, match="cannot list tmp/"):
        cat.ingest(big, "/c")
    with Session(cat.engine) as s:
        assert s.scalars(select(Blob)).all() == []


def test_get_of_a_missing_stored_copy(cat: Catalog, tmp_path: Path) -> None:
    write_files(tmp_path / "src", {"a.txt": b"alpha"})
    cat.ingest(tmp_path / "src" / "a.txt", "/c")
    (Path(cat.store.url) / object_key(sha(b"alpha"))).unlink()
    with pytest.raises(StoredObjectMissingError, match=r"stored copy of /c/a.txt .* is missing.*verify"):
        cat.get("/c/a.txt", tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    with pytest.raises(FileNotFoundError, match="destination's directory does not exist"):
        cat.get("/c/a.txt", tmp_path / "nope" / "out.txt")
    write_files(tmp_path / "src", {"b.txt": b"beta"})
    cat.ingest(tmp_path / "src" / "b.txt", "/c")
    with pytest.raises(ConfigurationError, match="cannot write the copy"):  # /proc takes no file
        cat.get("/c/b.txt", "/proc/neuroscale-test-get.txt")


def test_non_regular_inputs_are_skipped_with_the_reason(cat: Catalog, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe_bold.nii.gz"
    os.mkfifo(fifo)
    link = tmp_path / "zero_bold.nii.gz"
    link.symlink_to("/dev/zero")
    rep = cat.ingest(["/dev/zero", fifo, link], "/c")
    assert rep.results == []
    assert [why for _, why in rep.skipped] == [
        "not a regular file (character device)",
        "not a regular file (named pipe)",
        "not a regular file (character device behind a symlink)",
    ]
    # inside a directory walk, a FIFO is skipped beside regular files that are ingested
    d = write_files(tmp_path / "d", {"a.txt": b"a"})
    os.mkfifo(d / "fifo")
    rep = cat.ingest(d, "/c")
    assert rep.counts == {"added": 1}
    assert rep.skipped == [(str(d / "fifo"), "not a regular file (named pipe)")]


def test_names_are_normalised_to_nfc(cat: Catalog, tmp_path: Path) -> None:
    d = tmp_path / "src"
    d.mkdir()
    (d / NFD_NAME).write_bytes(b'{"RepetitionTime": 2}')
    rep = cat.ingest(d / NFD_NAME, unicodedata.normalize("NFD", "/étude"))
    assert rep.results[0].object.path == unicodedata.normalize("NFC", f"/étude/{NFC_NAME}")
    # the NFC spelling of the same name is the same object
    (tmp_path / NFC_NAME).write_bytes(b'{"RepetitionTime": 2}')
    assert cat.ingest(tmp_path / NFC_NAME, "/étude").counts == {"unchanged": 1}
    assert [o.name for o in cat.ls(unicodedata.normalize("NFD", "/étude")).objects] == [NFC_NAME]
    cat.add_meta(f"/étude/{NFD_NAME}", "site", unicodedata.normalize("NFD", "Zürich"))
    for form in ("NFC", "NFD"):
        query = unicodedata.normalize(form, "site = 'Zürich'")
        assert [o.name for o in cat.find(query)] == [NFC_NAME]
        got = cat.get(unicodedata.normalize(form, f"/étude/{NFC_NAME}"), tmp_path / "o.json")
        assert got.read_bytes() == b'{"RepetitionTime": 2}'


def test_migration_0003_normalises_an_older_catalog(db_url: str, tmp_path: Path) -> None:
    engine = api.make_engine(db_url)
    schema.upgrade(engine, "0002")
    nfd_coll = unicodedata.normalize("NFD", "/étude")
    with Session(engine) as s, s.begin():
        s.add(api.Setting(key="store_url", value=str(tmp_path / "store")))
        s.add(Principal(name="admin", kind="user", is_admin=True))
        s.add(Blob(sha256=sha(b"x"), size=1, state="ok", check_status="ok",
                   verified_at=api.utcnow()))  # fmt: skip
        top = Collection(path=nfd_coll, parent_id=None)
        twin_parent = Collection(path="/lab", parent_id=None)
        s.add_all([top, twin_parent])
        s.flush()
        sub = Collection(path=f"{nfd_coll}/sub", parent_id=top.id)
        s.add(sub)
        s.flush()
        for coll, name in [(sub, NFD_NAME), (twin_parent, NFD_NAME), (twin_parent, NFC_NAME)]:
            s.add(DataObject(collection_id=coll.id, name=name, sha256=sha(b"x"), size=1))
        s.add(api.AVU(object_id=None, collection_id=top.id, attribute="site",
                      value=unicodedata.normalize("NFD", "Zürich"), source="user"))  # fmt: skip
    schema.upgrade(engine)
    with Session(engine) as s:
        paths = sorted(s.scalars(select(Collection.path)))
        names = sorted(s.scalars(select(DataObject.name)))
    assert paths == ["/lab", "/étude", "/étude/sub"]
    assert names == sorted([NFC_NAME, NFC_NAME, NFD_NAME])  # the twin in /lab kept its name
    cat = Catalog(db_url, user="admin")
    assert [o.name for o in cat.ls("/étude/sub").objects] == [NFC_NAME]
    assert cat.stat(f"/lab/{NFD_NAME}").name == NFD_NAME  # reachable by its exact name
    assert cat.stat(f"/lab/{NFC_NAME}").name == NFC_NAME
    assert cat.meta("/étude")[0].value == "Zürich"
    cat.close()
    engine.dispose()
