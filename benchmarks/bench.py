"""neuroscale vs nilearn on a synthetic BOLD run: masking/cleaning, parcels, centrality, I/O.

Run from the repository root::

    python benchmarks/bench.py --size small             # smoke run, < 2 min
    python benchmarks/bench.py --size hcp --repeats 3   # 91 x 109 x 91 x 1200, long

Every case runs in a fresh subprocess (``_cases.py``); its peak RSS comes from ``os.wait4``
(this child only, unlike ``RUSAGE_CHILDREN``, which keeps the maximum over all children so
far).  Repeats are interleaved (case A, B, ..., then A, B, ... again) so that drifting load
on a shared machine hits every case alike; the median is reported.  Results: a JSON file of
raw results and a Markdown table, printed and written under ``benchmarks/results/``.
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _data import SIZES, ensure_dataset  # noqa: E402

GB = 1e9

#: Case order within one repeat.
ALL_CASES = [
    "gzip_floor",
    "gzip_floor_cli",
    "nilearn_masker",
    "ns_ingest",
    "ns_clean_first",
    "ns_clean_zarr",
    "nilearn_labels",
    "ns_parcel_first",
    "ns_parcel_zarr",
    "gemm",
    "ns_centrality",
    "np_centrality",
    "ns_clean_dist1",
    "ns_clean_dist2",
]

#: (section, label) of each case for the table.
LABELS = {
    "gzip_floor": ("(4)", "gzip-decode floor: isal, in-process"),
    "gzip_floor_cli": ("(4)", "gzip-decode floor: `python -m isal.igzip -d -c`"),
    "nilearn_masker": ("(1)", "nilearn NiftiMasker(detrend, zscore_sample).fit_transform"),
    "ns_ingest": ("(1a)", "first pass: .nii.gz -> Zarr working copy (open_image), the pass "
                          "that reads the gzip"),
    "ns_clean_first": ("(1a)", "ingest + clean: open_image -> to_series -> clean -> Zarr, "
                               "from the .nii.gz"),
    "ns_clean_zarr": ("(1b)", "neuroscale ... clean -> Zarr, from the Zarr working copy"),
    "nilearn_labels": ("(2)", "nilearn NiftiLabelsMasker + ConnectivityMeasure(correlation)"),
    "ns_parcel_first": ("(2a)", "ingest + parcels: open_image -> parcel_timeseries + "
                                "correlation_matrices, from the .nii.gz"),
    "ns_parcel_zarr": ("(2b)", "neuroscale parcel_timeseries + correlation_matrices, from Zarr"),
    "gemm": ("(3)", "numpy float32 GEMM (n x T @ T x n)"),
    "ns_centrality": ("(3)", "neuroscale degree_centrality (dask, threads)"),
    "np_centrality": ("(3)", "plain numpy blockwise degree centrality"),
    "ns_clean_dist1": ("(5)", "(1b) on LocalCluster, 1 worker x 1 thread"),
    "ns_clean_dist2": ("(5)", "(1b) on LocalCluster, 2 workers x 1 thread"),
}

DISTRIBUTED = {"ns_clean_dist1", "ns_clean_dist2"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False if not permitted here."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    except (OSError, ValueError):
        nproc = os.cpu_count() or 0
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=HERE).stdout.strip()
    except OSError:
        commit = ""
    versions = {}
    code = ("import json, numpy, nilearn, dask, distributed, zarr, nibabel, isal, neuroscale;"
            "print(json.dumps({m.__name__: getattr(m, '__version__', '?') for m in "
            "(numpy, nilearn, dask, distributed, zarr, nibabel, isal, neuroscale)}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        versions = json.loads(out.stdout)
    except (OSError, ValueError):
        pass
    return {"nproc": nproc, "ram_bytes": mem, "cpu_model": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": commit, "versions": versions,
            "loadavg_start": list(os.getloadavg())}


def run_case(name: str, cfg_path: Path, tmp: Path, timeout: float) -> dict[str, Any]:
    """Run one case in a fresh interpreter; wall time and peak RSS from the parent's side."""
    out_path = tmp / f"{name}.result.json"
    out_path.unlink(missing_ok=True)
    err_path = tmp / f"{name}.stderr"
    load = list(os.getloadavg())
    t0 = time.perf_counter()
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(HERE / "_cases.py"), name, str(cfg_path),
                                 str(out_path)], stdout=err, stderr=subprocess.STDOUT)
        deadline = t0 + timeout
        status = None
        ru = None
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"case": name, "process_wall_s": wall, "loadavg_before": load,
                           "returncode": proc.returncode,
                           "wait4_maxrss_bytes": int(ru.ru_maxrss) * 1024 if ru else None}
    if proc.returncode == 0 and out_path.exists():
        rec.update(json.loads(out_path.read_text()))
        peak = rec["wait4_maxrss_bytes"]
        if name in DISTRIBUTED:
            # the client process plus every worker process (their peaks added: an upper bound)
            peak = rec["self_maxrss_bytes"] + sum(rec["extra"]["workers_maxrss_bytes"])
        rec["peak_bytes"] = peak
    else:
        rec["error"] = err_path.read_text()[-3000:]
    return rec


