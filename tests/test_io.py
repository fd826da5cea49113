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
