"""GPU check: every array-API kernel on CuPy against the CPU, then degree centrality at HCP size.

One short, unattended script for a machine with a CUDA GPU (issue 18).  It

1. measures the card's two ceilings in the same run: plain float32 GEMM (cuBLAS, TF32 off) and
   a device-to-device copy;
2. runs every kernel that takes the array namespace (:mod:`neuroscale.kernels.xp`) on a CuPy
   block and on the same NumPy block, and reports the largest difference and both times (the
   CPU time is the 2-core CPU path: two threads, one BLAS thread each, half the columns each,
   as two Dask workers' threads would run it);
3. computes the degree centrality of an HCP-sized run (224,000 in-mask voxels x 1,200 volumes)
   through :func:`neuroscale.analysis.centrality.degree_centrality` on CuPy chunks (Dask's
   threaded scheduler, one GPU), from host memory (the chunks are copied to the GPU inside
   the graph) and from data already on the GPU; checks the first voxels' degrees against the
   CPU kernels exactly (counts) and to float32 tolerance (weighted); reports the achieved
   GEMM rate against the measured peak and the 2-core CPU time (one CPU tile timed on two
   threads, times the number of tiles the CPU path computes);
4. runs the participant pipeline on the shipped example on the CPU and with ``--gpu`` and
   compares their maps (no registration or motion correction: ANTs is not needed there).

Usage::

    python benchmarks/gpu_check.py --out results/ [--voxels 224000 --volumes 1200]

Without a GPU it stops with one line.  Results: ``gpu_check.json`` in ``--out`` and a table on
stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("CUPY_TF32", "0")  # plain float32 GEMMs: the CPU's numbers, not TF32's

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _sync() -> None:
    import cupy

    cupy.cuda.Device().synchronize()


def _gpu_time(fn: Any, repeat: int = 5) -> float:
    """Median wall time of ``fn()`` on the GPU (synchronised), after one warm-up, seconds."""
    fn()
    _sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _cpu_2core(fn: Any, block: np.ndarray, *args: Any) -> tuple[np.ndarray, float]:
    """``fn`` on the two column halves of ``block`` in two threads with one BLAS thread each
    (the 2-core Dask path), seconds; the halves' results concatenated on the last axis."""
    from threadpoolctl import threadpool_limits

    half = block.shape[1] // 2
    parts = [np.ascontiguousarray(block[:, :half]), np.ascontiguousarray(block[:, half:])]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(2) as pool:
        t0 = time.perf_counter()
        out = list(pool.map(lambda p: fn(p, *args), parts))
        elapsed = time.perf_counter() - t0
    return np.concatenate(out, axis=-1), elapsed


def ceilings(report: dict[str, Any]) -> None:
    import cupy

    n = 8192
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    t = _gpu_time(lambda: a @ b, repeat=10)
    report["fp32_gemm_tflops"] = 2 * n**3 / t / 1e12
    x = cupy.random.standard_normal(2**29, dtype=cupy.float32)  # 2 GiB
    y = cupy.empty_like(x)
    t = _gpu_time(lambda: y.__setitem__(slice(None), x), repeat=10)
    report["copy_tb_per_s"] = 2 * x.nbytes / t / 1e12


