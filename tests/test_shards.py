"""Direct shard reads of the working copy (neuroscale.io.shards) against zarr-python itself:
same values for any region, fill values for chunks never written, corruption detected, and
any other layout refused (callers then read through zarr)."""

from __future__ import annotations

from pathlib import Path

import dask.config
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from neuroscale.errors import CorruptedFileError
from neuroscale.io.shards import ColumnChunkedArray, ShardedArray
from neuroscale.io.zarr_cache import ingest_nifti
from neuroscale.testing import write_synthetic_bold


def _array(path: Path, data: np.ndarray, t_chunk: int, x_chunk: int,
           compressors: object = "blosc") -> zarr.Array:
    """A working-copy-shaped array: shards of whole volumes, inner chunks of x-planes."""
    nt, nx, ny, nz = data.shape
    comp = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle") if compressors == "blosc" \
        else compressors
    arr = zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype,
                            shards=(t_chunk, -(-nx // x_chunk) * x_chunk, ny, nz),
                            chunks=(t_chunk, x_chunk, ny, nz), compressors=comp, fill_value=0,
                            zarr_format=3)
    arr[...] = data
    return arr


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """11 x-planes in inner chunks of 3 (the last one padded), 23 volumes in shards of 5
    (the last one partial), one inner chunk and one whole shard all zero (never written)."""
    rng = np.random.default_rng(7)
    data = rng.integers(-2000, 30000, size=(23, 11, 6, 4)).astype(np.int16)
    data[5:10, 3:6] = 0  # inner chunk 1 of shard 1: zarr does not write it
    data[15:20] = 0  # shard 3: no file at all
    path = tmp_path_factory.mktemp("shards") / "a.zarr"
    _array(path, data, t_chunk=5, x_chunk=3)
    assert not (path / "c" / "3" / "0" / "0" / "0").exists()
    return path, data


@pytest.mark.parametrize("region", [(0, 23, 0, 11), (0, 23, 4, 5), (3, 17, 2, 8),
                                    (5, 10, 3, 6), (15, 20, 0, 11), (22, 23, 10, 11),
                                    (7, 8, 0, 1)])
def test_read_equals_zarr(stored: tuple[Path, np.ndarray], region: tuple[int, ...]) -> None:
    path, data = stored
    t0, t1, a, b = region
    direct = ShardedArray.open(path)
    assert direct is not None and (direct.shard_t, direct.inner_x, direct.n_inner) == (5, 3, 4)
    got = direct.read(t0, t1, a, b)
    ref = np.asarray(zarr.open_array(str(path), mode="r")[t0:t1, a:b])
    assert got.dtype == np.int16 and got.shape == (t1 - t0, b - a, 6, 4)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, data[t0:t1, a:b])


def test_read_into_out_and_bad_regions(stored: tuple[Path, np.ndarray]) -> None:
    path, data = stored
    direct = ShardedArray.open(path)
    assert direct is not None
    out = np.full((4, 2, 6, 4), -1, dtype=np.int16)
    assert direct.read(1, 5, 9, 11, out=out) is out
    np.testing.assert_array_equal(out, data[1:5, 9:11])
    with pytest.raises(ValueError, match="outside"):
        direct.read(0, 24, 0, 1)
    with pytest.raises(ValueError, match="out must be"):
        direct.read(0, 3, 9, 11, out=out)


def test_working_copy_of_a_nifti(tmp_path: Path) -> None:
    """The layout ingest_nifti writes is taken on the direct path and reads the same."""
    nii = tmp_path / "bold.nii.gz"
    write_synthetic_bold(nii, shape=(13, 10, 7, 41), seed=1)
    store = ingest_nifti(nii, tmp_path / "cache", t_chunk=6, x_chunk=2)
    direct = ShardedArray.open(store / "data")
    assert direct is not None and direct.codec == "blosc"
    ref = np.asarray(zarr.open_array(str(store), path="data", mode="r")[:])
    np.testing.assert_array_equal(direct.read(0, 41, 0, 13), ref)
    np.testing.assert_array_equal(direct.read(11, 30, 5, 8), ref[11:30, 5:8])


