"""The same ANTs/ITK results in every process: one ITK thread and fixed random seeds.

What makes ANTsPy results differ between processes (measured with ANTsPy 0.6.3 on the example's
T1w, see ``tests/test_reproducibility.py``):

* **The number of ITK threads.**  N4, the registration metrics (Mattes, GC) and Atropos sum
  per-thread partial results, so 1 and 2 threads give different bias fields, transforms and
  posteriors (every output of the T1w processing differed).  ITK reads the count once per
  process, from the environment (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, after ``NSLOTS``,
  which SGE sets) the first time a filter asks for it (``MultiThreaderBase::
  GetGlobalDefaultNumberOfThreads``), and keeps it: ANTsPy exposes no setter, and the C++ setter
  is not exported from ``ants/lib.so``.  Importing ``ants`` does not fix it; running any filter
  does.  So the variable must be set in every process before its first ANTs call, whatever the
  worker's own thread count: neuroscale uses :data:`ITK_THREADS` (1) everywhere (Dask runs
  tasks in parallel instead).
* **Random seeds.**  ``antsRegistration`` jitters its regular metric samples with a generator
  seeded from the clock unless ``--random-seed`` or ``ANTS_RANDOM_SEED`` is given (ANTsPy's
  ``ants.registration`` has no seed argument; it passes ``ants.config._random_seed`` when
  ``ants.set_ants_deterministic`` set it): two identical calls in one process gave different
  affine transforms.  Atropos seeds its generator from the clock unless ``--use-random-seed 0``
  (``ants.atropos(..., r=0)``), whatever ``ANTS_RANDOM_SEED`` says: its posteriors differed call
  to call.

:func:`pin_itk` sets both variables in the current process; every neuroscale function that
calls ANTs calls it first, and :class:`DeterministicITK`, a Dask worker plugin that
:func:`neuroscale.compute.cluster.cluster_client` registers on whatever cluster it connects to
(a LocalCluster, workers a user started by hand, batch jobs), calls it in each worker when the
worker starts or joins, before any task.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)

__all__ = ["ANTS_SEED", "ENVIRONMENT", "ITK_THREADS", "DeterministicITK", "pin_itk",
           "pinned_call"]

#: ITK threads of every ANTs call, in any process (results depend on the count).
ITK_THREADS = 1
#: Seed of antsRegistration's metric sampling (``ANTS_RANDOM_SEED``; any non-zero value).
ANTS_SEED = 1
#: The environment :func:`pin_itk` sets.
ENVIRONMENT = {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(ITK_THREADS),
               "ANTS_RANDOM_SEED": str(ANTS_SEED)}

#: None until the first :func:`pin_itk` of this process; then whether ITK may have fixed
#: another thread count before it (ANTsPy imported with the variable unset or different)
_uncertain: bool | None = None


def pin_itk() -> bool:
    """Pin ITK's thread count and ANTs' registration seed in this process.

    Call before any ANTs function (cheap; idempotent).  Sets :data:`ENVIRONMENT` in
    ``os.environ``, which ITK reads when a filter first asks for its thread count and
    ``antsRegistration`` reads at every call.

    Returns
    -------
    bool
        True when the pin is known to hold for this process: ANTsPy was not imported before
        the first call, or ITK's thread variable already had the pinned value.  False when ITK
        may already run with another thread count (ANTsPy was used before neuroscale could
        set it); a warning is logged once, as results of this process may then differ from
        other processes'.
    """
    global _uncertain
    if _uncertain is None:
        preset = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
        _uncertain = "ants" in sys.modules and preset != str(ITK_THREADS)
        if _uncertain:
            log.warning(
                "ANTsPy was loaded in process %d before neuroscale set "
                "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=%d (it was %s): if an ANTs call ran "
                "already, ITK keeps its thread count and registrations here may differ from "
                "other processes'; set the variable before starting Python, or use fresh "
                "workers", os.getpid(), ITK_THREADS, preset or "unset")
    os.environ.update(ENVIRONMENT)
    return not _uncertain


def pinned_call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` after :func:`pin_itk` (a task wrapper for Dask)."""
    pin_itk()
    return func(*args, **kwargs)


class DeterministicITK(WorkerPlugin):
    """Dask worker plugin: :func:`pin_itk` in every worker, when it starts or joins.

    Registered with ``client.register_plugin(DeterministicITK())``; the scheduler keeps it and
    runs its ``setup`` on workers that join later (restarted after a crash, new batch jobs).
    The workers need neuroscale installed (they run its tasks anyway).
    """

    name = "neuroscale-deterministic-itk"

    def setup(self, worker: Any) -> None:
        pin_itk()
