"""Head-motion correction: neuroscale ``realign`` on Dask vs ANTsPy's ``ants.motion_correction``.

One command, from the repository root::

    python benchmarks/bench_motion.py                   # 1200 volumes (long: ~1-2 h in all)
    python benchmarks/bench_motion.py --n-volumes 100   # smoke run
    python benchmarks/bench_motion.py --n-volumes 40 --voxel-mm 25 --permuted --skip-ants
                                                        # coarse voxels, axis-permuted copy

The workload
------------
A run of ``--n-volumes`` volumes on the real studyforrest grid (80 x 80 x 35, 3 x 3 x 3.3 mm):
the real reference volume (voxelwise median of volumes 2-11 of
``sub-02_task-oneback_run-1_bold.nii.gz``) moved by **known** rigid motions
(:func:`neuroscale.preproc.motion.apply_rigid_motion`, cubic spline) plus Gaussian noise at the
real run's temporal noise level, written as float32 ``.nii.gz``.  The first 10 volumes are not
moved (the reference period); the others follow a random walk (steps of 0.15 mm / 0.15 degree
s.d.) with occasional jumps (up to 1.5 mm / 1.5 degree), clipped at 3 mm / 3 degrees.  So the
truth is exact: the base volume carries no motion of its own.

``--voxel-mm V`` block-averages every volume (and the reference) to about V mm voxels (whole
voxels per axis, voxel centres at the blocks' centres) after moving it: the motion in world
space, and so the truth, is unchanged.  ``--permuted`` also writes the same run with its voxel
axes permuted (x, y, z) -> (z, x, y) and its affine permuted to match (the same image in world
space) and runs the 1-worker neuroscale case on it; the report gives the agreement of the two
(FD Pearson r, max |difference| of the translations and rotations).

The cases (each in a fresh subprocess, sampled by the driver)
-------------------------------------------------------------
* ``neuroscale`` with ``--workers`` N (default 1 and 2): ``open_image`` (ingest into the Zarr
  working copy: timed separately, **not** included in "wall s"), ``select_reference`` (median of
  volumes 0-9), then ``dask.compute(realign(...).params, .mean)`` on a distributed
  ``LocalCluster`` of N single-threaded worker processes (cluster start not timed); this writes
  the realigned run to Zarr.
* ``ants``: ``ants.image_read`` of the same ``.nii.gz`` (timed separately), then
  ``ants.motion_correction(image, fixed=<the same reference volume>)`` (its defaults:
  ``BOLDRigid``, Mattes MI), single process, ITK threads = ``--ants-threads`` (default 1 for a
  per-core comparison; 0 = ITK's default, all cores).

Peak memory is the peak of the summed RSS of the case's whole process tree (the child and every
descendant: Dask workers, nanny processes), sampled every 0.2 s with psutil by the driver.

Converting ANTs' parameters
---------------------------
``motion_correction`` returns, per volume, the ``fwdtransforms`` of ``ants.registration``: an ITK
``AffineTransform`` (LPS mm) mapping a point of the fixed (reference) image to the moving
volume.  That is the motion ``M`` of neuroscale's convention expressed in LPS, so it is
converted exactly as neuroscale converts its own registrations:
``ants_transform_to_matrix`` (``M_ras = F M_lps F``, ``F = diag(-1, -1, 1, 1)``), then
``matrix_to_params`` about the same centre (the reference grid's centre).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BOLD = (Path(os.environ.get("NEUROSCALE_SHARED_DATA", REPO.parent / "shared" / "data"))
        / "bids" / "ds-studyforrest-oneback" / "sub-02" / "func"
        / "sub-02_task-oneback_run-1_bold.nii.gz")
DEG = np.pi / 180.0
N_STILL = 10


# --------------------------------------------------------------------------- workload


def _block_mean(volume: np.ndarray, affine: np.ndarray, voxel_mm: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` averaged over blocks of about ``voxel_mm`` (whole voxels), and its affine."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    f = np.maximum(1, np.round(voxel_mm / zooms)).astype(int)
    shape = [volume.shape[i] // f[i] for i in range(3)]
    cut = volume[: shape[0] * f[0], : shape[1] * f[1], : shape[2] * f[2]]
    out = cut.reshape(shape[0], f[0], shape[1], f[1], shape[2], f[2]).mean(axis=(1, 3, 5))
    new = np.array(affine, dtype=np.float64)
    new[:3, :3] = affine[:3, :3] * f
    new[:3, 3] = affine[:3, :3] @ ((f - 1) / 2.0) + affine[:3, 3]
    return out.astype(np.float32), new


#: voxel axes of the permuted copy: (x, y, z) -> (z, x, y)
PERM = (2, 0, 1)


def make_run(n_volumes: int, workdir: Path, seed: int = 0, voxel_mm: float | None = None,
             permuted: bool = False) -> dict[str, Any]:
    """Write the moved run (``bold.nii.gz``, and ``bold-perm.nii.gz`` with ``permuted``), its
    truth (``truth.npy``) and reference (on the written grid)."""
    import nibabel as nib

    from neuroscale.preproc.motion import apply_rigid_motion

    stamp = workdir / "dataset.json"
    if stamp.is_file():
        meta: dict[str, Any] = json.loads(stamp.read_text())
        if (meta.get("n_volumes") == n_volumes and meta.get("seed") == seed
                and meta.get("voxel_mm") == voxel_mm
                and (meta.get("permuted") or not permuted)):
            return meta
    src = nib.load(str(BOLD))
    real = np.asarray(src.dataobj[..., 2:12], dtype=np.float32)
    reference = np.median(real, axis=3).astype(np.float32)
    brain = reference > np.percentile(reference, 70)
    sigma = float(np.median(real.std(axis=3)[brain]))
    affine = src.affine
    rng = np.random.default_rng(seed)
    truth = np.zeros((n_volumes, 6))
    limit = np.r_[3.0, 3.0, 3.0, 3 * DEG, 3 * DEG, 3 * DEG]
    step = np.r_[0.15, 0.15, 0.15, 0.15 * DEG, 0.15 * DEG, 0.15 * DEG]
    for t in range(N_STILL, n_volumes):
        move = rng.normal(0.0, 1.0, 6) * step
        if rng.random() < 0.02:  # a jump
            move += rng.uniform(-1.0, 1.0, 6) * step * 10
        truth[t] = np.clip(truth[t - 1] + move, -limit, limit)
    out_ref, out_aff = (reference, affine) if voxel_mm is None else _block_mean(
        reference, affine, voxel_mm)

    def header_for(shape: tuple[int, ...], aff: np.ndarray) -> Any:
        header = nib.Nifti1Header()
        header.set_data_dtype(np.float32)
        header.set_xyzt_units("mm", "sec")
        header.set_data_shape((*shape, n_volumes))
        header.set_zooms((*np.sqrt((aff[:3, :3] ** 2).sum(axis=0)), 2.0))
        header.set_qform(aff, 1)
        header.set_sform(aff, 1)
        return header

    perm_aff = out_aff.copy()
    perm_aff[:, :3] = out_aff[:, list(PERM)]
    outputs = [(workdir / "bold.nii.gz", header_for(out_ref.shape, out_aff), None)]
    if permuted:
        outputs.append((workdir / "bold-perm.nii.gz",
                        header_for(tuple(out_ref.shape[i] for i in PERM), perm_aff), PERM))
    # streamed volume by volume: the whole run is never in memory here
    import contextlib
    import gzip

    with contextlib.ExitStack() as stack:
        handles = []
        for out_path, header, order in outputs:
            fh = stack.enter_context(gzip.open(out_path, "wb", compresslevel=1))
            header.write_to(fh)
            fh.write(b"\0" * (int(header["vox_offset"]) - header.sizeof_hdr - 4))
            handles.append((fh, order))
        for t in range(n_volumes):
            vol = apply_rigid_motion(reference, affine, truth[t])
            vol += rng.normal(0.0, sigma, vol.shape).astype(np.float32)
            if voxel_mm is not None:
                vol = _block_mean(vol, affine, voxel_mm)[0]
            for fh, order in handles:
                out = vol if order is None else np.transpose(vol, order)
                fh.write(np.asarray(out, "<f4").tobytes(order="F"))
    path = outputs[0][0]
    np.save(workdir / "truth.npy", truth)
    np.save(workdir / "reference.npy", out_ref)
    meta = {"n_volumes": n_volumes, "seed": seed, "shape": [*out_ref.shape, n_volumes],
            "voxel_mm": voxel_mm, "permuted": permuted,
            "noise_sigma": sigma, "reference_mean_brain": float(reference[brain].mean()),
            "max_abs_trans_mm": float(np.abs(truth[:, :3]).max()),
            "max_abs_rot_deg": float(np.abs(truth[:, 3:]).max() / DEG),
            "bytes_gz": path.stat().st_size}
    stamp.write_text(json.dumps(meta, indent=1))
    return meta


# --------------------------------------------------------------------------- cases (children)


def case_neuroscale(workdir: Path, workers: int, result: Path, name: str = "bold") -> None:
    import dask
    from dask.distributed import Client, LocalCluster

    from neuroscale import open_image
    from neuroscale.io.zarr_cache import remove_cache
    from neuroscale.preproc.motion import realign, select_reference

    cache = workdir / f"cache-w{workers}-{name}"
    remove_cache(cache)
    t0 = time.perf_counter()
    image = open_image(workdir / f"{name}.nii.gz", cache_dir=cache)
    t_ingest = time.perf_counter() - t0
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.run(lambda: None)  # workers up
        t0 = time.perf_counter()
        reference = select_reference(image, n_dummy=0, n_volumes=N_STILL)
        graph = realign(image, workdir / f"realigned-w{workers}-{name}.zarr", reference)
        params, mean, qc = dask.compute(graph.params, graph.mean, graph.qc)
        wall = time.perf_counter() - t0
    np.save(result.with_suffix(".npy"), params)
    result.write_text(json.dumps({"wall_s": wall, "load_s": t_ingest, "n_tasks": graph.n_tasks,
                                  "mean_finite": bool(np.isfinite(mean).all()),
                                  "n_reestimated": int((qc[:, 3] == 1).sum()),
                                  "n_identity": int((qc[:, 3] == 2).sum()),
                                  "metric": graph.settings["metric"]}))
    import shutil

    shutil.rmtree(graph.store, ignore_errors=True)  # ~1 GB for 1200 volumes
    remove_cache(cache)


def case_ants(workdir: Path, threads: int, result: Path) -> None:
    if threads > 0:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants

    from neuroscale.preproc.motion import (
        ants_transform_to_matrix,
        grid_center,
        matrix_to_params,
    )

    t0 = time.perf_counter()
    image = ants.image_read(str(workdir / "bold.nii.gz"))
    t_load = time.perf_counter() - t0
    reference = np.load(workdir / "reference.npy")
    fixed = ants.slice_image(image, axis=3, idx=0).new_image_like(reference)
    t0 = time.perf_counter()
    out = ants.motion_correction(image, fixed=fixed)
    wall = time.perf_counter() - t0
    import nibabel as nib

    affine = nib.load(str(workdir / "bold.nii.gz")).affine
    center = grid_center(affine, reference.shape)
    params = []
    for files in out["motion_parameters"]:
        tx = ants.read_transform(files[0])
        params.append(matrix_to_params(
            ants_transform_to_matrix(tx.parameters, tx.fixed_parameters), center))
        for f in files:
            Path(f).unlink(missing_ok=True)
    np.save(result.with_suffix(".npy"), np.array(params))
    result.write_text(json.dumps({"wall_s": wall, "load_s": t_load, "n_tasks": 1}))


# --------------------------------------------------------------------------- driver


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_case(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one case in a child process; sample the RSS of its process tree."""
    import psutil

    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, *args], env=env)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, _tree_rss(proc))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    if child.returncode != 0:
        raise RuntimeError(f"case {args} failed with exit code {child.returncode}")
    return {"peak_rss_gb": peak / 1e9, "process_s": time.perf_counter() - start}


