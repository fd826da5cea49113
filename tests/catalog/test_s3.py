"""The fsspec store on S3 (moto server on 127.0.0.1, s3fs): ingest, dedupe, fixity, cleanup."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from catalog_helpers import write_files

from neuroscale.catalog.api import Catalog
from neuroscale.catalog.errors import StoredObjectCorruptedError
from neuroscale.catalog.paths import object_key


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def s3_cat(db_url: str, s3_server: str) -> Any:
    import s3fs

    bucket = f"b{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.mkdir(bucket)
    url = f"s3://{bucket}/store"
    cat = Catalog.init(db_url, url, admin="admin", store_options={"endpoint_url": s3_server})
    yield cat, fs, f"{bucket}/store"
    cat.close()


def test_s3_store_roundtrip_and_fixity(s3_cat: Any, tmp_path: Path) -> None:
    cat, fs, root = s3_cat
    contents = {"a.bin": os.urandom(2000), "b.bin": b"bee", "c.bin": b"bee", "d.bin": b"dee"}
    src = write_files(tmp_path / "src", contents)
    rep = cat.ingest([src], "/s3")
    assert sorted(r.status for r in rep.results) == ["added"] * 4
    assert cat.ingest([src], "/s3").counts == {"unchanged": 4}
    for name, data in contents.items():
        assert fs.cat_file(f"{root}/{object_key(sha(data))}") == data
        assert cat.get(f"/s3/{name}", tmp_path / f"out-{name}").read_bytes() == data
    fs.invalidate_cache()
    assert fs.find(f"{root}/tmp") == []
    assert cat.verify().ok
    # one flipped byte, one deleted object, one untracked file, one crashed upload
    key_a = f"{root}/{object_key(sha(contents['a.bin']))}"
    data = bytearray(contents["a.bin"])
    data[7] ^= 0x80
    fs.pipe_file(key_a, bytes(data))
    fs.rm_file(f"{root}/{object_key(sha(b'dee'))}")
    fs.pipe_file(f"{root}/{object_key(sha(b'stray'))}", b"stray")
    fs.pipe_file(f"{root}/tmp/1~elsewhere~x.part", b"half")
    rep2 = cat.verify(grace=0.0)
    assert [p.objects for p in rep2.corrupt] == [["/s3/a.bin"]]
    assert [p.objects for p in rep2.missing] == [["/s3/d.bin"]]
    assert rep2.untracked == [object_key(sha(b"stray"))]
    assert rep2.stale_temp == ["tmp/1~elsewhere~x.part"]
    with pytest.raises(StoredObjectCorruptedError):
        cat.get("/s3/a.bin", tmp_path / "bad.bin")
    # repair by re-ingesting, clean the rest, remove with --force
    cat.ingest([src / "a.bin", src / "d.bin"], "/s3")
    cleaned = cat.cleanup(grace=0.0, untracked=True)
    assert cleaned.temp == ["tmp/1~elsewhere~x.part"]
    assert cleaned.untracked == [object_key(sha(b"stray"))]
    assert cat.verify(restart=True).ok
    cat.remove("/s3/b.bin")
    cat.remove("/s3/c.bin", force=True)
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/{object_key(sha(b'bee'))}")
    assert cat.verify(restart=True).ok
