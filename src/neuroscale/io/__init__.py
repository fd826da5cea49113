"""Readers and writers: NIfTI (nibabel), the Zarr working copy, atomic output files."""

from neuroscale.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from neuroscale.io.nifti import NiftiInfo, read_nifti_info, save_nifti

__all__ = [
    "NiftiInfo",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_nifti_info",
    "save_nifti",
]
