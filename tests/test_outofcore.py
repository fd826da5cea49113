"""The ingest is out-of-core: its memory is set by the stream block, not by the run's size.

(The whole participant pipeline in workers smaller than the data is tested in
``test_laziness.py``; ``benchmarks/bench_outofcore.py`` measures it on a 6 GB run.)
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import dask.config
import nibabel as nib
import numpy as np
import pytest
import zarr

import neuroscale.io.zarr_cache as zc
from neuroscale.image import open_image
from neuroscale.testing import write_synthetic_bold


def _ingest_peak(path: Path, cache: Path) -> int:
    tracemalloc.start()
    try:
        zc.ingest_nifti(path, cache)
        return int(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("compress", [True, False])
def test_ingest_memory_does_not_grow_with_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    grid = (32, 32, 32)  # 64 KiB int16 volumes; 8 volumes per 512 KiB stream block
    block = 512 * 2**10
    monkeypatch.setattr(zc, "STREAM_BLOCK_BYTES", block)
    monkeypatch.setitem(dask.config.config.setdefault("neuroscale", {}), "compress", compress)
    import isal.igzip  # noqa: F401  (imports are not the ingest's memory)
    from zarr.codecs import BloscCodec  # noqa: F401

    peaks = {}
    for nt in (150, 600):  # 9.8 MB and 39 MB of voxel data
        path = tmp_path / f"bold{nt}.nii.gz"
        write_synthetic_bold(path, (*grid, nt), dtype="int16", seed=3)
        peaks[nt] = _ingest_peak(path, tmp_path / "cache")
    data_bytes = 32**3 * 600 * 2
    # ring of N_STREAM_BUFFERS blocks + the reordered block + zarr's shard buffers + sums,
    # and the hashing thread's fixed read buffer: nothing grows with the number of volumes
    assert peaks[600] < peaks[150] + 4 * block, peaks  # 4x the volumes: +29 MB of data
    assert peaks[600] < (zc.N_STREAM_BUFFERS + 6) * block + zc._HASH_READ_BYTES + 2**20, peaks
    assert peaks[600] < data_bytes / 3, peaks

    path = tmp_path / "bold600.nii.gz"
    store = zc.cache_dir_for(path, tmp_path / "cache")
    manifest = zc.read_manifest(store)
    assert manifest is not None
    assert manifest["chunks"][0] == block // (32**3 * 2)
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    codecs = [type(c).__name__ for c in zarr.open_array(str(store), path="data").compressors]
    assert codecs == (["BloscCodec", "Crc32cCodec"] if compress else ["Crc32cCodec"])
    ref = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    img = open_image(path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(np.asarray(img.data.compute()), ref)
    np.testing.assert_allclose(img.mean().compute_volume(), ref.mean(axis=3), rtol=1e-5,
                               atol=1e-3)
