"""Catalog scale benchmarks (issue 4, "Scale"): one command, writes a markdown table.

    python benchmarks/catalog/bench_catalog.py                       # quick check (~1-2 min)
    python benchmarks/catalog/bench_catalog.py --small-files 100000 --big-file-gb 10 \\
        --records 1000000                                            # the issue's targets

Parts (each can be skipped by passing 0):

``small``  ingest of ``--small-files`` files of ``--small-size`` bytes (100 sub-directories)
           into a fresh catalog, against the shell reference ``sha256sum`` of every file +
           ``cp -r`` of the tree (no fsync), and the same followed by ``sync``.  Reference and
           catalog runs alternate (``--repeats``) so both see the same machine load; the
           source tree is in the page cache (written, then read once) for every run, and
           ``sync`` (untimed) runs before each timed run so none pays for an earlier one's
           write-back (deleting the previous copy leaves 100,000 dirty unlinks).
``big``    ingest of one ``--big-file-gb`` GB file (a 64 MiB PCG64 random block repeated),
           against ``sha256sum f && cp f dst``, the like-for-like
           ``sha256sum f && cp f dst && sha256sum dst`` (the catalog re-reads and re-hashes
           the stored copy) and the durable ``... && sync dst && sha256sum dst`` (the catalog
           fsyncs the stored copy); the source is evicted from the page cache with
           ``posix_fadvise(DONTNEED)`` before every run, so every run reads it from disk.
           The re-reads of the copies (``sha256sum dst``, the catalog's verification) are
           served by the page cache when the copy fits in it.
``find``   ``--records`` objects with 8 attribute-value-unit triples each (task, tr, sub,
           ses, run, modality, suffix, n_volumes), bulk-loaded through the models' tables
           (not ingested), in 100 collections; median and p95 latency of ``Catalog.find``
           (limit 100, as ``find --limit 100``) over ``--find-repeats`` calls per query, and
           the query plans of the first three queries.  ``--postgres`` runs it on a
           throw-away PostgreSQL server started as the catalog tests do; ``--url`` on any
           database.
``verify`` ``Catalog.verify()`` (full fixity pass) on the small-file and big-file catalogs.

Timings are wall-clock seconds (``time.perf_counter``).  Results go to
``benchmarks/results/catalog-<date>-<HHMM>-<parts>.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
TASKS = ["rest", "oneback", "nback", "movie", "faces"]
MODALITIES = ["bold", "T1w", "T2w", "dwi", "sbref"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def sh(cmd: str) -> float:
    """Run a shell command; its wall time in s."""
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, executable="/bin/bash")
    return time.perf_counter() - t


def settle() -> None:
    """Write back what earlier steps left dirty (deleted trees, generated data) before a timed
    run, so that no run pays for the previous one's write-back (untimed)."""
    os.sync()
    time.sleep(1.0)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def evict(path: Path) -> None:
    """Drop ``path``'s clean pages from the page cache (this file only; no global drop)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "load_start": os.getloadavg(),
    }


def table(model: Any) -> Any:
    """The Core table of a mapped class."""
    return model.__table__


def new_catalog(work: Path, name: str, url: str | None = None) -> Any:
    from neuroscale.catalog.api import Catalog

    root = work / name
    root.mkdir()
    return Catalog.init(url or f"sqlite:///{root}/catalog.sqlite", str(root / "store"), admin="b")


def fs_of(path: Path) -> str:
    out = subprocess.run(
        ["df", "-T", str(path)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return " ".join(out[-1].split()[:2]) if len(out) > 1 else "?"


# ---------------------------------------------------------------------------------------------
# small files
# ---------------------------------------------------------------------------------------------
def bench_small(work: Path, n: int, size: int, repeats: int) -> dict[str, Any]:
    src = work / "small-src"
    rng = np.random.default_rng(0)
    per_dir = max(1, -(-n // 100))
    for i in range(n):
        d = src / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        (d / f"f{i:07d}.bin").write_bytes(rng.bytes(size))
    sh(f"find {src} -type f -print0 | xargs -0 cat > /dev/null")  # page cache: warm
    dst = work / "small-cp"
    ref = f"find {src} -type f -print0 | xargs -0 sha256sum > {work}/sums && cp -r {src} {dst}"
    runs: dict[str, list[float]] = {"ref": [], "ref_sync": [], "catalog": []}
    cat = None
    for r in range(repeats):
        settle()
        runs["ref"].append(sh(ref))
        shutil.rmtree(dst)
        if cat is not None:
            cat.close()
            shutil.rmtree(work / f"small-cat{r - 1}")
        cat = new_catalog(work, f"small-cat{r}")
        settle()
        took, rep = timed(partial(cat.ingest, [src], "/small", extract=True))
        assert rep.counts == {"added": n}, rep.counts
        runs["catalog"].append(took)
        settle()
        runs["ref_sync"].append(sh(f"{ref} && sync"))
        shutil.rmtree(dst)
    assert cat is not None
    again, rep = timed(lambda: cat.ingest([src], "/small", extract=True))
    assert rep.counts == {"unchanged": n}
    ver, fix = timed(cat.verify)
    assert fix.ok and fix.checked == n
    cat.close()
    shutil.rmtree(src)
    return {
        "files": n,
        "size": size,
        "runs": runs,
        "reingest_s": again,
        "verify_s": ver,
        "verify_mb_s": n * size / 1e6 / ver,
        "verify_files_s": n / ver,
    }


# ---------------------------------------------------------------------------------------------
# one big file
# ---------------------------------------------------------------------------------------------
def make_big(path: Path, gib: float) -> int:
    block = np.random.default_rng(1).bytes(64 << 20)
    total = int(gib * 2**30)
    with open(path, "wb") as fh:
        left = total
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)
        fh.flush()
        os.fsync(fh.fileno())
    return total


def bench_big(work: Path, gib: float, repeats: int) -> dict[str, Any]:
    f = work / "big.bin"
    total = make_big(f, gib)
    dst = work / "big-cp.bin"
    runs: dict[str, list[float]] = {"ref": [], "ref_verify": [], "ref_sync": [], "catalog": []}
    cat = None
    for r in range(repeats):
        evict(f)
        runs["ref"].append(sh(f"sha256sum {f} > /dev/null && cp {f} {dst}"))
        dst.unlink()
        evict(f)
        runs["ref_verify"].append(
            sh(f"sha256sum {f} > /dev/null && cp {f} {dst} && sha256sum {dst} > /dev/null")
        )
        dst.unlink()
        evict(f)
        runs["ref_sync"].append(
            sh(
                f"sha256sum {f} > /dev/null && cp {f} {dst} && sync {dst} && "
                f"sha256sum {dst} > /dev/null"
            )
        )
        dst.unlink()
        if cat is not None:
            cat.close()
            shutil.rmtree(work / f"big-cat{r - 1}")
        cat = new_catalog(work, f"big-cat{r}")
        evict(f)
        took, rep = timed(partial(cat.ingest, f, "/big", extract=False))
        assert rep.counts == {"added": 1}
        runs["catalog"].append(took)
    assert cat is not None
    from neuroscale.catalog.paths import object_key

    evict(cat.store.path(object_key(rep.results[0].object.sha256)))
    ver, fix = timed(cat.verify)
    assert fix.ok and fix.checked == 1
    cat.close()
    shutil.rmtree(work / f"big-cat{repeats - 1}")
    f.unlink()
    return {"bytes": total, "runs": runs, "verify_s": ver, "verify_mb_s": total / 1e6 / ver}


# ---------------------------------------------------------------------------------------------
# find
# ---------------------------------------------------------------------------------------------
def populate(cat: Any, records: int, n_coll: int = 100) -> float:
    import hashlib

    from sqlalchemy import insert

    from neuroscale.catalog.models import AVU, Blob, Collection, DataObject

    t = time.perf_counter()
    for c in range(n_coll):
        cat.create_collection(f"/lab/ds{c:03d}")
    with cat.engine.connect() as conn:
        from sqlalchemy import select

        coll_ids = [
            cid
            for (cid,) in conn.execute(
                select(Collection.id).where(Collection.path.like("/lab/ds%")).order_by("path")
            )
        ]
    rng = np.random.default_rng(2)
    trs = np.array([0.8, 1.0, 1.5, 2.0, 2.5, 3.0])
    batch = 20000
    # bulk load: drop the secondary indexes, insert, re-create them (sorted index builds)
    indexes = [ix for model in (Blob, DataObject, AVU) for ix in table(model).indexes]
    with cat.engine.begin() as conn:
        for ix in indexes:
            ix.drop(conn)
        for start in range(0, records, batch):
            ids = range(start + 1, min(records, start + batch) + 1)
            m = len(ids)
            shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in ids]
            conn.execute(
                insert(table(Blob)),
                [{"sha256": s, "size": 1, "state": "ok", "check_status": "ok"} for s in shas],
            )
            conn.execute(
                insert(table(DataObject)),
                [
                    {
                        "id": i,
                        "collection_id": coll_ids[i % n_coll],
                        "name": f"sub-{i % 5000:05d}/func/o{i:07d}.nii.gz",
                        "sha256": s,
                        "size": 1,
                    }
                    for i, s in zip(ids, shas, strict=True)
                ],
            )
            task = rng.integers(0, len(TASKS), m)
            tr = rng.integers(0, len(trs), m)
            run = rng.integers(1, 5, m)
            ses = rng.integers(1, 3, m)
            mod = rng.integers(0, len(MODALITIES), m)
            nvol = rng.integers(100, 1201, m)
            rows = []
            for k, i in enumerate(ids):
                for a, v, unit in (
                    ("sub", f"{i % 5000:05d}", None),
                    ("ses", str(ses[k]), None),
                    ("task", TASKS[task[k]], None),
                    ("run", str(run[k]), None),
                    ("tr", str(trs[tr[k]]), "s"),
                    ("modality", MODALITIES[mod[k]], None),
                    ("suffix", "bold", None),
                    ("n_volumes", str(nvol[k]), None),
                ):
                    num = float(v) if a in ("tr", "run", "ses", "n_volumes") else None
                    rows.append(
                        {
                            "object_id": i,
                            "collection_id": None,
                            "attribute": a,
                            "value": v,
                            "value_num": num,
                            "unit": unit,
                            "source": "bench",
                        }
                    )
            conn.execute(insert(table(AVU)), rows)
        for ix in indexes:
            ix.create(conn)
    with cat.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("ANALYZE"))
    return time.perf_counter() - t


FIND_QUERIES = [
    "task = 'oneback' and tr < 2.5",
    "sub = '00042'",
    "task = 'oneback' and tr < 2.5 and sub = '00042'",
    "modality = 'bold' and n_volumes > 1190",
    "sub like '0004%' and run = 2",
    "has task and not task = 'rest'",
]


def bench_find(work: Path, records: int, repeats: int, url: str | None) -> dict[str, Any]:
    from sqlalchemy import text

    cat = new_catalog(work, "find-cat", url)
    load_s = populate(cat, records)
    out: dict[str, Any] = {"records": records, "load_s": load_s, "queries": []}
    for q in FIND_QUERIES:
        cat.find(q, limit=100)  # warm
        times = []
        n = 0
        for _ in range(repeats):
            t, res = timed(partial(cat.find, q, limit=100))
            times.append(t * 1000)
            n = len(res)
        times.sort()
        out["queries"].append(
            {
                "where": q,
                "hits": n,
                "median_ms": statistics.median(times),
                "p95_ms": times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))],
            }
        )
    t_all, res = timed(lambda: cat.find(FIND_QUERIES[0]))
    out["unlimited"] = {"where": FIND_QUERIES[0], "hits": len(res), "ms": t_all * 1000}
    from neuroscale.catalog.query import parse

    out["plans"] = {}
    for q in FIND_QUERIES[:3]:
        with cat._sessions() as s:
            stmt = cat._find_query(s, parse(q), None, 100)
        sql = str(stmt.compile(cat.engine, compile_kwargs={"literal_binds": True}))
        explain = "EXPLAIN QUERY PLAN " if cat.engine.dialect.name == "sqlite" else "EXPLAIN "
        with cat.engine.connect() as conn:
            out["plans"][q] = [str(r[-1]) for r in conn.execute(text(explain + sql))]
    cat.close()
    return out


def start_postgres() -> tuple[Any, str]:
    """A throw-away PostgreSQL server (the catalog tests' helper) and a fresh database URL."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "catalog"))
    from conftest import PostgresServer, _pg_bindir

    bindir = _pg_bindir()
    if bindir is None:
        raise SystemExit("--postgres: PostgreSQL is not installed (initdb/pg_ctl)")
    server = PostgresServer(bindir)
    server.start()
    return server, server.new_database()


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs)


