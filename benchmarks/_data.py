"""Benchmark inputs: a synthetic BOLD run, a brain mask and a 400-parcel atlas on its grid.

Everything is generated once per size under the work directory and reused while its
``dataset.json`` stamp matches the size's specification.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Dataset specifications.  ``mask_fraction`` of the grid is in the brain mask: 0.248 of
#: 91 x 109 x 91 is ~223.8k voxels, the in-mask count of the PERFORMANCE.md workload.
SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "shape": [40, 48, 40, 200],
        "mask_fraction": 0.248,
        "atlas_splits": [8, 10, 5],
        "centrality_voxels": 10000,
        "gemm_n": 4096,
    },
    "hcp": {
        "shape": [91, 109, 91, 1200],
        "mask_fraction": 0.248,
        "atlas_splits": [8, 10, 5],
        "centrality_voxels": 40000,
        "gemm_n": 12000,
    },
}

#: Bump when the generated files change meaning.
DATASET_VERSION = 2
T_R = 2.0
SEED = 0


def brain_mask(shape3: tuple[int, int, int], fraction: float) -> np.ndarray:
    """A centred ellipsoid holding ``fraction`` of the grid's voxels (C-order ties kept)."""
    coords = [(np.arange(n) - (n - 1) / 2.0) / (0.42 * n) for n in shape3]
    ux, uy, uz = np.meshgrid(*coords, indexing="ij")
    r2 = (ux**2 + uy**2 + uz**2).ravel()
    n_target = max(1, round(fraction * r2.size))
    thr = np.partition(r2, n_target - 1)[n_target - 1]
    return (r2 <= thr).reshape(shape3)


def regular_atlas(mask: np.ndarray, splits: tuple[int, int, int]) -> np.ndarray:
    """Split the mask into ``prod(splits)`` compact parcels of (nearly) equal voxel counts.

    The in-mask voxels are cut into ``splits[0]`` equal-count slabs along x, each slab into
    ``splits[1]`` pieces along y and each piece into ``splits[2]`` along z (no k-means).
    Labels are 1..prod(splits), int16; 0 outside the mask.
    """
    idx = np.flatnonzero(mask.ravel())
    x, y, z = np.unravel_index(idx, mask.shape)
    labels = np.zeros(mask.size, dtype=np.int16)
    label = 1
    for slab in np.array_split(idx[np.lexsort((z, y, x))], splits[0]):
        sx, sy, sz = np.unravel_index(slab, mask.shape)
        for piece in np.array_split(slab[np.lexsort((sz, sx, sy))], splits[1]):
            px, py, pz = np.unravel_index(piece, mask.shape)
            for parcel in np.array_split(piece[np.lexsort((py, px, pz))], splits[2]):
                labels[parcel] = label
                label += 1
    return labels.reshape(mask.shape)


def drop_scaling(src: Path, dst: Path) -> None:
    """Copy a .nii.gz with ``scl_slope = 1, scl_inter = 0`` (stored int16 values kept).

    Streams: isal decompress -> patched header -> isal level-1 compress.
    """
    import io

    import isal.igzip as igzip
    import nibabel as nib

    with igzip.open(src, "rb") as fin:
        head = fin.read(352)
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(head))
        offset = int(hdr["vox_offset"])
        head += fin.read(offset - len(head))
        hdr.set_slope_inter(1.0, 0.0)
        with igzip.open(dst, "wb", compresslevel=1) as fout:
            fout.write(hdr.binaryblock + head[348:offset])
            while block := fin.read(16 << 20):
                fout.write(block)


def ensure_dataset(workdir: Path, size: str, scaling: str = "none",
                   log: Any = print) -> dict[str, Any]:
    """Create (or reuse) the inputs for ``size``; return their paths and facts.

    ``scaling="slope"`` keeps the ``scl_slope`` that ``write_synthetic_bold`` stores for int16
    (nibabel, hence nilearn, then loads the data as float64); ``"none"`` rewrites the header
    with slope 1 (raw int16 values, as a scanner writes them and as the PERFORMANCE.md
    reference run used).
    """
    import nibabel as nib

    from neuroscale.testing import write_synthetic_bold

    spec = SIZES[size]
    root = Path(workdir) / (size if scaling == "none" else f"{size}-{scaling}")
    stamp = root / "dataset.json"
    want = {"version": DATASET_VERSION, "spec": spec, "t_r": T_R, "seed": SEED,
            "scaling": scaling}
    if stamp.exists():
        have = json.loads(stamp.read_text())
        if {k: have.get(k) for k in want} == want and Path(have["bold"]).exists():
            return dict(have)
    root.mkdir(parents=True, exist_ok=True)
    bold = root / "bold.nii.gz"
    t0 = time.perf_counter()
    log(f"generating {bold} {tuple(spec['shape'])} int16 ...")
    scaled = bold if scaling == "slope" else root / "bold-scaled.nii.gz"
    truth = write_synthetic_bold(scaled, tuple(spec["shape"]), t_r=T_R, n_networks=4,
                                 dtype="int16", seed=SEED)
    if scaling == "none":
        drop_scaling(scaled, bold)
        scaled.unlink()
    log(f"  written in {time.perf_counter() - t0:.1f} s ({bold.stat().st_size / 1e9:.2f} GB)")
    shape3 = tuple(spec["shape"][:3])
    mask = brain_mask(shape3, spec["mask_fraction"])  # type: ignore[arg-type]
    atlas = regular_atlas(mask, tuple(spec["atlas_splits"]))  # type: ignore[arg-type]
    np.save(root / "mask.npy", mask)
    nib.Nifti1Image(mask.astype(np.uint8), truth.affine).to_filename(root / "mask.nii.gz")
    nib.Nifti1Image(atlas, truth.affine).to_filename(root / "atlas.nii.gz")
    counts = np.bincount(atlas[mask])[1:]
    info = {
        **want,
        "bold": str(bold),
        "bold_bytes": bold.stat().st_size,
        "raw_bytes": int(np.prod(spec["shape"])) * 2,
        "mask_npy": str(root / "mask.npy"),
        "mask_nii": str(root / "mask.nii.gz"),
        "atlas_nii": str(root / "atlas.nii.gz"),
        "n_voxels": int(mask.sum()),
        "n_parcels": int(counts.size),
        "parcel_voxels_min_max": [int(counts.min()), int(counts.max())],
    }
    stamp.write_text(json.dumps(info, indent=1))
    return info
