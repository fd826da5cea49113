"""Anatomical processing of a T1w image with ANTsPy: bias correction, brain extraction, tissue
segmentation and spatial normalisation to the MNI152NLin2009cAsym template.

The steps follow the anatomical workflow of fMRIPrep / sMRIPrep (Esteban et al. 2019, Nat
Methods 16:111-116), with ANTsPy (Tustison et al. 2021, Sci Rep 11:9068) doing every image
operation, on a working grid of ``resolution_mm`` (default 2 mm) isotropic voxels in the T1w's
own world frame (registration and segmentation at 2 mm are 20-50x cheaper than at the T1w's
0.7 mm; transforms are continuous and apply at any resolution):

1. **Resampling and bias correction**: the T1w is resampled linearly onto the working grid and
   corrected for intensity non-uniformity with N4 (Tustison et al. 2010, IEEE TMI 29:1310-1320;
   ``ants.n4_bias_field_correction``, B-spline mesh spacing 200 mm as in niworkflows, 4 levels of
   50 iterations, fitted at a shrink factor of 4 in a head mask from ``ants.get_mask``; shrink 2
   took 4-8x longer for a field within 3 % of this one on the real T1w).
2. **Affine to the template** (``antsRegistrationSyNQuickRepro[a]``: rigid then affine, Mattes
   mutual information, initialised by aligning the centres of mass of the two images, which
   makes it independent of where the header puts the head).  The template's brain mask is
   brought back into the T1w (inverse affine) and dilated by 6 mm: a *prior* mask that removes
   the neck and most of the skull.
3. **SyN to the template** (Avants et al. 2008, Med Image Anal 12:26-41; ANTsPy ``SyNOnly``:
   ``SyN[0.2,3,0]``, Mattes mutual information with dense sampling (deterministic), iterations
   :data:`SYN_ITERATIONS` at shrink factors 4x2x1) of the prior-masked T1w onto the
   brain-extracted template, initialised with step 2.  (``antsRegistrationSyNQuick[s]`` gives
   the same Dice, 0.96 vs 0.95 on the real sub-02, at ~9x the time.)  Both directions are saved as ANTs
   composite HDF5 transforms with BIDS names (``_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5``
   and the inverse).
4. **Segmentation** with Atropos (Avants et al. 2011, Neuroinformatics 9:381-400;
   ``ants.atropos``, k-means initialisation, 3 classes, MRF smoothing 0.1, 1-voxel
   neighbourhood, 5 iterations, constant seed) of the T1w clipped at its 99.5th percentile, inside the
   template's brain mask brought back through the SyN (it includes the sulcal CSF).  Classes are ordered by mean intensity, so on a T1w they are CSF < GM < WM; the
   discrete segmentation uses **fMRIPrep's dseg convention: 1 = CSF, 2 = GM, 3 = WM** (0 =
   background) and the posteriors are written as ``_label-{CSF,GM,WM}_probseg.nii.gz``.
5. **Brain mask** from the T1w's own intensities, as antsBrainExtraction.sh refines its
   template-based mask: GM or WM voxels of step 4, morphologically opened (1 voxel), largest
   connected component, closed (2 voxels) and hole-filled (ventricles), then extended by the
   CSF voxels that touch it within 1 voxel (sulcal CSF, as the template's mask includes it).
6. **Check**: the brain mask of step 5 is carried into template space by the SyN and compared
   with the template's brain mask (template > 0).  Because step 5 follows the T1w's
   intensities and not the template, a registration that diverged (a wrong or noise image, a
   head flipped or far away beyond recovery) gives a low Dice coefficient and a
   :class:`~neuroscale.errors.RegistrationError` naming the subject; nothing is written.

Outputs (BIDS derivatives, fMRIPrep names, in ``anat_out_dir``; every image on the working
grid, in T1w space; each with a provenance sidecar): ``_desc-preproc_T1w.nii.gz`` (the
bias-corrected T1w, for reports), ``_desc-brain_mask.nii.gz``, ``_dseg.nii.gz``,
``_label-{CSF,GM,WM}_probseg.nii.gz`` and the two ``_xfm.h5`` transforms.  A re-run whose
inputs (sha256 of T1w and template) and parameters are unchanged reuses them.  Every ANTs call
runs with one ITK thread and fixed seeds (:mod:`neuroscale.compute.determinism`), so the outputs
are the same, byte for byte, in any process (ITK's sums depend on its thread count; the affine
stage's metric sample and Atropos are seeded from the clock by default).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuroscale.bids.derivatives import derivative_name
from neuroscale.compute.determinism import ANTS_SEED, ITK_THREADS, pin_itk
from neuroscale.errors import ImageFormatError, NeuroscaleError, RegistrationError
from neuroscale.io.atomic import atomic_path
from neuroscale.io.nifti import read_nifti_info, save_nifti
from neuroscale.provenance import (
    is_up_to_date,
    provenance_hash,
    read_provenance,
    sha256_file,
    sidecar_path,
    write_provenance,
)

__all__ = [
    "TEMPLATE_SPACE",
    "TISSUES",
    "AnatResult",
    "anat_summary",
    "ants_to_array",
    "array_to_ants",
    "dice",
    "process_anat",
    "read_3d_ants",
    "transform_sha256",
]

#: The template space of the normalisation (TemplateFlow identifier).
TEMPLATE_SPACE = "MNI152NLin2009cAsym"

#: Tissue classes in dseg order: label ``i + 1`` is ``TISSUES[i]`` (fMRIPrep's convention).
TISSUES = ("CSF", "GM", "WM")

#: Registration settings (ANTsPy ``type_of_transform`` names); deterministic variants.
AFFINE_TRANSFORM = "antsRegistrationSyNQuickRepro[a]"
SYN_TRANSFORM = "SyNOnly"

#: SyN iterations per level (shrink factors 4x2x1, smoothing 2x1x0 voxels: ANTsPy's rule for
#: three levels); 0 at the finest level: on the 2 mm grid the warp is fitted down to 4 mm.
SYN_ITERATIONS = (80, 50, 0)

_LPS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------------
# small helpers shared with neuroscale.preproc.registration


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks.

    Parameters
    ----------
    a, b : ndarray of bool, same shape
        The masks (non-zero values count as True).

    Returns
    -------
    float
        ``2 |a & b| / (|a| + |b|)`` (Dice 1945, Ecology 26:297-302), in [0, 1]; 0 when both
        are empty.

    Raises
    ------
    ValueError
        The shapes differ.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 0.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def transform_sha256(path: str | Path) -> str:
    """sha256 of an ANTs/ITK transform file, without the write times HDF5 stores in it.

    ITK writes composite transforms (``.h5``) with HDF5 version-2 object headers, which carry
    their access / modification / change / birth times (and a checksum over them): two
    identical transforms written a second apart differ in those bytes.  This digest is the
    sha256 of the file with each ``OHDR`` header's 16 bytes of times and its checksum set to
    zero (HDF5 file format specification 3.0, section IV.A.1.b); any other file is digested as
    it is.  Identical transforms give identical digests, whenever they were written.

    Parameters
    ----------
    path : str or Path
        The transform file.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    import hashlib

    data = bytearray(Path(path).read_bytes())
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        pos = data.find(b"OHDR")
        while pos >= 0:
            if pos + 6 <= len(data) and data[pos + 4] == 2:  # version-2 object header
                flags = data[pos + 5]
                p = pos + 6
                if flags & 0x20:  # times stored
                    data[p:p + 16] = bytes(16)
                    p += 16
                if flags & 0x10:  # attribute phase change values
                    p += 4
                width = 1 << (flags & 0x03)
                end = p + width + int.from_bytes(data[p:p + width], "little")
                if end + 4 <= len(data):  # the checksum after chunk 0
                    data[end:end + 4] = bytes(4)
            pos = data.find(b"OHDR", pos + 4)
    return hashlib.sha256(bytes(data)).hexdigest()


