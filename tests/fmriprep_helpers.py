"""Build a writable copy of bids-examples' ds001 + ds000001-fmriprep with synthetic image content.

bids-examples keeps the layouts only (every image is 0 bytes, fMRIPrep's confounds TSVs too);
:func:`make_fmriprep_dataset` copies both datasets into a temporary directory and writes small
synthetic NIfTI content into the files a test needs (raw BOLD, fMRIPrep's preprocessed BOLD,
brain mask and boldref) and a *real* fMRIPrep confounds table (nilearn 0.14.1's test file,
fMRIPrep 20.2-style columns) resized to the number of volumes.

Raw runs are named ``run-01`` and fMRIPrep's ``run-1`` (as in the real datasets), the raw
grid is 3.125 x 3.125 x 4 mm scanner space, the preprocessed one 2 mm MNI152NLin2009cAsym
(``res-2`` affine of templateflow's grid origin).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RAW_NAME = "ds001"
FMRIPREP_NAME = "ds000001-fmriprep"
CONFOUNDS_SOURCE = "nilearn-0.14.1_fmriprep_confounds/test-v21_desc-confounds_timeseries.tsv"
TASK = "balloonanalogrisktask"
#: templateflow MNI152NLin2009cAsym res-2 affine (2 mm, origin at the grid corner used there)
MNI_RES2_AFFINE = np.array([[2.0, 0, 0, -96.0], [0, 2.0, 0, -132.0], [0, 0, 2.0, -78.0],
                            [0, 0, 0, 1.0]])
RAW_AFFINE = np.diag([3.125, 3.125, 4.0, 1.0])


def shared_sources(shared_data: Path | None = None) -> tuple[Path, Path, Path]:
    """``(ds001, ds000001-fmriprep, real confounds TSV)`` in the shared data folder."""
    base = Path(shared_data) if shared_data is not None else SHARED
    return (base / "bids-examples" / RAW_NAME, base / "bids-examples" / FMRIPREP_NAME,
            base / "misc" / CONFOUNDS_SOURCE)


def _copy_writable(src: Path, dst: Path, subjects: Sequence[str] | None) -> None:
    def ignore(folder: str, names: list[str]) -> list[str]:
        if Path(folder) != src or subjects is None:
            return []
        return [n for n in names if n.startswith("sub-") and n[4:].split(".")[0] not in subjects]

    shutil.copytree(src, dst, ignore=ignore, copy_function=shutil.copyfile)
    for folder, dirs, files in os.walk(dst):
        for name in [*dirs, *files]:
            p = Path(folder) / name
            p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | (stat.S_IXUSR if p.is_dir()
                                                                       else 0))
    dst.chmod(dst.stat().st_mode | stat.S_IWUSR)


def _ellipsoid(shape: Sequence[int]) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(g**2 for g in grids) <= 0.8


def synthetic_bold(shape: Sequence[int], n_volumes: int, seed: int) -> np.ndarray:
    """int16 ``(x, y, z, t)``: 1000 in an ellipsoid brain, a shared slow signal, noise."""
    rng = np.random.default_rng(seed)
    brain = _ellipsoid(shape)
    t = np.arange(n_volumes)
    slow = 15.0 * np.sin(2 * np.pi * t / 17.0)
    data = np.where(brain[..., None], 1000.0 + slow, 50.0)
    data = data + rng.normal(0, 10.0, data.shape)
    return np.round(data).astype(np.int16)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, t_r: float | None = None
                ) -> None:
    """Write a NIfTI-1 (``.nii.gz``) with qform = sform = ``affine`` (mm, s)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1 if affine is RAW_AFFINE else 4)
    if t_r is not None and data.ndim == 4:
        zooms = list(img.header.get_zooms()[:3]) + [float(t_r)]
        img.header.set_zooms(zooms)
    if path.exists():
        path.unlink()
    nib.save(img, str(path))


