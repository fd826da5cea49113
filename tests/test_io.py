"""NIfTI validation, the streaming Zarr working copy, and bad input."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuroscale.errors import (
    CorruptedFileError,
    ImageFormatError,
    InputNotFoundError,
    NeuroscaleError,
    TruncatedDataError,
)
from neuroscale.image import open_image
from neuroscale.io.atomic import atomic_path
from neuroscale.io.nifti import read_nifti_info, save_nifti
from neuroscale.io.zarr_cache import cache_dir_for, ingest_nifti, read_manifest


def _write(path: Path, data: np.ndarray, *, nifti2: bool = False, slope: float | None = None,
           t_r: float = 2.0) -> Path:
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    affine = np.diag([3.0, 3.0, 3.3, 1.0])
    affine[:3, 3] = [-10, 20, -5]
    img = cls(data, affine)
    if data.ndim == 4:
        img.header.set_zooms((3.0, 3.0, 3.3, t_r))
        img.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)
    return path


@pytest.fixture
def run4d(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    data = (rng.normal(1000, 50, size=(13, 11, 7, 30))).astype(np.int16)
    return _write(tmp_path / "run_bold.nii.gz", data), data


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("nifti2", [False, True])
def test_open_matches_nibabel(tmp_path: Path, suffix: str, nifti2: bool) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(-300, 3000, size=(9, 8, 6, 17)).astype(np.int16)
    path = tmp_path / f"bold{suffix}"
    img = nib.Nifti2Image(data, np.eye(4)) if nifti2 else nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    img.header.set_zooms((2, 2, 2, 1.5))
    nib.save(img, path)
    lazy = open_image(path, cache_dir=tmp_path / "cache")
    ref = nib.load(path).get_fdata()
    assert lazy.shape == ref.shape
    assert lazy.t_r == pytest.approx(1.5)
    np.testing.assert_allclose(lazy.data.compute(), ref, rtol=1e-6)
    np.testing.assert_allclose(lazy.mean().compute_volume(), ref.mean(axis=3), rtol=1e-5)
    np.testing.assert_allclose(lazy.affine, nib.load(path).affine)


def test_working_copy_reused_and_rebuilt_on_change(run4d: tuple[Path, np.ndarray],
                                                   tmp_path: Path) -> None:
    path, data = run4d
    cache = tmp_path / "cache"
    store = ingest_nifti(path, cache)
    manifest = read_manifest(store)
    assert manifest is not None
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    stamp = (store / "_neuroscale.json").stat().st_mtime_ns
    assert ingest_nifti(path, cache) == store  # reused, not rewritten
    assert (store / "_neuroscale.json").stat().st_mtime_ns == stamp
    # changing the source gives a new working copy
    _write(path, data + 1)
    new_store = cache_dir_for(path, cache)
    assert new_store != store
    assert ingest_nifti(path, cache) == new_store


def test_incomplete_working_copy_is_rebuilt(run4d: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = run4d
    cache = tmp_path / "cache"
    store = ingest_nifti(path, cache)
    (store / "_neuroscale.json").unlink()  # as after a crash before the marker
    assert read_manifest(store) is None
    store2 = ingest_nifti(path, cache)
    img = open_image(path, cache_dir=cache)
    np.testing.assert_array_equal(img.data.compute(), data.astype(np.float32))
    assert store2 == store


def test_image_and_series_pickle(run4d: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, data = run4d
    img = open_image(path, cache_dir=tmp_path / "cache")
    mask = np.zeros(img.shape[:3], bool)
    mask[2:10, 2:9, 1:6] = True
    series = img.to_series(mask)
    for obj in (img, series):
        clone = pickle.loads(pickle.dumps(obj))
        np.testing.assert_array_equal(clone.data.compute(), obj.data.compute())
    np.testing.assert_array_equal(series.data.compute(), data[mask].T.astype(np.float32))
    back = series.to_image().data.compute()
    np.testing.assert_array_equal(back, data * mask[..., None])


# ---------------------------------------------------------------- bad input -----------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="no such file"):
        read_nifti_info(tmp_path / "nope.nii.gz")


def test_bad_magic(run4d: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = run4d
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[344:348] = b"xyz\x00"
    bad = tmp_path / "bad_magic.nii"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ImageFormatError, match="bad_magic.nii") as info:
        read_nifti_info(bad)
    assert "magic" in str(info.value) or "header" in str(info.value)


def test_not_nifti(tmp_path: Path) -> None:
    bad = tmp_path / "text.nii"
    bad.write_bytes(b"hello world" * 100)
    with pytest.raises(ImageFormatError, match="not a NIfTI"):
        read_nifti_info(bad)


def test_truncated_uncompressed(tmp_path: Path) -> None:
    data = np.ones((5, 5, 5, 10), np.int16)
    path = _write(tmp_path / "t.nii", data)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(TruncatedDataError, match="truncated"):
        open_image(path, cache_dir=tmp_path / "c")


def test_truncated_gzip_leaves_nothing(run4d: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = run4d
    short = tmp_path / "short_bold.nii.gz"
    short.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cache = tmp_path / "cache"
    with pytest.raises(TruncatedDataError, match="short_bold"):
        open_image(short, cache_dir=cache)
    assert not any(p.name.startswith("short") for p in cache.glob("*")), list(cache.glob("*"))
    assert not list(cache.glob(".tmp-*"))


def test_truncated_data_inside_complete_gzip(tmp_path: Path) -> None:
    data = np.ones((6, 6, 6, 12), np.int16)
    path = _write(tmp_path / "x.nii", data)
    raw = path.read_bytes()[:-500]
    gz = tmp_path / "x_bold.nii.gz"
    gz.write_bytes(gzip.compress(raw))
    with pytest.raises(TruncatedDataError, match="truncated data"):
        open_image(gz, cache_dir=tmp_path / "c")


def test_gzip_crc_mismatch_detected(run4d: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """nibabel alone does not notice a bad CRC: neuroscale must."""
    path, _ = run4d
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # first byte of the CRC-32 trailer
    bad = tmp_path / "crc_bold.nii.gz"
    bad.write_bytes(bytes(raw))
    nib.load(bad).get_fdata()  # nibabel reads it without complaint
    with pytest.raises(CorruptedFileError, match="crc_bold"):
        open_image(bad, cache_dir=tmp_path / "c")


def test_flipped_byte_in_deflate_stream(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 2000, size=(16, 16, 8, 20)).astype(np.int16)
    path = _write(tmp_path / "f_bold.nii.gz", data)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    bad = tmp_path / "flip_bold.nii.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises((CorruptedFileError, TruncatedDataError), match="flip_bold"):
        open_image(bad, cache_dir=tmp_path / "c")


def test_non_finite_scaling(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.nii", np.ones((4, 4, 4, 5), np.int16))
    raw = bytearray(path.read_bytes())
    raw[112:116] = np.array([np.inf], dtype="<f4").tobytes()  # scl_slope
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageFormatError, match="non-finite scaling"):
        read_nifti_info(path)


def test_3d_where_4d_needed(tmp_path: Path) -> None:
    path = _write(tmp_path / "vol.nii.gz", np.ones((4, 4, 4), np.int16))
    img = open_image(path)
    assert img.ndim == 3
    with pytest.raises(ImageFormatError, match="4D"):
        img.require_4d()
    with pytest.raises(ImageFormatError, match="4D"):
        ingest_nifti(path, tmp_path / "c")


def test_errors_share_one_root() -> None:
    for cls in (CorruptedFileError, ImageFormatError, InputNotFoundError, TruncatedDataError):
        assert issubclass(cls, NeuroscaleError)
    assert issubclass(InputNotFoundError, FileNotFoundError)
    assert issubclass(ImageFormatError, ValueError)


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []
    save_nifti(np.ones((3, 3, 3)), np.eye(4), tmp_path / "ok.nii.gz")
    assert nib.load(tmp_path / "ok.nii.gz").shape == (3, 3, 3)


def test_real_run_streams_once_and_matches_nibabel(studyforrest_bold: Path, tmp_path: Path) -> None:
    img = open_image(studyforrest_bold, cache_dir=tmp_path)
    assert img.shape == (80, 80, 35, 156)
    assert img.t_r == pytest.approx(2.0)
    ref = nib.load(studyforrest_bold)
    vol = np.asarray(ref.dataobj[..., 77], dtype=np.float32)
    np.testing.assert_allclose(img.data[..., 77].compute(), vol, rtol=1e-6)
    mean_ref = np.asarray(ref.get_fdata(dtype=np.float32).mean(axis=3, dtype=np.float64))
    np.testing.assert_allclose(img.mean().compute_volume(), mean_ref, rtol=1e-4, atol=1e-3)
    shutil.rmtree(tmp_path, ignore_errors=True)


# -- issue 11: hostile images at the header check and the streaming ingest -----------------------
def _patch(path: Path, **fields: object) -> Path:
    """Set header fields of an uncompressed NIfTI-1 file in place (no nibabel rescaling/checks)."""
    raw = path.read_bytes()
    hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(raw), check=False)
    for key, value in fields.items():
        hdr[key] = value
    path.write_bytes(hdr.binaryblock + raw[348:])
    return path


def test_not_a_regular_file_is_refused_without_opening_it(tmp_path: Path) -> None:
    import os
    import time

    fifo = tmp_path / "fifo_bold.nii.gz"
    os.mkfifo(fifo)
    dev = tmp_path / "zero_bold.nii.gz"
    dev.symlink_to("/dev/zero")
    start = time.monotonic()
    with pytest.raises(ImageFormatError, match=r"fifo_bold.*not a regular file \(a FIFO"):
        read_nifti_info(fifo)
    with pytest.raises(ImageFormatError, match=r"not a regular file \(a character device, "
                                               r"a symbolic link to /dev/zero\)"):
        open_image(dev, cache_dir=tmp_path / "c")
    assert time.monotonic() - start < 5
    with pytest.raises(ImageFormatError, match="a directory"):
        read_nifti_info(tmp_path)
    broken = tmp_path / "broken_bold.nii"
    broken.symlink_to(tmp_path / "nowhere.nii")
    with pytest.raises(InputNotFoundError, match="broken symbolic link"):
        read_nifti_info(broken)


def test_gzip_size_bound_from_isize_and_deflate_ratio(tmp_path: Path) -> None:
    from neuroscale.io.nifti import MAX_DEFLATE_RATIO, gzip_size_bound

    raw = bytes(5_000_000)  # compresses ~1000:1
    path = tmp_path / "z.gz"
    path.write_bytes(gzip.compress(raw))
    size = path.stat().st_size
    assert size * MAX_DEFLATE_RATIO >= len(raw)  # deflate's limit holds
    assert gzip_size_bound(path, size) == len(raw)  # single member: ISIZE is exact here
    bgzf = bytearray(path.read_bytes())
    bgzf[3] |= 0x04  # FEXTRA, as BGZF sets it: several members, the ratio bound only
    path.write_bytes(bytes(bgzf))
    assert gzip_size_bound(path, size) == size * MAX_DEFLATE_RATIO
    padded = tmp_path / "p.gz"  # zero padding after the stream (gzip readers skip it)
    padded.write_bytes(gzip.compress(raw) + bytes(512))
    assert gzip_size_bound(padded, padded.stat().st_size) == padded.stat().st_size * 1032
    assert gzip.decompress(padded.read_bytes()) == raw


@pytest.mark.parametrize("dims", [[32767, 32767, 32767, 1000], [2000, 2000, 500, 10]])
def test_absurd_dims_refused_before_streaming(tmp_path: Path, dims: list[int]) -> None:
    import resource
    import time

    path = _write(tmp_path / "a.nii", np.ones((13, 11, 7, 30), np.int16))
    _patch(path, dim=[4, *dims, 1, 1, 1])
    gz = tmp_path / "a_bold.nii.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(TruncatedDataError, match=r"a_bold.*header claims \d+ bytes.*at most"):
        open_image(gz, cache_dir=tmp_path / "c")
    with pytest.raises(TruncatedDataError, match="truncated data: file has"):
        open_image(path, cache_dir=tmp_path / "c")
    assert time.monotonic() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000  # KiB
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_nifti2_dims_past_int32_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.nii", np.ones((5, 4, 3, 6), np.int16), nifti2=True)
    raw = bytearray(path.read_bytes())
    raw[16:80] = np.array([4, 100_000, 100_000, 100_000, 1000, 1, 1, 1], "<i8").tobytes()
    gz = tmp_path / "b_bold.nii.gz"
    gz.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(TruncatedDataError, match=r"header claims 2000000000000000\d+ bytes"):
        read_nifti_info(gz)


@pytest.mark.parametrize(("fields", "message"), [
    ({"scl_slope": 3e38}, r"scl_slope=3e\+38 .*int16 values to up to 9.83e\+42, past the float32"),
    ({"pixdim": [1, 0, 0, 0, 2, 1, 1, 1], "qform_code": 0, "sform_code": 0},
     r"voxel size \(0.0, 0.0, 0.0\) mm \(pixdim\[1:4\]\) is zero"),
    ({"pixdim": [1, 3, 0, 3.3, 2, 1, 1, 1], "qform_code": 1, "sform_code": 1}, "is zero"),
    ({"srow_x": [0, 0, 0, 0], "srow_y": [0, 0, 0, 0], "srow_z": [0, 0, 0, 0], "sform_code": 1,
      "qform_code": 0}, r"singular affine \(sform"),
    ({"srow_x": [np.nan, 0, 0, 0], "sform_code": 1}, "non-finite values in the affine"),
    ({"datatype": 32, "bitpix": 64}, "complex data not supported"),
    ({"datatype": 128, "bitpix": 24}, r"RGB data not supported \(datatype RGB24\)"),
])
def test_header_refusals(tmp_path: Path, fields: dict, message: str) -> None:
    path = _write(tmp_path / "h.nii", np.ones((4, 4, 4, 40), np.int16))
    _patch(path, **fields)
    with pytest.raises(ImageFormatError, match=message):
        read_nifti_info(path)


def test_integer_scaling_within_float32_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.nii", np.ones((4, 4, 4, 5), np.int16))
    _patch(path, scl_slope=1e30)  # 32768 * 1e30 = 3.3e34: representable
    assert read_nifti_info(path).slope == pytest.approx(1e30)


def test_float_values_scaled_past_float32_refused(tmp_path: Path) -> None:
    data = np.full((4, 4, 4, 5), 1e30, np.float32)
    path = _write(tmp_path / "f_bold.nii", data)
    _patch(path, scl_slope=1e10)
    with pytest.raises(ImageFormatError, match=r"f_bold.*scaled values reach 1e\+40"):
        open_image(path, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*"))


def test_non_finite_voxels_zeroed_counted_and_left_out_of_the_mask(tmp_path: Path) -> None:
    from neuroscale.analysis.mask import compute_brain_mask, load_mask
    from neuroscale.testing import write_synthetic_bold

    src = tmp_path / "syn_bold.nii.gz"
    write_synthetic_bold(src, shape=(20, 22, 12, 30), seed=2)
    data = np.asarray(nib.load(src).get_fdata(dtype=np.float32))
    data[10, 11, 6, 4] = np.inf
    data[9, 11, 6, :] = np.nan
    data[10:12, 12:14, 6, 7] = -np.inf
    nan_path = _write(tmp_path / "nan_bold.nii.gz", data)
    img = open_image(nan_path, cache_dir=tmp_path / "c")
    checks = img.meta["input_checks"]
    assert (checks["n_nonfinite_voxels"], checks["n_nonfinite_values"]) == (6, 1 + 30 + 4)
    assert any("6 voxels with non-finite values" in w for w in img.meta["warnings"])
    bad = np.zeros(data.shape[:3], bool)
    bad[10, 11, 6] = bad[9, 11, 6] = True
    bad[10:12, 12:14, 6] = True
    np.testing.assert_array_equal(img.meta["nonfinite"], bad)
    got = img.data.compute()
    ref = np.where(np.isfinite(data), data, 0)
    np.testing.assert_array_equal(got, ref)
    assert np.isfinite(img.mean().compute_volume()).all()
    mask = compute_brain_mask(img)
    assert mask.any() and not (mask & bad).any()
    full = tmp_path / "full_mask.nii.gz"
    save_nifti(np.ones(data.shape[:3], np.uint8), img.affine, full, dtype=np.uint8)
    assert load_mask(full, img).sum() == bad.size - bad.sum()
    assert np.isfinite(img.to_series(mask).data.compute()).all()


@pytest.mark.parametrize("kind", ["constant", "zero"])
def test_constant_data_refused(tmp_path: Path, kind: str) -> None:
    from neuroscale.analysis.mask import compute_brain_mask, load_mask
    from neuroscale.errors import AnalysisError

    rng = np.random.default_rng(1)
    vol = rng.integers(100, 1000, size=(9, 8, 7, 1)).astype(np.int16)
    data = np.zeros((9, 8, 7, 25), np.int16) if kind == "zero" else np.repeat(vol, 25, axis=3)
    path = _write(tmp_path / "k_bold.nii.gz", data)
    img = open_image(path, cache_dir=tmp_path / "c")
    assert img.meta["input_checks"]["varies"] is False
    what = "every value is 0" if kind == "zero" else "no voxel changes"
    with pytest.raises(AnalysisError, match=rf"k_bold.*constant over time \({what}\)"):
        compute_brain_mask(img)
    mask = tmp_path / "m.nii.gz"
    save_nifti(np.ones((9, 8, 7), np.uint8), img.affine, mask, dtype=np.uint8)
    with pytest.raises(AnalysisError, match="constant over time"):
        load_mask(mask, img)
    data[3, 3, 3, 24] += 1  # one value differs in the last volume: not constant
    varied = open_image(_write(tmp_path / "v_bold.nii.gz", data), cache_dir=tmp_path / "c")
    assert varied.meta["input_checks"]["varies"] is True


def test_sidecar_tr_mismatch_warns_and_records_both(run4d: tuple[Path, np.ndarray],
                                                    tmp_path: Path) -> None:
    path, _ = run4d
    img = open_image(path, cache_dir=tmp_path / "c", t_r=3.0)
    assert img.t_r == 3.0
    checks = img.meta["input_checks"]
    assert (checks["t_r_header_s"], checks["t_r_sidecar_s"]) == (2.0, 3.0)
    assert any("RepetitionTime 3 s (JSON sidecar) differs" in w for w in img.meta["warnings"])
    assert open_image(path, cache_dir=tmp_path / "c", t_r=2.0).meta["warnings"] == []


def test_flipped_byte_in_working_copy_reingested(run4d: tuple[Path, np.ndarray], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import neuroscale.image as image_mod

    path, data = run4d
    first = open_image(path, cache_dir=tmp_path / "c")
    # a store written in this process is fresh and not re-verified: pretend a later run
    monkeypatch.setattr(image_mod, "_PROCESS_START", time.time() + 1)
    store = Path(first.meta["store"])
    shard = store / "data" / "c" / "0" / "0" / "0" / "0"
    blob = bytearray(shard.read_bytes())
    blob[40] ^= 0x10  # inside the first inner chunk
    shard.write_bytes(bytes(blob))
    again = open_image(path, cache_dir=tmp_path / "c")
    assert again.meta["input_checks"]["working_copy_reingested"]
    assert any("failed its checksum" in w and "re-ingested" in w for w in again.meta["warnings"])
    np.testing.assert_array_equal(again.data.compute(), data.astype(np.float32))
    assert open_image(path, cache_dir=tmp_path / "c").meta["warnings"] == []