def test_uncompressed_inner_chunks(tmp_path: Path) -> None:
    data = np.arange(6 * 4 * 3 * 2, dtype=np.float32).reshape(6, 4, 3, 2)
    _array(tmp_path / "raw.zarr", data, t_chunk=4, x_chunk=2, compressors=None)
    direct = ShardedArray.open(tmp_path / "raw.zarr")
    assert direct is not None and direct.codec == "raw"
    np.testing.assert_array_equal(direct.read(0, 6, 1, 4), data[:, 1:4])


def test_other_layouts_are_refused(tmp_path: Path) -> None:
    """Anything but the working copy's layout goes through zarr (open() returns None)."""
    data = np.ones((6, 4, 3, 2), dtype=np.int16)
    _array(tmp_path / "zstd.zarr", data, t_chunk=3, x_chunk=2, compressors=ZstdCodec())
    plain = zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=data.shape,
                              chunks=(3, 2, 3, 2), dtype=data.dtype, zarr_format=3)
    plain[...] = data
    # shards that do not span whole volumes
    part = zarr.create_array(store=str(tmp_path / "part.zarr"), shape=data.shape,
                             shards=(3, 4, 3, 1), chunks=(3, 2, 3, 1), dtype=data.dtype,
                             zarr_format=3)
    part[...] = data
    v2 = zarr.create_array(store=str(tmp_path / "v2.zarr"), shape=data.shape,
                           chunks=(3, 2, 3, 2), dtype=data.dtype, zarr_format=2)
    v2[...] = data
    for name in ("zstd.zarr", "plain.zarr", "part.zarr", "v2.zarr", "missing.zarr"):
        assert ShardedArray.open(tmp_path / name) is None, name


def _corrupt(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_corrupted_index_and_chunk_are_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(8, 4, 5, 3)).astype(np.int16)
    path = tmp_path / "c.zarr"
    _array(path, data, t_chunk=4, x_chunk=2)
    shard = path / "c" / "1" / "0" / "0" / "0"
    direct = ShardedArray.open(path)
    assert direct is not None
    _corrupt(shard, shard.stat().st_size - 10)  # inside the index
    with pytest.raises(CorruptedFileError, match="crc32c"):
        direct.read(4, 8, 0, 4)
    np.testing.assert_array_equal(direct.read(0, 4, 0, 4), data[:4])  # shard 0 intact
    _corrupt(shard, shard.stat().st_size - 10)  # repaired
    np.testing.assert_array_equal(direct.read(4, 8, 0, 4), data[4:])
    _corrupt(shard, 2)  # blosc header of the first inner chunk
    with pytest.raises(CorruptedFileError):
        direct.read(4, 8, 0, 2)
    shard.write_bytes(shard.read_bytes()[:10])  # truncated shard
    with pytest.raises(CorruptedFileError, match="shorter than its index"):
        direct.read(4, 8, 0, 2)


