"""Synthetic BOLD data with planted ground truth, for tests and benchmarks.

The generative model (the same for files and in-memory series)::

    v(t) = baseline + a * s_k(t) + noise_std * e_v(t)     voxel v inside the brain, network k
    v(t) = baseline            + noise_std * e_v(t)     voxel inside the brain, no network
    v(t) = 0.02 * baseline     + noise_std * e_v(t)     voxel outside the brain

``s_k`` are the latent network signals of :func:`make_network_timeseries` (zero mean, unit
variance, exactly orthogonal to each other, band-limited to 0.01-0.1 Hz when the run is long
enough), ``e_v`` independent standard normal noise, and ``a = noise_std * sqrt(r / (1 - r))``
with ``r = within_corr``, so that the expected Pearson correlation of two voxels of the same
network is ``a**2 / (a**2 + noise_std**2) = within_corr`` and that of voxels of different
networks (or outside any network) is 0.

The "brain" is an ellipsoid filling ~84 % of each axis; the ``n_networks`` networks are
ellipsoidal balls placed on a ring inside it, so they are spatially compact (high ReHo) and
each network is one clique of the voxel correlation graph (known degree centrality).

Files are written **streaming**, ``block_volumes`` volumes at a time: the header with
nibabel, then the data through ``isal.igzip`` (level 1) or a plain file, so that an
HCP-sized 91 x 109 x 91 x 1200 int16 run needs ~120 MB of memory (measured with
tracemalloc; the 50-volume int16 buffer is 90 MB of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from neuroscale.errors import ConfigurationError
from neuroscale.image import Series
from neuroscale.io.atomic import atomic_path

__all__ = [
    "SyntheticTruth",
    "make_network_timeseries",
    "synthetic_series",
    "write_synthetic_bold",
]

_BACKGROUND_FRACTION = 0.02


def make_network_timeseries(
    n_timepoints: int,
    n_networks: int,
    seed: int | np.random.Generator | None = 0,
    *,
    t_r: float = 2.0,
    band: tuple[float, float] | None = (0.01, 0.1),
) -> np.ndarray:
    """Latent network signals: zero mean, unit variance, mutually orthogonal.

    Gaussian white noise is band-pass filtered with an ideal FFT filter to ``band`` (skipped
    when the band holds fewer than ``n_networks + 1`` frequency bins, or ``band=None``), then
    orthonormalised (QR), so that sample correlations between networks are exactly 0.

    Parameters
    ----------
    n_timepoints : int
        Number of time points ``T`` (>= ``n_networks + 1``).
    n_networks : int
        Number of signals ``K`` (>= 0).
    seed : int, numpy Generator or None
        Random seed.
    t_r : float
        Sampling interval, seconds (for the band).
    band : (float, float) or None
        Pass band in Hz.

    Returns
    -------
    (n_timepoints, n_networks) ndarray of float64
        Columns with mean 0 and (population, ``ddof=0``) variance 1, orthogonal.

    Raises
    ------
    ConfigurationError
        Too few time points for ``n_networks`` orthogonal zero-mean signals.
    """
    if n_networks < 0:
        raise ConfigurationError(f"n_networks must be >= 0, got {n_networks}")
    if n_networks and n_timepoints < n_networks + 1:
        raise ConfigurationError(
            f"{n_timepoints} time points cannot hold {n_networks} orthogonal zero-mean signals"
        )
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_timepoints, n_networks))
    if n_networks == 0:
        return x
    if band is not None:
        freqs = np.fft.rfftfreq(n_timepoints, d=t_r)
        keep = (freqs >= band[0]) & (freqs <= band[1]) & (freqs > 0)
        if keep.sum() >= n_networks + 1:
            spec = np.fft.rfft(x, axis=0)
            spec[~keep] = 0
            x = np.fft.irfft(spec, n=n_timepoints, axis=0)
    x = x - x.mean(axis=0)
    q, _ = np.linalg.qr(x)
    return q * np.sqrt(n_timepoints)


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """What was planted in a synthetic run.

    Attributes
    ----------
    shape : (x, y, z, t) tuple of int
        Image shape.
    affine : (4, 4) ndarray of float64
        Voxel-to-world transform, mm.
    t_r : float
        Repetition time, seconds.
    mask : (x, y, z) ndarray of bool
        The ellipsoid "brain".
    labels : (x, y, z) ndarray of int16
        Network of each voxel: 0 = none, 1..K.
    signals : (t, K) ndarray of float64
        Latent network signals (unit variance) before scaling by ``signal_std``.
    within_corr : float
        Expected Pearson r between two voxels of the same network.
    signal_std, noise_std, baseline : float
        Model parameters (see the module docstring), in image intensity units.
    scl_slope : float
        Scaling written in the NIfTI header (1.0 for float32 files and in-memory series).
    """

    shape: tuple[int, int, int, int]
    affine: np.ndarray
    t_r: float
    mask: np.ndarray
    labels: np.ndarray
    signals: np.ndarray
    within_corr: float
    signal_std: float
    noise_std: float
    baseline: float
    scl_slope: float = 1.0

    @property
    def n_networks(self) -> int:
        """Number of planted networks ``K``."""
        return int(self.signals.shape[1])

    @property
    def labels_in_mask(self) -> np.ndarray:
        """(n_voxels,) int16 network labels in mask (C) order."""
        return self.labels[self.mask]

    def network_sizes(self) -> np.ndarray:
        """(K + 1,) int: number of in-mask voxels with label 0, 1, ..., K."""
        return np.bincount(self.labels_in_mask, minlength=self.n_networks + 1)

    def correlation_matrix(self) -> np.ndarray:
        """(K + 1, K + 1) float64 expected Pearson r between voxels with labels i and j.

        ``within_corr`` on the diagonal for networks 1..K, 0 elsewhere (label 0 is independent
        noise; the diagonal entry [0, 0] is 0 because two different such voxels are
        uncorrelated).
        """
        k = self.n_networks
        out = np.zeros((k + 1, k + 1))
        out[np.arange(1, k + 1), np.arange(1, k + 1)] = self.within_corr
        return out

    def expected_correlation(self, labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
        """Expected r between voxels of labels ``labels_a`` and ``labels_b`` (broadcast)."""
        return self.correlation_matrix()[np.asarray(labels_a), np.asarray(labels_b)]

    def expected_degree(self, threshold: float = 0.25, weighted: bool = False) -> np.ndarray:
        """Expected degree centrality, (n_voxels,) float64 in mask order.

        With the C-PAC definitions (count, or sum of r, over the other voxels with
        r > threshold): ``n_k - 1`` (times ``within_corr`` when weighted) for a voxel of
        network ``k`` of ``n_k`` voxels when ``within_corr > threshold``, else 0.
        """
        labels = self.labels_in_mask
        sizes = self.network_sizes().astype(np.float64)
        deg = np.where(labels > 0, sizes[labels] - 1, 0.0)
        if self.within_corr <= threshold:
            deg = np.zeros_like(deg)
        return deg * self.within_corr if weighted else deg


def _ellipsoid_mask(shape3: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mask and normalised coordinates u_i = (x_i - c_i) / r_i of each axis."""
    coords = []
    for n in shape3:
        c = (n - 1) / 2.0
        r = max(0.42 * n, 0.5)
        coords.append((np.arange(n) - c) / r)
    ux, uy, uz = np.meshgrid(*coords, indexing="ij")
    mask = ux**2 + uy**2 + uz**2 <= 1.0
    return mask, [ux, uy, uz]


