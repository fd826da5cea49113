"""The kernels that take an array namespace (neuroscale.kernels.xp) give the NumPy path's
numbers under NumPy, under array_api_strict (the standard and nothing else: what CuPy gets
from the same code) and, on a machine with a GPU, under CuPy (to float32 tolerance)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from neuroscale.kernels import maps, qc
from neuroscale.kernels.xp import is_gpu, nan_to_num, sum_of_squares, to_numpy

xps = pytest.importorskip("array_api_strict")


def _block(seed: int = 0, n_t: int = 120, n_v: int = 700) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((n_t, 3))
    block = common @ rng.standard_normal((3, n_v)) + rng.standard_normal((n_t, n_v)) + 50.0
    block[:, 3] = 7.0  # a constant voxel: r = 0, tSNR = 0, ALFF = 0
    return block.astype(np.float32)


def _reference_alff(block: np.ndarray, t_r: float, low: float, high: float) -> np.ndarray:
    """ALFF / fALFF from their definitions (scipy's detrend, numpy's FFT), float64."""
    from scipy.signal import detrend

    n_t = block.shape[0]
    x = detrend(block.astype(np.float64), axis=0, type="linear")
    amp = np.abs(np.fft.rfft(x, axis=0)) / n_t
    amp[1:(n_t + 1) // 2] *= 2
    f = np.fft.rfftfreq(n_t, d=t_r)
    band = (f >= low) & (f <= high) & (f > 0)
    alff = amp[band].mean(axis=0)
    total = amp[1:].sum(axis=0)
    falff = np.divide(amp[band].sum(axis=0), total, out=np.zeros_like(total), where=total > 0)
    return np.stack([alff, falff])


CASES: dict[str, Any] = {
    "zscore": lambda b, s: maps.zscore_block(b),
    "alff": lambda b, s: maps.alff_block(b, 2.0, 0.01, 0.1),
    "tsnr": lambda b, s: qc.tsnr_map(b),
    "tsnr_detrended": lambda b, s: qc.tsnr_map(b, 2),
    "pearson": lambda b, s: maps.pearson_with_seed_block(b, s),
    "fisher_z": lambda b, s: maps.seed_fisher_z_block(b, s, 1 - 1e-7),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_array_api_kernels_equal_numpy_under_array_api_strict(name: str) -> None:
    block = _block()
    seed = block[:, 10:20].mean(axis=1, dtype=np.float64)
    ref = CASES[name](block, seed)
    got = CASES[name](xps.asarray(block), xps.asarray(seed))
    assert not isinstance(got, np.ndarray)  # the strict library's array: no NumPy leaked in
    np.testing.assert_array_equal(to_numpy(got), ref)


def test_array_api_kernels_against_definitions() -> None:
    block = _block(1)
    seed = block[:, 10:20].mean(axis=1, dtype=np.float64)
    alff = maps.alff_block(block, 2.0, 0.01, 0.1)
    varying = np.ones(block.shape[1], dtype=bool)
    varying[3] = False  # scipy's detrend leaves rounding noise in a constant series
    np.testing.assert_allclose(alff[:, varying],
                               _reference_alff(block, 2.0, 0.01, 0.1)[:, varying],
                               rtol=2e-5, atol=1e-7)
    np.testing.assert_array_equal(alff[:, 3], 0.0)
    r = maps.pearson_with_seed_block(block, seed)
    expected = np.array([np.corrcoef(block[:, j].astype(np.float64), seed)[0, 1]
                         if block[:, j].std() > 0 else 0.0 for j in range(block.shape[1])])
    np.testing.assert_allclose(r, expected, atol=1e-12)
    z = maps.zscore_block(block)
    np.testing.assert_allclose(z.T @ z, np.nan_to_num(np.corrcoef(block.T.astype(np.float64))),
                               atol=2e-6)
    mean, std = block.mean(axis=0, dtype=np.float64), block.std(axis=0, dtype=np.float64)
    np.testing.assert_allclose(qc.tsnr_map(block), np.where(std > 1e-3, mean / np.where(
        std > 1e-3, std, 1), 0), rtol=1e-6)


@pytest.mark.parametrize("diagonal", [False, True])
def test_array_api_correlation_tile_degrees(diagonal: bool) -> None:
    z = maps.zscore_block(_block(2))
    zi, zj = z[:, :300], (z[:, :300] if diagonal else z[:, 300:])
    ref = maps.correlation_tile_degrees(zi, zj, 0.1, diagonal)
    got = maps.correlation_tile_degrees(xps.asarray(zi), xps.asarray(zj), 0.1, diagonal)
    np.testing.assert_array_equal(to_numpy(got), ref)
    r = zi.T.astype(np.float64) @ zj.astype(np.float64)
    if diagonal:
        np.fill_diagonal(r, 0.0)
    # counts off by at most the pairs whose float32 r rounds across the threshold
    assert np.abs(ref[0, :300] - (r > 0.1).sum(axis=1)).max() <= 1


def test_array_api_helpers_fall_back_to_the_standard() -> None:
    x = np.array([[1.0, np.nan], [np.inf, -2.0]], dtype=np.float32)
    np.testing.assert_array_equal(to_numpy(nan_to_num(xps, xps.asarray(x))), np.nan_to_num(x))
    y = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(to_numpy(sum_of_squares(xps, xps.asarray(y))),
                                  (y * y).sum(axis=0))
    assert not is_gpu(y)


def test_gpu_backend_flag_without_a_gpu_is_one_clear_error() -> None:
    from neuroscale.compute.gpu import gpu_info, require_gpu
    from neuroscale.errors import ConfigurationError

    if gpu_info() is not None:
        pytest.skip("a GPU is visible here: the error path is for machines without one")
    with pytest.raises(ConfigurationError, match="--gpu"):
        require_gpu()


def test_cupy_backend_kernels_equal_the_cpu() -> None:
    from neuroscale.compute.gpu import gpu_info

    if gpu_info() is None:
        pytest.skip("no CUDA GPU here (benchmarks/gpu_check.py runs these where there is one)")
    import cupy

    block = _block(3, n_v=4000)
    seed = block[:, 10:20].mean(axis=1, dtype=np.float64)
    for name, fn in CASES.items():
        got = fn(cupy.asarray(block), cupy.asarray(seed))
        assert is_gpu(got), name
        np.testing.assert_allclose(to_numpy(got), fn(block, seed), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