def kernels(report: dict[str, Any], n_t: int, n_v: int) -> None:
    import cupy

    from neuroscale.kernels import maps, qc
    from neuroscale.kernels.xp import to_numpy

    rng = np.random.default_rng(0)
    common = rng.standard_normal((n_t, 8))
    block = (common @ rng.standard_normal((8, n_v)) + 3 * rng.standard_normal((n_t, n_v))
             + 500.0).astype(np.float32)
    seed = block[:, :40].mean(axis=1, dtype=np.float64)
    gblock = cupy.asarray(block)
    z_cpu = maps.zscore_block(block)
    gz = cupy.asarray(z_cpu)
    gseed = cupy.asarray(seed)
    k = 4096
    cases: dict[str, tuple[Any, Any, Any]] = {
        "zscore_block": (maps.zscore_block, (), ()),
        "alff_block": (maps.alff_block, (0.72, 0.01, 0.08), (0.72, 0.01, 0.08)),
        "tsnr_map": (qc.tsnr_map, (), ()),
        "tsnr_map(detrend=2)": (qc.tsnr_map, (2,), (2,)),
        "pearson_with_seed_block": (maps.pearson_with_seed_block, (seed,), (gseed,)),
        "seed_fisher_z_block": (maps.seed_fisher_z_block, (seed, 1 - 1e-7),
                                (gseed, 1 - 1e-7)),
    }
    rows = []
    for name, (fn, cpu_args, gpu_args) in cases.items():
        ref, t_cpu = _cpu_2core(fn, block, *cpu_args)
        out = fn(gblock, *gpu_args)
        t_gpu = _gpu_time(lambda fn=fn, gpu_args=gpu_args: fn(gblock, *gpu_args))
        got = to_numpy(out).astype(np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        scale = max(float(np.abs(ref).max()), 1e-30)
        rows.append(dict(kernel=name, shape=list(block.shape), cpu_2core_s=t_cpu, gpu_s=t_gpu,
                         speedup=t_cpu / t_gpu, max_abs_diff=float(np.abs(got - ref).max()),
                         max_rel_diff=float(np.abs(got - ref).max() / scale)))
    # one off-diagonal correlation tile (k x k): degrees as counts and sums
    zi, zj = z_cpu[:, :k], z_cpu[:, k:2 * k]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        t0 = time.perf_counter()
        ref = maps.correlation_tile_degrees(zi, zj, 0.25, False)
        t_cpu = time.perf_counter() - t0
    gzi, gzj = gz[:, :k], gz[:, k:2 * k]
    t_gpu = _gpu_time(lambda: maps.correlation_tile_degrees(gzi, gzj, 0.25, False))
    got = to_numpy(maps.correlation_tile_degrees(gzi, gzj, 0.25, False))
    rows.append(dict(kernel=f"correlation_tile_degrees {k}x{k}", shape=[n_t, 2 * k],
                     cpu_2core_s=t_cpu, gpu_s=t_gpu, speedup=t_cpu / t_gpu,
                     max_abs_diff=float(np.abs(got - ref).max()),
                     count_mismatches=int(np.sum(got[0] != ref[0])),
                     max_rel_diff=float(np.abs(got[1] - ref[1]).max()
                                        / max(np.abs(ref[1]).max(), 1e-30))))
    report["kernels"] = rows


def _synthetic_run(n_t: int, n_v: int, seed: int = 1) -> np.ndarray:
    """(n_t, n_v) float32: 16 network signals with sparse loadings plus noise, so that a few
    per cent of the voxel pairs have r > 0.25 (as in real resting-state data)."""
    import cupy

    rs = cupy.random.RandomState(seed)
    signals = rs.standard_normal((n_t, 16), dtype=cupy.float32)
    member = rs.randint(0, 16, size=n_v)
    loading = cupy.zeros((16, n_v), dtype=cupy.float32)
    loading[member, cupy.arange(n_v)] = 0.8
    data = signals @ loading + rs.standard_normal((n_t, n_v), dtype=cupy.float32) + 1000.0
    host = cupy.asnumpy(data)
    del data, loading, signals
    return host


def centrality(report: dict[str, Any], n_t: int, n_v: int, threshold: float = 0.25) -> None:
    import cupy
    import dask
    import dask.array as da
    from threadpoolctl import threadpool_limits

    from neuroscale.analysis.centrality import GPU_TILE_BYTES, default_block_size, degree_centrality
    from neuroscale.compute.gpu import to_device, to_host
    from neuroscale.image import Series
    from neuroscale.kernels import maps

    host = _synthetic_run(n_t, n_v)
    mask = np.zeros((n_v // 100 + 1, 10, 10), dtype=bool)
    mask.reshape(-1)[:n_v] = True
    bs = default_block_size(n_t, GPU_TILE_BYTES)
    res: dict[str, Any] = dict(voxels=n_v, volumes=n_t, threshold=threshold, gpu_block=bs)
    sizes = [min(bs, n_v - a) for a in range(0, n_v, bs)]
    flops = sum(2.0 * n_t * sizes[a] * sizes[b]
                for a in range(len(sizes)) for b in range(a, len(sizes)))
    res["gemm_tflop"] = flops / 1e12

    def run(data: Any) -> tuple[np.ndarray, np.ndarray]:
        series = Series(data=data, mask=mask, affine=np.eye(4), t_r=0.72)
        dcb, dcw = degree_centrality(series, threshold=threshold)
        with dask.config.set(scheduler="threads", num_workers=4):
            b, w = dask.compute(to_host(dcb), to_host(dcw))
        return b, w

    # from host memory: chunks copied to the GPU inside the graph (what the pipeline does)
    from_host = da.from_array(host, chunks=(-1, bs))
    run(to_device(from_host))  # warm-up: cuBLAS handles, kernels compiled
    _sync()
    t0 = time.perf_counter()
    dcb, dcw = run(to_device(from_host))
    res["gpu_from_host_s"] = time.perf_counter() - t0
    on_gpu = cupy.asarray(host)
    resident = da.from_array(on_gpu, chunks=(-1, bs), asarray=False)
    t0 = time.perf_counter()
    dcb2, dcw2 = run(resident)
    res["gpu_resident_s"] = time.perf_counter() - t0
    res["gpu_runs_identical"] = bool(np.array_equal(dcb, dcb2) and np.array_equal(dcw, dcw2))
    res["achieved_tflops"] = flops / res["gpu_resident_s"] / 1e12
    if "fp32_gemm_tflops" in report:
        res["fraction_of_gemm_peak"] = res["achieved_tflops"] / report["fp32_gemm_tflops"]
    res["edge_fraction"] = float(dcb.sum() / (n_v * (n_v - 1.0)))
    del on_gpu, resident
    cupy.get_default_memory_pool().free_all_blocks()

    # CPU reference for the first voxels: their degrees from every other voxel (NumPy kernels)
    k = 4096
    z = np.empty_like(host)
    step = 8192
    for a in range(0, n_v, step):
        z[:, a:a + step] = maps.zscore_block(host[:, a:a + step])
    ref = np.zeros((2, k))
    for a in range(0, n_v, step):
        if a == 0:
            part = maps.correlation_tile_degrees(z[:, :k], z[:, :k], threshold, True)
            ref += part[:, :k]
            if step > k:
                part = maps.correlation_tile_degrees(z[:, :k], z[:, k:step], threshold, False)
                ref += part[:, :k]
        else:
            part = maps.correlation_tile_degrees(z[:, :k], z[:, a:a + step], threshold, False)
            ref += part[:, :k]
    res["checked_voxels"] = k
    res["dcb_mismatches"] = int(np.sum(dcb[:k] != ref[0].astype(np.float32)))
    res["dcb_max_abs_diff"] = float(np.abs(dcb[:k] - ref[0]).max())
    res["dcw_max_rel_diff"] = float(np.abs(dcw[:k] - ref[1]).max() / np.abs(ref[1]).max())
    # the 2-core CPU path: one of its tiles on two BLAS threads, times its number of tiles
    cpu_bs = default_block_size(n_t)
    zi, zj = z[:, :cpu_bs], z[:, cpu_bs:2 * cpu_bs]
    with threadpool_limits(limits=2, user_api="blas"):
        maps.correlation_tile_degrees(zi, zj, threshold, False)
        t0 = time.perf_counter()
        maps.correlation_tile_degrees(zi, zj, threshold, False)
        t_tile = time.perf_counter() - t0
    nb = -(-n_v // cpu_bs)
    res["cpu_block"] = cpu_bs
    res["cpu_2core_tile_s"] = t_tile
    res["cpu_2core_estimated_s"] = t_tile * nb * (nb + 1) / 2
    res["speedup_vs_2core_cpu"] = res["cpu_2core_estimated_s"] / res["gpu_from_host_s"]
    report["degree_centrality"] = res


def pipeline(report: dict[str, Any], bids: Path, out: Path) -> None:
    """The participant pipeline on ``bids`` twice, on the CPU and with ``--gpu`` (no
    registration or motion correction: ANTs is not needed), with their maps compared."""
    import re
    import subprocess

    import nibabel as nib

    runs: dict[str, Any] = {}
    code = "import sys; from neuroscale.cli.main import main; sys.exit(main(sys.argv[1:]))"
    for name, extra in (("cpu", []), ("gpu", ["--gpu"])):
        cmd = [sys.executable, "-c", code, str(bids), str(out / name), "participant",
               "--no-registration", "--no-motion-correction", "--no-report", "--no-progress",
               "--work-dir", str(out / f"{name}_work"), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        runs[name] = dict(wall_s=time.perf_counter() - t0, exit_code=proc.returncode,
                          stderr_tail=proc.stderr[-1500:],
                          phases_s=[float(x) for x in re.findall(r"done in ([0-9.]+) s",
                                                                 proc.stderr)])
    maps = {}
    for cpu_map in sorted((out / "cpu").rglob("*_boldmap.nii.gz")):
        gpu_map = out / "gpu" / cpu_map.relative_to(out / "cpu")
        stat = re.search(r"stat-([a-z]+)", cpu_map.name)
        key = stat.group(1) if stat else cpu_map.name
        if not gpu_map.is_file():
            maps[key] = "missing on the GPU run"
            continue
        a = np.asarray(nib.load(str(cpu_map)).dataobj, dtype=np.float64)
        b = np.asarray(nib.load(str(gpu_map)).dataobj, dtype=np.float64)
        maps[key] = dict(identical=bool(np.array_equal(a, b)),
                         max_abs_diff=float(np.abs(a - b).max()),
                         max_rel_diff=float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)),
                         voxels_differing=int(np.sum(a != b)))
    report["pipeline"] = dict(bids=str(bids), runs=runs, maps=maps,
                              speedup=runs["cpu"]["wall_s"] / runs["gpu"]["wall_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--voxels", type=int, default=224_000)
    ap.add_argument("--volumes", type=int, default=1200)
    ap.add_argument("--kernel-voxels", type=int, default=32_768)
    ap.add_argument("--bids", type=Path, default=ROOT / "examples" / "ds-studyforrest-oneback",
                    help="dataset of the pipeline stage (CPU run, then --gpu)")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["ceilings", "kernels", "dc", "pipeline"])
    args = ap.parse_args(argv)
    from neuroscale.compute.gpu import gpu_info

    info = gpu_info()
    if info is None:
        print("gpu_check: no CUDA GPU here (CuPy missing or no device); nothing to check")
        return 2
    import cupy

    report: dict[str, Any] = dict(gpu=info.describe(), cupy=cupy.__version__,
                                  numpy=np.__version__, python=platform.python_version(),
                                  cpu_count=os.cpu_count(),
                                  tf32=os.environ.get("CUPY_TF32"))
    args.out.mkdir(parents=True, exist_ok=True)
    stages = [("ceilings", lambda: ceilings(report)),
              ("kernels", lambda: kernels(report, args.volumes, args.kernel_voxels)),
              ("dc", lambda: centrality(report, args.volumes, args.voxels)),
              ("pipeline", lambda: pipeline(report, args.bids, args.out / "pipeline"))]
    for name, stage in stages:
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        try:
            stage()
        except Exception as exc:  # report what ran; the next stage still runs
            import traceback

            report.setdefault("errors", {})[name] = "".join(traceback.format_exception(exc))
            print(f"gpu_check: stage {name} failed: {exc!r}", file=sys.stderr)
        report.setdefault("stage_seconds", {})[name] = time.perf_counter() - t0
        cupy.get_default_memory_pool().free_all_blocks()  # the stage's arrays are gone
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"GPU: {report['gpu']}; fp32 GEMM {report.get('fp32_gemm_tflops', 0):.1f} TFLOP/s; "
          f"copy {report.get('copy_tb_per_s', 0):.2f} TB/s")
    for row in report.get("kernels", []):
        print(f"{row['kernel']:<36} cpu(2 cores) {row['cpu_2core_s']*1e3:9.1f} ms  gpu "
              f"{row['gpu_s']*1e3:8.2f} ms  x{row['speedup']:7.1f}  max rel diff "
              f"{row['max_rel_diff']:.2e}" + (f"  count mismatches {row['count_mismatches']}"
                                              if "count_mismatches" in row else ""))
    for key in ("degree_centrality", "pipeline"):
        if report.get(key):
            print(json.dumps(report[key], indent=1))
    for name, err in report.get("errors", {}).items():
        print(f"--- {name} failed:\n{err}")
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