def median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def summarise(records: list[dict[str, Any]], cases: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in cases:
        ok = [r for r in records if r["case"] == name and "seconds" in r]
        failed = [r for r in records if r["case"] == name and "seconds" not in r]
        if not ok:
            out[name] = {"ok": 0, "failed": len(failed)}
            continue
        s: dict[str, Any] = {
            "ok": len(ok),
            "failed": len(failed),
            "seconds": median([r["seconds"] for r in ok]),
            "process_wall_s": median([r["process_wall_s"] for r in ok]),
            "peak_bytes": median([r["peak_bytes"] for r in ok]),
            "sampled_peak_bytes": median([r["sampled_peak_bytes"] for r in ok]),
        }
        for key in ("gflops", "gflops_1thread", "mb_per_s", "extra_bytes", "dense_matrix_bytes",
                    "cluster_start_s", "open_s", "cpu_s"):
            vals = [r["extra"].get(key) for r in ok if key in r["extra"]]
            if vals:
                s[key] = median(vals)
        out[name] = s
    return out


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**NO**")


def evaluate(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per case: ratios vs nilearn, throughput, target and whether it is met."""
    def get(name: str, key: str) -> Any:
        return summary.get(name, {}).get(key)

    floors = [v for v in (get("gzip_floor", "seconds"), get("gzip_floor_cli", "seconds")) if v]
    floor = min(floors) if floors else None
    gemm_rate = get("gemm", "gflops")
    rows = []
    for name in summary:
        sec, peak = get(name, "seconds"), get(name, "peak_bytes")
        row: dict[str, Any] = {"case": name, "section": LABELS[name][0], "label": LABELS[name][1],
                               "seconds": sec, "process_wall_s": get(name, "process_wall_s"),
                               "peak_gb": None if peak is None else peak / GB,
                               "time_ratio": None, "mem_ratio": None, "metric": "",
                               "target": "", "met": None, "failed": get(name, "failed")}
        ref = {"ns_clean_first": "nilearn_masker", "ns_clean_zarr": "nilearn_masker",
               "ns_parcel_first": "nilearn_labels", "ns_parcel_zarr": "nilearn_labels",
               "ns_clean_dist1": "nilearn_masker", "ns_clean_dist2": "nilearn_masker"}.get(name)
        if ref and sec is not None and get(ref, "seconds"):
            row["time_ratio"] = sec / get(ref, "seconds")
            row["mem_ratio"] = peak / get(ref, "peak_bytes")
        if name in ("gzip_floor", "gzip_floor_cli") and get(name, "mb_per_s"):
            row["metric"] = f"{get(name, 'mb_per_s'):.0f} MB/s of output"
        if name in ("ns_clean_zarr", "ns_parcel_zarr") and row["time_ratio"] is not None:
            row["target"] = "time <= 0.25 x, memory <= 0.10 x nilearn"
            row["met"] = row["time_ratio"] <= 0.25 and row["mem_ratio"] <= 0.10
        if name == "ns_ingest" and sec is not None and floor:
            cpu = get(name, "cpu_s")
            row["metric"] = f"{sec / floor:.2f} x gzip floor" + (
                f"; {cpu:.1f} CPU s" if cpu is not None else "")
            row["target"] = f"<= 1.5 x gzip floor ({floor:.2f} s)"
            row["met"] = sec <= 1.5 * floor
        if name in ("ns_clean_first", "ns_parcel_first") and sec is not None and floor:
            row["metric"] = f"{sec / floor:.2f} x gzip floor"
            row["target"] = f"<= 1.5 x gzip floor ({floor:.2f} s)"
            row["met"] = sec <= 1.5 * floor
        if name == "gemm" and gemm_rate:
            row["metric"] = (f"{gemm_rate:.0f} GFLOP/s "
                             f"(1 thread: {_fmt(get(name, 'gflops_1thread'), '.0f')})")
        if name in ("ns_centrality", "np_centrality") and get(name, "gflops"):
            rate = get(name, "gflops")
            frac = rate / gemm_rate if gemm_rate else None
            extra = get(name, "extra_bytes") or 0
            dense = get(name, "dense_matrix_bytes") or 0
            row["metric"] = (f"{rate:.0f} GFLOP/s = {_fmt(None if frac is None else 100 * frac, '.0f')}"
                             f" % of GEMM; +{extra / GB:.2f} GB during compute "
                             f"(dense N x N: {dense / GB:.1f} GB)")
            if name == "ns_centrality":
                row["target"] = ">= 60 % of GEMM, extra memory <= 1 GB"
                row["met"] = None if frac is None else (frac >= 0.6 and extra <= 1e9)
        if name == "ns_clean_dist2" and sec and get("ns_clean_dist1", "seconds"):
            eff = get("ns_clean_dist1", "seconds") / (2 * sec)
            row["metric"] = f"parallel efficiency t1 / (2 t2) = {eff:.2f}"
            row["target"] = "efficiency >= 0.8"
            row["met"] = eff >= 0.8
        if name in DISTRIBUTED and get(name, "cluster_start_s") is not None:
            start = f"cluster start {get(name, 'cluster_start_s'):.1f} s (not timed)"
            row["metric"] = f"{row['metric']}; {start}" if row["metric"] else start
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    m = meta["machine"]
    ds = meta["dataset"]
    lines = [
        f"# neuroscale benchmarks, {meta['date']} (`--size {meta['size']}`)",
        "",
        f"- machine: {m['nproc']} CPUs (`nproc`), {m['ram_bytes'] / 2**30:.1f} GiB RAM, "
        f"{m['cpu_model']}; Python {m['python']}; commit {m['git_commit'] or '?'}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        f"- load average at start: {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}; "
        f"median load before a case: {meta['median_load']:.2f}"
        + (" (**busy machine: timings are noisy**)" if meta["busy"] else ""),
        f"- data: {' x '.join(map(str, ds['spec']['shape']))} int16 .nii.gz, "
        + ("no scaling (scl_slope 1)" if ds.get("scaling", "none") == "none"
           else "scl_slope != 1 (nibabel/nilearn load it as float64)") + " "
        f"({ds['raw_bytes'] / GB:.2f} GB raw, {ds['bold_bytes'] / GB:.2f} GB compressed), "
        f"{ds['n_voxels']:,} in-mask voxels, {ds['n_parcels']} parcels "
        f"({ds['parcel_voxels_min_max'][0]}-{ds['parcel_voxels_min_max'][1]} voxels each)",
        f"- repeats: {meta['repeats']} per case, each in a fresh process, median shown; "
        f"page cache dropped before every case: {'yes' if meta['dropped_caches'] else 'no'}",
        "",
        "| | case | wall s | process s | peak GB | time / nilearn | memory / nilearn | "
        "throughput / notes | target | met? |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        lines.append(
            f"| {r['section']} | {r['label']}{failed} | {_fmt(r['seconds'])} | "
            f"{_fmt(r['process_wall_s'], '.1f')} | {_fmt(r['peak_gb'])} | "
            f"{_fmt(r['time_ratio'], '.3f')} | {_fmt(r['mem_ratio'], '.3f')} | {r['metric']} | "
            f"{r['target']} | {_met(r['met']) if r['target'] else ''} |"
        )
    lines += [
        "",
        "wall s: the operation alone, timed inside the child after its imports; process s: the "
        "whole child process (interpreter start and imports included). peak GB: the child's "
        "peak RSS from `os.wait4`; for LocalCluster runs the client's peak plus each worker's "
        "(an upper bound). Ratios: neuroscale / nilearn (lower is better).",
    ]
    if meta.get("check"):
        c = meta["check"]
        lines += ["", "Sanity check (same arguments, same numbers): " + ", ".join(
            f"{k} = {v:.2e}" if isinstance(v, float) else f"{k} = {v}" for k, v in c.items())]
    if meta.get("errors"):
        lines += ["", "Failures:"] + [f"- {e}" for e in meta["errors"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs of each case (default 3; 1 for --size small, a smoke run)")
    p.add_argument("--scaling", choices=["none", "slope"], default="none",
                   help="int16 file without scaling (default; nilearn reads int16) or with the "
                        "scl_slope write_synthetic_bold stores (nilearn reads float64)")
    p.add_argument("--cases", nargs="+", choices=ALL_CASES, default=ALL_CASES)
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("NEUROSCALE_BENCH_DIR",
                                               Path(tempfile.gettempdir()) / "neuroscale-bench")),
                   help="data, working copies and scratch (default $NEUROSCALE_BENCH_DIR or "
                        "/tmp/neuroscale-bench); the hcp size needs ~6 GB free")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--cold", choices=["auto", "always", "never"], default="auto",
                   help="drop the page cache before every case (auto: if permitted, not for "
                        "--size small)")
    p.add_argument("--check", choices=["auto", "yes", "no"], default="auto",
                   help="compare neuroscale's numbers with nilearn's once (auto: small only)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per case run")
    p.add_argument("--clean", action="store_true",
                   help="delete the generated data and working copy afterwards")
    args = p.parse_args(argv)

    if args.repeats is None:
        args.repeats = 1 if args.size == "small" else 3
    t_start = time.perf_counter()
    machine = machine_info()
    dataset = ensure_dataset(args.workdir, args.size, args.scaling, log=log)
    root = Path(dataset["bold"]).parent
    scratch = root / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    cfg = {**dataset, **SIZES[args.size], "n_timepoints": SIZES[args.size]["shape"][3],
           "cache": str(root / "cache"), "scratch": str(scratch)}
    cfg_path = root / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))

    log("preparing the Zarr working copy (untimed) ...")
    prep = run_case("prepare", cfg_path, scratch, args.timeout)
    if "seconds" not in prep:
        log(prep.get("error", "prepare failed"))
        return 1
    dropped = False
    if args.cold == "always" or (args.cold == "auto" and args.size != "small"):
        dropped = drop_caches()
        if args.cold == "always" and not dropped:
            log("cannot drop the page cache here (needs root and a writable /proc/sys)")
            return 1
        log(f"dropping the page cache before each case: {'yes' if dropped else 'not permitted'}")

    records: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for name in args.cases:
            if dropped:
                drop_caches()
            rec = run_case(name, cfg_path, scratch, args.timeout)
            rec["repeat"] = rep
            records.append(rec)
            if "seconds" in rec:
                log(f"[{rep + 1}/{args.repeats}] {name:16s} {rec['seconds']:8.2f} s  "
                    f"peak {rec['peak_bytes'] / GB:6.2f} GB  (load {rec['loadavg_before'][0]:.2f})")
            else:
                log(f"[{rep + 1}/{args.repeats}] {name:16s} FAILED rc={rec['returncode']}\n"
                    f"{rec.get('error', '')[-1500:]}")

    check = None
    if args.check == "yes" or (args.check == "auto" and args.size == "small"):
        rec = run_case("check", cfg_path, scratch, args.timeout)
        check = rec.get("extra") if "seconds" in rec else {"error": rec.get("error", "")[-300:]}
    dcb_ns, dcb_np = scratch / "dcb_neuroscale.npy", scratch / "dcb_numpy.npy"
    if dcb_ns.exists() and dcb_np.exists():
        import numpy as np

        diff = float(np.abs(np.load(dcb_ns) - np.load(dcb_np)).max())
        check = {**(check or {}), "degree_neuroscale_vs_numpy_max_abs_diff": diff}

    summary = summarise(records, args.cases)
    rows = evaluate(summary)
    loads = [r["loadavg_before"][0] for r in records]
    med_load = statistics.median(loads) if loads else 0.0
    now = _dt.datetime.now()
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M"),
        "size": args.size,
        "repeats": args.repeats,
        "machine": machine,
        "dataset": dataset,
        "dropped_caches": dropped,
        "median_load": med_load,
        "busy": med_load > 0.5 * max(machine["nproc"], 1),
        "check": check,
        "errors": [f"{r['case']} (repeat {r['repeat'] + 1}): rc={r['returncode']}"
                   for r in records if "seconds" not in r],
        "total_s": time.perf_counter() - t_start,
    }
    text = markdown(rows, meta)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%d") + ("" if args.size == "hcp" else f"-{args.size}")
    stem += "" if args.scaling == "none" else f"-{args.scaling}"
    (args.results / f"{stem}.md").write_text(text)
    (args.results / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "config": cfg, "summary": summary, "rows": rows, "records": records},
        indent=1, default=str))
    print(text)
    log(f"written {args.results / (stem + '.md')} and .json ({meta['total_s']:.0f} s in all)")
    shutil.rmtree(scratch, ignore_errors=True)
    if args.clean:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if not meta["errors"] else 2


if __name__ == "__main__":
    sys.exit(main())
