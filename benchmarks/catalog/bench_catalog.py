"""Catalog benchmarks (not unit tests).

    python benchmarks/catalog/bench_catalog.py ingest --files 2000 --size 4096
    python benchmarks/catalog/bench_catalog.py find --records 1000000

``ingest``: catalog ingest of many small files (hash while copying, fsync, re-hash of the
stored copy, one transaction per file) against the shell baseline ``sha256sum`` + ``cp``
of the same files.  ``find``: latency of metadata queries over ``--records`` objects with
six attribute-value-unit triples each (bulk-loaded directly into the tables, so the set-up
does not measure ingest), on SQLite; pass ``--url`` for PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def bench_ingest(n: int, size: int) -> None:
    from neuroscale.catalog.api import Catalog

    work = Path(tempfile.mkdtemp(prefix="ns-bench-"))
    try:
        src = work / "src"
        src.mkdir()
        rng = random.Random(0)
        for i in range(n):
            (src / f"f{i:06d}.bin").write_bytes(rng.randbytes(size))
        t = time.perf_counter()
        dest = work / "cp"
        dest.mkdir()
        subprocess.run(
            f"cd {src} && sha256sum * > {work}/sums && cp * {dest}/ && sync", shell=True, check=True
        )
        base = time.perf_counter() - t
        cat = Catalog.init(f"sqlite:///{work}/c.sqlite", str(work / "store"), admin="bench")
        t = time.perf_counter()
        rep = cat.ingest([src], "/bench", extract=False)
        took = time.perf_counter() - t
        assert rep.counts == {"added": n}
        t = time.perf_counter()
        rep = cat.ingest([src], "/bench", extract=False)
        again = time.perf_counter() - t
        print(f"{n} files x {size} B")
        print(f"  sha256sum + cp + sync : {base:8.2f} s  ({n / base:8.0f} files/s)")
        print(f"  catalog ingest        : {took:8.2f} s  ({n / took:8.0f} files/s)")
        print(f"  re-ingest (unchanged) : {again:8.2f} s  ({n / again:8.0f} files/s)")
        cat.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_find(records: int, url: str | None) -> None:
    import hashlib

    from sqlalchemy import insert

    from neuroscale.catalog.api import Catalog
    from neuroscale.catalog.models import AVU, Blob, DataObject

    work = Path(tempfile.mkdtemp(prefix="ns-bench-"))
    try:
        cat = Catalog.init(url or f"sqlite:///{work}/c.sqlite", str(work / "store"), admin="b")
        cat.create_collection("/big")
        coll_id = 1
        rng = random.Random(0)
        tasks = ["rest", "oneback", "nback", "movie", "faces"]
        t = time.perf_counter()
        batch = 20000
        with cat.engine.begin() as conn:
            for start in range(0, records, batch):
                ids = range(start + 1, min(records, start + batch) + 1)
                shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in ids]
                conn.execute(insert(Blob), [
                    {"sha256": s, "size": 1, "state": "ok"} for s in shas
                ])  # fmt: skip
                conn.execute(insert(DataObject), [
                    {"id": i, "collection_id": coll_id, "name": f"o{i}", "sha256": s, "size": 1}
                    for i, s in zip(ids, shas, strict=True)
                ])  # fmt: skip
                rows = []
                for i in ids:
                    tr = rng.choice([0.8, 1.0, 1.5, 2.0, 2.5, 3.0])
                    for a, v in (
                        ("sub", f"{i % 5000:05d}"), ("task", rng.choice(tasks)),
                        ("run", str(rng.randint(1, 4))), ("tr", str(tr)),
                        ("suffix", "bold"), ("n_volumes", str(rng.randint(100, 1200))),
                    ):  # fmt: skip
                        num = float(v) if a in ("tr", "run", "n_volumes") else None
                        rows.append({"object_id": i, "attribute": a, "value": v,
                                     "value_num": num, "source": "bench"})  # fmt: skip
                conn.execute(insert(AVU), rows)
        print(
            f"loaded {records} records ({records * 6} triples) in {time.perf_counter() - t:.1f} s"
        )
        queries = [
            "sub = '00042'",
            "task = 'oneback' and tr < 2.5 and sub = '00042'",
            "task = 'oneback' and tr < 1.0 and n_volumes > 1190",
            "sub like '0004%' and run = 2",
        ]
        for q in queries:
            cat.find(q, limit=100)  # warm
            t = time.perf_counter()
            reps = 5
            for _ in range(reps):
                n = len(cat.find(q, limit=100))
            print(f"  {(time.perf_counter() - t) / reps * 1000:9.1f} ms  {n:4d} hits  {q}")
        cat.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("ingest")
    a.add_argument("--files", type=int, default=2000)
    a.add_argument("--size", type=int, default=4096)
    b = sub.add_parser("find")
    b.add_argument("--records", type=int, default=1_000_000)
    b.add_argument("--url")
    args = p.parse_args()
    os.environ.setdefault("NEUROSCALE_CATALOG_USER", "bench")
    if args.what == "ingest":
        bench_ingest(args.files, args.size)
    else:
        bench_find(args.records, args.url)


if __name__ == "__main__":
    main()
