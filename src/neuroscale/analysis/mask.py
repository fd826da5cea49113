"""Brain mask of a BOLD run from its mean EPI.

The mean over time is accumulated while the run is streamed into its Zarr working copy
(:func:`neuroscale.io.zarr_cache.ingest_nifti`), so the mask costs no extra pass over the 4D
data.  The thresholding itself is nilearn's :func:`nilearn.masking.compute_epi_mask` (Nichols'
lower-cut method on the histogram of the mean image, then opening and largest connected
component), called on that 3D mean image: for a 4D input nilearn computes exactly this mean
first, so the two agree voxel for voxel.

Both the computed and a given mask refuse a run in which no voxel changes over time (constant
or all-zero data: every map would be 0 or undefined), and leave out the voxels that held a
non-finite value (NaN, Inf) in the source; both facts come from the one streaming ingest pass
(``image.meta["input_checks"]`` and ``image.meta["nonfinite"]``, see
:func:`neuroscale.image.open_image`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuroscale.errors import AnalysisError, ImageFormatError
from neuroscale.image import Image, open_image

__all__ = ["compute_brain_mask", "load_mask", "require_signal"]


def require_signal(image: Image) -> None:
    """Refuse a 4D run in which every voxel is constant over time (all-zero data included).

    Uses what the ingest recorded (no pass over the data); images without that record pass.

    Raises
    ------
    AnalysisError
        Every voxel keeps its first volume's value in every volume.
    """
    checks = image.meta.get("input_checks") or {}
    if image.ndim != 4 or checks.get("varies", True):
        return
    what = "every value is 0" if checks.get("first_volume_all_zero") else "no voxel changes"
    raise AnalysisError(f"the data are constant over time ({what}): nothing to analyse",
                        image.source)


def _drop_nonfinite(mask: np.ndarray, image: Image) -> np.ndarray:
    """``mask`` without the voxels that held NaN/Inf in the source (see the module docstring)."""
    bad = image.meta.get("nonfinite")
    if bad is None:
        return mask
    return np.asarray(mask, dtype=bool) & ~np.asarray(bad, dtype=bool)


def compute_brain_mask(
    image: Image,
    *,
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    connected: bool = True,
    opening: int = 2,
) -> np.ndarray:
    """Brain mask from the mean EPI, as :func:`nilearn.masking.compute_epi_mask`.

    Parameters
    ----------
    image : Image
        A 4D BOLD image (its stored mean is used) or a 3D mean image.
    lower_cutoff, upper_cutoff : float
        Fractions of the sorted mean-image histogram between which the threshold is searched
        (nilearn's defaults).
    connected : bool
        Keep the largest connected component only.
    opening : int
        Iterations of morphological opening.

    Returns
    -------
    (x, y, z) ndarray of bool

    Raises
    ------
    AnalysisError
        The data are constant over time (:func:`require_signal`), or the mask is empty.
    """
    import nibabel as nib
    from nilearn.masking import compute_epi_mask

    require_signal(image)
    mean = image.mean().compute_volume() if image.ndim == 4 else image.compute_volume()
    mean = np.asarray(mean, dtype=np.float32)
    bad = image.meta.get("nonfinite")
    if bad is not None:  # their mean holds zeros in place of NaN/Inf: not a brain value
        mean = np.where(bad, np.float32(0), mean)
    mask_img = compute_epi_mask(
        nib.Nifti1Image(mean, image.affine),
        lower_cutoff=lower_cutoff,
        upper_cutoff=upper_cutoff,
        connected=connected,
        opening=opening,
    )
    mask = _drop_nonfinite(np.asarray(mask_img.dataobj).astype(bool), image)
    if not mask.any():
        raise AnalysisError("the computed brain mask is empty", image.source)
    return mask


def load_mask(path: str | Path, image: Image) -> np.ndarray:
    """Load a brain mask image and check it matches ``image``'s grid.

    Parameters
    ----------
    path : str or Path
        3D mask (non-zero = brain) on the BOLD grid.
    image : Image
        The BOLD image.

    Returns
    -------
    (x, y, z) ndarray of bool

    Raises
    ------
    ImageFormatError
        Not 3D, or a different grid (shape or affine) than the BOLD.
    AnalysisError
        The data are constant over time (:func:`require_signal`), or the mask is empty (after
        leaving out the voxels that held NaN/Inf in the run).
    """

    require_signal(image)
    mask_image = open_image(path)
    if mask_image.ndim != 3:
        raise ImageFormatError(f"a mask must be 3D, got shape {mask_image.shape}", path)
    if mask_image.shape != image.shape[:3] or not np.allclose(
        mask_image.affine, image.affine, atol=1e-3
    ):
        raise ImageFormatError("the mask is not on the BOLD run's voxel grid", path)
    mask = _drop_nonfinite(mask_image.compute_volume() > 0, image)
    if not mask.any():
        raise AnalysisError("the brain mask is empty", path)
    return mask
