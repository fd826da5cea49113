"""One benchmark case, run in a fresh process by ``bench.py``.

Usage: ``python benchmarks/_cases.py CASE CONFIG.json RESULT.json``

Each case imports what it needs *before* starting the clock, times only the operation, and
writes ``{"seconds": ..., "extra": {...}, "self_maxrss_bytes": ..., "sampled_peak_bytes": ...}``
to RESULT.json.  The driver measures the process's own peak RSS with ``os.wait4``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Config = dict[str, Any]
CASES: dict[str, Callable[[Config], dict[str, Any]]] = {}


def case(name: str) -> Callable[[Callable[[Config], dict[str, Any]]], Callable[[Config],
                                                                                dict[str, Any]]]:
    def register(fn: Callable[[Config], dict[str, Any]]) -> Callable[[Config], dict[str, Any]]:
        CASES[name] = fn
        return fn

    return register


def self_maxrss_bytes() -> int:
    """Peak RSS of the calling process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class RssSampler:
    """Samples the RSS of this process plus all its descendants every ``interval`` s."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        import psutil

        total = 0
        procs = [self._proc]
        try:
            procs += self._proc.children(recursive=True)
        except psutil.Error:
            pass
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self._interval)

    def reset(self) -> None:
        self.peak = self.current()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def _rmtree(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# (4) gzip-decode floor


@case("gzip_floor")
def gzip_floor(cfg: Config) -> dict[str, Any]:
    """Decompress the .nii.gz with isal in-process, 512 KiB at a time into a reused buffer.

    512 KiB steps (isal's own read size, what the ingest's decoder uses) inflate ~20 %
    faster than 16 MiB ``readinto`` calls on this machine: the floor is the fastest decode.
    """
    import isal.igzip as igzip

    step = 512 << 10
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    with igzip.open(cfg["bold"], "rb") as fh:
        while True:
            filled = 0
            while filled < len(view) and (n := fh.readinto(view[filled : filled + step])):
                filled += n
            total += filled
            if filled < len(view):
                break
    dt = time.perf_counter() - t0
    return {"seconds": dt, "extra": {"bytes_out": total, "mb_per_s": total / dt / 1e6}}


@case("gzip_floor_cli")
def gzip_floor_cli(cfg: Config) -> dict[str, Any]:
    """``python -m isal.igzip -d -c FILE > /dev/null`` (includes that interpreter's start)."""
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run([sys.executable, "-m", "isal.igzip", "-d", "-c", cfg["bold"]],
                       stdout=sink, check=True)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "extra": {"mb_per_s": cfg["raw_bytes"] / dt / 1e6}}


# ------------------------------------------------------------------------------------------
# (1) masking + cleaning


@case("nilearn_masker")
def nilearn_masker(cfg: Config) -> dict[str, Any]:
    from nilearn.maskers import NiftiMasker

    t0 = time.perf_counter()
    x = NiftiMasker(mask_img=cfg["mask_nii"], detrend=True,
                    standardize="zscore_sample").fit_transform(cfg["bold"])
    dt = time.perf_counter() - t0
    return {"seconds": dt, "extra": {"shape": list(x.shape), "dtype": str(x.dtype)}}


def _neuroscale_clean(cfg: Config, cache: str) -> tuple[float, dict[str, Any]]:
    from neuroscale.analysis.denoise import clean
    from neuroscale.image import open_image

    mask = np.load(cfg["mask_npy"])
    out = Path(cfg["scratch"]) / "cleaned.zarr"
    _rmtree(out)
    t0 = time.perf_counter()
    img = open_image(cfg["bold"], cache_dir=cache)
    t_open = time.perf_counter() - t0
    series = img.to_series(mask)
    cleaned = clean(series, t_r=img.t_r, detrend=True, standardize="zscore_sample",
                    low_pass=None, high_pass=None)
    cleaned.to_zarr(out)
    dt = time.perf_counter() - t0
    extra = {"open_s": t_open, "shape": list(cleaned.data.shape),
             "n_chunks": len(cleaned.data.chunks[1])}
    _rmtree(out)
    return dt, extra


@case("ns_clean_first")
def ns_clean_first(cfg: Config) -> dict[str, Any]:
    """First pass: stream the .nii.gz into a fresh Zarr working copy, then clean."""
    cache = Path(cfg["scratch"]) / "fresh-cache"
    _rmtree(cache)
    dt, extra = _neuroscale_clean(cfg, str(cache))
    _rmtree(cache)
    return {"seconds": dt, "extra": extra}


