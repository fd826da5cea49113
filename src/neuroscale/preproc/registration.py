"""BOLD reference -> T1w registration, and template-space images into the BOLD's native space.

* :func:`register_boldref`: rigid registration of the BOLD reference (e.g. the mean EPI) onto
  the bias-corrected, brain-extracted T1w of :func:`neuroscale.preproc.anat.process_anat`
  (:data:`BOLD_TRANSFORM`: rigid, Mattes mutual information, a cross-modal metric
  (Mattes et al. 2003, IEEE TMI 22:120-128), initialised by aligning centres of mass, so the
  result does not depend on how close the two headers put the images).  Saved as an ITK text
  transform with fMRIPrep's name ``..._from-boldref_to-T1w_mode-image_xfm.txt`` ("mode-image":
  given to ``antsApplyTransforms`` it resamples a boldref-space image into T1w space).  Its
  25 % metric sample is seeded (``ANTS_RANDOM_SEED``) and ITK runs one thread
  (:func:`neuroscale.compute.determinism.pin_itk`): the same transform on any worker.
* :func:`atlas_to_bold`: an MNI152NLin2009cAsym atlas is carried into the BOLD grid through the
  inverse chain (template -> T1w by the inverse SyN, T1w -> boldref by the inverse rigid) in
  one ``ants.apply_transforms`` call with the ``genericLabel`` interpolator (label-preserving,
  Gaussian-weighted voting; ANTs), evaluated only at the BOLD voxel centres: the 4D data are
  never resampled.
* :func:`tissue_masks_to_bold`: GM/WM/CSF masks on the BOLD grid, WM and CSF prepared for
  aCompCor as fMRIPrep's ``acompcor_masks`` does.
* :func:`atlas_coverage` and :func:`~neuroscale.preproc.anat.dice` are the checks.

Transforms and images follow ANTs conventions: ``ants.apply_transforms(fixed, moving, [t1, t2])``
maps each fixed-grid point through ``t2`` then ``t1`` (the last transform is applied first).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroscale.analysis.parcellate import Atlas, load_atlas
from neuroscale.compute.determinism import ANTS_SEED, ITK_THREADS, pin_itk
from neuroscale.errors import AnalysisError, ImageFormatError, RegistrationError
from neuroscale.io.atomic import atomic_path
from neuroscale.io.nifti import read_nifti_info
from neuroscale.preproc.anat import (
    TEMPLATE_SPACE,
    AnatResult,
    ants_to_array,
    array_to_ants,
    dice,
    read_3d_ants,
)
from neuroscale.provenance import (
    is_up_to_date,
    provenance_hash,
    read_provenance,
    sha256_file,
    sidecar_path,
    write_provenance,
)
from neuroscale.report.registration import plot_registration

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from neuroscale.analysis.parcellate import Atlas

__all__ = [
    "TEMPLATE_SPACE",
    "BoldRegistration",
    "atlas_coverage",
    "atlas_to_bold",
    "dice",
    "plot_anat_registration",
    "plot_boldref_registration",
    "register_boldref",
    "resample_to_grid",
    "tissue_masks_to_bold",
]

#: Rigid boldref -> T1w registration: ``Rigid[0.25]``, Mattes mutual information (32 bins, 25 %
#: regular sampling), iterations per level at shrink factors 8x4x2x1 (smoothing 3x2x1x0
#: voxels).  The last level (the T1w's 2 mm working grid) gets few iterations: the rigid stage
#: of ``antsRegistrationSyN.sh`` (100 there) took 85 s instead of ~10 s for the same result on
#: the real run, and the quick variants skip it; the "Repro" variants use global correlation,
#: unsuited to the EPI vs T1w contrast.
BOLD_TRANSFORM = "Rigid"
BOLD_ITERATIONS = (1000, 500, 250, 20)


@dataclass
class BoldRegistration:
    """The boldref -> T1w registration.

    Attributes
    ----------
    boldref_to_t1w : Path
        ITK text transform (rigid), ``..._from-boldref_to-T1w_mode-image_xfm.txt``: resamples a
        boldref-space image into T1w space (its inverse carries T1w images onto the BOLD grid).
    epi_in_brain : float
        Fraction of the BOLD brain mask (carried into T1w space) that falls inside the T1w brain
        mask dilated by 4 mm; 1.0 for a good alignment (NaN when no BOLD mask was given).
    timings : dict of str to float
        Wall time in seconds (empty when reused).
    reused : bool
        True when the transform was up to date and not recomputed.
    """

    boldref_to_t1w: Path
    epi_in_brain: float
    timings: dict[str, float] = field(default_factory=dict)
    reused: bool = False


def _array_sha(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        digest.update(str((a.shape, a.dtype.str)).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _t1w_brain(anat: AnatResult) -> Any:
    import ants

    t1 = ants.image_read(str(anat.preproc_t1w))
    mask = ants.image_read(str(anat.brain_mask))
    return t1 * ants.threshold_image(mask, 0.5, 10), mask


def _epi_in_brain(bold_mask_img: Any, brain: Any, transform: str) -> float:
    import ants

    warped = ants.apply_transforms(brain, bold_mask_img, [transform],
                                   interpolator="nearestNeighbor").numpy() > 0.5
    if not warped.any():
        return 0.0
    spacing = float(np.mean(brain.spacing))
    dil = ants.iMath(ants.threshold_image(brain, 0.5, 10), "MD",
                     max(1, int(round(4.0 / spacing)))).numpy() > 0.5
    return float((warped & dil).sum() / warped.sum())


def register_boldref(
    boldref: np.ndarray,
    bold_affine: np.ndarray,
    anat: AnatResult,
    out_path: str | Path,
    *,
    bold_mask: np.ndarray | None = None,
    min_epi_in_brain: float = 0.8,
) -> BoldRegistration:
    """Rigidly register a BOLD reference volume onto the subject's T1w.

    Parameters
    ----------
    boldref : ndarray, shape (x, y, z), float
        The BOLD reference (e.g. the temporal mean EPI) on the BOLD grid.
    bold_affine : (4, 4) ndarray
        Voxel-to-world affine of the BOLD grid, mm.
    anat : AnatResult
        The subject's anatomical processing.
    out_path : str or Path
        Destination of the transform (``..._from-boldref_to-T1w_mode-image_xfm.txt``); a
        provenance sidecar is written beside it.
    bold_mask : ndarray, shape (x, y, z), bool, optional
        BOLD brain mask: the boldref is skull-stripped with it before registering, and it is used
        for the alignment check.
    min_epi_in_brain : float
        Smallest accepted fraction of the BOLD mask inside the (4 mm dilated) T1w brain mask
        after registration.

    Returns
    -------
    BoldRegistration

    Raises
    ------
    ImageFormatError
        ``boldref`` is not 3D, or the mask's shape differs.
    RegistrationError
        The registered BOLD mask lies mostly outside the T1w brain (the registration failed),
        or ANTs failed; nothing is written.

    Notes
    -----
    Rigid (6 parameters), as fMRIPrep's boldref -> T1w default (``--bold2anat-dof 6``);
    without field-map correction EPI distortions remain.  Reused without recomputation when
    the transform's sidecar records the same inputs (sha256 of the boldref array and affine,
    of the T1w derivatives) and parameters.
    """

    pin_itk()
    import ants

    out_path = Path(out_path)
    ref = np.asarray(boldref, dtype=np.float32)
    if ref.ndim != 3:
        raise ImageFormatError(f"boldref must be a 3D volume, got shape {ref.shape}", out_path)
    mask = None if bold_mask is None else np.asarray(bold_mask, dtype=bool)
    if mask is not None and mask.shape != ref.shape:
        raise ImageFormatError(f"bold_mask shape {mask.shape} differs from boldref {ref.shape}",
                               out_path)
    aff = np.asarray(bold_affine, dtype=np.float64)
    params = {"Step": "boldref_to_t1w", "Transform": BOLD_TRANSFORM,
              "Metric": "Mattes[32 bins, 25 % regular sampling]",
              "Iterations": list(BOLD_ITERATIONS), "ShrinkFactors": [8, 4, 2, 1],
              "BoldrefSHA256": _array_sha(ref, aff, *(() if mask is None else (mask,))),
              "MinEpiInBrain": float(min_epi_in_brain),
              "ITKThreads": ITK_THREADS, "ANTsRandomSeed": ANTS_SEED}
    sources = [(anat.preproc_t1w, sha256_file(anat.preproc_t1w)),
               (anat.brain_mask, sha256_file(anat.brain_mask))]
    expected = provenance_hash([s for _, s in sources], params)
    if is_up_to_date(out_path, expected):
        meta = read_provenance(out_path) or {}
        value = meta.get("EpiInBrain")
        return BoldRegistration(out_path, float("nan") if value is None else float(value),
                                reused=True)

    started = _dt.datetime.now(_dt.UTC)
    t0 = time.perf_counter()
    fixed, brain = _t1w_brain(anat)
    moving = array_to_ants(ref if mask is None else ref * mask, aff)
    tmp = Path(tempfile.mkdtemp(prefix="boldref-", dir=out_path.parent
                                if out_path.parent.exists() else None))
    try:
        try:
            reg = ants.registration(fixed, moving, type_of_transform=BOLD_TRANSFORM,
                                    aff_metric="mattes", aff_sampling=32,
                                    aff_random_sampling_rate=0.25,
                                    aff_iterations=BOLD_ITERATIONS,
                                    aff_shrink_factors=(8, 4, 2, 1),
                                    aff_smoothing_sigmas=(3, 2, 1, 0),
                                    outprefix=str(tmp / "bold_"))
        except Exception as exc:  # ANTs reports failures as RuntimeError/ValueError
            msg = " ".join(str(exc).split())[:300]
            raise RegistrationError(f"sub-{anat.subject}: BOLD reference to T1w registration "
                                    f"failed in ANTs ({type(exc).__name__}: {msg})",
                                    out_path) from exc
        tx = ants.read_transform(reg["fwdtransforms"][0])
        txt = tmp / "boldref_to_t1w.txt"
        ants.write_transform(tx, str(txt))
        frac = float("nan")
        if mask is not None:
            frac = _epi_in_brain(array_to_ants(mask.astype(np.float32), aff), brain, str(txt))
            if not frac >= min_epi_in_brain:
                raise RegistrationError(
                    f"sub-{anat.subject}: BOLD reference to T1w registration failed: only "
                    f"{100 * frac:.0f} % of the BOLD brain mask lands in the T1w brain "
                    f"(need {100 * min_epi_in_brain:.0f} %)", out_path)
        seconds = time.perf_counter() - t0
        sidecar_path(out_path).unlink(missing_ok=True)
        with atomic_path(out_path) as dest:
            shutil.copyfile(txt, dest)
        write_provenance(out_path, sources=[(p, None, s) for p, s in sources],
                         parameters=params, started=started, ended=_dt.datetime.now(_dt.UTC),
                         extra={"EpiInBrain": None if np.isnan(frac) else frac,
                                "FromSpace": "boldref", "ToSpace": "T1w",
                                "Timings_s": {"boldref to T1w": round(seconds, 3)}})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return BoldRegistration(out_path, frac, timings={"boldref to T1w": round(seconds, 3)})


# --------------------------------------------------------------------------------------------
# resampling into the BOLD grid


def resample_to_grid(
    image: Any,
    target_affine: np.ndarray,
    target_shape: tuple[int, ...],
    transforms: list[str],
    invert: list[bool],
    interpolator: str = "linear",
) -> np.ndarray:
    """Resample an ANTs image through a transform chain onto a voxel grid.

    Parameters
    ----------
    image : ants.ANTsImage
        The moving image.
    target_affine : (4, 4) ndarray
        Voxel-to-world affine of the target grid, mm.
    target_shape : tuple of int
        Its shape (the first three entries are used).
    transforms, invert : list
        ``ants.apply_transforms`` ``transformlist`` and ``whichtoinvert`` (the last transform is
        applied to the target points first); any linear transform file (ITK ``.txt`` or
        ``.mat``) may be inverted.
    interpolator : str
        ``"linear"``, ``"nearestNeighbor"``, ``"genericLabel"``...

    Returns
    -------
    ndarray, shape target_shape[:3], float32
    """

    pin_itk()
    import ants

    shape = tuple(int(s) for s in target_shape[:3])
    ref = array_to_ants(np.zeros(shape, dtype=np.float32), target_affine)
    with tempfile.TemporaryDirectory(prefix="ns-xfm-") as tmp:
        # ANTsPy inverts only files named *.mat: write inverted linear transforms as .mat
        files = []
        for i, (path, inv) in enumerate(zip(transforms, invert, strict=True)):
            if inv and not str(path).endswith(".mat"):
                tx = ants.read_transform(str(path)).invert()
                path = str(Path(tmp) / f"inverse{i}.mat")
                ants.write_transform(tx, path)
            files.append(str(path))
        out = ants.apply_transforms(ref, image, files, whichtoinvert=[False] * len(files),
                                    interpolator=interpolator)
    return np.asarray(out.numpy(), dtype=np.float32)


def atlas_to_bold(
    atlas_path: str | Path,
    bold_affine: np.ndarray,
    bold_shape: tuple[int, ...],
    anat: AnatResult,
    reg: BoldRegistration,
    *,
    name: str | None = None,
    labels_table: str | Path | None = None,
) -> Atlas:
    """Bring an MNI152NLin2009cAsym atlas into the BOLD's native grid.

    Parameters
    ----------
    atlas_path : str or Path
        Deterministic 3D label image in template space (0 = background) with, optionally, a
        label table beside it (see :func:`neuroscale.analysis.parcellate.find_label_table`).
    bold_affine : (4, 4) ndarray
        Voxel-to-world affine of the BOLD grid, mm.
    bold_shape : tuple of int
        BOLD grid shape (first three entries used).
    anat, reg : AnatResult, BoldRegistration
        The subject's transforms.
    name, labels_table : optional
        As :func:`neuroscale.analysis.parcellate.load_atlas`.

    Returns
    -------
    Atlas
        ``labels`` on the BOLD grid; ``values`` are all the atlas's labels (a parcel that
        vanishes on the BOLD grid keeps its column); ``names`` from the label table, else the
        label numbers.

    Raises
    ------
    InputNotFoundError, ImageFormatError
        As :func:`~neuroscale.analysis.parcellate.load_atlas` (not 3D, probabilistic, no
        label...); the atlas is validated before any transform is applied.
    AnalysisError
        No labelled voxel lands on the BOLD grid.
    """
    import nibabel as nib


    atlas_path = Path(atlas_path)

    info = read_nifti_info(atlas_path)
    # validation, label values and names: load_atlas onto the atlas's own grid (identity)
    native = load_atlas(atlas_path, info.affine, tuple(info.shape[:3]), name=name,
                        labels_table=labels_table)
    img: Any = nib.load(str(atlas_path))
    moving = array_to_ants(native.labels.astype(np.float32), img.affine)
    labels = resample_to_grid(moving, bold_affine, bold_shape,
                              [str(anat.template_to_t1w), str(reg.boldref_to_t1w)],
                              [False, True], interpolator="genericLabel")
    labels_i = np.rint(labels).astype(np.int32)
    labels_i[~np.isin(labels_i, native.values)] = 0
    if not labels_i.any():
        raise AnalysisError("no atlas label lands on the BOLD grid after registration",
                            atlas_path)
    return Atlas(labels=labels_i, values=native.values, names=native.names, name=native.name,
                 path=atlas_path, table_path=native.table_path)


def tissue_masks_to_bold(
    anat: AnatResult,
    reg: BoldRegistration,
    bold_affine: np.ndarray,
    bold_shape: tuple[int, ...],
    *,
    threshold: float = 0.99,
) -> dict[str, np.ndarray]:
    """GM, WM and CSF masks on the BOLD grid, WM and CSF ready for aCompCor.

    Parameters
    ----------
    anat, reg : AnatResult, BoldRegistration
        The subject's segmentation and boldref -> T1w transform.
    bold_affine : (4, 4) ndarray
        Voxel-to-world affine of the BOLD grid, mm.
    bold_shape : tuple of int
        BOLD grid shape (first three entries used).
    threshold : float
        Threshold of the WM and CSF maps on the BOLD grid (fMRIPrep: 0.99).

    Returns
    -------
    dict of str to ndarray of bool, shape (x, y, z)
        ``"GM"``: GM probability > 0.5 after linear interpolation onto the BOLD grid.
        ``"WM"``, ``"CSF"`` and ``"WMCSF"``: fMRIPrep's aCompCor masks
        (``fmriprep.utils.confounds.acompcor_masks`` and the ``Binarize(thresh_low=0.99)`` of
        ``init_bold_confs_wf``): in T1w space the GM map is thresholded at 0.05 and dilated by a
        3 mm ball; WM (and WM + CSF) probabilities are set to 0 there, which erodes them only
        at their interfaces with GM (CSF alone is kept whole, as fMRIPrep does); the maps are
        interpolated linearly onto the BOLD grid and thresholded at ``threshold``.
        ``"brain"``: the T1w brain mask on the BOLD grid (nearest neighbour).
    """

    pin_itk()
    import ants
    from scipy import ndimage

    t1_img = ants.image_read(str(anat.probseg["GM"]))
    probs = {t: ants.image_read(str(p)).numpy() for t, p in anat.probseg.items()}
    spacing = np.asarray(t1_img.spacing, dtype=np.float64)
    radius = 3.0 / spacing  # 3 mm ball, in voxels per axis
    r = np.ceil(radius).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    ball = sum((g / rad) ** 2 for g, rad in zip(grid, radius, strict=True)) <= 1.0
    gm_dil = ndimage.binary_dilation(probs["GM"] > 0.05, structure=ball)
    wm = np.where(gm_dil, 0.0, probs["WM"])
    wmcsf = np.where(gm_dil, 0.0, probs["WM"] + probs["CSF"])
    tx, inv = [str(reg.boldref_to_t1w)], [True]

    def to_bold(arr: np.ndarray, interp: str = "linear") -> np.ndarray:
        return resample_to_grid(t1_img.new_image_like(arr.astype(np.float32)), bold_affine,
                                bold_shape, tx, inv, interpolator=interp)

    brain = ants.image_read(str(anat.brain_mask))
    return {
        "GM": to_bold(probs["GM"]) > 0.5,
        "WM": to_bold(wm) >= threshold,
        "CSF": to_bold(probs["CSF"]) >= threshold,
        "WMCSF": to_bold(wmcsf) >= threshold,
        "brain": resample_to_grid(brain, bold_affine, bold_shape, tx, inv,
                                  interpolator="nearestNeighbor") > 0.5,
    }


def atlas_coverage(atlas: Atlas, epi_mask: np.ndarray) -> float:
    """Fraction of the EPI brain-mask voxels that carry an atlas label.

    Parameters
    ----------
    atlas : Atlas
        An atlas on the BOLD grid.
    epi_mask : ndarray, shape (x, y, z), bool
        The BOLD brain mask.

    Returns
    -------
    float
        ``|mask & (labels > 0)| / |mask|`` in [0, 1] (NaN for an empty mask).

    Raises
    ------
    ValueError
        The shapes differ.
    """
    mask = np.asarray(epi_mask, dtype=bool)
    if mask.shape != atlas.labels.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the atlas grid "
                         f"{atlas.labels.shape}")
    n = int(mask.sum())
    return float("nan") if n == 0 else float((mask & (atlas.labels > 0)).sum() / n)


# --------------------------------------------------------------------------------------------
# report figures


def plot_boldref_registration(boldref: np.ndarray, bold_affine: np.ndarray, anat: AnatResult,
                              reg: BoldRegistration, *, title: str = "") -> Figure:
    """Registration mosaic: the BOLD reference in T1w space with the T1w tissue edges over it.

    The boldref is resampled onto the T1w working grid (linear) and drawn in grey; the outlines
    of the T1w brain (incl. CSF) and of its white matter (dseg levels 0.5 and 2.5) are drawn
    over it, as fMRIPrep's "alignment of functional and anatomical MRI data" reportlet.

    Returns
    -------
    matplotlib.figure.Figure
        See :func:`neuroscale.report.registration.plot_registration`.
    """

    pin_itk()
    import ants


    dseg = ants.image_read(str(anat.dseg))
    moved = ants.apply_transforms(dseg, array_to_ants(np.asarray(boldref, np.float32),
                                                      bold_affine),
                                  [str(reg.boldref_to_t1w)], interpolator="linear")
    data, aff = ants_to_array(dseg)
    brain = ants.image_read(str(anat.brain_mask)).numpy() > 0.5
    return plot_registration(moved.numpy(), data, aff, mask=brain, levels=[0.5, 2.5],
                             title=title or f"sub-{anat.subject}: BOLD reference to T1w",
                             background_label="BOLD reference (in T1w space)",
                             edges_label="T1w brain (red) and white matter (green)")


def plot_anat_registration(anat: AnatResult, *, title: str = "") -> Figure:
    """Registration mosaic: the T1w warped into template space, the template's edges over it.

    Returns
    -------
    matplotlib.figure.Figure
        The brain-extracted T1w after the SyN in grey; the template's GM/WM boundary (Otsu
        level) in red and its brain mask outline in yellow.
    """

    pin_itk()
    import ants


    tpl = read_3d_ants(anat.template, "the template")
    t1 = ants.image_read(str(anat.preproc_t1w))
    grid = ants.resample_image(tpl, tuple(float(s) for s in t1.spacing), use_voxels=False,
                               interp_type=0)
    mask = ants.image_read(str(anat.brain_mask))
    warped = ants.apply_transforms(grid, t1 * mask, [str(anat.t1w_to_template)])
    data, aff = ants_to_array(grid)
    return plot_registration(warped.numpy(), data, aff, mask=data > 0,
                             title=title or f"sub-{anat.subject}: T1w to {TEMPLATE_SPACE}",
                             background_label="T1w (warped)",
                             edges_label=f"{TEMPLATE_SPACE} template")
