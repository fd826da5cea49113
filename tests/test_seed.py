"""Seed correlation against nilearn's NiftiSpheresMasker + numpy on the real run."""

from __future__ import annotations

from pathlib import Path

import dask
import nibabel as nib
import numpy as np
import pytest
from tests.utils import raise_on_compute

from neuroscale.analysis.seed import seed_correlation, sphere_voxels
from neuroscale.errors import AnalysisError, ConfigurationError
from neuroscale.image import open_image
from neuroscale.testing import synthetic_series


def _fisher_z(seed: np.ndarray, x: np.ndarray) -> np.ndarray:
    s = seed.astype(np.float64) - seed.mean()
    y = x.astype(np.float64) - x.mean(axis=0)
    r = (s @ y) / np.sqrt((s @ s) * (y**2).sum(axis=0))
    return np.arctanh(np.clip(r, -(1 - 1e-7), 1 - 1e-7))


def test_synthetic_seed_finds_its_network() -> None:
    series, truth = synthetic_series(200, (16, 18, 12), within_corr=0.5, chunks=200, seed=8)
    lab = truth.labels_in_mask
    ijk = np.argwhere(truth.mask)[lab == 1].mean(axis=0)
    center = truth.affine[:3, :3] @ ijk + truth.affine[:3, 3]
    with dask.config.set(scheduler=raise_on_compute):
        z = seed_correlation(series, center, radius_mm=4.0)
    assert z.shape == (series.n_voxels,) and z.dtype == np.float32
    got = z.compute()
    x = series.data.compute()
    idx = sphere_voxels(truth.mask, truth.affine, center, 4.0)
    assert idx.size > 1 and np.all(lab[idx] == 1)
    np.testing.assert_allclose(got, _fisher_z(x[:, idx].mean(axis=1), x), rtol=1e-4, atol=1e-5)
    assert got[lab == 1].mean() > 0.5
    assert np.abs(got[lab != 1]).mean() < 0.15
    assert np.isfinite(got).all()


def test_errors() -> None:
    series, _ = synthetic_series(20, (8, 8, 8), n_networks=1)
    with pytest.raises(AnalysisError, match=r"\(500, 0, 0\) mm"):
        seed_correlation(series, (500, 0, 0), 5)
    with pytest.raises(ConfigurationError):
        seed_correlation(series, (0, 0), 5)
    with pytest.raises(ConfigurationError):
        seed_correlation(series, (0, 0, 0), -1)


def test_real_run_matches_nilearn(studyforrest_bold: Path, cache_dir: Path) -> None:
    from nilearn.maskers import NiftiSpheresMasker
    from nilearn.maskers.nifti_spheres_masker import apply_mask_and_get_affinity
    from nilearn.masking import compute_epi_mask

    img = open_image(studyforrest_bold, cache_dir=cache_dir)
    mean = img.mean().compute_volume()
    mask_img = compute_epi_mask(nib.Nifti1Image(mean, img.affine))
    mask = mask_img.get_fdata().astype(bool)
    series = img.to_series(mask)
    data = np.asarray(nib.load(studyforrest_bold).dataobj, dtype=np.float32)
    bold = nib.Nifti1Image(data, img.affine)  # decompress once
    x = data[mask].T
    ijk = np.argwhere(mask).mean(axis=0)
    centre = img.affine[:3, :3] @ ijk + img.affine[:3, 3]
    seeds = [tuple(centre + [10.3, -7.9, 4.1]), tuple(centre + [-20.5, 12.2, -3.3])]
    # the sphere is nilearn's (in-mask voxels within the radius, plus the nearest voxel)
    ref_img = nib.Nifti1Image(mean[..., None], img.affine)  # a one-volume image on the grid
    for seed in seeds:
        for radius in (1.0, 6.0):
            _, aff = apply_mask_and_get_affinity([seed], ref_img, radius, True,
                                                 mask_img=mask_img)
            assert sphere_voxels(mask, img.affine, seed, radius).tolist() == aff.rows[0]
    for seed, radius in ((seeds[0], 6.0), (seeds[1], 10.0)):
        with dask.config.set(scheduler=raise_on_compute):
            z = seed_correlation(series, seed, radius_mm=radius)
        got = z.compute()
        masker = NiftiSpheresMasker([seed], radius=radius, mask_img=mask_img, standardize=None)
        seed_ts = masker.fit_transform(bold)[:, 0]
        np.testing.assert_allclose(got, _fisher_z(seed_ts, x), rtol=1e-4, atol=1e-5)


def test_seed_signal_is_the_mean_of_the_unstandardised_voxels() -> None:
    """With voxel_scale, the seed signal is the mean of scale * z + offset (NiftiSpheresMasker
    on the denoised image), and the map correlates every voxel with it."""
    series, _ = synthetic_series(60, (10, 10, 8), seed=5, chunks=97)
    x = np.asarray(series.data, dtype=np.float64)
    rng = np.random.default_rng(1)
    x = x * rng.uniform(0.2, 5.0, size=x.shape[1]) + 100.0
    mean, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
    sd[sd == 0] = 1.0
    z = series.with_data(dask.array.from_array(((x - mean) / sd).astype(np.float32),
                                               chunks=series.data.chunks))
    centre = z.affine[:3, :3] @ np.array([5.0, 5.0, 4.0]) + z.affine[:3, 3]
    got = seed_correlation(z, centre, radius_mm=6.0, voxel_scale=np.vstack([sd, mean])).compute()
    idx = sphere_voxels(z.mask, z.affine, centre, 6.0)
    assert idx.size > 3
    np.testing.assert_allclose(got, _fisher_z(x[:, idx].mean(axis=1), x), rtol=1e-4, atol=1e-5)