@pytest.mark.parametrize("dtype", ["int16", "uint16", "float32"])
def test_ingest_writes_what_zarr_writes(tmp_path: Path, dtype: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The working copy written shard by shard reads back through zarr-python exactly as the
    one zarr writes itself (x padded to whole inner chunks, a partial last shard, a volume
    of zeros), with the same voxel mean."""
    import nibabel as nib

    import neuroscale.io.zarr_cache as zc

    rng = np.random.default_rng(3)
    data = rng.integers(0, 3000, size=(11, 6, 5, 23)).astype(dtype)
    data[..., 4] = 0
    nii = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), nii)
    stores = {}
    for direct in (True, False):
        monkeypatch.setitem(dask.config.config.setdefault("neuroscale", {}), "direct-writes", direct)
        stores[direct] = zc.ingest_nifti(nii, tmp_path / f"cache-{direct}", t_chunk=5, x_chunk=3)
    got = {d: np.asarray(zarr.open_array(str(s), path="data", mode="r")[:])
           for d, s in stores.items()}
    np.testing.assert_array_equal(got[True], data.transpose(3, 0, 1, 2))
    np.testing.assert_array_equal(got[True], got[False])
    means = [np.asarray(zarr.open_array(str(s), path="mean", mode="r")[:]) for s in stores.values()]
    np.testing.assert_allclose(means[0], data.mean(axis=3), rtol=1e-6)
    np.testing.assert_array_equal(means[0], means[1])
    assert zc.read_manifest(stores[True]) is not None


def test_write_shard_checks_its_input(stored: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = stored
    src = ShardedArray.open(path)
    assert src is not None
    copy = tmp_path / "copy.zarr"
    _array(copy, np.zeros_like(data), t_chunk=5, x_chunk=3)
    dst = ShardedArray.open(copy)
    assert dst is not None and dst.inner_shape == (5, 3, 6, 4)
    good = [np.zeros(dst.inner_shape, np.int16)] * dst.n_inner
    with pytest.raises(ValueError, match="outside the grid"):
        dst.write_shard(5, good)
    with pytest.raises(ValueError, match="needs 4 inner chunks"):
        dst.write_shard(0, good[:3])
    with pytest.raises(ValueError, match="inner chunk must be"):
        dst.write_shard(0, [np.zeros(dst.inner_shape, np.float32)] * 4)
    # a shard copied chunk by chunk reads back the same through zarr
    block = np.zeros((5, 12, 6, 4), np.int16)
    block[:, :11] = data[5:10]
    dst.write_shard(1, (block[:, k * 3 : (k + 1) * 3] for k in range(4)))
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(copy), mode="r")[5:10]),
                                  data[5:10])


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through-zarr"])
def test_series_store_round_trip(tmp_path: Path, direct: bool,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """store_series writes what zarr reads (an edge chunk narrower than the rest included),
    and read_series_store gives it back in any column chunks, written either way."""
    import dask.array as da

    from neuroscale.image import read_series_store, store_series

    monkeypatch.setitem(dask.config.config.setdefault("neuroscale", {}), "series-store-chunk-bytes", 4 * 17 * 10)  # 10 columns
    monkeypatch.setitem(dask.config.config["neuroscale"], "direct-writes", direct)
    rng = np.random.default_rng(5)
    values = rng.normal(size=(17, 93)).astype(np.float32)
    values[:, 20:30] = 0  # a chunk of fill values
    data = da.from_array(values, chunks=(17, (40, 7, 46)))
    store_series(data, tmp_path / "s.zarr")
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(tmp_path / "s.zarr"))[:]),
                                  values)
    layout = ColumnChunkedArray.open(tmp_path / "s.zarr")
    assert layout is not None and layout.width == 10 and layout.shape == (17, 93)
    np.testing.assert_array_equal(layout.read(5, 93), values[:, 5:])
    back = read_series_store(tmp_path / "s.zarr", chunks=((17,), (40, 7, 46)))
    assert back.chunks == ((17,), (40, 7, 46))
    np.testing.assert_array_equal(back.compute(), values)
    np.testing.assert_array_equal(read_series_store(tmp_path / "s.zarr").compute(), values)
    with pytest.raises(ValueError, match="do not cover"):
        read_series_store(tmp_path / "s.zarr", chunks=((17,), (40, 7)))


def test_series_store_lazy_write(tmp_path: Path) -> None:
    """compute=False writes nothing until the returned collection is computed."""
    import dask
    import dask.array as da

    from neuroscale.image import store_series

    values = np.arange(6 * 50, dtype=np.float32).reshape(6, 50)
    lazy = store_series(da.from_array(values, chunks=(6, 20)), tmp_path / "s.zarr",
                        compute=False)
    assert not (tmp_path / "s.zarr" / "c").exists()
    dask.compute(lazy)
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(tmp_path / "s.zarr"))[:]),
                                  values)


def test_column_chunks_check_their_input(tmp_path: Path) -> None:
    arr = zarr.create_array(store=str(tmp_path / "c.zarr"), shape=(4, 25), chunks=(4, 10),
                            dtype=np.float32, zarr_format=3,
                            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
    layout = ColumnChunkedArray.open(tmp_path / "c.zarr")
    assert layout is not None
    with pytest.raises(ValueError, match="not the start of a chunk"):
        layout.write(5, np.zeros((4, 10), np.float32))
    with pytest.raises(ValueError, match="must be"):
        layout.write(20, np.zeros((4, 10), np.float32))  # the edge chunk has 5 columns
    layout.write(20, np.ones((4, 5), np.float64))
    np.testing.assert_array_equal(np.asarray(arr[:, 20:]), np.ones((4, 5)))
    np.testing.assert_array_equal(layout.read(0, 25)[:, :20], 0)  # never written: fill
    (tmp_path / "c.zarr" / "c" / "0" / "2").write_bytes(b"garbage")
    with pytest.raises(CorruptedFileError):
        layout.read(20, 25)
    rows = zarr.create_array(store=str(tmp_path / "r.zarr"), shape=(4, 25), chunks=(2, 10),
                             dtype=np.float32, zarr_format=3)
    assert rows is not None and ColumnChunkedArray.open(tmp_path / "r.zarr") is None


def _crc_chain(kind: str) -> list:
    from zarr.codecs import Crc32cCodec

    blosc = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")] if kind == "blosc" else []
    return [*blosc, Crc32cCodec()]


@pytest.mark.parametrize("kind", ["blosc", "raw"])
def test_inner_chunk_crc32c_written_checked_and_understood_by_zarr(tmp_path: Path,
                                                                   kind: str) -> None:
    """Inner chunks ending with Zarr's crc32c codec: read as zarr reads them, a flipped byte in
    a chunk (not the index) is caught by the direct read, by verify() and by zarr itself."""
    from neuroscale.io.shards import ChunkChecksumError

    rng = np.random.default_rng(5)
    data = rng.integers(0, 4000, size=(10, 7, 5, 3)).astype(np.int16)
    path = tmp_path / "crc.zarr"
    _array(path, data, t_chunk=4, x_chunk=3, compressors=_crc_chain(kind))
    direct = ShardedArray.open(path)
    assert direct is not None and direct.checksum and direct.codec == kind
    np.testing.assert_array_equal(direct.read(0, 10, 0, 7), data)
    assert direct.verify() == sum(p.stat().st_size for p in (path / "c").rglob("*") if p.is_file())
    # the same shard written directly reads back through zarr
    block = np.zeros((4, 9, 5, 3), np.int16)
    block[:, :7] = data[4:8] + 1
    direct.write_shard(1, (block[:, k * 3 : (k + 1) * 3] for k in range(3)))
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(path), mode="r")[4:8]),
                                  data[4:8] + 1)
    shard = path / "c" / "1" / "0" / "0" / "0"
    _corrupt(shard, 20)  # inside inner chunk 0's encoded bytes
    with pytest.raises(ChunkChecksumError, match=r"c/1/0/0/0: inner chunk checksum \(crc32c\)"):
        direct.read(4, 8, 0, 3)
    np.testing.assert_array_equal(direct.read(4, 8, 3, 7), data[4:8, 3:7] + 1)  # other chunks
    with pytest.raises(ChunkChecksumError):
        direct.verify()
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        np.asarray(zarr.open_array(str(path), mode="r")[4:8, 0:3])


def test_ingest_chunks_carry_crc32c(tmp_path: Path) -> None:
    from neuroscale.io.zarr_cache import verify_store

    nii = tmp_path / "bold.nii.gz"
    write_synthetic_bold(nii, shape=(9, 8, 5, 21), seed=4)
    store = ingest_nifti(nii, tmp_path / "cache", t_chunk=6, x_chunk=2)
    direct = ShardedArray.open(store / "data")
    assert direct is not None and direct.checksum
    assert verify_store(store) is None
    _corrupt(store / "data" / "c" / "2" / "0" / "0" / "0", 30)
    problem = verify_store(store)
    assert problem is not None and "c/2/0/0/0" in problem and "crc32c" in problem


def test_series_store_chunks_with_crc32c(tmp_path: Path) -> None:
    from neuroscale.io.shards import ChunkChecksumError

    data = np.random.default_rng(2).normal(size=(12, 23)).astype(np.float32)
    arr = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=data.shape, chunks=(12, 8),
                            dtype=np.float32, compressors=_crc_chain("blosc"), fill_value=0,
                            zarr_format=3)
    direct = ColumnChunkedArray.open(tmp_path / "s.zarr")
    assert direct is not None and direct.checksum
    for start in range(0, 23, 8):
        direct.write(start, data[:, start : start + 8])
    np.testing.assert_array_equal(np.asarray(arr[:]), data)
    np.testing.assert_array_equal(direct.read(3, 20), data[:, 3:20])
    _corrupt(tmp_path / "s.zarr" / "c" / "0" / "1", 17)
    with pytest.raises(ChunkChecksumError, match="chunk checksum"):
        direct.read(0, 23)
