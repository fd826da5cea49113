"""Rigid registration of one volume to the reference with ANTsPy, and the check of its estimate.

The settings of the ``antsRegistration`` call (:data:`REGISTRATION_SETTINGS`), their adaptation
to a grid (:func:`registration_schedule`), the call itself (:func:`_ants_rigid`, in the
closest-RAS voxel order of :func:`_canonical_orientation`) and the plausibility check of an
estimate (:func:`_check_estimate`) that :mod:`neuroscale.preproc.motion` runs for every volume
(its module docstring describes them).  Moved here from :mod:`neuroscale.preproc.motion`, which
re-exports the public names.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import numpy as np

from neuroscale.errors import RegistrationError
from neuroscale.preproc.motion_params import (
    _LPS,
    ants_transform_to_matrix,
    matrix_to_params,
    rigid_matrix,
)

__all__ = ["REGISTRATION_SETTINGS", "registration_schedule"]

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
