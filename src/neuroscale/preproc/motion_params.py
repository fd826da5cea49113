"""The six head-motion parameters: world matrices, ANTs transforms, FD and the motion ``.tsv``.

Parameters follow the convention of :mod:`neuroscale.preproc.motion` (its module docstring):
``trans_x, trans_y, trans_z`` (mm) and ``rot_x, rot_y, rot_z`` (rad) of the motion of the head
in volume ``t`` relative to the reference, in scanner RAS+ world coordinates, about the centre
of the reference grid, ``R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)``.  Moved here from
:mod:`neuroscale.preproc.motion`, which re-exports the public names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from neuroscale.errors import AnalysisError, RegistrationError
from neuroscale.io.atomic import atomic_write_text

__all__ = [
    "MOTION_COLUMNS",
    "ants_transform_to_matrix",
    "apply_rigid_motion",
    "framewise_displacement",
    "grid_center",
    "matrix_to_params",
    "rigid_matrix",
    "write_motion_tsv",
]

#: Column order of ``params`` and of the motion ``.tsv`` (fMRIPrep's names).
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


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
