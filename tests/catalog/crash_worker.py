"""Child processes of the crash tests (run under a multiprocessing forkserver, then SIGKILLed).

Kept out of the test module so the forkserver can import it by name.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

from sqlalchemy.orm import configure_mappers

from neuroscale.catalog import models, schema

configure_mappers()  # done once in the forkserver, not in every child
schema.head_revision()
assert models


def ingest_forever(url: str, src: str, seed: int, ready: Any) -> None:
    """Ingest fresh small files (plus duplicates and forced removals) until killed."""
    from neuroscale.catalog.api import Catalog

    rng = random.Random(seed)
    cat = Catalog(url, user="admin")
    base = Path(src) / f"w{seed}"
    base.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        if i == 1:
            ready.set()  # after one complete ingest: warm caches, so kills land in real work
        i += 1
        f = base / f"f{i}.bin"
        f.write_bytes(rng.randbytes(rng.randint(1, 4096)))
        cat.ingest(f, "/crash", name=f"w{seed}/f{i}.bin", extract=False)
        if i % 3 == 0:  # same content under another name: deduplicated
            cat.ingest(f, "/crash", name=f"w{seed}/dup{i}.bin", extract=False)
        if i % 5 == 0:
            cat.remove(f"/crash/w{seed}/f{i}.bin", force=True)


def crash_at(url: str, src: str, point: str, ready: Any) -> None:
    """Ingest one file and SIGKILL this process at the named protocol point."""
    from neuroscale.catalog import api, ingest

    def fault(name: str) -> None:
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    ingest._fault = fault  # type: ignore[assignment]
    cat = api.Catalog(url, user="admin")
    ready.set()
    cat.ingest(Path(src), "/crash", extract=False)
    os._exit(3)  # the fault point was never reached
