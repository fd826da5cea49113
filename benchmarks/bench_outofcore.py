"""Out-of-core proof: a run larger than the workers' total memory, neuroscale vs nilearn.

Run from the repository root (one command)::

    python benchmarks/bench_outofcore.py            # ~6 GB int16 run, 2 workers x 1 GB (long)
    python benchmarks/bench_outofcore.py --gb 1     # quick validation, ~1 GB

Steps:

1. Write a synthetic BIDS dataset: one int16 ``.nii.gz`` of shape 96 x 114 x 96 x T with
   ``T = round(GB * 1e9 / (96 * 114 * 96 * 2))`` (``--gb 6``: T = 2855, 6.00 GB uncompressed),
   from :func:`neuroscale.testing.write_synthetic_bold`, header rewritten with
   ``scl_slope = 1`` (so nibabel/nilearn read int16, their cheapest case), a JSON sidecar
   (RepetitionTime 2 s), a brain mask (24.8 % of the grid) and a 400-parcel atlas.
2. Run the real CLI in a subprocess::

       neuroscale BIDS OUT participant --n-workers 2 --threads-per-worker 1 \\
           --memory-limit 1GB --mask MASK --atlas ATLAS --no-motion-correction \\
           --no-registration --no-centrality --nuisance-strategy none --no-report --no-progress

   (ingest on a worker, QC, ALFF, denoising, ReHo, parcel time series + connectivity).
   Every process of its tree is polled every 0.1 s for ``VmHWM`` in ``/proc/PID/status`` (the
   kernel's own peak-RSS high-water mark, so polling only has to see each process once before
   it exits); the CLI process's peak also comes from ``os.wait4``.  Each Dask worker's peak is
   compared with its 1 GB limit (Dask's nanny kills a worker above 95 % of it); the client
   process (graph building, scheduler) is not capped by Dask and is reported against 1 GB too.
3. Run ``nilearn.maskers.NiftiMasker(mask_img=MASK).fit_transform(BOLD)`` in a subprocess under
   the same total memory (2 GB), capped two ways, one run each:

   * ``rss``: a watchdog kills it when the RSS of its process exceeds 2 GB (the mechanism
     Dask's nanny uses for the workers above);
   * ``rlimit_as``: ``RLIMIT_AS`` = 2 GB set with :func:`resource.setrlimit` in the child.  This
     caps *virtual* memory (address space), not RSS: stricter than an RSS cap (mapped but
     untouched memory counts), so the child's virtual size right after its imports is recorded
     to show the cap leaves room to work.  No cgroup is used (this benchmark does not create
     cgroups).

   and record how each ends (exit status, MemoryError, killed).

Results: a Markdown table under ``benchmarks/results/`` (``<date>-outofcore-<GB>gb.md`` and
``.json``).  The generated data are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _data import brain_mask, drop_scaling, regular_atlas  # noqa: E402

GB = 1e9
GRID = (96, 114, 96)
T_R = 2.0
WORKER_LIMIT = "1GB"
N_WORKERS = 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


class TreePeaks:
    """Polls ``VmHWM`` (and the current RSS) of a process and all its descendants."""

    def __init__(self, root: int, interval: float = 0.1, kill_above: int | None = None) -> None:
        self.root = root
        self.interval = interval
        self.kill_above = kill_above
        self.hwm: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.max_tree_rss = 0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        tree = 0
        for pid in [self.root, *_descendants(self.root)]:
            hwm = _status_kib(pid, "VmHWM")
            rss = _status_kib(pid, "VmRSS")
            if hwm is None:
                continue
            self.hwm[pid] = max(self.hwm.get(pid, 0), hwm * 1024)
            if pid not in self.names:
                self.names[pid] = _cmdline(pid)
            tree += (rss or 0) * 1024
            if (self.kill_above is not None and pid == self.root and rss is not None
                    and rss * 1024 > self.kill_above and not self.killed):
                self.killed = True
                os.kill(pid, signal.SIGKILL)
        self.max_tree_rss = max(self.max_tree_rss, tree)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreePeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, int, bool]:
    """(exit code, ru_maxrss bytes, timed out) of a child, from ``os.wait4``."""
    deadline = time.perf_counter() + timeout
    timed_out = False
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            timed_out = True
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, int(ru.ru_maxrss) * 1024, timed_out


def make_dataset(root: Path, gb: float, seed: int = 0) -> dict[str, Any]:
    """The BIDS dataset, mask and atlas; returns paths and facts."""
    import nibabel as nib
    import numpy as np

    from neuroscale.testing import write_synthetic_bold

    nt = max(20, round(gb * GB / (GRID[0] * GRID[1] * GRID[2] * 2)))
    shape = (*GRID, nt)
    func = root / "bids" / "sub-01" / "func"
    func.mkdir(parents=True, exist_ok=True)
    (root / "bids" / "dataset_description.json").write_text(
        json.dumps({"Name": "neuroscale out-of-core benchmark", "BIDSVersion": "1.8.0"}))
    bold = func / "sub-01_task-rest_bold.nii.gz"
    (func / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": T_R}))
    scaled = root / "bold-scaled.nii.gz"
    t0 = time.perf_counter()
    log(f"writing {bold} {shape} int16 ({np.prod(shape) * 2 / GB:.2f} GB uncompressed) ...")
    truth = write_synthetic_bold(scaled, shape, t_r=T_R, n_networks=4, dtype="int16", seed=seed)
    drop_scaling(scaled, bold)
    scaled.unlink()
    log(f"  written in {time.perf_counter() - t0:.0f} s ({bold.stat().st_size / GB:.2f} GB)")
    mask = brain_mask(GRID, 0.248)
    atlas = regular_atlas(mask, (8, 10, 5))
    mask_nii, atlas_nii = root / "mask.nii.gz", root / "atlas.nii.gz"
    nib.Nifti1Image(mask.astype(np.uint8), truth.affine).to_filename(mask_nii)
    nib.Nifti1Image(atlas, truth.affine).to_filename(atlas_nii)
    return {"bids": str(root / "bids"), "bold": str(bold), "shape": list(shape),
            "raw_bytes": int(np.prod(shape)) * 2, "gz_bytes": bold.stat().st_size,
            "mask": str(mask_nii), "atlas": str(atlas_nii), "n_voxels": int(mask.sum()),
            "generate_s": time.perf_counter() - t0}


def run_neuroscale(ds: dict[str, Any], root: Path, timeout: float) -> dict[str, Any]:
    out, work = root / "out", root / "work"
    cmd = [sys.executable, "-m", "neuroscale.cli.main", ds["bids"], str(out), "participant",
           "--n-workers", str(N_WORKERS), "--threads-per-worker", "1",
           "--memory-limit", WORKER_LIMIT, "--mask", ds["mask"], "--atlas", ds["atlas"],
           "--no-motion-correction", "--no-registration", "--no-centrality",
           "--nuisance-strategy", "none", "--no-report", "--no-progress",
           "--work-dir", str(work)]
    log("running: " + " ".join(cmd[2:]))
    t0 = time.perf_counter()
    with open(root / "neuroscale.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        with TreePeaks(proc.pid) as peaks:
            code, maxrss, timed_out = _wait(proc, timeout)
    wall = time.perf_counter() - t0
    from dask.utils import parse_bytes

    limit = parse_bytes(WORKER_LIMIT)
    procs = []
    for pid, hwm in sorted(peaks.hwm.items()):
        cmdline = peaks.names.get(pid, "")
        if pid == proc.pid:
            kind, lim = "client (CLI, scheduler, nannies)", limit
            hwm = max(hwm, maxrss)
        elif "spawn_main" in cmdline or "multiprocessing" in cmdline:
            kind, lim = ("resource tracker", None) if "resource_tracker" in cmdline else (
                "Dask worker", limit)
        else:
            kind, lim = "other", None
        procs.append({"pid": pid, "kind": kind, "peak_bytes": hwm, "limit_bytes": lim,
                      "under_limit": None if lim is None else hwm < lim, "cmdline": cmdline})
    outputs = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) \
        if out.exists() else []
    log_tail = (root / "neuroscale.log").read_text()[-2000:]
    ok = code == 0 and not timed_out and any("timeseries" in o for o in outputs)
    return {"returncode": code, "timed_out": timed_out, "wall_s": wall, "success": ok,
            "processes": procs, "n_outputs": len(outputs), "outputs": outputs[:40],
            "max_tree_rss_bytes": peaks.max_tree_rss, "log_tail": log_tail}


_NILEARN_CHILD = """
import json, resource, sys
cap, how, bold, mask = sys.argv[1:5]
if how == "rlimit_as":
    resource.setrlimit(resource.RLIMIT_AS, (int(cap), int(cap)))