def _errors(params: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = np.abs(params - truth)
    return {"trans_max_mm": float(err[:, :3].max()), "trans_median_mm": float(np.median(err[:, :3])),
            "rot_max_deg": float(err[:, 3:].max() / DEG),
            "rot_median_deg": float(np.median(err[:, 3:]) / DEG)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-volumes", type=int, default=1200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ants-threads", type=int, default=1,
                        help="ITK threads for ants.motion_correction (0: ITK's default)")
    parser.add_argument("--skip-ants", action="store_true")
    parser.add_argument("--voxel-mm", type=float, default=None,
                        help="block-average the run to about this voxel size (mm)")
    parser.add_argument("--permuted", action="store_true",
                        help="also realign an axis-permuted copy (1 worker) and compare")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "neuroscale-bench-motion")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--param", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--input", default="bold", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir / (f"n{args.n_volumes}"
                              + (f"-v{args.voxel_mm:g}" if args.voxel_mm else ""))
    if args.case == "neuroscale":
        case_neuroscale(workdir, args.param, args.result, args.input)
        return
    if args.case == "ants":
        case_ants(workdir, args.param, args.result)
        return

    workdir.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    meta = make_run(args.n_volumes, workdir, args.seed, args.voxel_mm, args.permuted)
    print(f"workload ready in {time.perf_counter() - t0:.1f} s: {meta}", flush=True)
    truth = np.load(workdir / "truth.npy")
    base = ["--n-volumes", str(args.n_volumes), "--workdir", str(args.workdir)]
    if args.voxel_mm:
        base += ["--voxel-mm", str(args.voxel_mm)]
    rows: list[dict[str, Any]] = []
    cases = [("neuroscale", w, "bold") for w in args.workers]
    if args.permuted:
        cases.append(("neuroscale", 1, "bold-perm"))
    if not args.skip_ants:
        cases.append(("ants", args.ants_threads, "bold"))
    for name, param, input_name in cases:
        result = workdir / f"result-{name}-{param}-{input_name}.json"
        print(f"running {name} ({param}, {input_name}) ...", flush=True)
        load = os.getloadavg()[0]
        sampled = run_case([*base, "--case", name, "--param", str(param), "--result",
                            str(result), "--input", input_name])
        rec = {**json.loads(result.read_text()), **sampled, "case": name, "param": param,
               "input": input_name, "load_before": load}
        params = np.load(result.with_suffix(".npy"))
        rec.update(_errors(params, truth))
        rec["params_file"] = str(result.with_suffix(".npy"))
        rows.append(rec)
        print(json.dumps(rec), flush=True)
    # agreement between the tools
    agreement = {}
    ants_rows = [r for r in rows if r["case"] == "ants"]
    if ants_rows:
        ants_params = np.load(ants_rows[0]["params_file"])
        for r in rows:
            if r["case"] == "neuroscale":
                agreement[f"neuroscale {r['param']} worker(s) vs ants"] = _errors(
                    np.load(r["params_file"]), ants_params)
    perm_rows = [r for r in rows if r.get("input") == "bold-perm"]
    if perm_rows:
        from neuroscale.preproc.motion import framewise_displacement

        first = np.load(next(r for r in rows if r["case"] == "neuroscale"
                             and r["param"] == 1 and r["input"] == "bold")["params_file"])
        other = np.load(perm_rows[0]["params_file"])
        fd_a, fd_b = framewise_displacement(first)[1:], framewise_displacement(other)[1:]
        agreement["neuroscale, axis-permuted copy vs original (1 worker)"] = {
            "fd_r": float(np.corrcoef(fd_a, fd_b)[0, 1]),
            "max_abs": float(np.abs(other - first).max()),
            "trans_max_mm": float(np.abs(other - first)[:, :3].max()),
            "rot_max_deg": float(np.abs(other - first)[:, 3:].max() / DEG)}
    ns_rows = [r for r in rows if r["case"] == "neuroscale" and r.get("input") != "bold-perm"]
    if len(ns_rows) > 1:
        first = np.load(ns_rows[0]["params_file"])
        for r in ns_rows[1:]:
            diff = np.abs(np.load(r["params_file"]) - first).max()
            agreement[f"neuroscale {r['param']} vs {ns_rows[0]['param']} worker(s), max abs"] = {
                "max_abs": float(diff)}
    write_report(args, meta, rows, agreement, load0)


