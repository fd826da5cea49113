"""Head-motion correction of a BOLD run: rigid realignment of every volume, on Dask, with ANTsPy.

Every volume is registered rigidly to one reference volume with ANTsPy's ``antsRegistration``
(the engine behind ``ants.registration``; no optimiser of our own), resampled (linear) onto the
reference grid and written into a Zarr v3 working copy, one Dask task per block of volumes.
The realigned run is the working copy everything downstream reads.

Parameter convention
--------------------
The six parameters of volume ``t`` describe the rigid **motion of the head in volume t relative
to the reference volume** (the direction of fMRIPrep's ``_desc-confounds_timeseries.tsv``
motion columns, which come from MCFLIRT): the tissue at world point ``p`` in the reference is at
world point

    ``M(p) = R (p - c) + c + d``

in volume ``t``, so realigning volume ``t`` samples it at ``M(p)`` for every reference point
``p`` (which is ANTs' forward transform, fixed -> moving points).  Here

* the frame is **scanner RAS+ world coordinates, mm** (the NIfTI affine's output space; ANTs
  works in LPS, and its transforms are converted with ``F = diag(-1, -1, 1)``:
  ``M_ras = F M_lps F``);
* ``c`` is the **centre of the reference grid**, ``affine @ ((shape - 1) / 2)`` in mm (MCFLIRT
  also rotates about the volume's centre), so rotations do not leak into the translations of a
  head near the centre of the field of view;
* ``d = (trans_x, trans_y, trans_z)`` in mm, the displacement of the grid centre;
* ``R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)`` with right-handed rotations (radians) about the
  world x, y and z axes, ``Rx(a) = [[1, 0, 0], [0, cos a, -sin a], [0, sin a, cos a]]`` and
  likewise; applied to a vector, the z rotation acts first.  Angles are recovered from ``R``
  by ``rot_y = arcsin(R[0, 2])``, ``rot_x = atan2(-R[1, 2], R[2, 2])``,
  ``rot_z = atan2(-R[0, 1], R[0, 0])`` (exact for ``|rot_y| < 90`` degrees).

:func:`rigid_matrix` builds the 4 x 4 world matrix ``M`` from the parameters and
:func:`apply_rigid_motion` moves a volume by known parameters in exactly this convention (the
accuracy tests and the benchmark use it to create ground truth).  The ``.tsv`` written by
:func:`write_motion_tsv` uses fMRIPrep's column names and units (``trans_*`` mm, ``rot_*``
rad).  MCFLIRT's own ``.par`` files hold the parameters of the matrix mapping volume t onto the
reference in FSL's scaled-voxel frame, so their signs and centre can differ from ours; FD
(:func:`framewise_displacement`) is the same to first order.

Voxel order, coarse grids and implausible estimates
---------------------------------------------------
* Every volume is registered in the **closest-RAS voxel order** of its grid (axes permuted and
  flipped as ``nibabel.as_closest_canonical`` does; the world space and so the parameters are
  unchanged): ITK's regular sampling and its shrink factors follow the order of the voxels in
  memory, so a run stored with permuted or flipped axes would otherwise be registered on other
  sample points and its estimates differ by the sampling noise (FD r = 0.83 against the original
  on the studyforrest run).  With it, such copies give the same estimates.
* The schedule is adapted to the grid (:func:`registration_schedule`): a shrink level whose
  shrunk grid would hold fewer than ``min_level_voxels`` voxels is dropped, the metric sample is
  at least ``min_samples`` points, and a grid with fewer voxels than that uses ANTs'
  ``MeanSquares`` (the least-squares cost of AFNI's ``3dvolreg``) on every voxel instead of a
  32 x 32-bin mutual-information histogram it cannot fill.  MCFLIRT likewise sets its scales in
  mm, not in voxels.  The studyforrest run block-averaged to 24 x 24 x 26.4 mm voxels had
  estimates up to 5.7 mm / 0.064 rad with the fixed schedule (2x shrink of a 10 x 10 x 4 grid,
  15 % of 400 voxels as the MI sample); the adapted one gives at most 0.17 mm.
* Each estimate is checked against the image's own similarity (:func:`_check_estimate`): the
  residual ``1 - r`` of the Pearson correlation with the reference over the reference's bright
  voxels (``reference > mean``, inside the realigned field of view), before and after
  realignment.  An estimate is **implausible** when realignment makes the residual worse by more
  than ``max_residual_increase``, or moves some voxel of the brain's bounding box by more than
  ``max_shift_voxels`` voxels without reducing the residual by ``min_residual_gain``.  It is then
  estimated again with the small-grid schedule (dense ``MeanSquares``, one level) and, if that is
  implausible too, replaced by the identity (the volume is kept as acquired).  The per-volume
  numbers are returned (``RealignGraph.qc``, :data:`QC_COLUMNS`) and :func:`qc_report` turns
  them into the motion sidecar's ``HeadMotionQC`` and the run's warnings; when more than half
  the volumes fall back to the identity, :func:`realign`'s computation raises
  :class:`~neuroscale.errors.AnalysisError` instead (rigid realignment is not possible on that
  run; ``--no-motion-correction`` skips it).

Scale
-----
:func:`realign` builds one task per block of ``volumes_per_task`` volumes; each task reads its
volumes with one Zarr read (``Image._raw``), runs single-threaded ITK
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``: Dask provides the parallelism), writes its realigned
volumes as one Zarr shard (tasks write disjoint shards) and returns its parameters and its
partial sum for the mean.  A final small task joins them and writes a completion marker last:
a store without it is never opened.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from neuroscale.errors import AnalysisError, ImageFormatError, RegistrationError
from neuroscale.image import Image
from neuroscale.io.atomic import atomic_path, atomic_write_text

__all__ = [
    "MOTION_COLUMNS",
    "QC_COLUMNS",
    "REGISTRATION_SETTINGS",
    "RealignGraph",
    "apply_rigid_motion",
    "framewise_displacement",
    "matrix_to_params",
    "open_realigned",
    "qc_report",
    "read_realigned",
    "realign",
    "registration_schedule",
    "rigid_matrix",
    "select_reference",
    "write_motion_tsv",
]

#: Column order of ``params`` and of the motion ``.tsv`` (fMRIPrep's names).
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")

#: Completion marker of a realigned store, written last.
MARKER = "_neuroscale_realigned.json"
STORE_VERSION = 2

#: Columns of the per-volume check (``RealignGraph.qc``): the residual ``1 - r`` of the
#: correlation with the reference before and after realignment, the largest displacement (mm)
#: of the brain's bounding box by the estimate kept, and the outcome (0: first estimate kept,
#: 1: re-estimated with the small-grid schedule, 2: implausible twice, identity used).
QC_COLUMNS = ("residual_before", "residual_after", "max_displacement_mm", "outcome")

#: Target bytes of one realigned Zarr inner chunk (float32) along x, as the ingest layout.
_SERIES_CHUNK_BYTES = 16 * 2**20

#: Settings of the ``antsRegistration`` call made for every volume (see :func:`_ants_rigid`).
#: ANTs' ``BOLDRigid`` preset of ``ants.motion_correction`` (shrink 2x1, smoothing 1x0 voxels,
#: 100x20 iterations, gradient step 0.25, Mattes MI on a 20 % jittered regular sample seeded from
#: the clock) stopped 0.1-0.15 degree short of known motions on the studyforrest volumes and is
#: not reproducible run to run; ``ants.registration`` does not expose the step, the
#: convergence threshold or the seed.  So the same engine is called with: Mattes MI (32 bins)
#: on a 15 % regular sample with a **fixed random seed** (deterministic on any scheduler), a
#: smaller gradient step (0.1), two levels (shrink 2x1, smoothing 1x0 voxels) of 100 and 50
#: iterations with a 1e-7 convergence threshold, and the identity as the initial transform
#: (no centre-of-mass jump).  The metric's sampling sets the cost: measured on a studyforrest
#: volume moved by (1, -0.5, 0.7) mm / (1, -0.8, 0.6) degrees, 25 % sampling took 2.5x the time
#: of 10 % for a similar accuracy (0.05 mm / 0.03-0.09 degree), but 10 % missed one of the
#: test's 3-degree motions by 0.104 degree; 5 % missed by 0.19 degree.  15 % is the default.
#: ``min_samples``, ``min_level_voxels`` and ``small_grid_metric`` adapt this schedule to
#: coarse grids (:func:`registration_schedule`); ``max_residual_increase``,
#: ``max_shift_voxels`` and ``min_residual_gain`` define an implausible estimate
#: (:func:`_check_estimate`).  Measured on the studyforrest run: plausible estimates change the
#: residual ``1 - r`` by a factor 0.03-0.99 at native resolution (known motions up to 3 mm /
#: 3 degrees: 0.03-0.33) and 0.80-1.05 at 25 mm (interpolation noise on a 10 x 10 x 4 grid);
#: the fixed schedule's wrong estimates at 25 mm (0.7-1.2 mm moves of a still head) by
#: 1.65-2.1.  Hence an increase by more than 25 % is implausible.
REGISTRATION_SETTINGS: dict[str, Any] = {
    "metric": "Mattes",
    "bins": 32,
    "sampling_percentage": 0.15,
    "gradient_step": 0.1,
    "iterations": (100, 50),
    "convergence_threshold": 1e-7,
    "convergence_window": 10,
    "shrink_factors": (2, 1),
    "smoothing_sigmas_vox": (1, 0),
    "random_seed": 1,
    "min_samples": 20000,
    "min_level_voxels": 4096,
    "small_grid_metric": "MeanSquares",
    "max_residual_increase": 0.25,
    "max_shift_voxels": 0.5,
    "min_residual_gain": 0.05,
}

#: Keys of the settings that only the per-volume check reads (not passed to ANTs).
_CHECK_KEYS = ("max_residual_increase", "max_shift_voxels", "min_residual_gain")


# --------------------------------------------------------------------------- geometry


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def grid_center(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World (RAS+, mm) coordinates of the centre of a voxel grid, ``(3,)`` float64."""
    ijk = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64)[:3, :3] @ ijk + np.asarray(affine)[:3, 3]


