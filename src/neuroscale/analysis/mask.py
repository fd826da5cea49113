"""Brain mask of a BOLD run from its mean EPI.

The mean over time is accumulated while the run is streamed into its Zarr working copy
(:func:`neuroscale.io.zarr_cache.ingest_nifti`), so the mask costs no extra pass over the 4D
data.  The thresholding itself is nilearn's :func:`nilearn.masking.compute_epi_mask` (Nichols'
lower-cut method on the histogram of the mean image, then opening and largest connected
component), called on that 3D mean image: for a 4D input nilearn computes exactly this mean
first, so the two agree voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuroscale.errors import AnalysisError, ImageFormatError
from neuroscale.image import Image

__all__ = ["compute_brain_mask", "load_mask"]


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
        The mask is empty.
    """
    import nibabel as nib
    from nilearn.masking import compute_epi_mask

    mean = image.mean().compute_volume() if image.ndim == 4 else image.compute_volume()
    mask_img = compute_epi_mask(
        nib.Nifti1Image(np.asarray(mean, dtype=np.float32), image.affine),
        lower_cutoff=lower_cutoff,
        upper_cutoff=upper_cutoff,
        connected=connected,
        opening=opening,
    )
    mask = np.asarray(mask_img.dataobj).astype(bool)
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
        The mask is empty.
    """
    from neuroscale.image import open_image

    mask_image = open_image(path)
    if mask_image.ndim != 3:
        raise ImageFormatError(f"a mask must be 3D, got shape {mask_image.shape}", path)
    if mask_image.shape != image.shape[:3] or not np.allclose(
        mask_image.affine, image.affine, atol=1e-3
    ):
        raise ImageFormatError("the mask is not on the BOLD run's voxel grid", path)
    mask = mask_image.compute_volume() > 0
    if not mask.any():
        raise AnalysisError("the brain mask is empty", path)
    return mask