def _network_labels(mask: np.ndarray, n_networks: int) -> np.ndarray:
    """Ellipsoidal balls on a ring (normalised radius 0.5) inside the brain, intersected with it."""
    labels = np.zeros(mask.shape, dtype=np.int16)
    if n_networks == 0:
        return labels
    _, (ux, uy, uz) = _ellipsoid_mask(mask.shape)
    ring = 0.5
    chord = 2 * ring * np.sin(np.pi / n_networks) if n_networks > 1 else 1.0
    rho = min(0.35, 0.45 * chord)
    for k in range(n_networks):
        ang = 2 * np.pi * k / n_networks
        cx, cy = ring * np.cos(ang), ring * np.sin(ang)
        ball = (ux - cx) ** 2 + (uy - cy) ** 2 + uz**2 <= rho**2
        labels[ball & mask & (labels == 0)] = k + 1
    return labels


def _signal_std(within_corr: float, noise_std: float) -> float:
    if not 0.0 <= within_corr < 1.0:
        raise ConfigurationError(f"within_corr must be in [0, 1), got {within_corr}")
    if not noise_std > 0:
        raise ConfigurationError(f"noise_std must be > 0, got {noise_std}")
    return float(noise_std * np.sqrt(within_corr / (1.0 - within_corr)))


