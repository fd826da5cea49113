"""ReHo (Kendall's W, 27-voxel neighbourhood) against a brute-force reference."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from dask.callbacks import Callback
from scipy.stats import rankdata
from tests.utils import raise_on_compute

from neuroscale.analysis.reho import reho
from neuroscale.errors import AnalysisError
from neuroscale.image import Series, open_image
from neuroscale.testing import synthetic_series


class _LargestResult(Callback):
    """Records the largest array any task produced."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.largest = max(self.largest, int(getattr(result, "nbytes", 0)))


def _brute_force_w(vol4d: np.ndarray, mask: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Kendall's W (Zang 2004; C-PAC f_kendall) of each (x, y, z) in voxels, with loops."""
    n_t = vol4d.shape[3]
    out = np.empty(len(voxels))
    for v, (x, y, z) in enumerate(voxels):
        cols = []
        for dx, dy, dz in product((-1, 0, 1), repeat=3):
            p = (x + dx, y + dy, z + dz)
            if all(0 <= p[i] < mask.shape[i] for i in range(3)) and mask[p]:
                cols.append(rankdata(vol4d[p].astype(np.float64)))  # average ranks for ties
        ranks = np.stack(cols, axis=1)
        n = ranks.shape[1]
        r_sum = ranks.sum(axis=1)
        s = ((r_sum - r_sum.mean()) ** 2).sum()
        out[v] = 12.0 * s / (n**2 * (n_t**3 - n_t))
    return out


def _vol4d(series: Series) -> np.ndarray:
    vol = np.zeros((*series.mask.shape, series.n_timepoints), np.float32)
    vol[series.mask] = series.data.compute().T
    return vol


def test_synthetic_matches_brute_force_and_is_lazy() -> None:
    series, truth = synthetic_series(60, (20, 20, 16), n_networks=2, within_corr=0.6,
                                      chunks=250, seed=5)
    with dask.config.set(scheduler=raise_on_compute):
        w = reho(series)
    assert w.shape == (series.n_voxels,) and w.dtype == np.float32
    assert len(w.chunks[0]) == len(series.slab_bounds()) > 2
    rec = _LargestResult()
    with rec:
        got = w.compute(scheduler="sync")
    full = series.n_voxels * series.n_timepoints * 4
    assert rec.largest < full / 2  # no task holds (or makes) the whole run
    vol = _vol4d(series)
    ref = _brute_force_w(vol, series.mask, np.argwhere(series.mask))
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    # compact networks are locally homogeneous: voxels whose whole neighbourhood lies in one
    # network have W ~ ((n - 1) rho + 1) / n ~ 0.5; voxels away from any network ~ 1 / n
    lab = truth.labels
    coords = np.argwhere(series.mask)
    core = np.zeros(len(coords), bool)
    far = np.zeros(len(coords), bool)
    padded = np.pad(lab, 1)
    for v, (x, y, z) in enumerate(coords):
        nb = padded[x : x + 3, y : y + 3, z : z + 3]
        core[v] = lab[x, y, z] > 0 and (nb == lab[x, y, z]).all()
        far[v] = not nb.any()
    assert core.sum() >= 4 and far.sum() >= 20
    assert got[core].mean() > 0.3
    assert got[far].mean() < 0.1


def test_long_runs_get_thinner_slabs(monkeypatch: pytest.MonkeyPatch) -> None:
    # the slab size follows the run's length (bytes of time series per task), not only the
    # Series' chunks: a budget of ~2 x-planes of this run gives more, smaller tasks and the
    # same W
    import neuroscale.analysis.reho as reho_mod

    series, _ = synthetic_series(60, (20, 20, 16), n_networks=2, within_corr=0.6,
                                  chunks=2000, seed=5)
    default = reho(series)
    plane = int(series.mask.reshape(20, -1).sum(axis=1).max())
    monkeypatch.setattr(reho_mod, "REHO_SLAB_BYTES", 2 * plane * 60 * 4)
    thin = reho(series)
    assert len(thin.chunks[0]) > len(default.chunks[0])
    assert max(thin.chunks[0]) <= 4 * plane
    rec = _LargestResult()
    with rec:
        got = thin.compute(scheduler="sync")
    assert rec.largest <= 6 * plane * 60 * 4  # a slab, its halo and the ranks, not more
    np.testing.assert_array_equal(got, default.compute(scheduler="sync"))


def test_ties_holes_and_isolated_voxels() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((9, 8, 7)) < 0.6
    mask[4] = False  # an empty x-plane between slabs
    mask[0, 0, 0] = True
    mask[1, :2, :2] = False  # (0, 0, 0) has no in-mask neighbour
    mask[0, 1, :2] = False
    mask[0, 0, 1] = False
    n = int(mask.sum())
    data = np.round(rng.standard_normal((40, n)) * 1.5).astype(np.float32)  # many ties
    data[:, 0] = rng.permutation(40)  # the isolated voxel: no ties
    series = Series(data=da.from_array(data, chunks=(40, 37)), mask=mask, affine=np.eye(4),
                    t_r=2.0)
    got = reho(series).compute()
    vol = _vol4d(series)
    ref = _brute_force_w(vol, mask, np.argwhere(mask))
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    assert got[0] == pytest.approx(1.0)  # a lone voxel agrees perfectly with itself
    # identical neighbours: W = 1
    same = np.tile(rng.standard_normal((30, 1)), (1, n)).astype(np.float32)
    s2 = Series(data=da.from_array(same, chunks=(30, 50)), mask=mask, affine=np.eye(4))
    np.testing.assert_allclose(reho(s2).compute(), 1.0, rtol=1e-5)


def test_too_short() -> None:
    series, _ = synthetic_series(2, (6, 6, 6), n_networks=0)
    with pytest.raises(AnalysisError):
        reho(series)


def test_real_run_sub_block(studyforrest_bold: Path, cache_dir: Path) -> None:
    from nilearn.masking import compute_epi_mask

    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    mean = img.mean().compute_volume()
    mask = compute_epi_mask(nib.Nifti1Image(mean, img.affine)).get_fdata().astype(bool)
    series = img.to_series(mask)
    with dask.config.set(scheduler=raise_on_compute):
        w = reho(series)
    got = w.compute()
    # reference on the raw int16 values (ranks are invariant to the positive scaling)
    raw = np.asarray(nib.load(studyforrest_bold).dataobj.get_unscaled())
    bounds = series.slab_bounds()
    assert len(bounds) > 1
    # all voxels of the planes on both sides of every slab boundary, plus a random sample
    a, b = bounds[len(bounds) // 2]
    planes = [a - 1, a]
    coords = np.argwhere(mask)
    pick = np.isin(coords[:, 0], planes)
    rng = np.random.default_rng(0)
    pick[rng.choice(len(coords), 200, replace=False)] = True
    sel = np.flatnonzero(pick)
    ref = _brute_force_w(raw, mask, coords[sel])
    np.testing.assert_allclose(got[sel], ref, rtol=1e-4)
    assert np.all((got >= 0) & (got <= 1))