def resized_confounds(source: Path, n_volumes: int) -> pd.DataFrame:
    """A real fMRIPrep confounds table with ``n_volumes`` rows.

    Rows ``0 .. min(n, 30) - 1`` are the file's own; further rows repeat rows ``1 ..`` in
    turn (so only the first row has ``n/a`` derivatives), with the one-hot outlier columns
    (``non_steady_state_outlier*``, ``motion_outlier*``) set to 0 there.
    """
    df = pd.read_csv(source, sep="\t", na_values=["n/a"])
    n_src = len(df)
    rows = [i if i < n_src else 1 + (i - 1) % (n_src - 1) for i in range(n_volumes)]
    out = df.iloc[rows].reset_index(drop=True)
    onehot = [c for c in out.columns if c.startswith(("non_steady_state_outlier",
                                                      "motion_outlier"))]
    if n_volumes > n_src:
        out.loc[n_src:, onehot] = 0.0
    # drop one-hot columns that no longer flag any volume (as fMRIPrep would not write them)
    empty = [c for c in onehot if not (out[c] != 0).any()]
    return out.drop(columns=empty)


def make_fmriprep_dataset(
    tmp_path: Path,
    n_volumes: int = 40,
    *,
    subjects: Sequence[str] = ("16",),
    runs: Sequence[int] = (1,),
    shape: Sequence[int] = (10, 12, 9),
    shared_data: Path | None = None,
    extra_spaces: bool = False,
    preproc_affine: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """Copy ds001 and ds000001-fmriprep into ``tmp_path`` and fill the files a run needs.

    Parameters
    ----------
    tmp_path : Path
        Destination; ``tmp_path / "ds001"`` and ``tmp_path / "ds000001-fmriprep"`` are made.
    n_volumes : int
        Volumes of every synthetic BOLD and rows of every confounds TSV.
    subjects : sequence of str
        Labels copied (ds001 has 16 subjects, ds000001-fmriprep 10, 11, 13, 16); other
        subjects are left out of both copies so a pipeline finds only filled runs.
    runs : sequence of int
        Runs filled for each subject (1..3 exist); other runs of those subjects keep their
        0-byte images.
    shape : (x, y, z)
        Grid of the raw and of the preprocessed BOLD.
    shared_data : Path, optional
        The shared data folder (default ``../shared/data`` beside the repository).
    extra_spaces : bool
        Also write ``space-T1w`` and ``space-MNI152NLin6Asym`` preproc BOLD + mask files (to
        test the space preference; the latter also with ``res-2``).
    preproc_affine : (4, 4) ndarray, optional
        Affine of fMRIPrep's MNI-space images (default ``MNI_RES2_AFFINE``: the small grid then
        lies in a corner of MNI space; give a centred one to parcellate with an MNI atlas).

    Returns
    -------
    (bids_dir, fmriprep_dir) : tuple of Path
    """
    raw_src, prep_src, conf_src = shared_sources(shared_data)
    for p in (raw_src, prep_src, conf_src):
        if not p.exists():
            import pytest

            pytest.skip(f"{p} not found")
    bids_dir, prep_dir = tmp_path / RAW_NAME, tmp_path / FMRIPREP_NAME
    _copy_writable(raw_src, bids_dir, subjects)
    _copy_writable(prep_src, prep_dir, subjects)
    shape3 = tuple(int(n) for n in shape)
    mask = _ellipsoid(shape3)
    mni = MNI_RES2_AFFINE if preproc_affine is None else np.asarray(preproc_affine, float)
    for i, sub in enumerate(subjects):
        for run in runs:
            seed = 1000 * i + run
            raw = bids_dir / f"sub-{sub}" / "func" / f"sub-{sub}_task-{TASK}_run-{run:02d}_bold.nii.gz"
            write_nifti(raw, synthetic_bold(shape3, n_volumes, seed), RAW_AFFINE, t_r=2.0)
            func = prep_dir / f"sub-{sub}" / "func"
            stem = f"sub-{sub}_task-{TASK}_run-{run}"
            spaces = ["space-MNI152NLin2009cAsym_res-2"]
            if extra_spaces:
                spaces += ["space-T1w", "space-MNI152NLin6Asym_res-2"]
            for sp in spaces:
                bold = synthetic_bold(shape3, n_volumes, seed + 500)
                write_nifti(func / f"{stem}_{sp}_desc-preproc_bold.nii.gz", bold,
                            mni, t_r=2.0)
                write_nifti(func / f"{stem}_{sp}_desc-brain_mask.nii.gz",
                            mask.astype(np.uint8), mni)
                write_nifti(func / f"{stem}_{sp}_boldref.nii.gz",
                            bold.mean(axis=3).astype(np.float32), mni)
            conf = resized_confounds(conf_src, n_volumes)
            conf.to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False,
                        na_rep="n/a")
    return bids_dir, prep_dir