def write_report(args: argparse.Namespace, meta: dict[str, Any], rows: list[dict[str, Any]],
                 agreement: dict[str, Any], load0: tuple[float, float, float]) -> None:
    import ants
    import dask

    import neuroscale

    now = _dt.datetime.now()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    busy = max(load0[0], *(r["load_before"] for r in rows)) > (os.cpu_count() or 1)
    lines = [
        f"# Motion correction benchmark, {now:%Y-%m-%d %H:%M} (`--n-volumes {args.n_volumes}`)",
        "",
        f"- machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"Python {platform.python_version()}; commit {commit}",
        f"- versions: antspyx {ants.__version__}, dask {dask.__version__}, "
        f"neuroscale {neuroscale.__version__}",
        f"- load average at start: {', '.join(f'{v:.2f}' for v in load0)}"
        + (" (**busy machine: timings are noisy**)" if busy else ""),
        f"- data: {' x '.join(map(str, meta['shape']))} float32 .nii.gz "
        f"({meta['bytes_gz'] / 1e6:.0f} MB), the real studyforrest reference volume moved by "
        f"known motions (max {meta['max_abs_trans_mm']:.2f} mm, {meta['max_abs_rot_deg']:.2f} "
        f"deg) plus noise (sigma {meta['noise_sigma']:.0f}, brain mean "
        f"{meta['reference_mean_brain']:.0f})"
        + (f", block-averaged to ~{meta['voxel_mm']:g} mm voxels after moving"
           if meta.get("voxel_mm") else ""),
        f"- ants.motion_correction ITK threads: {args.ants_threads or 'default (all cores)'}",
        "",
        "| tool | workers | tasks | load s (not in wall) | wall s | s / volume | peak RSS GB "
        "(process tree) | trans err max / median mm | rot err max / median deg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tool = ("neuroscale realign (LocalCluster)" if r["case"] == "neuroscale"
                else "ants.motion_correction")
        if r.get("input") == "bold-perm":
            tool += ", axis-permuted copy"
        workers = r["param"] if r["case"] == "neuroscale" else "1 process"
        lines.append(
            f"| {tool} | {workers} | {r['n_tasks']} | {r['load_s']:.1f} | {r['wall_s']:.1f} | "
            f"{r['wall_s'] / args.n_volumes:.2f} | {r['peak_rss_gb']:.2f} | "
            f"{r['trans_max_mm']:.3f} / {r['trans_median_mm']:.3f} | "
            f"{r['rot_max_deg']:.3f} / {r['rot_median_deg']:.3f} |")
    for r in rows:
        if r["case"] == "neuroscale":
            lines.append(f"- neuroscale {r['param']} worker(s), {r.get('input', 'bold')}: metric "
                         f"{r.get('metric')}, implausible estimates re-estimated "
                         f"{r.get('n_reestimated')}, set to identity {r.get('n_identity')}")
    lines += ["", "Agreement of the parameters:", ""]
    for name, a in agreement.items():
        if "fd_r" in a:
            lines.append(f"- {name}: FD r {a['fd_r']:.4f}, max |difference| translations "
                         f"{a['trans_max_mm']:.4f} mm, rotations {a['rot_max_deg']:.4f} deg")
        elif "trans_max_mm" in a:
            lines.append(f"- {name}: trans max / median {a['trans_max_mm']:.3f} / "
                         f"{a['trans_median_mm']:.3f} mm, rot max / median "
                         f"{a['rot_max_deg']:.3f} / {a['rot_median_deg']:.3f} deg")
        else:
            lines.append(f"- {name}: {a['max_abs']:.2e}")
    lines += [
        "",
        "neuroscale wall s: `select_reference` + `dask.compute(params, mean)` of `realign` "
        "(registration, resampling and writing the realigned Zarr store); its load s is the "
        "ingest of the .nii.gz into the Zarr working copy. ants wall s: `ants.motion_correction` "
        "alone; its load s is `ants.image_read`. Errors: absolute differences from the known "
        "motion, ANTs' transforms converted to neuroscale's convention (see the script's "
        "docstring).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (f"{now:%Y-%m-%d}-motion-n{args.n_volumes}"
            + (f"-v{args.voxel_mm:g}" if args.voxel_mm else "")
            + ("-perm" if args.permuted else ""))
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "agreement": agreement, "load0": load0}, indent=1))


if __name__ == "__main__":
    main()
