"""Participant level: every BOLD run of the selected participants, out of core, on Dask.

For each run (see ``README.md`` for the outputs):

1. stream the BOLD once into its Zarr working copy (sha256, gzip CRC and the mean EPI on the
   way), as a task on the cluster;
2. brain mask from the mean EPI (nilearn's ``compute_epi_mask``) unless one is given;
3. **phase A**, one Dask graph over the raw :class:`~neuroscale.image.Series`: QC traces and
   tSNR, ALFF/fALFF (confound-regressed, not band-passed), the carpet sample, and the denoised
   series written to a Zarr store in the work directory;
4. **phase B**, one Dask graph over the denoised Zarr store: ReHo, degree centrality (tile by
   tile), parcel time series per atlas, seed maps;
5. NIfTI / TSV / JSON derivatives, each with a provenance sidecar, then the HTML report.

Every output carries a provenance hash (inputs' sha256, the parameters that touch it, the
neuroscale version): a re-run skips outputs whose hash is unchanged and recomputes only what a
changed parameter touches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuroscale import __version__
from neuroscale.bids.confounds import load_confounds, load_strategy_file
from neuroscale.bids.derivatives import write_dataset_description
from neuroscale.bids.fmriprep import find_fmriprep_bold
from neuroscale.bids.layout import find_bold_runs
from neuroscale.compute.cluster import compute_error, describe_failure, is_cluster_failure
from neuroscale.compute.logs import current_log_file
from neuroscale.errors import (
    AnalysisError,
    ConfigurationError,
    InputNotFoundError,
    NeuroscaleError,
)
from neuroscale.pipelines.bold_steps import RunState, bold_run_steps
from neuroscale.pipelines.participant_report import write_participant_reports
from neuroscale.pipelines.run_inputs import (
    AnatomicalContext,
    censoring,
    check_atlas_overlap,
    confound_inputs,
    denoising_params,
    motion_correction,
    open_bold,
    prepare_anatomy,
    qc_facts,
    register_run,
    resolve_atlases,
    select_confounds,
    write_mask,
)
from neuroscale.pipelines.steps import Runner, RunRecord, compute_phase
from neuroscale.preproc.motion import framewise_displacement

log = logging.getLogger(__name__)

__all__ = [
    "ATLAS_SPACES",
    "ParticipantConfig",
    "RunOutcome",
    "process_bold_run",
    "run_participant",
    "subject_concurrency",
    "validate_config",
]

#: Values of ``ParticipantConfig.atlas_space`` (``--atlas-space``).
ATLAS_SPACES = ("MNI152NLin2009cAsym", "bold")


@dataclass
class ParticipantConfig:
    """Parameters of the participant-level analysis.

    Attributes
    ----------
    high_pass, low_pass : float or None
        Band-pass edges in Hz for denoising (default 0.01-0.1 Hz). None disables that edge.
    detrend : bool
        Remove linear trends before filtering (nilearn ``signal.clean``).
    standardize : str or False
        Standardisation of the denoised signal (``"zscore_sample"`` as nilearn).
    filter : str
        ``"butterworth"`` or ``"cosine"`` (nilearn ``signal.clean``).
    nuisance_strategy : str
        Confound strategy (``"36P"``, ``"24P"``, ``"acompcor"``, ``"none"``, ..., or an
        XCP-D-style YAML file; see :mod:`neuroscale.bids.confounds`), applied to the
        confounds neuroscale builds from motion correction and the tissue masks, or to
        fMRIPrep's confounds TSV when there is one.
    alff_band : tuple of float
        ALFF/fALFF band in Hz.
    dc_threshold : float
        Correlation threshold for degree centrality.
    atlases : list of Path
        Label images (deterministic atlases), in ``atlas_space``.
    atlas_space : {"MNI152NLin2009cAsym", "bold"}
        Space of the atlases.  ``"MNI152NLin2009cAsym"`` (default): brought into each run's
        native space through the T1w registration, or used as they are on fMRIPrep
        derivatives in an MNI space; refused (before any work) on raw runs without
        registration, whose space is the scanner's.  ``"bold"``: label images in the BOLD's
        own world space, resampled onto its grid (nearest neighbour) without any transform.
    seeds : list of (x, y, z, radius) in mm
        Seed spheres.
    mask : Path or None
        A brain mask to use instead of computing one.
    work_dir : Path or None
        Working copies and intermediate stores (default ``OUTPUT_DIR/work``).
    centrality : bool
        Compute degree centrality (O(n_voxels^2 * n_timepoints) multiply-adds: the costliest
        map on large runs).
    catalog : str or None
        Database URL of a neuroscale catalog (``neuroscale catalog init``): every derivative
        is registered there with its sources (ingested by checksum), parameters, software
        and times.
    catalog_collection : str or None
        Collection the derivatives (and, under ``<collection>/sources``, their inputs) go to;
        default the user's ``/home/<user>/neuroscale`` (checked writable before any work).
    report : bool
        Write the HTML report.
    max_concurrent_subjects : int or None
        Participants processed at once on the cluster (see :func:`subject_concurrency`).
    motion_correction : bool
        Realign raw runs (ANTsPy rigid, :mod:`neuroscale.preproc.motion`); the realigned run
        is the working copy downstream and its parameters build the confounds.
    registration : bool
        Process the participant's T1w (brain mask, GM/WM/CSF, SyN to MNI152NLin2009cAsym)
        and register each boldref to it; ``--atlas`` files are then MNI-space atlases brought
        into each run's native space.  False: atlases share the BOLD's world space.
    template : Path or None
        The MNI152NLin2009cAsym brain template (default: the one shipped with neuroscale).
    fd_threshold : float or None
        Censor volumes whose framewise displacement exceeds this (mm) before connectivity,
        as XCP-D does (interpolate, filter, regress, censor); None or 0: no censoring.
    derivatives : dict of str to Path
        ``{"fmriprep": PATH}``: use fMRIPrep's preprocessed BOLD, brain mask and confounds
        instead of the raw runs.
    gpu : bool
        Compute ALFF/fALFF and degree centrality on the CUDA GPU (their kernels on CuPy
        chunks, :mod:`neuroscale.compute.gpu`); their sidecars then record
        ``"device": "gpu"`` (equal to the CPU's maps to float32 rounding: degree counts may
        differ where a correlation rounds across the threshold).
    """

    high_pass: float | None = 0.01
    low_pass: float | None = 0.1
    detrend: bool = True
    standardize: str | bool = "zscore_sample"
    filter: str = "butterworth"
    nuisance_strategy: str = "36P"
    alff_band: tuple[float, float] = (0.01, 0.1)
    dc_threshold: float = 0.25
    atlases: list[Path] = field(default_factory=list)
    atlas_space: str = "MNI152NLin2009cAsym"
    seeds: list[tuple[float, float, float, float]] = field(default_factory=list)
    mask: Path | None = None
    work_dir: Path | None = None
    centrality: bool = True
    catalog: str | None = None
    catalog_collection: str | None = None
    report: bool = True
    progress: bool = True
    carpet_rows: int = 1200
    max_concurrent_subjects: int | None = None
    motion_correction: bool = True
    registration: bool = True
    template: Path | None = None
    fd_threshold: float | None = 0.5
    derivatives: dict[str, Path] = field(default_factory=dict)
    gpu: bool = False


@dataclass
class RunOutcome:
    """What happened to one BOLD run."""

    run: Any
    outputs: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    qc: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    error: NeuroscaleError | None = None
    warnings: list[str] = field(default_factory=list)
    #: small in-memory facts for the report: mean EPI (x, y, z), affine, t_r, mask, carpet path
    mean: np.ndarray | None = None
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    t_r: float | None = None
    carpet_path: Path | None = None
    #: framewise displacement (mm) per volume, and the boldref -> T1w registration
    fd: np.ndarray | None = None
    registration: Any = None
    anat: Any = None


def process_bold_run(
    run: Any,
    out_dir: Path,
    config: ParticipantConfig,
    client: Any = None,
    anat: Any = None,
) -> RunOutcome:
    """Analyse one BOLD run; see the module docstring for the steps.

    The run's inputs are prepared here (working copy, head motion, mask, registration,
    atlases, confounds, censoring); its derivatives are the declared steps of
    :mod:`neuroscale.pipelines.bold_steps`, planned, computed, written and recorded by
    :class:`~neuroscale.pipelines.steps.Runner`.

    Parameters
    ----------
    run : neuroscale.bids.layout.BoldRun
        The run.
    out_dir : Path
        Derivatives root.
    config : ParticipantConfig
        Parameters.
    client : distributed.Client or None
        Where to compute (None: Dask's local threaded scheduler).
    anat : AnatomicalContext or None
        The participant's anatomical processing (:func:`prepare_anatomy`): the T1w
        segmentation and its registration to the template, or why there is none.

    Returns
    -------
    RunOutcome

    Raises
    ------
    NeuroscaleError
        Bad input (format, metadata, unsuitable data); nothing half-written is left.
    """
    work = Path(config.work_dir or out_dir / "work").resolve()
    anat = anat if anat is not None else AnatomicalContext()
    bold = open_bold(run, config, work / "zarr", client)
    image = bold.image
    catalog, collection = None, config.catalog_collection or ""
    if config.catalog:
        from neuroscale.catalog.api import open_for_pipeline  # the optional catalog extra

        catalog, collection = open_for_pipeline(config.catalog, config.catalog_collection)
    outcome = RunOutcome(run=run)
    record = RunRecord(run.entities, out_dir, bold.sources, outcome, catalog, collection,
                       space=bold.fmriprep.space if bold.fmriprep is not None else None)
    outcome.warnings.extend(anat.warnings)
    outcome.warnings.extend(image.meta.get("warnings", []))  # ingest: NaN voxels, TR mismatch
    if image.meta.get("warnings"):
        record.extra["InputChecks"] = image.meta["input_checks"]
    prefix = Path(run.path).name.split("_bold")[0]
    run_work = work / "runs" / prefix
    run_work.mkdir(parents=True, exist_ok=True)
    base_params: dict[str, Any] = {}
    if bold.fmriprep is not None:
        base_params["input"] = f"fMRIPrep {bold.fmriprep.space or 'native'} space"

    def compute(lazy: dict[str, Any], label: str, step: str) -> dict[str, Any]:
        return compute_phase(client, lazy, label=label, step=step, run=run,
                             progress=config.progress)

    motion_params: np.ndarray | None = None
    fd: np.ndarray | None = None
    if bold.fmriprep is None and config.motion_correction:
        image, motion_params, _, hmc_params = motion_correction(image, record, run_work, client,
                                                                prefix, compute)
        base_params["head_motion_correction"] = hmc_params
        fd = framewise_displacement(motion_params)

    mask, mask_shas = write_mask(record, config, bold, image, base_params)
    mean_volume = np.asarray(image.mean().compute_volume(), dtype=np.float32)

    # boldref -> T1w, tissue masks and atlases in the BOLD's native space
    registration = None
    tissue: dict[str, np.ndarray] = {}
    reg_shas: list[str] = []
    if bold.fmriprep is None and anat.result is not None:
        registration, tissue, reg_shas = register_run(anat, mean_volume, mask, image, record,
                                                      client)
        base_params["registration"] = {"boldref_to_T1w": reg_shas[0],
                                       "T1w_to_template": anat.sha256}
        outcome.registration = registration
    gm = tissue.get("GM")
    atlases = resolve_atlases(config, anat, registration, bold.fmriprep, image, mask, outcome, gm)
    for atlas, _, _ in atlases:
        check_atlas_overlap(atlas, mask)

    conf = confound_inputs(record, config, bold, image.n_volumes, motion_params, tissue,
                           reg_shas)
    fd = fd if fd is not None else conf.fd
    cens = censoring(fd, config.fd_threshold, image.n_volumes)
    state = RunState(
        config=config, record=record, outcome=outcome, image=image, header=bold.info.header,
        raw=image.to_series(mask), mask=mask, t_r=bold.t_r, prefix=prefix, run_work=run_work,
        base_params=base_params,
        den_params=denoising_params(config, base_params, bold.t_r, cens),
        alff_params={**base_params, "detrend": config.detrend,
                     "nuisance_strategy": config.nuisance_strategy,
                     "band_hz": list(config.alff_band), "t_r_s": bold.t_r,
                     **({"device": "gpu"} if config.gpu else {})},
        input_sha256=conf.key + mask_shas, conf_path=conf.path,
        build_confounds=conf.build, tissue=tissue, motion_params=motion_params, fd=fd,
        fd_threshold=cens.threshold, fd_facts=cens.facts, sample_mask=cens.sample_mask,
        atlases=atlases,
        choose_confounds=lambda s, path: _choose_confounds(
            path, s.strategy, image.n_volumes, outcome,
            motion=motion_params is not None, tissue=bool(tissue) or bold.fmriprep is not None),
        qc_facts=qc_facts(anat, bold.fmriprep, atlases, mask, gm))
    phases, products, steps = bold_run_steps(state)
    Runner(phases, products, steps, record, compute, label=prefix).run(state)

    qc_doc = json.loads(outcome.outputs["qc"].read_text()) if "qc" in outcome.outputs else {}
    outcome.qc = {k: v for k, v in qc_doc.items() if k not in ("traces", "Provenance")}
    outcome.mean = mean_volume
    outcome.mask = mask
    outcome.affine = image.affine
    outcome.t_r = bold.t_r
    outcome.carpet_path = state.carpet_path
    outcome.fd = fd
    return outcome


def run_participant(
    bids_dir: Path,
    out_dir: Path,
    config: ParticipantConfig,
    *,
    participant_labels: list[str] | None = None,
    filters: dict[str, Any] | None = None,
    client: Any = None,
) -> list[RunOutcome]:
    """Run the participant level on every selected BOLD run and write the reports.

    Parameters
    ----------
    bids_dir : Path
        BIDS dataset root.
    out_dir : Path
        Derivatives root (created).
    config : ParticipantConfig
        Parameters.
    participant_labels : list of str, optional
        Labels with or without ``sub-``; default all.
    filters : dict, optional
        BIDS filter (``--bids-filter-file`` content).
    client : distributed.Client, optional
        Where to compute.

    Returns
    -------
    list of RunOutcome
        One per run; runs that failed carry ``error``.

    Raises
    ------
    BIDSError, NoBoldRunError
        Not a BIDS dataset, or no BOLD run selected.
    """
    runs = find_bold_runs(bids_dir, participant_labels=participant_labels, filters=filters)
    out_dir = Path(out_dir)
    validate_config(config)
    if "fmriprep" in config.derivatives:
        # every run must have its fMRIPrep counterpart before anything is written

        for run in runs:
            find_fmriprep_bold(Path(config.derivatives["fmriprep"]), run)
    if config.catalog:  # results must be registrable before any work
        from neuroscale.catalog.api import open_for_pipeline  # the optional catalog extra

        open_for_pipeline(config.catalog, config.catalog_collection)[0].close()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(out_dir, [Path(bids_dir)], version=__version__)

    by_subject: dict[str, list[Any]] = {}
    for run in runs:
        by_subject.setdefault(run.subject, []).append(run)
    n_concurrent = subject_concurrency(config.max_concurrent_subjects, client, len(by_subject))
    if n_concurrent > 1 and config.progress:
        # several subjects at once: one line per finished run instead of interleaved bars
        config = dataclasses.replace(config, progress=False)

    def do_subject(subject_runs: list[Any]) -> list[RunOutcome]:
        done = []
        first = subject_runs[0]
        try:
            anat = prepare_anatomy(Path(bids_dir), first.subject, first.session, out_dir,
                                   config, client)
        except NeuroscaleError as exc:
            return [RunOutcome(run=run, error=exc) for run in subject_runs]
        except Exception as exc:
            return [RunOutcome(run=run, error=_unexpected_error(exc, run))
                    for run in subject_runs]
        for run in subject_runs:
            print(f"neuroscale: {run.relpath}", file=sys.stderr)
            try:
                outcome = process_bold_run(run, out_dir, config, client, anat)
                outcome.anat = anat
            except NeuroscaleError as exc:
                outcome = RunOutcome(run=run, error=exc)
            except Exception as exc:  # KeyboardInterrupt/SystemExit propagate
                outcome = RunOutcome(run=run, error=_unexpected_error(exc, run))
            if outcome.error is not None:
                log.debug("%s failed", run.relpath, exc_info=outcome.error)
                print(f"neuroscale: {run.relpath}: FAILED: {outcome.error}", file=sys.stderr)
            elif n_concurrent > 1:
                print(f"neuroscale: {run.relpath}: done", file=sys.stderr)
            done.append(outcome)
        return done

    groups = list(by_subject.values())
    if n_concurrent == 1:
        results = [do_subject(g) for g in groups]
    else:
        from concurrent.futures import ThreadPoolExecutor

        # Threads only submit graphs and wait: the work itself runs on the cluster, which
        # is shared by the subjects in flight (distributed.Client is thread-safe).
        with ThreadPoolExecutor(max_workers=n_concurrent,
                                thread_name_prefix="neuroscale-subject") as pool:
            results = list(pool.map(do_subject, groups))
    order = {run: i for i, run in enumerate(runs)}
    outcomes = sorted((o for group in results for o in group), key=lambda o: order[o.run])
    if config.report:
        _write_reports(out_dir, outcomes, config)
    return outcomes


def validate_config(config: ParticipantConfig) -> None:
    """Check what can be checked of the parameters before any run is read or written.

    Parameters
    ----------
    config : ParticipantConfig

    Raises
    ------
    InputNotFoundError
        An atlas does not exist.
    ConfigurationError
        Unknown ``atlas_space``; an MNI-space atlas on raw runs that are not registered
        (``registration=False`` without fMRIPrep derivatives: the runs stay in scanner
        space, so the atlas would be placed at the wrong position); a missing mask; an
        invalid strategy file.
    """
    if config.atlas_space not in ATLAS_SPACES:
        raise ConfigurationError(f"--atlas-space must be one of {', '.join(ATLAS_SPACES)}, got "
                                 f"{config.atlas_space!r}")
    for path in config.atlases:
        if not Path(path).is_file():
            raise InputNotFoundError("atlas not found", path)
    if (config.atlases and config.atlas_space != "bold" and not config.registration
            and "fmriprep" not in config.derivatives):
        raise ConfigurationError(
            f"atlas is in {config.atlas_space} space (--atlas-space) but the BOLD runs are "
            "not registered to it (--no-registration: they stay in scanner space): drop "
            "--no-registration, or pass --atlas-space bold if the atlas is a label image in "
            "the BOLD's own world space", config.atlases[0])
    if config.mask is not None and not Path(config.mask).is_file():
        raise ConfigurationError("mask not found", config.mask)
    if config.nuisance_strategy.lower().endswith((".yml", ".yaml", ".json")):
        load_strategy_file(config.nuisance_strategy)  # a bad file fails before any work


def _choose_confounds(path: Path, strategy: str, n_volumes: int, outcome: RunOutcome, *,
                      motion: bool, tissue: bool) -> tuple[np.ndarray, list[str], str, str]:
    """The strategy's confounds, or the best fallback the available columns allow.

    With motion parameters: :func:`select_confounds` (falls back to 24 motion terms + global
    signal when tissue columns are missing).  Without them (no motion correction), a strategy
    whose columns are missing falls back to the global signal and its expansions
    (``global_signal``, ``_derivative1``, ``_power2``, ``_derivative1_power2``).

    Returns
    -------
    confounds : (n_volumes, n_regressors) ndarray
    names : list of str
    used : str
        The strategy applied (``strategy``, ``"24P+GS"`` or ``"GS4"``).
    why : str
        Empty when ``used == strategy``; else the warning (also in ``outcome.warnings``).
    """
    n_warn = len(outcome.warnings)
    if motion:
        confounds, names, used = select_confounds(path, strategy, n_volumes, outcome)
        why = outcome.warnings[-1] if used != strategy and len(outcome.warnings) > n_warn else ""
        if used != strategy and not tissue:
            why = (f"nuisance strategy {strategy} needs tissue confounds (WM/CSF/aCompCor), "
                   "which need the T1w registration: used 24 motion terms + global signal "
                   "instead")
            outcome.warnings[-1:] = [why]
        return confounds, names, used, why
    try:
        confounds, names = load_confounds(path, strategy=strategy)
        used, why = strategy, ""
    except AnalysisError as exc:
        gs4 = ["^global_signal(_derivative1|_power2|_derivative1_power2)?$"]
        try:
            confounds, names = load_confounds(path, strategy=gs4)
        except AnalysisError:
            raise exc from None
        used = "GS4"
        why = (f"nuisance strategy {strategy} needs confounds that are not available (no motion "
               "correction" + ("" if tissue else ", no tissue masks without registration")
               + "): used the global signal + its derivative and squares (4 regressors) "
               "instead")
        outcome.warnings.append(why)
    if confounds.shape[0] != n_volumes:
        raise AnalysisError(f"confounds have {confounds.shape[0]} rows but the BOLD has "
                            f"{n_volumes} volumes", path)
    return confounds, names, used, why


def subject_concurrency(requested: int | None, client: Any, n_subjects: int) -> int:
    """How many participants are processed at once.

    Parameters
    ----------
    requested : int or None
        ``--max-concurrent-subjects``; None picks one subject per two workers of the
        cluster (each subject's graphs already spread over every worker; overlapping two
        subjects keeps workers busy while one subject's client-side steps run).
    client : distributed.Client or None
        The cluster (None: one subject at a time).
    n_subjects : int
        Participants selected.

    Returns
    -------
    int
        At least 1, at most ``n_subjects``.

    Raises
    ------
    ConfigurationError
        ``requested`` is not a positive integer.
    """
    if requested is not None:
        if int(requested) < 1:
            raise ConfigurationError(f"--max-concurrent-subjects must be >= 1, got {requested}")
        n = int(requested)
    elif client is None:
        n = 1
    else:
        try:
            n_workers = len(client.scheduler_info().get("workers", {}))
        except Exception:  # pragma: no cover - a client that cannot answer: be conservative
            n_workers = 1
        n = max(1, n_workers // 2)
    return max(1, min(n, max(1, n_subjects)))


def _unexpected_error(exc: Exception, run: Any) -> NeuroscaleError:
    """A failed run's error for an exception neuroscale did not raise on purpose.

    Cluster failures (a killed worker, a lost connection...) outside the two compute phases
    (e.g. while ingesting) become :class:`~neuroscale.errors.ComputeError`; anything else is a
    :class:`~neuroscale.errors.NeuroscaleError` naming the exception (the traceback is logged
    at debug level, ``-vv``).
    """
    if is_cluster_failure(exc):
        return compute_error(exc, step="processing", run=run)
    log.debug("unexpected error on %s", getattr(run, "relpath", run), exc_info=exc)
    subject = (getattr(run, "entities", None) or {}).get("sub")
    where = f"sub-{subject}: " if subject else ""
    log_file = current_log_file()
    details = f"traceback in {log_file}" if log_file else "run with -vv for the traceback"
    return NeuroscaleError(f"{where}unexpected error ({describe_failure(exc)}); {details}",
                           path=getattr(run, "path", None))


def _write_reports(out_dir: Path, outcomes: list[RunOutcome], config: ParticipantConfig) -> None:
    write_participant_reports(out_dir, outcomes, config_dict=dataclasses.asdict(config))
