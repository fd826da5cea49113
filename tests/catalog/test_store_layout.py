"""The local store's layout (``objects/ab/<sha256>``), the upgrade of the older two-level
layout, ``write_new`` (small contents written straight to their key, never over a file) and
the directory-symlink checks of the descriptor-relative object access."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from neuroscale.catalog.api import SMALL_FILE_BYTES, Catalog
from neuroscale.catalog.errors import UnsafePathError
from neuroscale.catalog.paths import legacy_object_key, object_key
from neuroscale.catalog.store import LocalStore, stored_sha_from_key


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_object_key_is_one_level() -> None:
    digest = sha(b"x")
    assert object_key(digest) == f"objects/{digest[:2]}/{digest}"
    assert stored_sha_from_key(object_key(digest)) == digest
    assert stored_sha_from_key(legacy_object_key(digest)) is None  # untracked if left behind
    assert stored_sha_from_key(f"objects/{digest[2:4]}/{digest}") is None


def test_legacy_two_level_store_is_upgraded_on_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    contents = [b"alpha", b"beta", b"gamma"]
    for data in contents:  # a store written by the two-level layout
        old = root / legacy_object_key(sha(data))
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_bytes(data)
    store = LocalStore(root)
    assert (root / "LAYOUT").read_text().strip() == "2"
    for data in contents:
        assert not (root / legacy_object_key(sha(data))).exists()
        assert store.hash_stored(sha(data)) == (sha(data), len(data))
    assert sorted(store.iter_objects()) == sorted(object_key(sha(d)) for d in contents)
    # no empty ab/cd directories left, and opening again changes nothing
    assert not [p for p in (root / "objects").glob("*/*") if p.is_dir()]
    LocalStore(root)
    assert sorted(store.iter_objects()) == sorted(object_key(sha(d)) for d in contents)


def test_catalog_on_an_upgraded_store_verifies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"aaaa")
    (src / "b.bin").write_bytes(b"bbbb")
    cat = Catalog.init(f"sqlite:///{tmp_path}/c.sqlite", str(tmp_path / "store"), admin="b")
    cat.ingest([src], "/c")
    cat.close()
    # rewrite the store as the older layout would have left it
    root = tmp_path / "store"
    (root / "LAYOUT").unlink()
    for data in (b"aaaa", b"bbbb"):
        new, old = root / object_key(sha(data)), root / legacy_object_key(sha(data))
        old.parent.mkdir(parents=True, exist_ok=True)
        new.rename(old)
    cat = Catalog(f"sqlite:///{tmp_path}/c.sqlite", user="b")
    rep = cat.verify()
    assert rep.ok and rep.checked == 2 and not rep.untracked
    cat.close()


def test_write_new_never_overwrites(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    data = b"content"
    assert store.write_new(sha(data), data)
    assert not store.write_new(sha(data), b"other bytes")  # a file is there: untouched
    assert (tmp_path / "store" / object_key(sha(data))).read_bytes() == data
    with store.batch():  # the same through the kept-open directory descriptors
        assert not store.write_new(sha(data), b"x")
        assert store.hash_stored(sha(data)) == (sha(data), len(data))
        assert store.stored_size(sha(b"missing")) is None


def test_symlinked_object_directory_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    data = b"secret"
    digest = sha(data)
    (outside / digest).write_bytes(data)
    (tmp_path / "store" / "objects" / digest[:2]).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        store.hash_stored(digest)
    with pytest.raises(UnsafePathError):
        store.write_new(digest, data)
    with store.batch(), pytest.raises(UnsafePathError):
        store.stored_size(digest)
    assert (outside / digest).read_bytes() == data  # nothing written through the link


def test_small_and_large_files_in_one_ingest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    small, large = b"s" * 100, bytes(range(256)) * ((SMALL_FILE_BYTES + 4096) // 256)
    (src / "small.bin").write_bytes(small)
    (src / "large.bin").write_bytes(large)
    (src / "copy.bin").write_bytes(small)
    cat = Catalog.init(f"sqlite:///{tmp_path}/c.sqlite", str(tmp_path / "store"), admin="b")
    rep = cat.ingest([src], "/c")
    assert sorted((r.object.name, r.status) for r in rep.results) == [
        ("copy.bin", "added"),
        ("large.bin", "added"),
        ("small.bin", "added"),
    ]
    store_root = tmp_path / "store"
    assert (store_root / object_key(sha(small))).read_bytes() == small
    assert (store_root / object_key(sha(large))).read_bytes() == large
    assert not list((store_root / "tmp").iterdir())
    again = cat.ingest([src], "/c")
    assert {r.status for r in again.results} == {"unchanged"}
    assert cat.verify().ok
