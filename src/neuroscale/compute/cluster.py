"""Dask clusters: local by default, or an existing scheduler (``tcp://HOST:PORT``).

neuroscale never schedules work itself: it builds Dask graphs and hands them to a
:class:`distributed.Client`.  The same pipeline therefore runs unchanged on a laptop
(:class:`distributed.LocalCluster`, sized from the machine) or on any cluster whose scheduler
address is given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from neuroscale.errors import ComputeError, ConfigurationError

log = logging.getLogger(__name__)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _total_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def parse_memory(value: str | int | None) -> int | None:
    """Parse ``"2GB"``, ``"512MiB"`` or a number of bytes; None stays None.

    Raises
    ------
    ConfigurationError
        The text is not a memory size.
    """
    if value is None or value == "auto":
        return None
    if isinstance(value, int):
        return value
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(value))
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid memory size {value!r} (e.g. 2GB, 512MiB)") from exc


@contextlib.contextmanager
def cluster_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = None,
    processes: bool = True,
    dashboard: bool = True,
    quiet: bool = False,
) -> Iterator[Any]:
    """A :class:`distributed.Client` on a new LocalCluster or an existing scheduler.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://HOST:PORT``); when None a LocalCluster is
        started and closed on exit.
    n_workers : int, optional
        Local workers (default: one per available core, fewer if ``memory_limit`` times the
        number of workers would exceed 90 % of the machine's memory).
    threads_per_worker : int
        Threads per local worker (default 1: numeric kernels use BLAS threads sparingly).
    memory_limit : str or int, optional
        Memory bound of each local worker (``"2GB"``); default: 90 % of RAM shared equally.
    processes : bool
        Workers in separate processes (default) or threads of this process.
    dashboard : bool
        Serve the dashboard on a free port and print its link.
    quiet : bool
        Do not print the dashboard link.

    Yields
    ------
    distributed.Client

    Raises
    ------
    ComputeError
        The scheduler cannot be reached or the cluster cannot start.
    ConfigurationError
        Invalid sizes.
    """
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ComputeError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from exc
        try:
            if not quiet:
                _announce(client)
            yield client
        finally:
            client.close()
        return
    if n_workers is not None and n_workers < 1:
        raise ConfigurationError(f"--n-workers must be >= 1, got {n_workers}")
    mem = parse_memory(memory_limit)
    cores = _available_cores()
    total = _total_memory()
    if n_workers is None:
        n_workers = max(1, cores // max(threads_per_worker, 1))
        if mem:
            n_workers = max(1, min(n_workers, int(0.9 * total) // mem))
    per_worker = mem or int(0.9 * total / n_workers)
    try:
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            memory_limit=per_worker,
            processes=processes,
            dashboard_address=":0" if dashboard else None,
            silence_logs=logging.ERROR,
        )
    except Exception as exc:  # pragma: no cover - environment dependent
        raise ComputeError(f"cannot start a local Dask cluster ({exc})") from exc
    client = Client(cluster)
    try:
        if not quiet:
            _announce(client)
        yield client
    finally:
        client.close()
        cluster.close()


def _announce(client: Any) -> None:
    info = client.scheduler_info()
    workers = info.get("workers", {})
    mem = sum(w.get("memory_limit", 0) or 0 for w in workers.values())
    link = client.dashboard_link if client.dashboard_link else "(no dashboard)"
    print(
        f"Dask: {len(workers)} workers, {sum(w.get('nthreads', 1) for w in workers.values())} "
        f"threads, {mem / 2**30:.1f} GiB; dashboard: {link}",
        file=sys.stderr,
    )


def compute_with_progress(
    client: Any, collections: Sequence[Any], *, label: str = "", progress: bool = True
) -> list[Any]:
    """Compute several Dask collections in one graph, with a progress bar.

    Parameters
    ----------
    client : distributed.Client or None
        None computes with the current (local threaded) scheduler.
    collections : sequence of dask collections
        Computed together so shared inputs are read once.
    label : str
        Printed before the progress bar.
    progress : bool
        Show the text progress bar (on stderr).

    Returns
    -------
    list
        The results, in order.
    """
    import dask

    if not collections:
        return []
    if client is None:
        return list(dask.compute(*collections))
    import time

    start = time.perf_counter()
    futures = client.compute(list(collections))
    if label:
        print(label, file=sys.stderr)
    if progress and sys.stdout.isatty():
        from distributed import progress as dprogress

        dprogress(futures)
        print(file=sys.stderr)
    results = list(client.gather(futures))
    if label:
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return results
