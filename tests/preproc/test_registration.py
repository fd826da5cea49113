"""boldref -> T1w registration and atlas / tissue masks into the BOLD grid
(neuroscale.preproc.registration): synthetic ground truth, then the real studyforrest run."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_anat import run_real_anat

from neuroscale.errors import ImageFormatError
from neuroscale.preproc.anat import AnatResult
from neuroscale.preproc.registration import (
    BoldRegistration,
    atlas_coverage,
    atlas_to_bold,
    plot_boldref_registration,
    register_boldref,
    tissue_masks_to_bold,
)

# --------------------------------------------------------------------------------------------
# synthetic phantom with a known rigid motion between "T1w" and "BOLD"

_BLOBS = [  # centre (mm), sigma (mm), amplitude: an asymmetric "brain"
    ((0, 0, 0), 35, 100.0), ((25, 20, 10), 12, 80.0), ((-30, -10, 20), 10, -60.0),
    ((5, -40, -15), 14, 70.0), ((-15, 35, -20), 9, 90.0), ((20, -25, 30), 8, -50.0),
]


def phantom(points: np.ndarray) -> np.ndarray:
    """Intensity at world points (..., 3) in mm: Gaussian blobs inside an ellipsoid."""
    out = np.zeros(points.shape[:-1])
    for centre, sigma, amp in _BLOBS:
        out += amp * np.exp(-((points - np.asarray(centre)) ** 2).sum(-1) / (2 * sigma**2))
    inside = ((points / np.array([65.0, 80.0, 60.0])) ** 2).sum(-1) <= 1
    return np.where(inside, out + 50.0, 0.0)


def world_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (f(np.deg2rad(a)) for a in (rx, ry, rz) for f in (np.cos, np.sin))
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2 mm "T1w" phantom and a 3 mm "BOLD" of the same object moved by a known rigid motion.

    BOLD world point q shows the object at T1w world point ``R q + t``.
    """
    import ants

    tmp = tmp_path_factory.mktemp("synthetic-reg")
    t1_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    t1_aff[:3, 3] = [-80.0, -96.0, -76.0]
    t1_shape = (81, 97, 77)
    t1 = phantom(world_grid(t1_aff, t1_shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(t1, t1_aff), tmp / "t1.nii.gz")
    nib.save(nib.Nifti1Image((t1 > 0).astype(np.uint8), t1_aff), tmp / "mask.nii.gz")
    rot, shift = rotation(4.0, -3.0, 6.0), np.array([6.0, -9.0, 12.0])
    bold_aff = np.diag([-3.0, 3.0, 3.3, 1.0])
    bold_aff[:3, 3] = [100.0, -100.0, -70.0]  # plus a 30 mm header offset in x vs. the T1w
    bold_shape = (62, 64, 40)
    q = world_grid(bold_aff, bold_shape)
    bold = phantom(q @ rot.T + shift).astype(np.float32)
    # an identity "template -> T1w" transform: the "atlas" is drawn in T1w space
    ident = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    ants.write_transform(ident, str(tmp / "identity.mat"))
    labels = np.zeros(t1_shape, np.int16)
    p = world_grid(t1_aff, t1_shape)
    labels[(p[..., 0] < 0) & (t1 > 0)] = 3
    labels[(p[..., 0] >= 0) & (t1 > 0)] = 7
    labels[(p[..., 1] > 30) & (t1 > 0)] = 12
    nib.save(nib.Nifti1Image(labels, t1_aff), tmp / "atlas_phantom.nii.gz")
    anat = AnatResult(
        subject="phantom", t1w=tmp / "t1.nii.gz", brain_mask=tmp / "mask.nii.gz",
        dseg=tmp / "mask.nii.gz", probseg={}, t1w_to_template=tmp / "identity.mat",
        template_to_t1w=tmp / "identity.mat", dice=1.0, template=tmp / "t1.nii.gz",
        preproc_t1w=tmp / "t1.nii.gz",
    )
    return {"tmp": tmp, "anat": anat, "bold": bold, "bold_aff": bold_aff, "rot": rot,
            "shift": shift, "bold_shape": bold_shape, "labels": labels, "t1_aff": t1_aff}


def test_register_boldref_recovers_known_rigid_motion(synthetic: dict) -> None:
    import ants

    out = synthetic["tmp"] / "sub-phantom_from-boldref_to-T1w_mode-image_xfm.txt"
    t0 = time.perf_counter()
    reg = register_boldref(synthetic["bold"], synthetic["bold_aff"], synthetic["anat"], out,
                           bold_mask=synthetic["bold"] > 0)
    print(f"\nsynthetic register_boldref {time.perf_counter() - t0:.1f} s")
    assert out.is_file() and out.read_text().startswith("#Insight Transform File")
    assert reg.epi_in_brain > 0.95
    # the "mode-image" transform maps T1w points p to boldref points R^-1 (p - t) (in LPS)
    tx = ants.read_transform(str(out))
    rng = np.random.default_rng(1)
    pts = rng.uniform(-40, 40, size=(50, 3))
    lps = np.diag([-1.0, -1.0, 1.0])
    est = np.array([lps @ np.asarray(tx.apply_to_point((lps @ p).tolist())) for p in pts])
    truth = (pts - synthetic["shift"]) @ synthetic["rot"]  # R^-1 = R^T
    err = np.linalg.norm(est - truth, axis=1)
    print(f"rigid recovery error: mean {err.mean():.2f} mm, max {err.max():.2f} mm")
    assert err.max() < 1.5  # BOLD voxels are 3 mm

    # reused on a second call: same file, untouched
    mtime = out.stat().st_mtime_ns
    again = register_boldref(synthetic["bold"], synthetic["bold_aff"], synthetic["anat"], out,
                             bold_mask=synthetic["bold"] > 0)
    assert again.reused and out.stat().st_mtime_ns == mtime
    synthetic["reg"] = reg


def test_register_boldref_misplaced_mask_raises(synthetic: dict, tmp_path: Path) -> None:
    """A BOLD mask that does not sit on the BOLD brain lands outside the T1w brain: the
    alignment check fails with a RegistrationError naming the subject, nothing written."""
    from neuroscale.errors import RegistrationError

    out = tmp_path / "sub-phantom_from-boldref_to-T1w_mode-image_xfm.txt"
    wrong = np.zeros(synthetic["bold_shape"], bool)
    wrong[:30, :30, :] = True  # a corner of the field of view, mostly outside the head
    with pytest.raises(RegistrationError, match="sub-phantom"):
        register_boldref(synthetic["bold"], synthetic["bold_aff"], synthetic["anat"], out,
                         bold_mask=wrong)
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_atlas_to_bold_matches_ground_truth(synthetic: dict) -> None:
    if "reg" not in synthetic:
        pytest.skip("needs the registration test")
    atlas = atlas_to_bold(synthetic["tmp"] / "atlas_phantom.nii.gz", synthetic["bold_aff"],
                          synthetic["bold_shape"], synthetic["anat"], synthetic["reg"])
    # no label table beside it: labels are numbered
    assert atlas.names == ("3", "7", "12")
    assert atlas.name == "phantom"
    np.testing.assert_array_equal(atlas.values, [3, 7, 12])
    # ground truth: the label at T1w point R q + t of each BOLD voxel q
    q = world_grid(synthetic["bold_aff"], synthetic["bold_shape"])
    p = q @ synthetic["rot"].T + synthetic["shift"]
    ijk = np.rint((p - synthetic["t1_aff"][:3, 3]) / 2.0).astype(int)
    labels = synthetic["labels"]
    ok = np.all((ijk >= 0) & (ijk < np.array(labels.shape)), axis=-1)
    truth = np.zeros(synthetic["bold_shape"], np.int32)
    truth[ok] = labels[tuple(ijk[ok].T)]
    fg = (truth > 0) | (atlas.labels > 0)
    agreement = float((truth[fg] == atlas.labels[fg]).mean())
    print(f"\nsynthetic atlas label agreement {agreement:.3f}")
    assert agreement > 0.9
    assert atlas_coverage(atlas, truth > 0) > 0.95


def test_atlas_4d_raises_before_any_transform(synthetic: dict, tmp_path: Path) -> None:
    path = tmp_path / "atlas_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5, 3), np.int16), np.eye(4)), path)
    reg = BoldRegistration(tmp_path / "missing.txt", 1.0)
    with pytest.raises(ImageFormatError, match="3D"):
        atlas_to_bold(path, np.eye(4), (5, 5, 5), synthetic["anat"], reg)


def test_register_boldref_rejects_4d(synthetic: dict, tmp_path: Path) -> None:
    with pytest.raises(ImageFormatError, match="3D"):
        register_boldref(np.zeros((4, 4, 4, 2)), np.eye(4), synthetic["anat"],
                         tmp_path / "x_xfm.txt")
    assert not (tmp_path / "x_xfm.txt").exists()


def test_plot_registration_returns_figure() -> None:
    from matplotlib.figure import Figure

    from neuroscale.report.figures import PNG_MAGIC, figure_to_png
    from neuroscale.report.registration import edge_levels, plot_registration

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    vol = phantom(world_grid(aff, (40, 48, 38)) - np.array([40.0, 48.0, 38.0])).astype(np.float32)
    seg = np.digitize(vol, [1, 90, 130]).astype(np.int16)
    assert edge_levels(seg) == [0.5, 1.5, 2.5]
    assert len(edge_levels(vol, vol > 0)) == 1
    fig = plot_registration(vol, seg, aff, levels=[0.5, 2.5], title="phantom", n_cuts=4,
                            background_label="a", edges_label="b")
    assert isinstance(fig, Figure) and len(fig.axes) == 12
    assert figure_to_png(fig).startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        plot_registration(vol, seg[:-1], aff)


# --------------------------------------------------------------------------------------------
# real data: the studyforrest BOLD run and its T1w


@pytest.fixture(scope="module")
def real_bold(studyforrest_bold: Path) -> dict:
    from nilearn.masking import compute_epi_mask

    img = nib.load(studyforrest_bold)
    mean = np.asarray(img.dataobj, dtype=np.float32).mean(axis=-1)  # test only: 70 MB
    mean_img = nib.Nifti1Image(mean, img.affine)
    mask = np.asarray(compute_epi_mask(mean_img).dataobj) > 0
    return {"mean": mean, "affine": img.affine, "shape": img.shape[:3], "mask": mask}


@pytest.fixture(scope="module")
def real_reg(real_bold: dict, shared_data: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[AnatResult, BoldRegistration]:
    anat = run_real_anat(shared_data, tmp_path_factory)  # reused when test_anat.py ran first
    out = (anat.brain_mask.parent.parent / "func"
           / "sub-02_task-oneback_run-1_from-boldref_to-T1w_mode-image_xfm.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reg = register_boldref(real_bold["mean"], real_bold["affine"], anat, out,
                           bold_mask=real_bold["mask"])
    print(f"\nreal register_boldref {time.perf_counter() - t0:.1f} s, "
          f"EPI mask in T1w brain {reg.epi_in_brain:.3f}")
    return anat, reg


@pytest.mark.slow
def test_real_template_brain_covers_epi_mask(real_bold: dict, real_reg: tuple, shared_data: Path,
                                             tmp_path: Path) -> None:
    """The template's brain mask, as a one-label atlas, covers >= 90 % of the EPI brain mask."""
    from test_anat import TEMPLATE_REL

    tpl = nib.load(shared_data / TEMPLATE_REL)
    path = tmp_path / "brainmask.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(tpl.dataobj) > 0).astype(np.uint8), tpl.affine), path)
    anat, reg = real_reg
    atlas = atlas_to_bold(path, real_bold["affine"], real_bold["shape"], anat, reg)
    coverage = atlas_coverage(atlas, real_bold["mask"])
    print(f"\ntemplate brain mask covers {coverage:.3f} of the EPI mask")
    assert coverage >= 0.9


@pytest.mark.slow
def test_real_aal_in_bold_space(real_bold: dict, real_reg: tuple, shared_data: Path) -> None:
    """AAL (grey-matter parcels only) in native space: it labels >= 90 % of the subject's GM
    inside the EPI mask, and covers as much of the EPI mask as it covers of the template's
    brain mask in MNI space (74 %: AAL leaves white matter and ventricles unlabelled, so 90 %
    of a whole-brain mask is out of its reach)."""
    from nilearn.image import resample_to_img
    from test_anat import TEMPLATE_REL

    anat, reg = real_reg
    path = shared_data / "atlases" / "mricron-data-1.2.20211006" / "aal.nii.gz"
    t0 = time.perf_counter()
    atlas = atlas_to_bold(path, real_bold["affine"], real_bold["shape"], anat, reg)
    elapsed = time.perf_counter() - t0
    masks = tissue_masks_to_bold(anat, reg, real_bold["affine"], real_bold["shape"])
    coverage = atlas_coverage(atlas, real_bold["mask"])
    gm_coverage = atlas_coverage(atlas, real_bold["mask"] & masks["GM"])
    tpl = nib.load(shared_data / TEMPLATE_REL)
    in_mni = np.asarray(resample_to_img(nib.load(path), tpl, interpolation="nearest",
                                        force_resample=True, copy_header=True).dataobj) > 0
    tpl_mask = np.asarray(tpl.dataobj) > 0
    ceiling = float((in_mni & tpl_mask).sum() / tpl_mask.sum())
    print(f"\nAAL into BOLD {elapsed:.1f} s; covers {coverage:.3f} of the EPI mask "
          f"({ceiling:.3f} of the template mask in MNI space), {gm_coverage:.3f} of its GM")
    assert gm_coverage >= 0.9
    assert coverage >= ceiling - 0.05
    assert atlas.labels.shape == tuple(real_bold["shape"])
    assert atlas.n_parcels == 116 and "Precentral_L" in atlas.names
    present = np.unique(atlas.labels[atlas.labels > 0])
    assert present.size >= 100  # most AAL parcels land in the 3 mm BOLD grid


@pytest.mark.slow
def test_real_tissue_masks_on_bold_grid(real_bold: dict, real_reg: tuple) -> None:
    anat, reg = real_reg
    masks = tissue_masks_to_bold(anat, reg, real_bold["affine"], real_bold["shape"])
    counts = {k: int(v.sum()) for k, v in masks.items()}
    print("\ntissue masks on the BOLD grid (voxels)", counts)
    for key in ("GM", "WM", "CSF", "WMCSF", "brain"):
        assert masks[key].shape == tuple(real_bold["shape"]) and masks[key].any()
    assert not (masks["WM"] & masks["GM"]).any()
    assert (masks["WM"] & ~masks["WMCSF"]).sum() == 0
    # the aCompCor WM mask lies inside the EPI brain mask
    assert (masks["WM"] & real_bold["mask"]).sum() / masks["WM"].sum() > 0.9


@pytest.mark.slow
def test_real_boldref_mosaic(real_bold: dict, real_reg: tuple) -> None:
    from matplotlib.figure import Figure

    from neuroscale.report.figures import PNG_MAGIC, figure_to_png

    anat, reg = real_reg
    fig = plot_boldref_registration(real_bold["mean"], real_bold["affine"], anat, reg)
    assert isinstance(fig, Figure)
    assert figure_to_png(fig).startswith(PNG_MAGIC)