def report(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# Catalog scale benchmark, {res['date']}",
        "",
        f"Machine: {m['host']}, {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}; work directory {res['workdir']} ({res['fs']}); load average "
        f"{m['load_start'][0]:.2f} at start, {m['load_end'][0]:.2f} at end.",
        f"Command: `{res['command']}`",
        "",
        "Figures are medians over the repeats (all runs listed); reference and catalog runs "
        "alternate so that both see the same load.",
        "",
    ]
    if "small" in res:
        s = res["small"]
        r = s["runs"]
        mb = s["files"] * s["size"] / 1e6
        lines += [
            f"## Ingest of {s['files']} files of {s['size']} B ({mb:.0f} MB), source in page cache",
            "",
            "| what | median s | files/s | ratio to sha256sum+cp | runs (s) |",
            "|---|---:|---:|---:|---|",
        ]
        base = med(r["ref"])
        for key, label in (
            ("ref", "`sha256sum` all + `cp -r` (no fsync)"),
            ("ref_sync", "same + `sync`"),
            (
                "catalog",
                "catalog ingest (hash+copy, syncfs, re-hash, commit; metadata extraction on)",
            ),
        ):
            t = med(r[key])
            lines.append(
                f"| {label} | {t:.2f} | {s['files'] / t:.0f} | {t / base:.2f} | "
                + ", ".join(f"{x:.2f}" for x in r[key])
                + " |"
            )
        lines += [
            f"| catalog re-ingest (unchanged: hash only) | {s['reingest_s']:.2f} | "
            f"{s['files'] / s['reingest_s']:.0f} | {s['reingest_s'] / base:.2f} | |",
            "",
            f"Ratio catalog / (sha256sum+cp+sync): {med(r['catalog']) / med(r['ref_sync']):.2f}.",
            "",
        ]
    if "big" in res:
        b = res["big"]
        r = b["runs"]
        gb = b["bytes"] / 1e9
        lines += [
            f"## Ingest of one {b['bytes'] / 2**30:.1f} GiB file, source evicted from the page cache",
            "",
            "| what | median s | MB/s | ratio to like-for-like | runs (s) |",
            "|---|---:|---:|---:|---|",
        ]
        base = med(r["ref_verify"])
        for key, label in (
            ("ref", "`sha256sum f && cp f dst` (no fsync)"),
            ("ref_verify", "`sha256sum f && cp f dst && sha256sum dst` (like-for-like)"),
            ("ref_sync", "`sha256sum f && cp f dst && sync dst && sha256sum dst` (durable)"),
            ("catalog", "catalog ingest (hash while copying, fsync, re-hash of stored copy)"),
        ):
            if key not in r:
                continue
            t = med(r[key])
            lines.append(
                f"| {label} | {t:.2f} | {gb * 1000 / t:.0f} | {t / base:.2f} | "
                + ", ".join(f"{x:.2f}" for x in r[key])
                + " |"
            )
        lines += [
            "",
            f"Ratio catalog / plain `sha256sum f && cp f dst`: {med(r['catalog']) / med(r['ref']):.2f}.",
            "",
        ]
    if "find" in res:
        f = res["find"]
        lines += [
            f"## find over {f['records']} objects ({f['records'] * 8} triples, 100 collections; "
            f"loaded in {f['load_s']:.0f} s), {res['db']}",
            "",
            "| --where (limit 100) | hits | median ms | p95 ms |",
            "|---|---:|---:|---:|",
        ]
        for q in f["queries"]:
            lines.append(
                f"| `{q['where']}` | {q['hits']} | {q['median_ms']:.1f} | {q['p95_ms']:.1f} |"
            )
        u = f["unlimited"]
        lines += [
            "",
            f"Without a limit, `{u['where']}` returns {u['hits']} objects in {u['ms']:.0f} ms "
            "(building the result objects dominates).",
            "",
        ]
        for q, plan in f.get("plans", {}).items():
            lines += [f"{res['db']} plan of `{q}` (limit 100):", "", "```", *plan, "```", ""]
    ver = []
    if "small" in res:
        s = res["small"]
        ver.append(
            f"| {s['files']} x {s['size']} B (page cache) | {s['verify_s']:.2f} | "
            f"{s['verify_mb_s']:.0f} | {s['verify_files_s']:.0f} |"
        )
    if "big" in res:
        b = res["big"]
        ver.append(
            f"| 1 x {b['bytes'] / 2**30:.1f} GiB (evicted) | {b['verify_s']:.2f} | "
            f"{b['verify_mb_s']:.0f} | {1 / b['verify_s']:.2f} |"
        )
    if ver:
        lines += [
            "## verify (full fixity pass)",
            "",
            "| objects | s | MB/s | files/s |",
            "|---|---:|---:|---:|",
            *ver,
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small-files", type=int, default=2000)
    p.add_argument("--small-size", type=int, default=4096)
    p.add_argument("--big-file-gb", type=float, default=0.5, help="GiB (0: skip)")
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3, help="runs of each ingest variant")
    p.add_argument("--find-repeats", type=int, default=20)
    p.add_argument("--url", help="database of the find part (default: SQLite in --workdir)")
    p.add_argument(
        "--postgres",
        action="store_true",
        help="run the find part on a throw-away PostgreSQL server (as the catalog tests do)",
    )
    p.add_argument("--workdir", default=tempfile.gettempdir())
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    os.environ.setdefault("NEUROSCALE_CATALOG_USER", "b")
    work = Path(tempfile.mkdtemp(prefix="ns-bench-catalog-", dir=args.workdir))
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "workdir": str(work),
        "fs": fs_of(work),
        "command": "python benchmarks/catalog/bench_catalog.py "
        + ("--postgres " if args.postgres else "")
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v is not None and v is not False and k not in ("out", "workdir", "postgres")
        ),
        "db": "PostgreSQL" if args.url else "SQLite",
        "postgres": bool(args.postgres),
    }
    try:
        if args.small_files:
            res["small"] = bench_small(work, args.small_files, args.small_size, args.repeats)
            print(json.dumps(res["small"], indent=1))
        if args.big_file_gb:
            need = 2 * args.big_file_gb * 2**30 + (1 << 30)
            free = shutil.disk_usage(work).free
            if free < need:
                raise SystemExit(
                    f"{work}: {free / 2**30:.0f} GiB free, the big file needs {need / 2**30:.0f}"
                )
            res["big"] = bench_big(work, args.big_file_gb, args.repeats)
            print(json.dumps(res["big"], indent=1))
        if args.records:
            url = args.url
            if args.postgres:
                server, url = start_postgres()
                res["db"] = "PostgreSQL (throw-away server)"
            try:
                res["find"] = bench_find(work, args.records, args.find_repeats, url)
            finally:
                if args.postgres:
                    server.stop()
            print(json.dumps(res["find"], indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["machine"]["load_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [k for k in ("small", "big") if k in res]
    if "find" in res:
        parts.append("find-postgresql" if "PostgreSQL" in res["db"] else "find")
    hhmm = res["date"][11:16].replace(":", "")
    stem = out / f"catalog-{res['date'][:10]}-{hhmm}-{'-'.join(parts or ['none'])}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    text = report(res)
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"written: {stem}.md")


if __name__ == "__main__":
    main()