def array_to_ants(data: np.ndarray, affine: np.ndarray) -> Any:
    """An ANTs image from a 3D array and its nibabel (RAS+) affine.

    Parameters
    ----------
    data : ndarray, shape (x, y, z)
        Voxel values (cast to float32).
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS+, mm) affine.  A small shear (oblique acquisitions store a
        slightly non-orthogonal matrix) is removed by taking the nearest orthonormal direction
        matrix (polar decomposition): ITK images cannot shear.

    Returns
    -------
    ants.ANTsImage
        Origin, spacing and direction in ITK's LPS convention.
    """
    import ants

    aff = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    u, _, vt = np.linalg.svd(aff[:3, :3] / spacing)
    direction = _LPS @ (u @ vt)
    origin = _LPS @ aff[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), origin=origin.tolist(),
                           spacing=spacing.tolist(), direction=direction)


def ants_to_array(img: Any) -> tuple[np.ndarray, np.ndarray]:
    """The voxel array and nibabel (RAS+) affine of an ANTs image.

    Returns
    -------
    data : ndarray, shape (x, y, z)
    affine : ndarray, shape (4, 4), float64
    """
    aff = np.eye(4)
    aff[:3, :3] = _LPS @ np.asarray(img.direction) @ np.diag(img.spacing)
    aff[:3, 3] = _LPS @ np.asarray(img.origin)
    return img.numpy(), aff


