"""Hostile input for head-motion correction (issue 11, "motion estimates that are wrong on coarse voxels").

The real example run, block-averaged by the test itself to 24 x 24 x 26.4 mm voxels (10 x 10 x 4) and stored
with its voxel axes permuted and one flipped (the same image in world space), through the command line with
motion correction on: the estimates must stay at the native run's scale (below 0.2 mm there), FD censoring
must keep nearly every volume and the run must succeed.  With the fixed registration schedule (2x shrink of a
10 x 10 x 4 grid, Mattes MI on 15 % of 400 voxels) this copy got estimates up to 5.7 mm / 0.064 rad and FD
above 0.5 mm in 27 of 40 volumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tests.hostile.harness import bold_path, check_success, rewrite_bold, run_cli, small_bids
from tests.utils import block_mean

#: FAST without --no-motion-correction
OPTIONS = ["--no-registration", "--no-progress", "--n-workers", "1", "--no-centrality"]


def _coarse_permuted(bids: Path, mask_path: Path) -> None:
    """Rewrite the BOLD as its 25 mm permuted/flipped copy; write a brain mask for it (the voxels
    above the mean of the mean volume: nilearn's EPI mask is empty on a 10 x 10 x 4 grid)."""
    img = nib.load(str(bold_path(bids)))
    coarse, new = block_mean(np.asarray(img.get_fdata(dtype=np.float32)), img.affine, 25.0)
    # axes (z, x, y), then the new first axis flipped: the same image in world space
    coarse = np.flip(np.transpose(coarse, (2, 0, 1, 3)), axis=0)
    perm = new.copy()
    perm[:, :3] = new[:, [2, 0, 1]]
    perm[:3, 3] += perm[:3, 0] * (coarse.shape[0] - 1)
    perm[:3, 0] = -perm[:3, 0]
    rewrite_bold(bids, np.ascontiguousarray(coarse, dtype=np.float32), affine=perm)
    mean = coarse.mean(axis=3)
    nib.save(nib.Nifti1Image((mean > mean.mean()).astype(np.uint8), perm), str(mask_path))


@pytest.mark.slow
def test_coarse_permuted_run_gets_plausible_motion(tmp_path: Path) -> None:
    bids = small_bids(tmp_path, n_volumes=40, with_t1w=False)
    mask = tmp_path / "mask.nii.gz"
    _coarse_permuted(bids, mask)
    out = tmp_path / "out"
    result = run_cli([bids, out, "participant", *OPTIONS, "--mask", mask])
    check_success(result)
    func = out / "sub-02" / "func"
    tsv = func / "sub-02_task-oneback_run-1_desc-motion_timeseries.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert rows[0][:6] == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    params = np.array([[float(v) for v in row[:6]] for row in rows[1:]])
    fd = np.array([0.0 if row[6] == "n/a" else float(row[6]) for row in rows[1:]])
    assert params.shape == (40, 6)
    assert np.abs(params[:, :3]).max() < 0.5  # mm, against 24-26.4 mm voxels
    assert np.abs(params[:, 3:]).max() < 0.005  # rad
    assert (fd <= 0.5).mean() >= 0.95
    sidecar = json.loads(tsv.with_suffix(".json").read_text())
    qc = sidecar["HeadMotionQC"]
    assert qc["n_volumes"] == 40 and qc["schedule"]["metric"] == "MeanSquares"
    assert len(qc["volumes_identity"]) <= 2
    # the run was analysed: its QC counts nearly every volume as kept
    qc_json = json.loads((func / "sub-02_task-oneback_run-1_desc-qc_bold.json").read_text())
    assert qc_json["n_volumes_kept"] >= 38 and qc_json["fd_threshold_mm"] == 0.5