def rigid_matrix(params: np.ndarray, center_mm: np.ndarray) -> np.ndarray:
    """The 4 x 4 world matrix ``M`` of one volume's motion (module docstring convention).

    Parameters
    ----------
    params : (6,) array of float
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad).
    center_mm : (3,) array of float
        Centre of rotation ``c``, RAS+ world mm.

    Returns
    -------
    (4, 4) ndarray of float64
        ``M`` with ``M @ [p, 1] = [R (p - c) + c + d, 1]``: the position in the moved volume
        of the tissue at ``p`` in the reference.
    """
    p = np.asarray(params, dtype=np.float64).reshape(6)
    c = np.asarray(center_mm, dtype=np.float64).reshape(3)
    rot = _rot_x(p[3]) @ _rot_y(p[4]) @ _rot_z(p[5])
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = c + p[:3] - rot @ c
    return out


def matrix_to_params(matrix: np.ndarray, center_mm: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rigid_matrix`: the six parameters of a rigid world matrix.

    Parameters
    ----------
    matrix : (4, 4) array of float
        Rigid RAS+ world transform (reference point -> moved point), mm.  A matrix that is
        not exactly orthonormal (single-precision ANTs output) is projected onto the nearest
        rotation (polar decomposition) first.
    center_mm : (3,) array of float
        Centre of rotation, mm.

    Returns
    -------
    (6,) ndarray of float64
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad).
    """
    m = np.asarray(matrix, dtype=np.float64)
    u, _, vt = np.linalg.svd(m[:3, :3])
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        raise RegistrationError("the transform is a reflection, not a rigid motion")
    c = np.asarray(center_mm, dtype=np.float64).reshape(3)
    trans = m[:3, :3] @ c + m[:3, 3] - c
    ry = math.asin(max(-1.0, min(1.0, rot[0, 2])))
    rx = math.atan2(-rot[1, 2], rot[2, 2])
    rz = math.atan2(-rot[0, 1], rot[0, 0])
    return np.array([trans[0], trans[1], trans[2], rx, ry, rz])


_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ants_transform_to_matrix(parameters: np.ndarray, fixed_parameters: np.ndarray) -> np.ndarray:
    """RAS+ world matrix of an ANTs/ITK affine transform (``ants.read_transform``).

    ITK's ``AffineTransform`` (what ``antsRegistration -z 1`` writes for a rigid stage) maps a
    point ``x`` of the fixed image to ``A (x - c) + c + t`` in the moving image, LPS mm, with
    ``parameters = (A row-major, t)`` and ``fixed_parameters = c``.  Converted to RAS+ with
    ``F M F``, ``F = diag(-1, -1, 1, 1)``.

    Parameters
    ----------
    parameters : (12,) array of float
    fixed_parameters : (3,) array of float

    Returns
    -------
    (4, 4) ndarray of float64
    """
    prm = np.asarray(parameters, dtype=np.float64)
    c = np.asarray(fixed_parameters, dtype=np.float64)[:3]
    a = prm[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = prm[9:12] + c - a @ c
    return _LPS @ lps @ _LPS


def apply_rigid_motion(
    volume: np.ndarray, affine: np.ndarray, params: np.ndarray, order: int = 3
) -> np.ndarray:
    """Move a volume by a known rigid motion (for tests and benchmarks: ground truth).

    The output on the same grid is ``out(q) = volume(M^-1(q))`` in world coordinates, with
    ``M = rigid_matrix(params, grid_center(affine, volume.shape))``: the tissue at world ``p``
    in ``volume`` is at ``M(p)`` in the output, so :func:`realign` with ``volume`` as the
    reference reports ``params`` for the output.

    Parameters
    ----------
    volume : (x, y, z) ndarray
    affine : (4, 4) ndarray
        Voxel-to-world (RAS+, mm).
    params : (6,) array of float
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad).
    order : int
        Spline order of ``scipy.ndimage.affine_transform`` (3: cubic, accurate ground truth).

    Returns
    -------
    (x, y, z) ndarray of float32
        Zero outside the moved field of view.
    """
    from scipy import ndimage

    aff = np.asarray(affine, dtype=np.float64)
    vol = np.asarray(volume, dtype=np.float32)
    motion = rigid_matrix(params, grid_center(aff, vol.shape))
    # output voxel q -> world A q -> reference world M^-1 A q -> input voxel A^-1 M^-1 A q
    vox = np.linalg.inv(aff) @ np.linalg.inv(motion) @ aff
    out = ndimage.affine_transform(vol, vox[:3, :3], offset=vox[:3, 3], order=order,
                                   mode="constant", cval=0.0, prefilter=order > 1)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- FD and tsv


def framewise_displacement(params: np.ndarray, radius_mm: float = 50.0) -> np.ndarray:
    """Framewise displacement of every volume (Power et al. 2012).

    ``FD_t = |dtx| + |dty| + |dtz| + r (|drx| + |dry| + |drz|)`` with backward differences
    ``d_t = p_t - p_(t-1)``, rotations in radians turned into arc length on a sphere of radius
    ``r`` (50 mm, "approximately the mean distance from the cerebral cortex to the centre of the
    head"), and ``FD_0 = 0``.

    Parameters
    ----------
    params : (n_volumes, 6) array of float
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad).
    radius_mm : float
        Sphere radius, mm.

    Returns
    -------
    (n_volumes,) ndarray of float64
        mm.

    Raises
    ------
    AnalysisError
        ``params`` is not (n, 6).

    Notes
    -----
    Power, Barnes, Snyder, Schlaggar & Petersen (2012), NeuroImage 59:2142-2154; as nipype's
    ``FramewiseDisplacement`` (used by fMRIPrep) with ``radius=50``.
    """
    p = np.asarray(params, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 6:
        raise AnalysisError(f"motion parameters must be (n_volumes, 6), got {p.shape}")
    fd = np.zeros(p.shape[0])
    if p.shape[0] > 1:
        diff = np.abs(np.diff(p, axis=0))
        fd[1:] = diff[:, :3].sum(axis=1) + radius_mm * diff[:, 3:].sum(axis=1)
    return fd


def write_motion_tsv(path: str | Path, params: np.ndarray, fd: np.ndarray | None = None) -> None:
    """Write the motion parameters as ``_desc-motion_timeseries.tsv`` (fMRIPrep's columns).

    Parameters
    ----------
    path : str or Path
        Output file, written atomically.
    params : (n_volumes, 6) array of float
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad).
    fd : (n_volumes,) array of float, optional
        Framewise displacement (mm); adds a ``framewise_displacement`` column whose first
        row is ``n/a``, as fMRIPrep writes it.

    Raises
    ------
    AnalysisError
        Shapes do not match.
    """
    p = np.asarray(params, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 6:
        raise AnalysisError(f"motion parameters must be (n_volumes, 6), got {p.shape}", path)
    columns = list(MOTION_COLUMNS)
    if fd is not None:
        fd = np.asarray(fd, dtype=np.float64).reshape(-1)
        if fd.shape[0] != p.shape[0]:
            raise AnalysisError(f"FD has {fd.shape[0]} values for {p.shape[0]} volumes", path)
        columns.append("framewise_displacement")
    lines = ["\t".join(columns)]
    for t, row in enumerate(p):
        cells = [f"{v:.6g}" for v in row]
        if fd is not None:
            cells.append("n/a" if t == 0 else f"{fd[t]:.6g}")
        lines.append("\t".join(cells))
    atomic_write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- reference


def select_reference(image: Image, n_dummy: int = 0, n_volumes: int = 10) -> np.ndarray:
    """The reference volume: voxelwise median of the first steady-state volumes.

    Parameters
    ----------
    image : Image
        4D BOLD run.
    n_dummy : int
        Leading non-steady-state volumes to skip (e.g. ``qc_summary(...)["n_nonsteady"]``,
        nipype's ``NonSteadyStateDetector``).
    n_volumes : int
        How many volumes after them to take the median of (fewer if the run is shorter).

    Returns
    -------
    (x, y, z) ndarray of float32
        Scaled intensities.  Only the selected volumes are read.

    Raises
    ------
    ImageFormatError
        Not a 4D image.
    AnalysisError
        ``n_dummy`` leaves no volume.

    Notes
    -----
    A median of several volumes is robust to one volume with a spike or a sudden motion, as
    fMRIPrep's ``init_bold_reference_wf`` (median of the non-steady-state volumes, or of the
    first volumes) does.
    """
    image.require_4d(1)
    nt = image.n_volumes
    start = max(0, int(n_dummy))
    if start >= nt:
        raise AnalysisError(f"{n_dummy} non-steady-state volumes leave no volume of {nt}",
                            image.source)
    stop = min(nt, start + max(1, int(n_volumes)))
    raw, slope, inter = image._raw({0: stop - start, 1: -1, 2: -1, 3: -1})
    block = np.asarray(raw[start:stop].compute(), dtype=np.float32)
    vols = block * np.float32(slope) + np.float32(inter)
    return np.median(vols, axis=0).astype(np.float32)


# --------------------------------------------------------------------------- realign


def registration_schedule(shape: tuple[int, ...], settings: dict[str, Any] | None = None
                          ) -> dict[str, Any]:
    """The registration settings adapted to a grid of ``shape`` voxels.

    Parameters
    ----------
    shape : tuple of int
        ``(x, y, z)`` (further axes are ignored).
    settings : dict, optional
        Default :data:`REGISTRATION_SETTINGS`.

    Returns
    -------
    dict
        A copy of ``settings`` in which

        * each shrink level whose shrunk grid (``ceil(n / f)`` voxels per axis, as ITK
          shrinks) holds fewer than ``min_level_voxels`` voxels is dropped, with its
          smoothing; the remaining levels keep their iterations and the finest level gets at
          least the largest iteration count of those dropped;
        * the sampling fraction is raised so that the metric sees at least ``min_samples``
          points (every voxel when the grid has fewer);
        * a grid of fewer than ``min_samples`` voxels uses ``small_grid_metric``
          (``MeanSquares``) on every voxel, one level, no smoothing.

        Only the number of voxels enters, so the schedule is the same for any order of the
        axes.  On the studyforrest grid (80 x 80 x 35) the defaults are unchanged.

    Notes
    -----
    Mattes mutual information estimates a 32 x 32 joint histogram from its sample (Mattes et
    al. 2003, IEEE TMI 22:120); from a few hundred points it is noise, and a 2x shrink of a
    10 x 10 x 4 grid leaves 5 x 5 x 2 voxels.  ``3dvolreg`` minimises the least-squares
    difference of the volumes, which needs no histogram; MCFLIRT chooses its scales in mm
    (Jenkinson et al. 2002, NeuroImage 17:825).
    """
    s = dict(REGISTRATION_SETTINGS if settings is None else settings)
    dims = np.asarray(shape[:3], dtype=np.int64)
    n_vox = int(np.prod(dims))
    shrinks = [int(f) for f in s["shrink_factors"]]
    sigmas = list(s["smoothing_sigmas_vox"])
    iters = [int(i) for i in s["iterations"]]
    min_level = int(s.get("min_level_voxels", 0))
    keep = [k for k, f in enumerate(shrinks)
            if f == 1 or int(np.prod(-(-dims // f))) >= min_level]
    if not keep:  # never drop the last level
        keep = [len(shrinks) - 1]
    dropped = [iters[k] for k in range(len(shrinks)) if k not in keep]
    s["shrink_factors"] = tuple(shrinks[k] for k in keep)
    s["smoothing_sigmas_vox"] = tuple(sigmas[k] for k in keep)
    new_iters = [iters[k] for k in keep]
    if dropped:
        new_iters[-1] = max(new_iters[-1], *dropped)
    s["iterations"] = tuple(new_iters)
    min_samples = int(s.get("min_samples", 0))
    fraction = s["sampling_percentage"]
    if fraction is not None and n_vox * float(fraction) < min_samples:
        s["sampling_percentage"] = min(1.0, min_samples / max(n_vox, 1))
    if n_vox < min_samples:
        s.update(metric=s.get("small_grid_metric", s["metric"]), sampling_percentage=1.0,
                 shrink_factors=(1,), smoothing_sigmas_vox=(0,),
                 iterations=(max(iters),))
    return s


def _small_grid_schedule(settings: dict[str, Any]) -> dict[str, Any]:
    """The retry schedule for an implausible estimate: dense ``small_grid_metric``, one level."""
    return {**settings, "metric": settings.get("small_grid_metric", "MeanSquares"),
            "sampling_percentage": 1.0, "shrink_factors": (1,), "smoothing_sigmas_vox": (0,),
            "iterations": (max(int(i) for i in settings["iterations"]),)}


def _canonical_orientation(affine: np.ndarray, shape: tuple[int, ...]
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ornt, back, canonical_affine)``: the closest-RAS voxel order of a grid.

    ``nibabel.orientations.apply_orientation(vol, ornt)`` gives the volume in that order, on
    ``canonical_affine`` (the same world space); ``apply_orientation(.., back)`` undoes it.
    """
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    ornt = io_orientation(affine)
    canonical = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(ornt, shape[:3])
    back = ornt_transform(axcodes2ornt(("R", "A", "S")), ornt)
    return ornt, back, canonical


def _residual(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - r`` of the Pearson correlation of two 1-D float arrays (1 if either is constant)."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return 1.0 if den == 0.0 else max(0.0, 1.0 - float(a @ b) / den)


def _check_estimate(reference: np.ndarray, bright: np.ndarray, corners_mm: np.ndarray,
                    volume: np.ndarray, warped: np.ndarray, params: np.ndarray,
                    center: np.ndarray, voxel_mm: float, settings: dict[str, Any]
                    ) -> tuple[bool, float, float, float]:
    """Is one volume's estimate plausible?  ``(ok, residual_before, residual_after, disp_mm)``.

    ``residual_*`` are ``1 - r`` of the volume (before) and of its realigned version (after)
    with the reference over the ``bright`` voxels that lie inside the realigned field of view
    (ANTs writes 0 outside it); ``disp_mm`` is the largest displacement of the corners of the
    bright voxels' bounding box (``corners_mm``, (4, 8) homogeneous world mm) by the estimate.
    Implausible: ``after > before * (1 + max_residual_increase)``, or ``disp_mm >
    max_shift_voxels * voxel_mm`` with ``after > before * (1 - min_residual_gain)``.
    """
    valid = bright & (warped != 0)
    if int(valid.sum()) < 8:  # nothing left to compare: the estimate moved the brain out
        return False, 1.0, 1.0, float("inf")
    ref = reference[valid]
    before = _residual(volume[valid], ref)
    after = _residual(warped[valid], ref)
    motion = rigid_matrix(params, center)
    disp = float(np.sqrt((((motion - np.eye(4)) @ corners_mm)[:3] ** 2).sum(axis=0)).max())
    tiny = 1e-9  # identical volumes: residuals 0
    worse = after > (before + tiny) * (1.0 + float(settings["max_residual_increase"]))
    large = disp > float(settings["max_shift_voxels"]) * voxel_mm
    no_gain = after > (before + tiny) * (1.0 - float(settings["min_residual_gain"]))
    return not (worse or (large and no_gain)), before, after, disp


def _ants_image(volume: np.ndarray, affine: np.ndarray) -> Any:
    """An ``ants.ANTsImage`` (float32) on the RAS+ voxel grid ``affine``, in ANTs' LPS space."""
    import ants

    lps = _LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(np.ascontiguousarray(volume, dtype=np.float32),
                           origin=tuple(float(v) for v in lps[:3, 3]),
                           spacing=tuple(float(v) for v in spacing), direction=direction)


def _ants_rigid(fixed: Any, moving: Any, prefix: str, settings: dict[str, Any]) -> tuple[Any, Any]:
    """Run ANTsPy's ``antsRegistration`` (rigid, one stage) on two images.

    The command line is the one ``ants.registration(type_of_transform="Rigid")`` builds,
    with the step, convergence threshold and random seed of ``settings`` (which that wrapper
    fixes or leaves to the clock).  Returns ``(transform, warped)``: the ``ants`` transform
    mapping fixed points to moving points, and the moving image resampled (linear) onto the
    fixed grid.

    Raises
    ------
    RegistrationError
        ``antsRegistration`` returned a non-zero exit code.
    """
    import glob

    import ants
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    s = {k: v for k, v in settings.items() if k not in _CHECK_KEYS}
    warped = fixed.clone()
    warped_fixed = moving.clone()
    f_ptr, m_ptr = get_pointer_string(fixed), get_pointer_string(moving)
    sampling = ("" if s["sampling_percentage"] is None or s["sampling_percentage"] >= 1.0
                else f",Regular,{s['sampling_percentage']}")
    metric_arg = s["bins"] if s["metric"] == "Mattes" else 1
    args = [
        "--dimensionality", "3", "--float", "1", "-r", "Identity",
        "--metric", f"{s['metric']}[{f_ptr},{m_ptr},1,{metric_arg}{sampling}]",
        "--transform", f"Rigid[{s['gradient_step']}]",
        "--convergence", "[{},{},{}]".format("x".join(str(i) for i in s["iterations"]),
                                             s["convergence_threshold"],
                                             s["convergence_window"]),
        "--shrink-factors", "x".join(str(i) for i in s["shrink_factors"]),
        "--smoothing-sigmas", "x".join(str(i) for i in s["smoothing_sigmas_vox"]) + "vox",
        "-u", "0", "-z", "1", "--random-seed", str(int(s["random_seed"])),
        "--output", f"[{prefix},{get_pointer_string(warped)},{get_pointer_string(warped_fixed)}]",
        "--write-composite-transform", "0",
    ]
    code = get_lib_fn("antsRegistration")(process_arguments(args))
    try:
        if code != 0:
            raise RegistrationError(f"antsRegistration exited with code {code}")
        tx = ants.read_transform(prefix + "0GenericAffine.mat")
    finally:
        for name in glob.glob(glob.escape(prefix) + "*"):
            with contextlib.suppress(OSError):
                os.remove(name)
    return tx, warped


def _register_volume(
    fixed: Any, volume: np.ndarray, affine: np.ndarray, center: np.ndarray, workdir: str,
    settings: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Register one volume to ``fixed``; return its (6,) parameters and the realigned volume."""
    moving = _ants_image(volume, affine)
    tx, warped = _ants_rigid(fixed, moving, os.path.join(workdir, "v"), settings)
    matrix = ants_transform_to_matrix(tx.parameters, tx.fixed_parameters)
    return matrix_to_params(matrix, center), np.asarray(warped.numpy(), dtype=np.float32)


def _realign_block(
    block: np.ndarray, slope: float, inter: float, reference: np.ndarray, affine: np.ndarray,
    store: str, t0: int, settings: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task: register the (n, x, y, z) raw volumes of ``block`` and write them at ``t0``.

    ``settings`` is the grid's schedule (:func:`registration_schedule`).  Volumes are
    registered in the closest-RAS voxel order (module docstring) and written back in the
    run's own.  Returns the (n, 6) parameters, the (x, y, z) float64 sum of the realigned
    volumes and the (n, 4) per-volume check (:data:`QC_COLUMNS`).
    """
    from neuroscale.compute.determinism import pin_itk

    pin_itk()  # one ITK thread in any worker (the seed is in the command line)
    import zarr
    from nibabel.orientations import apply_orientation

    center = grid_center(affine, reference.shape)
    ornt, back, canon_affine = _canonical_orientation(affine, reference.shape)
    canon_ref = np.ascontiguousarray(apply_orientation(reference, ornt), dtype=np.float32)
    fixed = _ants_image(canon_ref, canon_affine)
    bright = canon_ref > float(canon_ref.mean())
    idx = np.argwhere(bright) if bright.any() else np.zeros((1, 3), dtype=np.int64)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])]).T
    corners_mm = canon_affine @ corners
    voxel_mm = float(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)).min())
    retry = _small_grid_schedule(settings)
    n = block.shape[0]
    params = np.zeros((n, 6))
    qc = np.zeros((n, len(QC_COLUMNS)))
    total = np.zeros(reference.shape, dtype=np.float64)
    out = np.empty((n, *reference.shape), dtype=np.float32)
    workdir = tempfile.mkdtemp(prefix="neuroscale-motion-")
    try:
        for i in range(n):
            vol = block[i].astype(np.float32) * np.float32(slope) + np.float32(inter)
            canon = np.ascontiguousarray(apply_orientation(vol, ornt), dtype=np.float32)
            outcome = 0
            for attempt in (settings, retry):
                try:
                    p, warped = _register_volume(fixed, canon, canon_affine, center, workdir,
                                                 attempt)
                except (RuntimeError, RegistrationError) as exc:
                    raise RegistrationError(f"registration of volume {t0 + i} failed ({exc})",
                                            store) from exc
                ok, before, after, disp = _check_estimate(
                    canon_ref, bright, corners_mm, canon, warped, p, center, voxel_mm, settings)
                if ok or attempt is retry or settings == retry:
                    break
                outcome = 1
            if not ok:  # implausible twice: keep the volume as acquired
                p, warped, after, disp, outcome = np.zeros(6), canon, before, 0.0, 2
            params[i] = p
            qc[i] = (before, after, disp, outcome)
            out[i] = apply_orientation(warped, back)
            total += out[i]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    arr = zarr.open_array(store, path="data", mode="r+")
    arr[t0 : t0 + n] = out
    return params, total, qc


def qc_report(qc: np.ndarray, settings: dict[str, Any] | None = None,
              source: str | Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """What the per-volume check found: the sidecar entry and the run's warnings.

    Parameters
    ----------
    qc : (n_volumes, 4) array of float
        ``RealignGraph.qc`` (:data:`QC_COLUMNS`).
    settings : dict, optional
        The schedule used (:func:`registration_schedule`), recorded as is.
    source : str or Path, optional
        The run, named in the warnings.

    Returns
    -------
    summary : dict
        JSON-ready: ``n_volumes``, ``volumes_reestimated`` and ``volumes_identity`` (0-based
        indices), ``max_displacement_mm``, the thresholds and ``schedule``.
    warnings : list of str
        One line per kind of fallback (none when every first estimate was kept).
    """
    q = np.asarray(qc, dtype=np.float64).reshape(-1, len(QC_COLUMNS))
    outcome = q[:, 3].astype(int)
    redo = [int(i) for i in np.flatnonzero(outcome == 1)]
    ident = [int(i) for i in np.flatnonzero(outcome == 2)]
    s = dict(REGISTRATION_SETTINGS if settings is None else settings)
    summary: dict[str, Any] = {
        "n_volumes": int(q.shape[0]),
        "volumes_reestimated": redo,
        "volumes_identity": ident,
        "max_displacement_mm": float(q[:, 2].max()) if q.size else 0.0,
        "check": ("residual 1 - r with the reference (voxels above its mean) before/after "
                  f"realignment; implausible if it grows by > {s['max_residual_increase']:g}x, "
                  f"or a displacement > {s['max_shift_voxels']:g} voxel shrinks it by < "
                  f"{s['min_residual_gain']:g}x; then re-estimated with dense "
                  f"{s.get('small_grid_metric', 'MeanSquares')}, else identity"),
        "schedule": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
    }
    name = Path(source).name if source is not None else "the run"

    def _list(vols: list[int]) -> str:
        return ", ".join(str(v) for v in vols[:10]) + (" ..." if len(vols) > 10 else "")

    warnings = []
    if redo:
        warnings.append(
            f"{name}: head-motion estimate implausible for {len(redo)} of {q.shape[0]} volumes "
            f"(realignment worsened or barely improved the match while moving the brain by "
            f"more than {s['max_shift_voxels']:g} voxel); re-estimated with dense "
            f"{s.get('small_grid_metric', 'MeanSquares')}: volumes {_list(redo)}")
    if ident:
        warnings.append(
            f"{name}: head-motion estimate implausible twice for {len(ident)} of {q.shape[0]} "
            f"volumes; they are kept unrealigned (zero motion parameters): volumes "
            f"{_list(ident)}")
    return summary, warnings


def _finalize(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], store: str,
              n_volumes: int, key: dict[str, Any]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join the tasks' results, store params, mean and check, and write the marker last.

    Raises :class:`AnalysisError` (no marker written) when more than half the volumes fell
    back to the identity.
    """
    import zarr

    params = np.concatenate([p for p, _, _ in parts], axis=0)
    qc = np.concatenate([q for _, _, q in parts], axis=0)
    total = np.zeros_like(parts[0][1])
    for _, s, _ in parts:
        total += s
    mean = (total / n_volumes).astype(np.float32)
    summary, warnings = qc_report(qc, key["settings"], key.get("source"))
    n_ident = len(summary["volumes_identity"])
    if 2 * n_ident > n_volumes:
        voxel = "x".join(f"{v:.3g}" for v in key.get("voxel_mm", []))
        raise AnalysisError(
            f"head-motion estimates are implausible for {n_ident} of {n_volumes} volumes "
            f"({voxel} mm voxels, {int(np.prod(key['shape'][:3]))} voxels a volume): "
            "realignment does not improve their match with the reference; rigid motion "
            "correction is not possible on this run (use --no-motion-correction)",
            key.get("source"))
    group = zarr.open_group(store, mode="r+")
    group.create_array("params", data=params, overwrite=True)
    group.create_array("mean", data=mean, overwrite=True)
    group.create_array("qc", data=qc, overwrite=True)
    atomic_write_text(Path(store) / MARKER, json.dumps(
        {**key, "head_motion_qc": summary, "head_motion_warnings": warnings, "complete": True},
        indent=1))
    return params, mean, qc


@dataclass
class RealignGraph:
    """The lazy result of :func:`realign`.

    Attributes
    ----------
    params : dask.array.Array, shape (n_volumes, 6), float64
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad), per volume.
    mean : dask.array.Array, shape (x, y, z), float32
        Mean of the realigned volumes (the BOLD reference for masking), from the same tasks.
    store : Path
        Zarr v3 store that the realigned volumes are written into when ``params`` or ``mean``
        is computed (``dask.compute(g.params, g.mean)`` registers every volume once).
    n_tasks : int
        Number of registration tasks (volume blocks).
    qc : dask.array.Array, shape (n_volumes, 4), float64
        The per-volume check (:data:`QC_COLUMNS`), from the same tasks; :func:`qc_report`
        summarises it.
    settings : dict
        The schedule used on this grid (:func:`registration_schedule`).
    """

    params: da.Array
    mean: da.Array
    store: Path
    n_tasks: int = 0
    qc: da.Array | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _default_volumes_per_task(n_volumes: int) -> int:
    # ~25 volumes (about 25 s of registration, 22 MB of float32 80x80x35 volumes) per task,
    # and at least ~8 tasks for parallelism on short runs
    return int(max(1, min(25, math.ceil(n_volumes / 8))))


def _x_chunk(shape: tuple[int, ...], n_volumes: int) -> int:
    nx, ny, nz = shape[:3]
    per_x = n_volumes * ny * nz * 4
    return int(max(1, min(nx, _SERIES_CHUNK_BYTES // max(per_x, 1), math.ceil(nx / 8))))


def realign(
    image: Image,
    store: str | Path,
    reference: np.ndarray,
    *,
    volumes_per_task: int | None = None,
    settings: dict[str, Any] | None = None,
) -> RealignGraph:
    """Build the (lazy) rigid realignment of every volume of ``image`` to ``reference``.

    Parameters
    ----------
    image : Image
        4D BOLD run (typically a Zarr working copy from :func:`neuroscale.open_image`).
    store : str or Path
        Zarr v3 store to create for the realigned run: array ``data`` (t, x, y, z) float32,
        shards of ``volumes_per_task`` whole volumes (one per task), inner chunks of a few
        x-planes (as the ingest layout), then ``params``, ``mean`` and the completion marker.
        An existing store there is removed now.
    reference : (x, y, z) array of float
        Reference volume on ``image``'s grid (:func:`select_reference`).
    volumes_per_task : int, optional
        Volumes registered by one task (default: 25, fewer for short runs).
    settings : dict, optional
        Registration settings (default :data:`REGISTRATION_SETTINGS`; same keys), adapted to
        the grid by :func:`registration_schedule`.

    Returns
    -------
    RealignGraph
        Nothing is computed (creating the empty store is the only side effect).

    Raises
    ------
    ImageFormatError
        Not 4D.
    AnalysisError
        ``reference`` is not on the image grid; (when computed) more than half the volumes
        have implausible estimates twice (module docstring), naming the run's source.
    RegistrationError
        (When computed) ANTs failed on a volume.
    """
    import zarr
    from zarr.codecs import BloscCodec

    image.require_4d(1)
    reference = np.asarray(reference, dtype=np.float32)
    if reference.shape != image.shape[:3]:
        raise AnalysisError(
            f"reference shape {reference.shape} does not match the image grid {image.shape[:3]}",
            image.source,
        )
    nt = image.n_volumes
    vpt = int(volumes_per_task or _default_volumes_per_task(nt))
    if vpt < 1:
        raise AnalysisError(f"volumes_per_task must be >= 1, got {volumes_per_task}")
    settings = registration_schedule(image.shape[:3],
                                     REGISTRATION_SETTINGS if settings is None else settings)
    affine = np.asarray(image.affine, dtype=np.float64)
    store = Path(store)
    nx, ny, nz = image.shape[:3]
    xc = _x_chunk(image.shape, nt)

    # start clean: never leave an old marker beside new data
    if store.exists():
        with contextlib.suppress(FileNotFoundError):
            (store / MARKER).unlink()
        shutil.rmtree(store)
    with atomic_path(store, is_dir=True) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.create_array(
            "data", shape=(nt, nx, ny, nz), dtype=np.float32,
            shards=(vpt, -(-nx // xc) * xc, ny, nz), chunks=(vpt, xc, ny, nz),
            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), fill_value=0,
        )
    raw, slope, inter = image._raw({0: vpt, 1: -1, 2: -1, 3: -1})
    key = {
        "store_version": STORE_VERSION,
        "sha256": image.meta.get("sha256"),
        "source": None if image.source is None else str(image.source),
        "shape": [nx, ny, nz, nt],
        "chunks": [vpt, xc, ny, nz],
        "reference_sha256": _sha256(reference),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "voxel_mm": [float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))],
    }
    task = dask.delayed(_realign_block, pure=True)
    # one graph key each for the reference and the affine, shared by every task
    ref_d = dask.delayed(reference, pure=True)
    aff_d = dask.delayed(affine, pure=True)
    parts = []
    t0 = 0
    for blk, size in zip(raw.to_delayed().ravel(), raw.chunks[0], strict=True):
        parts.append(task(blk, slope, inter, ref_d, aff_d, str(store), t0, settings,
                          dask_key_name=f"realign-block-{_token(store, key)}-{t0}"))
        t0 += size
    final = dask.delayed(_finalize, pure=True)(parts, str(store), nt, key)
    params = da.from_delayed(final[0], shape=(nt, 6), dtype=np.float64)
    mean = da.from_delayed(final[1], shape=(nx, ny, nz), dtype=np.float32)
    qc = da.from_delayed(final[2], shape=(nt, len(QC_COLUMNS)), dtype=np.float64)
    return RealignGraph(params=params, mean=mean, store=store, n_tasks=len(parts), qc=qc,
                        settings=settings)


def _sha256(arr: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _token(store: Path, key: dict[str, Any]) -> str:
    from dask.base import tokenize

    return str(tokenize(str(store), json.dumps(key, sort_keys=True)))


def read_realigned(store: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """``(params (n, 6) float64, mean (x, y, z) float32, manifest)`` of a complete store, or None.

    A store without its completion marker (half-written, or being written) gives None.  The
    manifest holds the per-volume check's summary (``head_motion_qc``, see :func:`qc_report`)
    and its warnings (``head_motion_warnings``).
    """
    import zarr

    marker = Path(store) / MARKER
    try:
        manifest: dict[str, Any] = json.loads(marker.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if manifest.get("store_version") != STORE_VERSION or not manifest.get("complete"):
        return None
    params = np.asarray(zarr.open_array(str(store), path="params", mode="r")[...], np.float64)
    mean = np.asarray(zarr.open_array(str(store), path="mean", mode="r")[...], np.float32)
    return params, mean, manifest


def open_realigned(store: str | Path, like: Image, mean: np.ndarray | None = None) -> Image:
    """The realigned run as an :class:`Image`, read from its Zarr store.

    Parameters
    ----------
    store : str or Path
        A store written by computing :func:`realign`'s graph.
    like : Image
        The original run: affine, TR, header, source and sha256 are taken from it.
    mean : (x, y, z) array of float, optional
        The computed ``RealignGraph.mean`` (default: the one stored).

    Returns
    -------
    Image
        float32 ``(x, y, z, t)``, with ``meta = {"store", "mean", "sha256"}`` and the raw
        ``(t, x, y, z)`` view set, so ``to_series`` and ``_raw`` read it as an ingested
        working copy (one Zarr read per chunk).

    Raises
    ------
    ImageFormatError
        The store is missing or incomplete (no completion marker), or its shape differs from
        ``like``'s.
    """
    store = Path(store)
    found = read_realigned(store)
    if found is None:
        raise ImageFormatError("realigned store is missing or incomplete (no completion "
                               "marker); recompute the realignment", store)
    _, stored_mean, manifest = found
    nx, ny, nz, nt = manifest["shape"]
    if tuple(like.shape) != (nx, ny, nz, nt):
        raise ImageFormatError(f"realigned store shape {(nx, ny, nz, nt)} differs from the run's "
                               f"{like.shape}", store)
    raw = da.from_zarr(str(store), component="data", chunks=tuple(manifest["chunks"]))
    mean_arr = np.asarray(stored_mean if mean is None else mean, dtype=np.float32)
    return replace(
        like,
        data=raw.transpose(1, 2, 3, 0),
        meta={"store": str(store), "mean": da.from_array(mean_arr, chunks=mean_arr.shape),
              "sha256": like.meta.get("sha256"),
              # what the ingest of the raw run found (non-finite voxels, warnings) still holds
              **{k: like.meta[k] for k in ("input_checks", "warnings", "nonfinite")
                 if k in like.meta}},
        _raw_txyz=raw,
        _scaling=(1.0, 0.0),
    )
