"""Seed-based correlation: Fisher z of Pearson r between a spherical seed and every voxel.

The seed is defined as nilearn's :class:`~nilearn.maskers.NiftiSpheresMasker` defines a sphere
with a mask (``nilearn.maskers.nifti_spheres_masker.apply_mask_and_get_affinity``, 0.14): the
in-mask voxels whose centres (voxel -> world through the affine) lie within ``radius_mm``
(inclusive) of the world coordinate, plus the voxel nearest to the coordinate (the rounded
inverse-affine index) when it is in the mask.  The seed time series is the plain mean of those
voxels (the masker's default: no detrending or standardisation) as they are in the denoised
image, i.e. *before* each voxel is z-scored: a Series of z-scored voxels comes with its
per-voxel scale and offset (``voxel_scale``, from
:func:`neuroscale.analysis.denoise.clean_with_scale`).  Unlike nilearn we do not add
the voxel whose *truncated* world coordinates equal the truncated seed (an integer-cast quirk
that only matters for radii below ~2 voxels).
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from neuroscale.errors import AnalysisError, ConfigurationError
from neuroscale.image import Series
from neuroscale.kernels.maps import seed_fisher_z_block

__all__ = ["seed_correlation", "sphere_voxels"]

_R_CLIP = 1.0 - 1e-7


def sphere_voxels(mask: np.ndarray, affine: np.ndarray, center_mm: Sequence[float] | np.ndarray,
                  radius_mm: float) -> np.ndarray:
    """Mask-order indices of the in-mask voxels of a sphere (nilearn's definition).

    Parameters
    ----------
    mask : (x, y, z) ndarray of bool
        Brain mask.
    affine : (4, 4) ndarray
        Voxel-to-world transform, mm.
    center_mm : (3,) sequence of float
        Sphere centre, world coordinates in mm.
    radius_mm : float
        Radius in mm (>= 0).

    Returns
    -------
    (n_seed,) ndarray of intp
        Sorted indices into the mask-order voxels (possibly empty).
    """
    center = np.asarray(center_mm, dtype=np.float64).reshape(3)
    affine = np.asarray(affine, dtype=np.float64)
    ijk = np.argwhere(mask)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    d2 = ((world - center) ** 2).sum(axis=1)
    inside = d2 <= float(radius_mm) ** 2
    nearest = np.rint(np.linalg.solve(affine, np.append(center, 1.0))[:3]).astype(int)
    if np.all(nearest >= 0) and np.all(nearest < mask.shape) and mask[tuple(nearest)]:
        order = np.cumsum(mask.reshape(-1)) - 1
        inside[order[np.ravel_multi_index(tuple(nearest), mask.shape)]] = True
    return np.flatnonzero(inside)


def seed_correlation(series: Series, center_mm: Sequence[float],
                     radius_mm: float = 6.0, *, voxel_scale: np.ndarray | None = None
                     ) -> da.Array:
    """Seed-to-voxel correlation map, Fisher z-transformed, lazily.

    Parameters
    ----------
    series : Series
        ``(n_timepoints, n_voxels)`` float32 in-mask time series.
    center_mm : (3,) sequence of float
        Seed centre, world (scanner/template) coordinates in mm.
    radius_mm : float
        Seed sphere radius in mm (default 6).
    voxel_scale : (2, n_voxels) ndarray of float, optional
        Scale (row 0) and offset (row 1) of every voxel, mask order: the seed signal is the
        mean of ``scale * series + offset`` over the sphere (nilearn's ``NiftiSpheresMasker``
        on the unstandardised denoised image).  The correlation with each voxel does not
        depend on that voxel's scale.

    Returns
    -------
    (n_voxels,) dask array of float32
        ``arctanh(r)`` with ``r`` the Pearson correlation of each voxel with the seed's mean
        time series (``r`` clipped to ``|r| <= 1 - 1e-7`` so that seed voxels stay finite;
        0 for constant voxels), in mask order.

    Raises
    ------
    ConfigurationError
        ``center_mm`` is not 3 numbers or ``radius_mm`` is negative.
    AnalysisError
        The sphere contains no in-mask voxel (the message names the coordinate).
    """
    center = np.asarray(center_mm, dtype=np.float64)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise ConfigurationError(f"seed centre must be 3 finite numbers (mm), got {center_mm}")
    if not radius_mm >= 0:
        raise ConfigurationError(f"seed radius must be >= 0 mm, got {radius_mm}")
    idx = sphere_voxels(series.mask, series.affine, center, radius_mm)
    if idx.size == 0:
        raise AnalysisError(
            f"the seed sphere at ({center[0]:g}, {center[1]:g}, {center[2]:g}) mm with radius "
            f"{radius_mm:g} mm contains no in-mask voxel",
            series.source,
        )
    seed_data = series.data[:, idx]  # (T, n_seed): touches the seed's chunks only
    if voxel_scale is not None:
        scale = np.asarray(voxel_scale, dtype=np.float64)
        if scale.shape != (2, series.n_voxels) or not np.isfinite(scale).all():
            raise ConfigurationError(
                f"voxel_scale must be (2, {series.n_voxels}) finite values, got {scale.shape}",
                series.source)
        seed_ts = ((seed_data.astype(np.float64) * scale[0, idx]).mean(axis=1)
                   + float(scale[1, idx].mean()))
    else:
        seed_ts = seed_data.mean(axis=1, dtype=np.float64)
    return da.blockwise(
        seed_fisher_z_block, "j", series.data, "tj", seed_ts, "t", _R_CLIP, None,
        dtype=np.float32, concatenate=True, meta=np.empty((0,), np.float32),
    )