@case("ns_ingest")
def ns_ingest(cfg: Config) -> dict[str, Any]:
    """The ingest alone: stream the .nii.gz into a fresh Zarr working copy (open_image)."""
    import resource as _r

    from neuroscale.image import open_image

    cache = Path(cfg["scratch"]) / "fresh-cache"
    _rmtree(cache)
    cpu0 = _r.getrusage(_r.RUSAGE_SELF)
    t0 = time.perf_counter()
    open_image(cfg["bold"], cache_dir=str(cache))
    dt = time.perf_counter() - t0
    cpu1 = _r.getrusage(_r.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    _rmtree(cache)
    return {"seconds": dt, "extra": {"cpu_s": cpu}}


@case("ns_clean_zarr")
def ns_clean_zarr(cfg: Config) -> dict[str, Any]:
    """From the existing Zarr working copy."""
    dt, extra = _neuroscale_clean(cfg, cfg["cache"])
    return {"seconds": dt, "extra": extra}


def _worker_maxrss() -> int:
    return self_maxrss_bytes()


def _warm_imports(modules: list[str]) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)


def _clean_distributed(cfg: Config, n_workers: int) -> dict[str, Any]:
    from neuroscale.compute.cluster import cluster_client

    t0 = time.perf_counter()
    with cluster_client(n_workers=n_workers, threads_per_worker=1, processes=True,
                        dashboard=False, quiet=True) as client:
        t_start = time.perf_counter() - t0
        client.run(_warm_imports, _NEUROSCALE)  # workers up, first-call imports done
        dt, extra = _neuroscale_clean(cfg, cfg["cache"])
        workers = client.run(_worker_maxrss)
    extra.update({"cluster_start_s": t_start, "n_workers": n_workers,
                  "workers_maxrss_bytes": sorted(int(v) for v in workers.values())})
    return {"seconds": dt, "extra": extra}


@case("ns_clean_dist1")
def ns_clean_dist1(cfg: Config) -> dict[str, Any]:
    return _clean_distributed(cfg, 1)


@case("ns_clean_dist2")
def ns_clean_dist2(cfg: Config) -> dict[str, Any]:
    return _clean_distributed(cfg, 2)


# ------------------------------------------------------------------------------------------
# (2) parcel time series + correlation


@case("nilearn_labels")
def nilearn_labels(cfg: Config) -> dict[str, Any]:
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.maskers import NiftiLabelsMasker

    t0 = time.perf_counter()
    ts = NiftiLabelsMasker(labels_img=cfg["atlas_nii"],
                           mask_img=cfg["mask_nii"]).fit_transform(cfg["bold"])
    t_mask = time.perf_counter() - t0
    conn = ConnectivityMeasure(kind="correlation").fit_transform([ts])[0]
    dt = time.perf_counter() - t0
    return {"seconds": dt, "extra": {"masker_s": t_mask, "connectivity_s": dt - t_mask,
                                     "timeseries_shape": list(ts.shape),
                                     "matrix_shape": list(conn.shape)}}


def _neuroscale_parcel(cfg: Config, cache: str) -> tuple[float, dict[str, Any]]:
    from neuroscale.analysis.connectivity import correlation_matrices
    from neuroscale.analysis.parcellate import load_atlas, parcel_timeseries
    from neuroscale.image import open_image

    mask = np.load(cfg["mask_npy"])
    t0 = time.perf_counter()
    img = open_image(cfg["bold"], cache_dir=cache)
    t_open = time.perf_counter() - t0
    atlas = load_atlas(cfg["atlas_nii"], img.affine, img.shape[:3])
    ts = np.asarray(parcel_timeseries(img.to_series(mask), atlas).compute())
    t_ts = time.perf_counter() - t0
    mats = correlation_matrices(ts)
    dt = time.perf_counter() - t0
    return dt, {"open_s": t_open, "timeseries_s": t_ts - t_open, "connectivity_s": dt - t_ts,
                "timeseries_shape": list(ts.shape), "matrices": sorted(mats)}


@case("ns_parcel_first")
def ns_parcel_first(cfg: Config) -> dict[str, Any]:
    cache = Path(cfg["scratch"]) / "fresh-cache"
    _rmtree(cache)
    dt, extra = _neuroscale_parcel(cfg, str(cache))
    _rmtree(cache)
    return {"seconds": dt, "extra": extra}


@case("ns_parcel_zarr")
def ns_parcel_zarr(cfg: Config) -> dict[str, Any]:
    dt, extra = _neuroscale_parcel(cfg, cfg["cache"])
    return {"seconds": dt, "extra": extra}


# ------------------------------------------------------------------------------------------
# (3) degree centrality