from nilearn.maskers import NiftiMasker
import nibabel, numpy
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
print("IMPORTED " + json.dumps({"VmSize": status("VmSize"), "VmRSS": status("VmRSS")}),
      flush=True)
x = NiftiMasker(mask_img=mask).fit_transform(bold)
print("DONE " + json.dumps({"shape": list(x.shape), "VmHWM": status("VmHWM")}), flush=True)
"""


def run_nilearn(ds: dict[str, Any], root: Path, how: str, cap: int,
                timeout: float) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _NILEARN_CHILD, str(cap), how, ds["bold"], ds["mask"]]
    log(f"running nilearn NiftiMasker capped at {cap / GB:.1f} GB ({how}) ...")
    t0 = time.perf_counter()
    logf = root / f"nilearn-{how}.log"
    with open(logf, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        with TreePeaks(proc.pid, interval=0.05,
                       kill_above=cap if how == "rss" else None) as peaks:
            code, maxrss, timed_out = _wait(proc, timeout)
    wall = time.perf_counter() - t0
    text = logf.read_text()
    imported = done = None
    for line in text.splitlines():
        if line.startswith("IMPORTED "):
            imported = json.loads(line.split(" ", 1)[1])
        if line.startswith("DONE "):
            done = json.loads(line.split(" ", 1)[1])
    if done is not None and code == 0:
        outcome = "completed"
    elif peaks.killed:
        outcome = f"killed by the RSS watchdog above {cap / GB:.1f} GB (SIGKILL)"
    elif "MemoryError" in text:
        outcome = "MemoryError"
    elif code < 0:
        outcome = f"killed by signal {-code}"
    else:
        outcome = f"failed, exit status {code}"
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [""]
    return {"how": how, "cap_bytes": cap, "returncode": code, "timed_out": timed_out,
            "wall_s": wall, "outcome": outcome, "peak_bytes": max(maxrss, peaks.hwm.get(
                proc.pid, 0)), "after_imports": imported, "result": done,
            "last_line": last[0][-300:]}


def markdown(res: dict[str, Any]) -> str:
    ds, ns = res["dataset"], res["neuroscale"]
    shape = " x ".join(map(str, ds["shape"]))
    lines = [
        f"# Out-of-core run, {res['date']} (`--gb {res['gb']}`)",
        "",
        f"- machine: {res['machine']['nproc']} CPUs, {res['machine']['ram_bytes'] / 2**30:.1f} "
        f"GiB RAM; load average at start {res['machine']['loadavg_start']:.2f}, at end "
        f"{res['machine']['loadavg_end']:.2f}" + (" (**busy machine: timings are noisy**)"
                                                  if res['machine']['busy'] else ""),
        f"- data: {shape} int16 .nii.gz, scl_slope 1 ({ds['raw_bytes'] / GB:.2f} GB "
        f"uncompressed, {ds['gz_bytes'] / GB:.2f} GB gzip), {ds['n_voxels']:,} in-mask voxels, "
        "400 parcels; generated in "
        f"{ds['generate_s']:.0f} s (not timed below)",
        f"- neuroscale: the CLI, {N_WORKERS} workers x 1 thread, `--memory-limit {WORKER_LIMIT}` "
        f"each ({N_WORKERS} GB in all; the run is {ds['raw_bytes'] / GB / N_WORKERS:.1f} x that "
        "uncompressed, and its float32 voxel data, what nilearn computes on, "
        f"{2 * ds['raw_bytes'] / GB / N_WORKERS:.1f} x), ingest included",
        "",
        "## neuroscale participant pipeline",
        "",
        f"- success: **{'yes' if ns['success'] else 'NO'}** (exit status {ns['returncode']}, "
        f"{ns['n_outputs']} output files), wall time {ns['wall_s']:.1f} s",
        f"- largest sum of the RSS of the whole process tree seen at one poll: "
        f"{ns['max_tree_rss_bytes'] / GB:.2f} GB",
        "",
        "| process | peak RSS (VmHWM) GB | limit GB | under the limit? |",
        "|---|---|---|---|",
    ]
    for p in ns["processes"]:
        lim = "n/a" if p["limit_bytes"] is None else f"{p['limit_bytes'] / GB:.2f}"
        under = "" if p["under_limit"] is None else ("yes" if p["under_limit"] else "**NO**")
        lines.append(f"| {p['kind']} (pid {p['pid']}) | {p['peak_bytes'] / GB:.3f} | {lim} | "
                     f"{under} |")
    lines += ["", "## nilearn NiftiMasker(mask_img=MASK).fit_transform(BOLD), same 2 GB", "",
              "| cap | outcome | wall s | peak RSS GB | after imports (virtual / RSS GB) | "
              "last line of output |", "|---|---|---|---|---|---|"]
    for r in res["nilearn"]:
        imp = r["after_imports"]
        imp_s = "n/a" if not imp else f"{imp['VmSize'] / GB:.2f} / {imp['VmRSS'] / GB:.2f}"
        cap = ("RSS watchdog, 2 GB" if r["how"] == "rss"
               else "RLIMIT_AS (virtual memory), 2 GB")
        lines.append(f"| {cap} | {r['outcome']} | {r['wall_s']:.1f} | "
                     f"{r['peak_bytes'] / GB:.2f} | {imp_s} | `{r['last_line'][:120]}` |")
    lines += [
        "",
        "Peak RSS: the kernel's `VmHWM` of each process, polled every 0.1 s until it exits (and "
        "`os.wait4` for the CLI process). The nilearn child runs with 1 BLAS thread.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=6.0,
                   help="uncompressed size of the run, GB (default 6)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the data go (default: a new directory under $TMPDIR)")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    p.add_argument("--skip-nilearn", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="neuroscale-ooc-", dir=args.workdir))
    load0 = os.getloadavg()[0]
    try:
        ds = make_dataset(root, args.gb)
        ns = run_neuroscale(ds, root, args.timeout)
        log(f"neuroscale: success={ns['success']} in {ns['wall_s']:.1f} s; peaks: " + ", ".join(
            f"{q['kind'].split(' ')[0]} {q['peak_bytes'] / GB:.2f} GB" for q in ns["processes"]))
        if not ns["success"]:
            log(ns["log_tail"])
        cap = N_WORKERS * int(float(WORKER_LIMIT.removesuffix("GB")) * GB)
        nil = [] if args.skip_nilearn else [
            run_nilearn(ds, root, how, cap, args.timeout) for how in ("rss", "rlimit_as")]
        for r in nil:
            log(f"nilearn ({r['how']}): {r['outcome']} after {r['wall_s']:.1f} s")
        nproc = os.cpu_count() or 1
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        load1 = os.getloadavg()[0]
        now = _dt.datetime.now()
        res = {"date": now.strftime("%Y-%m-%d %H:%M"), "gb": args.gb, "dataset": ds,
               "neuroscale": ns, "nilearn": nil,
               "machine": {"nproc": nproc, "ram_bytes": mem, "loadavg_start": load0,
                           "loadavg_end": load1, "busy": max(load0, load1) > 0.5 * nproc}}
        text = markdown(res)
        args.results.mkdir(parents=True, exist_ok=True)
        stem = f"{now:%Y-%m-%d}-outofcore-{args.gb:g}gb"
        (args.results / f"{stem}.md").write_text(text)
        (args.results / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
        print(text)
        log(f"written {args.results / stem}.md and .json")
        under = all(q["under_limit"] is not False for q in ns["processes"])
        return 0 if ns["success"] and under else 2
    finally:
        if args.keep:
            log(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
