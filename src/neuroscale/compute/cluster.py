"""Dask clusters: local by default, an existing scheduler, or batch-system jobs.

neuroscale never schedules work itself: it builds Dask graphs and hands them to a
:class:`distributed.Client`.  The same pipeline therefore runs unchanged on a laptop
(:class:`distributed.LocalCluster`, sized from the machine), on any cluster whose scheduler
address is given (``tcp://HOST:PORT``), or on workers started as SLURM / PBS / SGE jobs through
dask-jobqueue (the ``[cluster]`` extra), configured by a named profile
(:mod:`neuroscale.compute.config`) and command-line flags.

Failures of the cluster itself (a worker killed, e.g. for exceeding its memory; a lost
connection) become :class:`~neuroscale.errors.ComputeError` with a one-line message
(:func:`compute_error`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from neuroscale.compute.config import ClusterProfile, parse_adaptive, parse_memory, resolve_profile
from neuroscale.errors import ComputeError, ConfigurationError

log = logging.getLogger(__name__)

#: dask-jobqueue cluster class per batch kind
_JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster"}


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


_BATCH_FLAGS = ("queue", "account", "cores", "memory", "walltime", "jobs", "adaptive")


@contextlib.contextmanager
def cluster_client(
    scheduler: str | None = None,
    *,
    cluster: str | ClusterProfile | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    processes: bool = True,
    dashboard: bool = True,
    quiet: bool = False,
    queue: str | None = None,
    account: str | None = None,
    cores: int | None = None,
    memory: str | None = None,
    walltime: str | None = None,
    jobs: int | None = None,
    adaptive: str | tuple[int, int] | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> Iterator[Any]:
    """A :class:`distributed.Client` on a new cluster or an existing scheduler.

    Whatever the cluster, its workers get the :class:`~neuroscale.compute.determinism.
    DeterministicITK` plugin (one ITK thread and fixed ANTs seeds in every worker, so results do
    not depend on where they ran).

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://HOST:PORT``); when None (and no batch
        ``cluster``) a LocalCluster is started and closed on exit.
    cluster : str or ClusterProfile, optional
        ``"local"``, ``"slurm"``, ``"pbs"``, ``"sge"`` or the name of a profile of the Dask
        config (see :mod:`neuroscale.compute.config`). Batch kinds start their workers as jobs
        through dask-jobqueue (the ``[cluster]`` extra); the jobs are cancelled on exit.
    n_workers : int, optional
        Local workers (default: one per available core, fewer if ``memory_limit`` times the
        number of workers would exceed 90 % of the machine's memory).
    threads_per_worker : int, optional
        Threads per local worker (default 1: numeric kernels use BLAS threads sparingly).
    memory_limit : str or int, optional
        Memory bound of each local worker (``"2GB"``); default: 90 % of RAM shared equally.
    processes : bool
        Local workers in separate processes (default) or threads of this process.
    dashboard : bool
        Serve the dashboard on a free port and print its link.
    quiet : bool
        Do not print the dashboard link.
    queue, account, cores, memory, walltime, jobs, adaptive
        Batch clusters only: override the profile's values (see :class:`ClusterProfile`);
        ``adaptive`` is ``"MIN:MAX"`` jobs.
    log_file : path-like, optional
        The run's log file (:func:`neuroscale.compute.logs.start_log_file`): the workers of a
        LocalCluster started here write their Dask records (failed tasks' tracebacks) and
        warnings there instead of the terminal.  Workers of an existing scheduler or of batch
        jobs keep their own logging.

    Yields
    ------
    distributed.Client

    Raises
    ------
    ComputeError
        The scheduler cannot be reached, the cluster cannot start, or the batch system's
        submit command is not found.
    ConfigurationError
        Invalid sizes, an unknown or invalid profile, flags that do not apply to the cluster
        kind, or dask-jobqueue missing for a batch cluster.
    """
    batch_flags = {"queue": queue, "account": account, "cores": cores, "memory": memory,
                   "walltime": walltime, "jobs": jobs, "adaptive": adaptive}
    given_batch = [k for k, v in batch_flags.items() if v is not None]
    profile: ClusterProfile | None = None
    if cluster is not None:
        if scheduler:
            raise ConfigurationError("--scheduler and --cluster are exclusive: give one")
        profile = resolve_profile(cluster) if isinstance(cluster, str) else cluster
    if profile is None or not profile.is_batch:
        if given_batch:
            flags = ", ".join(f"--{k}" for k in given_batch)
            raise ConfigurationError(
                f"{flags}: only for batch clusters (--cluster slurm|pbs|sge or a batch profile)")
        if profile is not None:
            n_workers = n_workers if n_workers is not None else profile.n_workers
            threads_per_worker = (threads_per_worker if threads_per_worker is not None
                                  else profile.threads_per_worker)
            memory_limit = memory_limit if memory_limit is not None else profile.memory_limit
        with _local_client(scheduler, n_workers=n_workers,
                           threads_per_worker=threads_per_worker or 1,
                           memory_limit=memory_limit, processes=processes,
                           dashboard=dashboard, quiet=quiet, log_file=log_file) as client:
            yield client
        return
    local_given = [name for name, v in (("--n-workers", n_workers),
                                        ("--threads-per-worker", threads_per_worker),
                                        ("--memory-limit", memory_limit)) if v is not None]
    if local_given:
        raise ConfigurationError(
            f"{', '.join(local_given)}: only for a local cluster; a {profile.kind} cluster is "
            "sized with --cores, --memory, --jobs or --adaptive")
    adaptive_t = parse_adaptive_flag(adaptive)
    profile = profile.with_overrides(**{**batch_flags, "adaptive": adaptive_t})
    jq = build_jobqueue_cluster(profile, dashboard=dashboard)
    try:
        submit = getattr(jq.job_cls, "submit_command", None)
        if submit and shutil.which(str(submit).split()[0]) is None:
            raise ComputeError(
                f"--cluster {profile.name}: the {profile.kind.upper()} command {submit!r} is not "
                "found; run neuroscale on a login node of the cluster")
        if profile.adaptive is not None:
            jq.adapt(minimum_jobs=profile.adaptive[0], maximum_jobs=profile.adaptive[1])
            size = f"adaptive, {profile.adaptive[0]}-{profile.adaptive[1]} jobs"
        else:
            n_jobs = 1 if profile.jobs is None else profile.jobs
            jq.scale(jobs=n_jobs)
            size = f"{n_jobs} jobs"
        from distributed import Client

        client = Client(jq)
        register_plugins(client)
    except BaseException:
        jq.close()
        raise
    try:
        if not quiet:
            link = client.dashboard_link if dashboard else "(no dashboard)"
            print(f"Dask: {profile.kind.upper()} cluster {profile.name!r} ({size}); workers "
                  f"join as the jobs start; dashboard: {link}", file=sys.stderr)
        yield client
    finally:
        client.close()
        jq.close()


def parse_adaptive_flag(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``--adaptive MIN:MAX`` as ``(min_jobs, max_jobs)``; None stays None.

    Raises
    ------
    ConfigurationError
        Not ``MIN:MAX`` with ``0 <= MIN <= MAX``, ``MAX >= 1``.
    """
    if value is None:
        return None

    return parse_adaptive(value, key="--adaptive")


def build_jobqueue_cluster(profile: ClusterProfile, *, dashboard: bool = False) -> Any:
    """Construct (not scale) the dask-jobqueue cluster of a batch profile.

    Construction starts the Dask scheduler in this process but submits no job: call
    ``.scale(jobs=N)`` or ``.adapt(...)`` to start workers, ``.job_script()`` to see the batch
    script.  Values the profile leaves unset come from dask-jobqueue's own config
    (``jobqueue.slurm.*`` ...).

    Parameters
    ----------
    profile : ClusterProfile
        A profile of kind ``slurm``, ``pbs`` or ``sge``.
    dashboard : bool
        Serve the scheduler's dashboard on a free port.

    Returns
    -------
    dask_jobqueue.SLURMCluster, PBSCluster or SGECluster

    Raises
    ------
    ConfigurationError
        dask-jobqueue is not installed (``pip install 'neuroscale[cluster]'``), the profile is
        not a batch profile, or dask-jobqueue rejects the values (e.g. no cores/memory).
    ComputeError
        The scheduler cannot start.
    """
    if not profile.is_batch:
        raise ConfigurationError(f"profile {profile.name!r} is a {profile.kind} profile, not a "
                                 "batch (slurm/pbs/sge) one")
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ConfigurationError(
            f"--cluster {profile.name} ({profile.kind}) needs dask-jobqueue, from the [cluster] "
            f"extra: pip install 'neuroscale[cluster]' ({exc})") from None
    cls = getattr(dask_jobqueue, _JOBQUEUE_CLASSES[profile.kind])
    kwargs: dict[str, Any] = {
        "job_name": "neuroscale",
        # the scheduler always runs an HTTP server (health, metrics; :8787 when the address is
        # None, clashing with any other cluster): a free port, with the dashboard or without
        "scheduler_options": {"dashboard_address": ":0", "dashboard": dashboard},
    }
    for key in ("queue", "cores", "memory", "processes", "walltime", "interface",
                "local_directory", "log_directory"):
        value = getattr(profile, key)
        if value is not None:
            kwargs[key] = value
    if profile.account is not None:
        kwargs["project" if profile.kind == "sge" else "account"] = profile.account
    if profile.resource_spec is not None:
        if profile.kind == "slurm":
            raise ConfigurationError(
                f"neuroscale.profiles.{profile.name}.resource-spec: does not apply to SLURM "
                "(use cores/memory or job-extra-directives)")
        kwargs["resource_spec"] = profile.resource_spec
    if profile.job_extra_directives:
        kwargs["job_extra_directives"] = list(profile.job_extra_directives)
    if profile.job_script_prologue:
        kwargs["job_script_prologue"] = list(profile.job_script_prologue)
    for name in ("distributed", "distributed.scheduler", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(
            f"--cluster {profile.name}: dask-jobqueue rejected the {profile.kind} settings "
            f"({first}); set them in the profile or with --cores/--memory") from None
    except OSError as exc:  # pragma: no cover - environment dependent
        raise ComputeError(f"cannot start the Dask scheduler for --cluster {profile.name} "
                           f"({exc})") from exc


@contextlib.contextmanager
def _local_client(
    scheduler: str | None,
    *,
    n_workers: int | None,
    threads_per_worker: int,
    memory_limit: str | int | None,
    processes: bool,
    dashboard: bool,
    quiet: bool,
    log_file: str | os.PathLike[str] | None = None,
) -> Iterator[Any]:
    """A client on an existing scheduler or a new LocalCluster (see :func:`cluster_client`)."""
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ComputeError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from exc
        try:
            register_plugins(client)
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
    import dask.config

    # determinism and logs import distributed: only when a cluster starts
    from neuroscale.compute.determinism import ENVIRONMENT as ITK_ENVIRONMENT

    # glibc keeps freed chunk buffers mapped in per-thread arenas: two arenas bound the RSS a
    # worker keeps after its tasks (Dask's nanny already sets MALLOC_TRIM_THRESHOLD_)
    # (not MALLOC_MMAP_THRESHOLD_: blocks kept on a worker's heap count as unmanaged memory,
    # and a worker of 800 MB paused for good at 0.66 GB of them, 25 MB managed: a deadlock).
    # ITK's thread count and ANTs' seed are set before the worker starts (the plugin of
    # register_plugins sets them again, as on any other cluster): one ITK thread whatever the
    # worker's threads, since ITK's results depend on the count
    environ = {"MALLOC_ARENA_MAX": "2", **ITK_ENVIRONMENT,
               **dask.config.get("distributed.nanny.pre-spawn-environ", {})}
    import signal
    import threading

    previous = None
    if log_file is not None and threading.current_thread() is threading.main_thread():
        # the workers start ignoring Ctrl-C (inherited; WorkerLogToFile keeps it so after a
        # restart): the command's own KeyboardInterrupt closes them, without their tracebacks
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                memory_limit=per_worker,
                processes=processes,
                dashboard_address=":0" if dashboard else None,
                # with a log file, Dask's records go there (WorkerLogToFile) and not stderr
                silence_logs=logging.CRITICAL if log_file is not None else logging.ERROR,
            )
    except Exception as exc:  # pragma: no cover - environment dependent
        raise ComputeError(f"cannot start a local Dask cluster ({exc})") from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    client = Client(cluster)
    try:
        register_plugins(client, log_file=log_file if processes else None)
        if not quiet:
            _announce(client)
        yield client
    finally:
        client.close()
        cluster.close()


def _one_line(text: str, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_cluster_failure(exc: BaseException) -> bool:
    """True when ``exc`` is a failure of the Dask cluster rather than of the analysis.

    Worker deaths (:class:`distributed.KilledWorker`, e.g. a worker killed by its nanny for
    exceeding its memory limit, or by the batch system), lost connections
    (:class:`distributed.comm.CommClosedError`), cancelled futures (the cluster shut down),
    time-outs and :class:`MemoryError`.  Other ``OSError`` (a full disk...) are not.
    """
    from distributed import CancelledError, KilledWorker
    from distributed.comm.core import CommClosedError

    return isinstance(exc, KilledWorker | CancelledError | CommClosedError | MemoryError
                      | TimeoutError)


def describe_failure(exc: BaseException) -> str:
    """A one-line, user-facing description of why a computation failed."""
    name = type(exc).__name__
    from distributed import CancelledError, KilledWorker

    if isinstance(exc, KilledWorker):
        task = getattr(exc, "task", None)
        return ("Dask workers died while running it (KilledWorker"
                + (f", task {_one_line(str(task), 80)}" if task is not None else "")
                + "): most often a worker exceeding its memory limit; give workers more memory "
                "(--memory-limit / --memory) or use fewer threads per worker")
    if isinstance(exc, MemoryError):
        return ("a worker ran out of memory (MemoryError); give workers more memory "
                "(--memory-limit / --memory)")
    if isinstance(exc, CancelledError):
        return f"the computation was cancelled ({name}): the cluster shut down or lost its work"
    from distributed.comm.core import CommClosedError

    message = _one_line(str(exc))
    if isinstance(exc, TimeoutError | CommClosedError):
        return (f"lost contact with the Dask scheduler or a worker ({name}"
                + (f": {message}" if message else "") + ")")
    return f"{name}: {message}" if message else name


def compute_error(exc: BaseException, *, step: str, run: Any = None,
                  path: str | Path | None = None) -> ComputeError:
    """The :class:`~neuroscale.errors.ComputeError` reporting that ``step`` of ``run`` failed.

    Parameters
    ----------
    exc : BaseException
        What the computation raised.
    step : str
        The failed step, e.g. ``"phase A: QC, ALFF, denoising"``.
    run : neuroscale.bids.layout.BoldRun, optional
        The run: its subject label starts the message and its file is the error's path.
    path : path-like, optional
        The file, when ``run`` is not given (or to override it).

    Returns
    -------
    ComputeError
        One-line message ``FILE: sub-LABEL: STEP failed: WHY``.
    """
    subject = None
    if run is not None:
        subject = (getattr(run, "entities", None) or {}).get("sub")
        if path is None:
            path = getattr(run, "path", None)
    where = f"sub-{subject}: " if subject else ""
    return ComputeError(f"{where}{step} failed: {describe_failure(exc)}", path=path)


def register_plugins(client: Any, *, log_file: str | os.PathLike[str] | None = None) -> None:
    """Register neuroscale's worker plugins on ``client``'s cluster.

    :class:`~neuroscale.compute.determinism.DeterministicITK` always (ITK threads and ANTs
    seeds pinned in every worker, present and future); with ``log_file``,
    :class:`~neuroscale.compute.logs.WorkerLogToFile` (only for workers neuroscale started).
    The scheduler runs each plugin's setup on the workers that join later.

    Raises
    ------
    ComputeError
        The scheduler refused the plugins (e.g. a worker without neuroscale installed).
    """
    from neuroscale.compute.determinism import DeterministicITK

    plugins: list[Any] = [DeterministicITK()]
    if log_file is not None:
        from neuroscale.compute.logs import WorkerLogToFile

        plugins.append(WorkerLogToFile(log_file))
    for plugin in plugins:
        try:
            client.register_plugin(plugin, name=plugin.name)
        except Exception as exc:
            raise ComputeError(f"cannot set up the Dask workers ({describe_failure(exc)}); "
                               "is neuroscale installed where the workers run?") from exc


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

    Notes
    -----
    dask 2026.8 returns the results of a mix of collection types (arrays and delayed)
    grouped by type in the order each type first appears, not in the order given
    (``dask.compute(array, delayed, array)`` hands back the delayed's result last; the same
    through ``Client.compute``).  The collections are therefore computed grouped by type and
    the results put back in the caller's order, which is right whether or not dask reorders.
    """
    import dask

    if not collections:
        return []
    kinds: dict[type, list[int]] = {}
    for i, c in enumerate(collections):
        kinds.setdefault(type(c), []).append(i)
    order = [i for idx in kinds.values() for i in idx]
    grouped = [collections[i] for i in order]
    if client is None:
        out = list(dask.compute(*grouped))
        return _restore_order(out, order)
    import time

    start = time.perf_counter()
    futures = client.compute(grouped)
    if label:
        print(label, file=sys.stderr)
    if progress and sys.stdout.isatty():
        from distributed import progress as dprogress

        dprogress(futures)
        print(file=sys.stderr)
    results = list(client.gather(futures))
    if label:
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return _restore_order(results, order)


def _restore_order(results: list[Any], order: list[int]) -> list[Any]:
    """Results computed in ``order`` (positions in the caller's list) back in the caller's."""
    out: list[Any] = [None] * len(order)
    for pos, result in zip(order, results, strict=True):
        out[pos] = result
    return out
