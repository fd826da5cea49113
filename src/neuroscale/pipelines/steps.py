"""Declared pipeline steps and the runner that plans, computes, writes and records them.

A participant-level run produces derivatives (files under ``OUTPUT_DIR/sub-*/``) from a few
lazy Dask graphs.  Each derivative, or group of derivatives written together under one
provenance hash, is a :class:`Step`; each lazy graph that one or more steps write from is a
:class:`Product`, computed in a :class:`Phase`.  A step says

* its name (``RunOutcome.outputs`` / ``skipped`` keys) and its files' BIDS entities
  (:class:`Derivative`);
* its parameters (what enters its provenance hash) and its sources beyond the run's own;
* which product it writes, and how (the ``write`` function writes every file atomically);

and a product says which phase computes it, the function that builds its lazy graph, what it
reads (other products kept on disk, other steps' files) and how it keeps an intermediate (a
Zarr store in the work directory).

:class:`Runner` does the rest, for every pipeline the same way:

1. **plan**: every step's provenance hash from its sources and parameters
   (:meth:`RunRecord.plan`); a step whose files all carry that hash is skipped;
2. **select**: the products that a stale step writes, that a needed product reads and that
   are not on disk, and the steps whose files a needed product reads but which are missing;
3. **compute**: phase by phase, each phase's needed products in *one* ``dask.compute`` (so
   shared chunk reads run once); a phase declared ``joins_previous`` is computed in the same
   graph as the phase before when it reads nothing computed there;
4. **write**: each step's files, atomically, then its provenance sidecar and catalog entry
   (:meth:`RunRecord.record`, with exactly the planned sources and parameters: the one place
   where "planned hash equals recorded hash" holds).

Steps that run eagerly before the phases (the head-motion correction, the brain mask) use the
same :meth:`RunRecord.plan` / :meth:`RunRecord.record` pair.

See ``DEVELOPING.md`` ("How to add a step") for a worked example.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from neuroscale import __version__
from neuroscale.bids.derivatives import derivative_path
from neuroscale.compute.cluster import compute_error, compute_with_progress
from neuroscale.errors import NeuroscaleError
from neuroscale.provenance import is_up_to_date, provenance_hash, write_provenance

__all__ = [
    "Derivative",
    "Phase",
    "Product",
    "RunRecord",
    "Runner",
    "Source",
    "Step",
    "StepPlan",
    "compute_named",
]

#: A source of an output: (path, BIDS-relative path or None, sha256 hex digest).
Source = tuple[Path, str | None, str]

S = TypeVar("S")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Derivative:
    """One file a step writes.

    Attributes
    ----------
    key : str
        Its key in ``RunOutcome.outputs`` (e.g. ``"falff"``, ``"atlas-aal-pearson"``).
    entities : mapping of str to str
        BIDS entities and suffix/extension of the file name
        (:func:`neuroscale.bids.derivatives.derivative_path`), e.g.
        ``{"stat": "falff", "suffix": "boldmap", "extension": ".nii.gz"}``.
    """

    key: str
    entities: Mapping[str, str]


@dataclass(frozen=True)
class StepPlan:
    """A step's planned files, parameters, sources and provenance hash.

    Attributes
    ----------
    name : str
        The step.
    files : dict of str to Path
        ``Derivative.key`` -> path.
    params : dict
        Parameters recorded in the sidecars (and hashed).
    sources : list of Source
        Every source (the run's first), recorded in the sidecars (and hashed).
    digest : str
        :func:`neuroscale.provenance.provenance_hash` of ``sources`` and ``params``.
    fresh : bool
        Every file exists and carries ``digest``: nothing to do.
    """

    name: str
    files: dict[str, Path]
    params: dict[str, Any]
    sources: list[Source]
    digest: str
    fresh: bool

    @property
    def path(self) -> Path:
        """The file of a one-file step."""
        (only,) = self.files.values()
        return only


class RunRecord:
    """Bookkeeping of one run: output paths, provenance plans, sidecars and catalog entries.

    Parameters
    ----------
    entities : dict of str to str
        The run's BIDS entities (sub, ses, task, run...).
    out_dir : Path
        Derivatives root.
    sources : list of Source
        The run's own sources (its BOLD first), part of every output's provenance.
    outcome : object
        Where outputs, skipped and computed step names are listed (``outputs`` dict,
        ``skipped`` and ``computed`` lists: :class:`~neuroscale.pipelines.participant.
        RunOutcome`).
    catalog : neuroscale.catalog.api.Catalog or None
        Every recorded output is registered there with its sources (ingested by checksum).
    collection : str
        Catalog collection of the derivatives.
    space : str or None
        The ``space`` entity every output carries (fMRIPrep input in a template space).
    """

    def __init__(self, entities: Mapping[str, str], out_dir: Path, sources: list[Source],
                 outcome: Any, catalog: Any = None, collection: str = "neuroscale",
                 space: str | None = None) -> None:
        self.entities = dict(entities)
        self.out_dir = out_dir
        self.sources = sources
        self.outcome = outcome
        self.catalog = catalog
        self.collection = collection
        self.space = space
        self.started = _now()
        #: top-level sidecar keys of the outputs recorded from now on (e.g. the confound
        #: regressors applied, known only once the confounds exist; not part of the hash)
        self.extra: dict[str, Any] = {}
        self._catalogued: set[str] = set()

    def path(self, **entities: Any) -> Path:
        """The derivative path of this run with ``entities`` (and the run's ``space``)."""
        if self.space and "space" not in entities:
            entities["space"] = self.space
        return Path(derivative_path(self.out_dir, self.entities, **entities))

    def plan(self, name: str, files: Mapping[str, Path], params: Mapping[str, Any],
             extra_sources: Sequence[Source] = ()) -> StepPlan:
        """Plan a step: its provenance hash, and whether its files already carry it.

        Parameters
        ----------
        name : str
            The step (listed in ``outcome.skipped`` when fresh).
        files : mapping of str to Path
            Output key -> file (each listed in ``outcome.outputs`` when fresh).
        params : mapping
            Its parameters.
        extra_sources : sequence of Source
            Sources beyond the run's (a mask file, an atlas).

        Returns
        -------
        StepPlan
        """
        sources = self.sources + list(extra_sources)
        params = dict(params)
        digest = str(provenance_hash([s[2] for s in sources], params))
        fresh = all(is_up_to_date(p, digest) for p in files.values())
        if fresh:
            self.outcome.skipped.append(name)
            self.outcome.outputs.update(files)
        return StepPlan(name, dict(files), params, sources, digest, fresh)

    def record(self, plan: StepPlan, extra: Mapping[str, Any] | None = None) -> None:
        """Write the provenance sidecar of every file of ``plan`` (and register it).

        The sidecars carry exactly the planned sources and parameters, so that the next
        :meth:`plan` of the same step finds the same hash.

        Parameters
        ----------
        plan : StepPlan
            From :meth:`plan`; its files are written.
        extra : mapping, optional
            Sidecar keys of these files only, beside :attr:`extra`.
        """
        for key, path in plan.files.items():
            ended = _now()
            keys = {**self.extra, **(extra or {})}
            write_provenance(path, sources=plan.sources, parameters=plan.params,
                             started=self.started, ended=ended, extra=keys or None)
            self.outcome.outputs[key] = path
            self.outcome.computed.append(key)
            if self.catalog is not None:
                self._register(path, plan.sources, plan.params, ended)

    def _register(self, path: Path, sources: list[Source], params: dict[str, Any],
                  ended: datetime) -> None:
        """Register ``path`` in the catalog, ingesting its sources (by checksum) first."""
        rel = path.relative_to(self.out_dir)
        for src, _, sha in sources:
            if sha not in self._catalogued:
                self.catalog.ingest([src], f"{self.collection}/sources")
                self._catalogued.add(sha)
        self.catalog.register_derivative(
            path, sources=[sha for _, _, sha in sources],
            software=f"neuroscale {__version__}",
            collection=f"{self.collection}/{rel.parent.as_posix()}",
            parameters=json.loads(json.dumps(params, default=str)),
            started=self.started, ended=ended)


def _always(state: Any) -> bool:
    return True


def _no_sources(state: Any) -> list[Source]:
    return []


@dataclass(frozen=True)
class Phase(Generic[S]):
    """A group of products computed in one Dask graph.

    Attributes
    ----------
    name : str
        ``"A"``, ``"B"``... (failures name it: ``"phase B: ALFF, denoising failed"``).
    title : str
        What it computes, for progress bars and error messages.
    merged_title : str or None
        The title when the next phase joins it (default: both titles).
    joins_previous : bool
        Computed in the previous phase's graph when none of its needed products reads
        something computed there.
    before : callable or None
        ``before(state)``, called once before the phase's products are built (also when it
        has none to compute): e.g. choosing the confounds once their table exists.
    reads : tuple of str
        Steps and products that ``before`` reads (the phase then never joins the one that
        computes them).
    flush : bool
        Write the steps of this phase and of earlier unflushed phases after its compute.
        Steps whose files a later product reads are always written at once.
    """

    name: str
    title: str
    merged_title: str | None = None
    joins_previous: bool = False
    before: Callable[[S], None] | None = None
    reads: tuple[str, ...] = ()
    flush: bool = True


@dataclass(frozen=True)
class Product(Generic[S]):
    """A lazy graph that one or more steps write from.

    Attributes
    ----------
    name : str
        Key of its value in the compute (e.g. ``"alff"``: the (ALFF, fALFF) pair).
    phase : str
        :attr:`Phase.name` of the phase computing it.
    build : callable
        ``build(state)`` -> a dask collection, or a tuple/list/dict of them.
    reads : tuple of str
        Products (kept on disk by their ``keep``) and steps (their files) it reads: a
        product is computed in a later graph than what it reads.
    keep : callable or None
        ``keep(state, value)`` after the compute: an intermediate kept in the work directory.
    on_disk : callable or None
        ``on_disk(state)`` -> True when its kept intermediate is there and up to date (then
        it is not computed for its readers).
    also_when : callable or None
        ``also_when(state)`` -> True: needed even if no step writes from it now (an
        intermediate the report reads is missing).
    """

    name: str
    phase: str
    build: Callable[[S], Any]
    reads: tuple[str, ...] = ()
    keep: Callable[[S, Any], None] | None = None
    on_disk: Callable[[S], bool] | None = None
    also_when: Callable[[S], bool] | None = None


@dataclass(frozen=True)
class Step(Generic[S]):
    """A derivative (or several written together under one provenance hash).

    Attributes
    ----------
    name : str
        Its name in ``RunOutcome.skipped`` (``"reho"``, ``"atlas-aal"``...).
    outputs : tuple of Derivative
        Its files.
    products : tuple of str
        :attr:`Product.name` of what it writes from (all computed in one phase).
    params : callable
        ``params(state)`` -> the parameters that enter its hash and sidecars.
    write : callable
        ``write(state, computed, plan)``: write every file of ``plan.files`` atomically from
        ``computed`` (product name -> computed value; the runner then records them).
    sources : callable
        ``sources(state)`` -> sources beyond the run's own (an atlas file).
    enabled : callable
        ``enabled(state)``; a disabled step is never computed, but an up-to-date file of an
        earlier run is still reported.
    """

    name: str
    outputs: tuple[Derivative, ...]
    products: tuple[str, ...]
    params: Callable[[S], dict[str, Any]]
    write: Callable[[S, dict[str, Any], StepPlan], None]
    sources: Callable[[S], list[Source]] = _no_sources
    enabled: Callable[[S], bool] = _always


@dataclass
class Runner(Generic[S]):
    """Plans, computes, writes and records a pipeline's declared steps for one run.

    Parameters
    ----------
    phases : sequence of Phase
        In compute order.
    products : sequence of Product
    steps : sequence of Step
        In write order.
    record : RunRecord
        The run's bookkeeping.
    compute : callable
        ``compute(lazy: dict, label: str, step: str) -> dict``: computes a dict of dask
        collections in one graph (:func:`compute_named` with the cluster and progress).
    label : str
        Prefix of progress labels (the run's name).

    Attributes
    ----------
    plans : dict of str to StepPlan
        After :meth:`run`: every step's plan.
    computed : dict of str to object
        After :meth:`run`: the computed product values.
    """

    phases: Sequence[Phase[S]]
    products: Sequence[Product[S]]
    steps: Sequence[Step[S]]
    record: RunRecord
    compute: Callable[[dict[str, Any], str, str], dict[str, Any]]
    label: str
    plans: dict[str, StepPlan] = field(default_factory=dict)
    computed: dict[str, Any] = field(default_factory=dict)

    def plan(self, state: S) -> dict[str, StepPlan]:
        """Plan every step (hashes; fresh ones are listed as skipped)."""
        for step in self.steps:
            files = {d.key: self.record.path(**d.entities) for d in step.outputs}
            self.plans[step.name] = self.record.plan(step.name, files, step.params(state),
                                                     step.sources(state))
        return self.plans

    def needed(self, state: S) -> tuple[set[str], set[str]]:
        """The steps to write and the products to compute (after :meth:`plan`).

        Returns
        -------
        steps, products : set of str
        """
        by_name = {p.name: p for p in self.products}
        steps = {s.name for s in self.steps
                 if s.enabled(state) and not self.plans[s.name].fresh}
        enabled = {s.name: s for s in self.steps if s.enabled(state)}
        products = {p.name for p in self.products if p.also_when and p.also_when(state)}
        products |= {p for s in self.steps if s.name in steps for p in s.products}
        changed = True
        while changed:
            changed = False
            for name in sorted(products):
                for dep in by_name[name].reads:
                    if dep in by_name:
                        product = by_name[dep]
                        if dep not in products and not (product.on_disk and
                                                         product.on_disk(state)):
                            products.add(dep)
                            changed = True
                    elif dep in enabled and dep not in steps and not all(
                            p.exists() for p in self.plans[dep].files.values()):
                        steps.add(dep)
                        products.update(enabled[dep].products)
                        changed = True
        return steps, products

    def run(self, state: S) -> dict[str, Any]:
        """Plan, compute phase by phase, write and record.

        Returns
        -------
        dict of str to object
            The computed product values.

        Raises
        ------
        NeuroscaleError
            From the products' builders and the steps' writers; cluster failures are named
            by the phase by ``compute``.
        """
        if not self.plans:
            self.plan(state)
        steps, products = self.needed(state)
        by_name = {p.name: p for p in self.products}
        read_now = {d for p in products for d in by_name[p].reads}
        groups: list[tuple[list[Phase[S]], list[str]]] = []
        for phase in self.phases:
            mine = [p.name for p in self.products if p.phase == phase.name and p.name in products]
            reads = {d for p in mine for d in by_name[p].reads} | set(phase.reads)
            if groups and phase.joins_previous:
                produced = set(groups[-1][1]) | {s.name for s in self.steps
                                                 if set(s.products) & set(groups[-1][1])}
                if not reads & produced:
                    groups[-1][0].append(phase)
                    groups[-1][1].extend(mine)
                    continue
            groups.append(([phase], mine))
        pending: list[Step[S]] = []
        for phases, names in groups:
            for phase in phases:
                if phase.before is not None:
                    phase.before(state)
            self._compute_group(state, phases, names)
            for step in self.steps:
                if step.name in steps and set(step.products) & set(names):
                    if step.name in read_now:
                        self._write(state, step)
                    else:
                        pending.append(step)
            if any(p.flush for p in phases):
                for step in pending:
                    self._write(state, step)
                pending = []
        for step in pending:
            self._write(state, step)
        return self.computed

    def _compute_group(self, state: S, group: list[Phase[S]], names: list[str]) -> None:
        by_name = {p.name: p for p in self.products}
        lazy = {name: by_name[name].build(state) for name in names}
        first = group[0].merged_title if len(group) > 1 and group[0].merged_title else None
        title = ", ".join([first or group[0].title, *(p.title for p in group[1:])])
        values = self.compute(lazy, f"{self.label}: {title}",
                              f"phase {group[0].name}: {title}")
        self.computed.update(values)
        for name in names:
            product = by_name[name]
            if product.keep is not None and name in values:
                product.keep(state, values[name])

    def _write(self, state: S, step: Step[S]) -> None:
        plan = self.plans[step.name]
        step.write(state, self.computed, plan)
        self.record.record(plan)


def compute_named(client: Any, lazy: dict[str, Any], *, label: str, progress: bool
                  ) -> dict[str, Any]:
    """Compute a dict of (possibly nested: tuple/list/dict) dask collections in ONE graph.

    Parameters
    ----------
    client : distributed.Client or None
        Where (None: Dask's local scheduler).
    lazy : dict of str to object
        Dask collections, or tuples/lists/dicts of them.
    label : str
        Progress bar label.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict of str to object
        The same keys and nesting, with computed values.
    """

    flat: list[tuple[tuple[str, Any], Any]] = []
    for key, value in lazy.items():
        if isinstance(value, dict):
            flat.extend(((key, sub), v) for sub, v in value.items())
        elif isinstance(value, tuple | list):
            flat.extend(((key, i), v) for i, v in enumerate(value))
        else:
            flat.append(((key, None), value))
    if not flat:
        return {}
    results = compute_with_progress(client, [v for _, v in flat], label=label, progress=progress)
    out: dict[str, Any] = {}
    for ((key, sub), _), result in zip(flat, results, strict=True):
        if sub is None:
            out[key] = result
        elif isinstance(lazy[key], dict):
            out.setdefault(key, {})[sub] = result
        else:
            out.setdefault(key, []).append(result)
    return out


def compute_phase(client: Any, lazy: dict[str, Any], *, label: str, step: str, run: Any,
                  progress: bool) -> dict[str, Any]:
    """:func:`compute_named`, with cluster failures named by run and step.

    Raises
    ------
    ComputeError
        A worker died, the scheduler went away... (:func:`neuroscale.compute.cluster.
        compute_error`), naming the run and ``step``.
    """
    try:
        return compute_named(client, lazy, label=label, progress=progress)
    except NeuroscaleError:
        raise
    except Exception as exc:

        raise compute_error(exc, step=step, run=run) from exc