def read_3d_ants(path: str | Path, what: str) -> Any:
    """Read a 3D NIfTI (a trailing singleton 4th axis is accepted) as a float ANTs image.

    Raises
    ------
    InputNotFoundError
        The file does not exist.
    ImageFormatError
        The file is not a valid NIfTI or not 3D (``what`` names it in the message).
    """
    import nibabel as nib


    info = read_nifti_info(path)
    shape = tuple(info.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ImageFormatError(f"{what} must be a 3D image, got shape {tuple(info.shape)}", path)
    img: Any = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    if not np.all(np.isfinite(data)):
        raise ImageFormatError(f"{what} holds NaN or infinite values", path)
    return array_to_ants(data, img.affine)


def _save(img: Any, path: Path, dtype: Any) -> None:

    data, aff = ants_to_array(img)
    save_nifti(data, aff, path, dtype=dtype)


# --------------------------------------------------------------------------------------------
# result


@dataclass
class AnatResult:
    """What :func:`process_anat` produced (all paths exist).

    Attributes
    ----------
    subject : str
        The subject label (without ``sub-``).
    t1w : Path
        The source T1w.
    brain_mask : Path
        Brain mask in T1w space on the working grid, uint8 (1 = brain).
    dseg : Path
        Tissue labels in T1w space, uint8: 1 = CSF, 2 = GM, 3 = WM, 0 = background
        (fMRIPrep's ``_dseg`` convention).
    probseg : dict of str to Path
        ``"CSF"``, ``"GM"``, ``"WM"`` -> Atropos posterior probability maps, float32 in [0, 1].
    t1w_to_template : Path
        ANTs composite transform (HDF5), T1w -> template; with ``ants.apply_transforms`` it
        resamples a T1w-space image into template space (the forward warp).
    template_to_t1w : Path
        The inverse composite transform: resamples a template-space image (an atlas) into T1w
        space.
    dice : float
        Dice coefficient of the T1w brain mask warped to the template and the template's mask.
    template : Path
        The template used.
    preproc_t1w : Path
        The bias-corrected T1w on the working grid.
    outputs : dict of str to Path
        Every file written (images and transforms; sidecars are beside them).
    timings : dict of str to float
        Wall time of each step in seconds (empty when the outputs were reused).
    reused : bool
        True when every output was up to date and nothing was computed.
    """

    subject: str
    t1w: Path
    brain_mask: Path
    dseg: Path
    probseg: dict[str, Path]
    t1w_to_template: Path
    template_to_t1w: Path
    dice: float
    template: Path
    preproc_t1w: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    reused: bool = False


def _names(anat_out_dir: Path, subject: str, session: str | None) -> dict[str, Path]:

    ents: dict[str, Any] = {"sub": subject}
    if session:
        ents["ses"] = session

    def name(**kw: Any) -> Path:
        suffix = kw.pop("suffix")
        extension = kw.pop("extension", ".nii.gz")
        return anat_out_dir / derivative_name(ents, suffix=suffix, extension=extension, **kw)

    out = {
        "preproc_t1w": name(suffix="T1w", desc="preproc"),
        "brain_mask": name(suffix="mask", desc="brain"),
        "dseg": name(suffix="dseg"),
        **{f"probseg_{t}": name(suffix="probseg", label=t) for t in TISSUES},
        "t1w_to_template": name(suffix="xfm", extension=".h5", mode="image",
                                **{"from": "T1w", "to": TEMPLATE_SPACE}),
        "template_to_t1w": name(suffix="xfm", extension=".h5", mode="image",
                                **{"from": TEMPLATE_SPACE, "to": "T1w"}),
    }
    return out


def _result(subject: str, t1w: Path, template: Path, paths: dict[str, Path], dice_value: float,
            timings: dict[str, float], reused: bool) -> AnatResult:
    return AnatResult(
        subject=subject, t1w=t1w, brain_mask=paths["brain_mask"], dseg=paths["dseg"],
        probseg={t: paths[f"probseg_{t}"] for t in TISSUES},
        t1w_to_template=paths["t1w_to_template"], template_to_t1w=paths["template_to_t1w"],
        dice=dice_value, template=template, preproc_t1w=paths["preproc_t1w"],
        outputs=dict(paths), timings=timings, reused=reused,
    )


# --------------------------------------------------------------------------------------------
# the computation


def _determinism_params() -> dict[str, Any]:
    """What makes ANTs reproducible, recorded in the parameters (see
    :mod:`neuroscale.compute.determinism`)."""

    return {"ITKThreads": ITK_THREADS, "ANTsRandomSeed": ANTS_SEED, "AtroposRandomSeed": "constant"}


def _brain_from_segmentation(dseg: Any) -> Any:
    """Brain mask from the tissue labels (step 5 of the module docstring), as an ANTs image."""
    import ants

    gmwm = ants.threshold_image(dseg, 2, 3)
    gmwm = ants.iMath(gmwm, "MO", 1)
    gmwm = ants.iMath(gmwm, "GetLargestComponent")
    gmwm = ants.iMath(gmwm, "MC", 2)
    gmwm = ants.iMath(gmwm, "FillHoles")
    near = ants.iMath(gmwm, "MD", 1)
    csf = ants.threshold_image(dseg, 1, 1)
    brain = ants.threshold_image(gmwm + near * csf, 0.5, 10)
    return ants.iMath(brain, "FillHoles")


def _compute(t1w: Path, template: Path, tmp: Path, resolution_mm: float,
             syn_iterations: tuple[int, ...], paths: dict[str, Path],
             log: Callable[[str, float], None]) -> tuple[float, dict]:
    """Run steps 1-6 into ``tmp``; return the Dice value and diagnostics (no output written)."""

    pin_itk()  # one ITK thread, seeded sampling: the same result in any process
    import ants

    t = time.perf_counter()
    t1 = read_3d_ants(t1w, "the T1w")
    tpl_full = read_3d_ants(template, "the template")
    res = (float(resolution_mm),) * 3
    t1r = ants.resample_image(t1, res, use_voxels=False, interp_type=0)
    tpl = ants.resample_image(tpl_full, res, use_voxels=False, interp_type=0)
    tmask = ants.threshold_image(tpl, 1e-6, float("inf"))
    log("read and resample", time.perf_counter() - t)

    t = time.perf_counter()
    head = ants.get_mask(t1r, cleanup=2)
    t1n = ants.n4_bias_field_correction(
        t1r, mask=head, shrink_factor=4, spline_param=200,
        convergence={"iters": [50, 50, 50, 50], "tol": 1e-7},
    )
    log("N4 bias correction", time.perf_counter() - t)

    t = time.perf_counter()
    aff = ants.registration(tpl, t1n, type_of_transform=AFFINE_TRANSFORM,
                            outprefix=str(tmp / "affine_"))
    prior = ants.apply_transforms(t1n, tmask, aff["invtransforms"],
                                  interpolator="genericLabel", whichtoinvert=[True])
    prior = ants.iMath(prior, "MD", max(1, int(round(6.0 / resolution_mm))))
    log("affine registration", time.perf_counter() - t)

    t = time.perf_counter()
    syn = ants.registration(tpl, t1n * prior, type_of_transform=SYN_TRANSFORM,
                            initial_transform=aff["fwdtransforms"][0], syn_metric="mattes",
                            syn_sampling=32, reg_iterations=tuple(syn_iterations),
                            write_composite_transform=True, outprefix=str(tmp / "syn_"))
    fwd, inv = syn["fwdtransforms"], syn["invtransforms"]
    log("SyN registration", time.perf_counter() - t)

    t = time.perf_counter()
    roi = ants.apply_transforms(t1n, tmask, inv, interpolator="genericLabel")
    # k-means starts from centres spread over the intensity range: clip the few very bright
    # voxels (vessels, fat) at the 99.5th percentile so they do not take a class of their own
    inside = t1n.numpy()[roi.numpy() > 0.5]
    top = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    t1c = t1n.new_image_like(np.clip(t1n.numpy(), 0.0, top).astype(np.float32))
    # r=0: Atropos's constant seed (by default it seeds from the clock: posteriors differed
    # call to call)
    seg = ants.atropos(a=t1c, x=roi, i="Kmeans[3]", m="[0.1,1x1x1]", c="[5,0]", r=0)
    dseg = seg["segmentation"]
    probs = seg["probabilityimages"]
    brain = _brain_from_segmentation(dseg)
    log("Atropos segmentation and brain mask", time.perf_counter() - t)

    t = time.perf_counter()
    warped_brain = ants.apply_transforms(tpl, brain, fwd, interpolator="genericLabel")
    dice_value = dice(warped_brain.numpy() > 0.5, tmask.numpy() > 0.5)
    warped_t1 = ants.apply_transforms(tpl, t1n * brain, fwd, interpolator="linear")
    tm = tmask.numpy() > 0.5
    w_in, t_in = warped_t1.numpy()[tm], tpl.numpy()[tm]
    corr = (float(np.corrcoef(w_in, t_in)[0, 1]) if w_in.std() > 0 and t_in.std() > 0
            else float("nan"))
    log("Dice check", time.perf_counter() - t)

    labels = dseg.numpy()
    vol_ml = float(np.prod(res)) / 1000.0
    diagnostics = {
        "CorrelationWithTemplate": corr,
        "BrainVolume_ml": float((brain.numpy() > 0.5).sum() * vol_ml),
        **{f"{name}Volume_ml": float((labels == i + 1).sum() * vol_ml)
           for i, name in enumerate(TISSUES)},
    }

    # stage the outputs in tmp (moved into place only after the check)
    _save(t1n, tmp / paths["preproc_t1w"].name, np.float32)
    _save(brain, tmp / paths["brain_mask"].name, np.uint8)
    _save(dseg, tmp / paths["dseg"].name, np.uint8)
    for i, name in enumerate(TISSUES):
        _save(probs[i], tmp / paths[f"probseg_{name}"].name, np.float32)
    shutil.copyfile(fwd, tmp / paths["t1w_to_template"].name)
    shutil.copyfile(inv, tmp / paths["template_to_t1w"].name)
    return dice_value, diagnostics


def process_anat(
    t1w: str | Path,
    anat_out_dir: str | Path,
    subject: str,
    *,
    template: str | Path,
    work_dir: str | Path,
    resolution_mm: float = 2.0,
    min_dice: float = 0.9,
    syn_iterations: tuple[int, ...] = SYN_ITERATIONS,
    session: str | None = None,
    progress: Callable[[str], Any] | None = None,
) -> AnatResult:
    """Bias-correct, skull-strip, segment and normalise a T1w image (see the module docstring).

    Parameters
    ----------
    t1w : str or Path
        The T1w image (3D NIfTI, head with skull or brain-extracted).
    anat_out_dir : str or Path
        Output directory of the subject's anatomical derivatives (``OUT/sub-X/anat``).
    subject : str
        Subject label (without ``sub-``), used in file names and error messages.
    template : str or Path
        A brain-extracted T1w template in MNI152NLin2009cAsym space (3D; voxels outside the
        brain are 0), e.g. ``mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz``.
    work_dir : str or Path
        Scratch directory (registration temporaries; removed afterwards).
    resolution_mm : float
        Isotropic voxel size of the working grid, mm (default 2).
    min_dice : float
        Smallest accepted Dice coefficient of the check (default 0.9).
    syn_iterations : tuple of int
        SyN iterations per level, coarse to fine (default :data:`SYN_ITERATIONS`).
    session : str, optional
        Session label for the file names.
    progress : callable, optional
        Called with one line of text after each step (its wall time in s).

    Returns
    -------
    AnatResult

    Raises
    ------
    InputNotFoundError
        The T1w or the template does not exist.
    ImageFormatError
        The T1w or the template is not a 3D NIfTI.
    RegistrationError
        The warped brain mask overlaps the template's mask with Dice < ``min_dice`` (the
        registration failed or diverged), or ANTs failed; no output is written.
    """
    t1w, template = Path(t1w), Path(template)
    anat_out_dir, work_dir = Path(anat_out_dir), Path(work_dir)
    # validate both images before anything else (cheap: headers only)

    for path, what in ((t1w, "the T1w"), (template, "the template")):
        shape = tuple(read_nifti_info(path).shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise ImageFormatError(f"{what} must be a 3D image, got shape {shape}", path)

    paths = _names(anat_out_dir, subject, session)
    sources = [(t1w, sha256_file(t1w)), (template, sha256_file(template))]
    params = {
        "Step": "anat", "ResolutionMM": float(resolution_mm), "MinDice": float(min_dice),
        "TemplateSpace": TEMPLATE_SPACE, "AffineTransform": AFFINE_TRANSFORM,
        "SyNTransform": SYN_TRANSFORM, "SyNIterations": list(syn_iterations),
        "N4SplineDistanceMM": 200, "N4ShrinkFactor": 4, "AtroposClasses": 3,
        "AtroposMRF": "[0.1,1x1x1]", "PriorDilationMM": 6.0,
        **_determinism_params(),
    }
    expected = provenance_hash([sha for _, sha in sources], params)
    if all(is_up_to_date(p, expected) for p in paths.values()):
        meta = read_provenance(paths["t1w_to_template"]) or {}
        return _result(subject, t1w, template, paths, float(meta.get("Dice", float("nan"))),
                       {}, reused=True)

    timings: dict[str, float] = {}

    def log(step: str, seconds: float) -> None:
        timings[step] = round(seconds, 3)
        if progress is not None:
            progress(f"sub-{subject}: {step} ({seconds:.1f} s)")

    started = _dt.datetime.now(_dt.UTC)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"anat-sub-{subject}-", dir=work_dir))
    try:
        try:
            dice_value, diag = _compute(t1w, template, tmp, resolution_mm, syn_iterations,
                                        paths, log)
        except NeuroscaleError:
            raise
        except Exception as exc:  # ANTs reports failures as RuntimeError/ValueError
            msg = " ".join(str(exc).split())[:300]
            raise RegistrationError(f"sub-{subject}: anatomical processing failed in ANTs "
                                    f"({type(exc).__name__}: {msg})", t1w) from exc
        if not dice_value >= min_dice:
            raise RegistrationError(
                f"sub-{subject}: T1w to {TEMPLATE_SPACE} registration failed or diverged: the "
                f"warped brain mask overlaps the template's with Dice {dice_value:.3f} < "
                f"{min_dice} (correlation with the template {diag['CorrelationWithTemplate']:.2f})",
                t1w,
            )
        ended = _dt.datetime.now(_dt.UTC)
        src = [(p, None, sha) for p, sha in sources]
        common = {"Resolution": f"{resolution_mm:g} mm isotropic working grid in T1w space",
                  "Timings_s": timings}
        extras: dict[str, dict[str, Any]] = {
            "preproc_t1w": {"SkullStripped": False},
            "brain_mask": {"Type": "Brain", "RawSources": [str(t1w)]},
            "dseg": {"Labels": {"1": "CSF", "2": "GM", "3": "WM"}},
            "t1w_to_template": {"Dice": dice_value, "MinDice": min_dice, **diag,
                                "FromSpace": "T1w", "ToSpace": TEMPLATE_SPACE},
            "template_to_t1w": {"Dice": dice_value, "FromSpace": TEMPLATE_SPACE,
                                "ToSpace": "T1w"},
        }
        anat_out_dir.mkdir(parents=True, exist_ok=True)
        for key, final in paths.items():
            # the old sidecar goes first, so a crash never pairs a new file with an old record

            sidecar_path(final).unlink(missing_ok=True)
            with atomic_path(final) as dest:
                shutil.copyfile(tmp / final.name, dest)
            write_provenance(final, sources=src, parameters=params, started=started,
                             ended=ended, extra={**common, **extras.get(key, {})})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _result(subject, t1w, template, paths, dice_value, timings, reused=False)


def anat_summary(anat: AnatResult) -> dict[str, Any]:
    """The check values recorded in the forward transform's sidecar (Dice, volumes in ml)."""
    meta = read_provenance(anat.t1w_to_template) or {}
    keys = ("Dice", "MinDice", "CorrelationWithTemplate", "BrainVolume_ml", "CSFVolume_ml",
            "GMVolume_ml", "WMVolume_ml", "Timings_s")
    return json.loads(json.dumps({k: meta.get(k) for k in keys}))