def _default_affine(shape3: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    affine = np.diag([*map(float, voxel_size), 1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * v for n, v in zip(shape3, voxel_size, strict=True)]
    return affine


class _Generator:
    """Produces volume t of the model, in time order, one (x, y, z) float32 volume at a time."""

    def __init__(self, truth: SyntheticTruth, seed: int) -> None:
        self.truth = truth
        self.rng = np.random.default_rng([seed, 1])
        self.flat_mask = truth.mask.reshape(-1)
        self.base = np.where(self.flat_mask, truth.baseline,
                             _BACKGROUND_FRACTION * truth.baseline).astype(np.float32)
        lab = truth.labels.reshape(-1)
        self.net_idx = np.flatnonzero(lab > 0)
        self.net_lab = (lab[self.net_idx] - 1).astype(np.intp)

    def volume(self, t: int) -> np.ndarray:
        tr = self.truth
        vol = self.rng.standard_normal(self.base.size, dtype=np.float32)
        vol *= np.float32(tr.noise_std)
        vol += self.base
        if self.net_idx.size:
            amp = (tr.signal_std * tr.signals[t]).astype(np.float32)
            vol[self.net_idx] += amp[self.net_lab]
        return vol.reshape(tr.mask.shape)


def _make_truth(shape: Sequence[int], t_r: float, n_networks: int, within_corr: float,
                noise_std: float, baseline: float, seed: int,
                voxel_size: Sequence[float], mask: np.ndarray | None = None) -> SyntheticTruth:
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigurationError(f"shape must be (x, y, z, t) of positive ints, got {shape}")
    if not t_r > 0:
        raise ConfigurationError(f"t_r must be > 0 seconds, got {t_r}")
    shape4 = tuple(int(s) for s in shape)
    if mask is None:
        mask, _ = _ellipsoid_mask(shape4[:3])
    labels = _network_labels(mask, n_networks)
    signals = make_network_timeseries(shape4[3], n_networks, seed, t_r=t_r)
    return SyntheticTruth(
        shape=(shape4[0], shape4[1], shape4[2], shape4[3]),
        affine=_default_affine(shape4[:3], voxel_size),
        t_r=float(t_r),
        mask=mask,
        labels=labels,
        signals=signals,
        within_corr=float(within_corr),
        signal_std=_signal_std(within_corr, noise_std),
        noise_std=float(noise_std),
        baseline=float(baseline),
    )


def write_synthetic_bold(
    path: str | Path,
    shape: Sequence[int] = (40, 48, 36, 200),
    *,
    t_r: float = 2.0,
    n_networks: int = 4,
    within_corr: float = 0.5,
    noise_std: float = 20.0,
    baseline: float = 1000.0,
    dtype: str = "int16",
    seed: int = 0,
    block_volumes: int = 50,
    voxel_size: Sequence[float] = (3.0, 3.0, 3.0),
) -> SyntheticTruth:
    """Write a synthetic 4D BOLD NIfTI-1 file, streaming, and return its ground truth.

    Parameters
    ----------
    path : str or Path
        Output file; ``.nii.gz`` is gzip-compressed (isal, level 1), ``.nii`` is plain.
        Written atomically.
    shape : (x, y, z, t) sequence of int
        Image shape.
    t_r : float
        Repetition time, seconds (header ``pixdim[4]``, units mm and s).
    n_networks : int
        Number of planted networks ``K``.
    within_corr : float
        Expected Pearson r between two voxels of the same network, in [0, 1).
    noise_std : float
        Standard deviation of the independent voxel noise, intensity units.
    baseline : float
        Mean intensity inside the brain (outside: 2 % of it).
    dtype : {"int16", "float32"}
        On-disk type. ``int16`` stores ``round(value / scl_slope)`` with ``scl_slope`` chosen
        so that ``baseline + 8`` standard deviations fits (values beyond are clipped).
    seed : int
        Random seed (same seed, same data, whatever ``block_volumes``).
    block_volumes : int
        Volumes generated per block: memory is ~``block_volumes * x * y * z * itemsize``
        plus a few float32 volumes.
    voxel_size : (3,) sequence of float
        Voxel size, mm; the affine is diagonal with the grid centre at world (0, 0, 0).

    Returns
    -------
    SyntheticTruth
        Mask, network labels, latent signals and model parameters.

    Raises
    ------
    ConfigurationError
        Bad shape, dtype, suffix or model parameters.
    """
    import isal.igzip as igzip
    import nibabel as nib


    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ConfigurationError(f"output must end in .nii or .nii.gz, got {path.name}")
    if dtype not in ("int16", "float32"):
        raise ConfigurationError(f"dtype must be 'int16' or 'float32', got {dtype!r}")
    if block_volumes < 1:
        raise ConfigurationError(f"block_volumes must be >= 1, got {block_volumes}")
    truth = _make_truth(shape, t_r, n_networks, within_corr, noise_std, baseline, seed,
                        voxel_size)
    nx, ny, nz, nt = truth.shape
    total_std = float(np.hypot(truth.signal_std, truth.noise_std))
    slope = 1.0
    if dtype == "int16":
        slope = (baseline + 8.0 * total_std) / 32000.0
        truth = replace(truth, scl_slope=float(slope))

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(truth.shape)
    hdr.set_data_dtype(np.dtype(dtype))
    hdr.set_qform(truth.affine, code=1)
    hdr.set_sform(truth.affine, code=1)
    hdr.set_zooms((*map(float, voxel_size), float(t_r)))
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_slope_inter(slope if dtype == "int16" else 1.0, 0.0)
    hdr["vox_offset"] = 352
    hdr["descrip"] = b"neuroscale.testing synthetic BOLD"

    gen = _Generator(truth, seed)
    nb = min(block_volumes, nt)
    buf = np.empty((nb, nz, ny, nx), dtype=dtype)  # C order (t, z, y, x) == NIfTI's F order
    lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    with atomic_path(path) as tmp:
        opener = igzip.open(tmp, "wb", compresslevel=1) if name.endswith(".gz") else open(tmp, "wb")
        with opener as fh:
            hdr.write_to(fh)
            for start in range(0, nt, nb):
                n = min(nb, nt - start)
                for i in range(n):
                    vol = gen.volume(start + i)
                    if dtype == "int16":
                        vol /= np.float32(slope)
                        np.rint(vol, out=vol)
                        np.clip(vol, lo, hi, out=vol)
                    buf[i] = vol.T
                for i in range(n):  # one volume per write keeps the compressor's buffers small
                    fh.write(memoryview(buf[i]).cast("B"))
    return truth


def synthetic_series(
    n_timepoints: int,
    mask_or_shape: np.ndarray | Sequence[int] = (16, 18, 14),
    *,
    t_r: float = 2.0,
    n_networks: int = 4,
    within_corr: float = 0.5,
    noise_std: float = 20.0,
    baseline: float = 1000.0,
    seed: int = 0,
    chunks: int | Sequence[int] | None = None,
    voxel_size: Sequence[float] = (3.0, 3.0, 3.0),
) -> tuple[Series, SyntheticTruth]:
    """A small in-memory synthetic :class:`~neuroscale.image.Series` and its ground truth.

    Same model (and, for a shape, the same values before int16 quantisation) as
    :func:`write_synthetic_bold` with the same arguments.

    Parameters
    ----------
    n_timepoints : int
        Number of volumes.
    mask_or_shape : (x, y, z) ndarray of bool, or (x, y, z) sequence of int
        The brain mask to use, or a grid shape (the mask is then the ellipsoid).
    t_r, n_networks, within_corr, noise_std, baseline, seed, voxel_size
        As in :func:`write_synthetic_bold`.
    chunks : int, sequence of int or None
        Voxel chunks (dask notation). Default: about 4 chunks, each a slab of whole x-planes.

    Returns
    -------
    series : Series
        float32 ``(n_timepoints, n_voxels)`` data, lazily wrapping an in-memory array.
    truth : SyntheticTruth
    """
    import dask.array as da

    arg = np.asarray(mask_or_shape)
    if arg.dtype == bool and arg.ndim == 3:
        mask: np.ndarray | None = arg.copy()
        shape3 = arg.shape
    elif arg.ndim == 1 and arg.size == 3:
        mask = None
        shape3 = tuple(int(s) for s in arg)
    else:
        raise ConfigurationError("mask_or_shape must be a 3D boolean mask or an (x, y, z) shape")
    truth = _make_truth((*shape3, n_timepoints), t_r, n_networks, within_corr, noise_std,
                        baseline, seed, voxel_size, mask=mask)
    if not truth.mask.any():
        raise ConfigurationError("the mask is empty")
    gen = _Generator(truth, seed)
    flat = truth.mask.reshape(-1)
    data = np.empty((n_timepoints, int(flat.sum())), dtype=np.float32)
    for t in range(n_timepoints):
        data[t] = gen.volume(t).reshape(-1)[flat]
    if chunks is None:
        per_x = truth.mask.reshape(shape3[0], -1).sum(axis=1)
        step = max(1, -(-shape3[0] // 4))
        sizes = [int(per_x[a : a + step].sum()) for a in range(0, shape3[0], step)]
        vchunks: int | tuple[int, ...] = tuple(s for s in sizes if s > 0)
    else:
        vchunks = chunks if isinstance(chunks, int) else tuple(int(c) for c in chunks)
    arr = da.from_array(data, chunks=(n_timepoints, vchunks))
    series = Series(data=arr, mask=truth.mask, affine=truth.affine, t_r=float(t_r))
    return series, truth