@case("gemm")
def gemm(cfg: Config) -> dict[str, Any]:
    """float32 GEMM rate: (n x T) @ (T x n), two distinct operands (no SYRK shortcut)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    n, k = int(cfg["gemm_n"]), int(cfg["n_timepoints"])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.ones((n, n), dtype=np.float32)  # touched: no first-touch page faults in the timing
    np.matmul(a[:1024], b[:, :1024])  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    flops = 2.0 * n * n * k
    m = n // 2
    c1 = c[:m, :m]
    with threadpool_limits(1):
        np.matmul(a[:m], b[:, :m], out=c1)
        t0 = time.perf_counter()
        np.matmul(a[:m], b[:, :m], out=c1)
        t1 = time.perf_counter() - t0
    blas = [{"api": i.get("internal_api"), "version": i.get("version"),
             "threads": i.get("num_threads"), "arch": i.get("architecture")}
            for i in threadpool_info()]
    return {"seconds": dt, "extra": {"n": n, "k": k, "gflops": flops / dt / 1e9,
                                     "gflops_1thread": 2.0 * m * m * k / t1 / 1e9,
                                     "times": times, "blas": blas}}


def _centrality_input(cfg: Config) -> tuple[Any, np.ndarray]:
    """The Series of ``centrality_voxels`` voxels spread over the brain, in memory."""
    from neuroscale.image import open_image

    mask = np.load(cfg["mask_npy"])
    flat = np.flatnonzero(mask.ravel())
    n_sub = min(int(cfg["centrality_voxels"]), flat.size)
    keep = flat[np.linspace(0, flat.size - 1, n_sub).astype(np.int64)]
    sub = np.zeros(mask.size, dtype=bool)
    sub[keep] = True
    sub = sub.reshape(mask.shape)
    series = open_image(cfg["bold"], cache_dir=cfg["cache"]).to_series(sub)
    return series, sub


def _pairs(n: int, block: int) -> int:
    """Voxel pairs in the half-symmetric tiles (diagonal tiles computed in full)."""
    sizes = np.array([min(block, n - a) for a in range(0, n, block)], dtype=np.float64)
    return int((sizes.sum() ** 2 + (sizes**2).sum()) / 2)


@case("ns_centrality")
def ns_centrality(cfg: Config) -> dict[str, Any]:
    import dask

    from neuroscale.analysis.centrality import default_block_size, degree_centrality

    series, _ = _centrality_input(cfg)
    series = series.with_data(series.data.persist())
    n, t = series.n_voxels, series.n_timepoints
    block = default_block_size(t)
    with RssSampler() as sampler:
        sampler.reset()
        before = sampler.peak
        t0 = time.perf_counter()
        dcb, dcw = degree_centrality(series, threshold=0.25)
        dcb, dcw = dask.compute(dcb, dcw)
        dt = time.perf_counter() - t0
    np.save(Path(cfg["scratch"]) / "dcb_neuroscale.npy", np.asarray(dcb))
    flops = 2.0 * _pairs(n, block) * t
    return {"seconds": dt, "extra": {
        "n_voxels": n, "n_timepoints": t, "block": block, "gflops": flops / dt / 1e9,
        "rss_before_bytes": before, "rss_peak_during_bytes": sampler.peak,
        "extra_bytes": sampler.peak - before, "dense_matrix_bytes": 4 * n * n}}


@case("np_centrality")
def np_centrality(cfg: Config) -> dict[str, Any]:
    """Plain NumPy reference: one process, OpenBLAS threads, the same tiles."""
    from neuroscale.analysis.centrality import default_block_size

    series, _ = _centrality_input(cfg)
    x = np.asarray(series.data.compute(), dtype=np.float32)
    t, n = x.shape
    block = default_block_size(t)
    thr = np.float32(0.25)
    with RssSampler() as sampler:
        sampler.reset()
        before = sampler.peak
        t0 = time.perf_counter()
        z = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
        norm = np.sqrt(np.einsum("ij,ij->j", z, z))
        z /= np.where(norm > 0, norm, np.inf)
        dcb = np.zeros(n)
        dcw = np.zeros(n)
        for a in range(0, n, block):
            sa = slice(a, min(a + block, n))
            for b in range(a, n, block):
                sb = slice(b, min(b + block, n))
                tile = z[:, sa].T @ z[:, sb]
                edge = tile > thr
                if a == b:
                    np.fill_diagonal(edge, False)
                w = np.where(edge, tile, np.float32(0))
                dcb[sa] += edge.sum(axis=1)
                dcw[sa] += w.sum(axis=1, dtype=np.float64)
                if a != b:
                    dcb[sb] += edge.sum(axis=0)
                    dcw[sb] += w.sum(axis=0, dtype=np.float64)
        dt = time.perf_counter() - t0
    np.save(Path(cfg["scratch"]) / "dcb_numpy.npy", dcb)
    flops = 2.0 * _pairs(n, block) * t
    return {"seconds": dt, "extra": {
        "n_voxels": n, "n_timepoints": t, "block": block, "gflops": flops / dt / 1e9,
        "rss_before_bytes": before, "rss_peak_during_bytes": sampler.peak,
        "extra_bytes": sampler.peak - before, "dense_matrix_bytes": 4 * n * n}}


# ------------------------------------------------------------------------------------------
# setup and sanity check (not timed cases)


@case("prepare")
def prepare(cfg: Config) -> dict[str, Any]:
    """Create the persistent Zarr working copy used by the "from Zarr" cases."""
    from neuroscale.image import open_image

    t0 = time.perf_counter()
    img = open_image(cfg["bold"], cache_dir=cfg["cache"])
    return {"seconds": time.perf_counter() - t0, "extra": {"store": img.meta.get("store")}}


@case("check")
def check(cfg: Config) -> dict[str, Any]:
    """Same arguments, same numbers: neuroscale vs nilearn on this dataset (in memory)."""
    import dask
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.maskers import NiftiLabelsMasker, NiftiMasker

    from neuroscale.analysis.connectivity import correlation_matrices
    from neuroscale.analysis.denoise import clean
    from neuroscale.analysis.parcellate import load_atlas, parcel_timeseries
    from neuroscale.image import open_image

    mask = np.load(cfg["mask_npy"])
    img = open_image(cfg["bold"], cache_dir=cfg["cache"])
    series = img.to_series(mask)
    cleaned = clean(series, t_r=img.t_r, detrend=True, standardize="zscore_sample",
                    low_pass=None, high_pass=None)
    atlas = load_atlas(cfg["atlas_nii"], img.affine, img.shape[:3])
    ours_clean, ours_ts = dask.compute(cleaned.data, parcel_timeseries(series, atlas))
    ref_clean = NiftiMasker(mask_img=cfg["mask_nii"], detrend=True,
                            standardize="zscore_sample").fit_transform(cfg["bold"])
    ref_ts = NiftiLabelsMasker(labels_img=cfg["atlas_nii"],
                               mask_img=cfg["mask_nii"]).fit_transform(cfg["bold"])
    ours_r = correlation_matrices(ours_ts)["pearson"]
    ref_r = ConnectivityMeasure(kind="correlation").fit_transform([ref_ts])[0]
    scale = float(np.abs(ref_ts).max())
    extra = {
        "clean_max_abs_diff": float(np.abs(ours_clean - ref_clean).max()),
        "parcel_ts_max_rel_diff": float(np.abs(ours_ts - ref_ts).max() / scale),
        # nilearn's default estimator is Ledoit-Wolf (shrunk), ours is plain Pearson
        "pearson_vs_nilearn_default_max_abs_diff": float(np.abs(ours_r - ref_r).max()),
        "pearson_vs_corrcoef_max_abs_diff": float(
            np.abs(ours_r - np.corrcoef(ref_ts.T.astype(np.float64))).max()),
    }
    return {"seconds": 0.0, "extra": extra}


#: Modules each side would import lazily during its first call, imported before the clock
#: starts (the top-level imports are excluded on both sides; so are these first-call ones).
_NEUROSCALE = ["neuroscale.image", "neuroscale.io.zarr_cache", "neuroscale.io.nifti", "zarr",
               "zarr.codecs", "numcodecs", "isal.igzip", "dask.array", "scipy.signal",
               "nilearn.signal", "neuroscale.kernels.signal", "distributed"]
_NS_PARCEL = [*_NEUROSCALE, "nilearn.image", "scipy.sparse", "pandas", "sklearn.covariance",
              "nilearn.connectome"]
_NILEARN = ["nibabel", "nilearn.maskers", "nilearn.image", "nilearn.signal", "scipy.signal",
            "nilearn.connectome", "sklearn.covariance"]
WARM = {
    "nilearn_masker": _NILEARN, "nilearn_labels": _NILEARN, "check": _NILEARN + _NS_PARCEL,
    "ns_clean_first": _NEUROSCALE, "ns_clean_zarr": _NEUROSCALE, "ns_ingest": _NEUROSCALE,
    "ns_clean_dist1": _NEUROSCALE, "ns_clean_dist2": _NEUROSCALE,
    "ns_parcel_first": _NS_PARCEL, "ns_parcel_zarr": _NS_PARCEL,
    "ns_centrality": [*_NEUROSCALE, "neuroscale.kernels.maps"], "np_centrality": _NEUROSCALE,
}


def main(argv: list[str]) -> int:
    name, cfg_path, out_path = argv
    cfg = json.loads(Path(cfg_path).read_text())
    Path(cfg["scratch"]).mkdir(parents=True, exist_ok=True)
    _warm_imports(WARM.get(name, []))
    with RssSampler(interval=0.05) as sampler:
        result = CASES[name](cfg)
    result["self_maxrss_bytes"] = self_maxrss_bytes()
    result["sampled_peak_bytes"] = sampler.peak
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
