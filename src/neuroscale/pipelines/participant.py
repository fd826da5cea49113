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
import io
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from neuroscale import __version__
from neuroscale.errors import AnalysisError, ConfigurationError, NeuroscaleError
from neuroscale.pipelines.preprocessing import (
    AnatomicalContext,
    prepare_anatomy,
    register_run,
    resolve_atlases,
)
from neuroscale.pipelines.preprocessing import _atlas_mask_coverage as _atlas_mask_coverage
from neuroscale.pipelines.preprocessing import fd_from_confounds as _fd_from_confounds
from neuroscale.pipelines.preprocessing import select_confounds as _select_confounds

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
        XCP-D-style YAML file; see :mod:`neuroscale.analysis.confounds`), applied to the
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


def _now() -> datetime:
    return datetime.now(UTC)


class _RunContext:
    """Bookkeeping of one run: output paths, provenance hashes, skip decisions."""

    def __init__(self, run: Any, out_dir: Path, sources: list[tuple[Path, str | None, str]],
                 catalog: Any = None, collection: str = "neuroscale",
                 space: str | None = None) -> None:
        self.run = run
        self.space = space
        self.out_dir = out_dir
        self.sources = sources
        self.outcome = RunOutcome(run=run)
        self.started = _now()
        self.catalog = catalog
        self.collection = collection
        #: top-level sidecar keys of the outputs recorded from now on (e.g. the confound
        #: regressors applied, known only once the confounds exist; not part of the hash)
        self.extra: dict[str, Any] = {}
        self._catalogued: set[str] = set()

    def path(self, **kwargs: Any) -> Path:
        from neuroscale.bids.derivatives import derivative_path

        if self.space and "space" not in kwargs:
            kwargs["space"] = self.space
        return derivative_path(self.out_dir, self.run.entities, **kwargs)

    def hash(self, params: dict[str, Any], extra_sources: list[str] | None = None) -> str:
        from neuroscale.provenance import provenance_hash

        shas = [s[2] for s in self.sources] + list(extra_sources or [])
        return provenance_hash(shas, params)

    def up_to_date(self, path: Path, digest: str) -> bool:
        from neuroscale.provenance import is_up_to_date

        return bool(is_up_to_date(path, digest))

    def record(self, name: str, path: Path, params: dict[str, Any],
               extra_sources: list[tuple[Path, str | None, str]] | None = None) -> None:
        from neuroscale.provenance import write_provenance

        sources = self.sources + list(extra_sources or [])
        ended = _now()
        write_provenance(path, sources=sources, parameters=params, started=self.started,
                         ended=ended, extra=self.extra or None)
        self.outcome.outputs[name] = path
        self.outcome.computed.append(name)
        if self.catalog is not None:
            self._register(path, sources, params, ended)

    def _register(self, path: Path, sources: list[tuple[Path, str | None, str]],
                  params: dict[str, Any], ended: datetime) -> None:
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


def _sha256(path: Path) -> str:
    from neuroscale.provenance import sha256_file

    return str(sha256_file(path))


def process_bold_run(
    run: Any,
    out_dir: Path,
    config: ParticipantConfig,
    client: Any = None,
    anat: Any = None,
) -> RunOutcome:
    """Analyse one BOLD run; see the module docstring for the steps.

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

    from neuroscale.analysis import alff as alff_mod
    from neuroscale.analysis import centrality, denoise, qc, reho, seed
    from neuroscale.analysis.confounds import find_confounds_file
    from neuroscale.analysis.mask import compute_brain_mask, load_mask, require_signal
    from neuroscale.image import (
        Series,
        open_image,
        read_series_store,
        store_series,
        values_to_volume,
    )
    from neuroscale.io.nifti import read_nifti_info, save_nifti
    from neuroscale.io.zarr_cache import ingest_nifti

    work = Path(config.work_dir or out_dir / "work").resolve()
    cache_root = work / "zarr"
    anat = anat if anat is not None else AnatomicalContext()

    # -- 0. fMRIPrep derivatives instead of the raw run? ----------------------------------------
    fmriprep = None
    if "fmriprep" in config.derivatives:
        from neuroscale.bids.fmriprep import find_fmriprep_bold

        fmriprep = find_fmriprep_bold(Path(config.derivatives["fmriprep"]), run)
    bold = Path(fmriprep.preproc_bold if fmriprep is not None else run.path)
    t_r_sidecar = run.t_r

    # -- 1. validate + ingest (one streaming pass, on a worker) ------------------------------
    info = read_nifti_info(bold)
    if info.ndim != 4 or info.shape[3] < 2:
        raise AnalysisError(f"a BOLD run must be 4D with >= 2 volumes, got shape {info.shape}",
                            bold)
    t_r = t_r_sidecar if t_r_sidecar is not None else info.t_r_header
    if t_r is None or not np.isfinite(t_r) or t_r <= 0:
        from neuroscale.errors import MissingMetadataError

        raise MissingMetadataError(
            "repetition time missing or zero (RepetitionTime in the JSON sidecar, pixdim[4])",
            bold)
    if client is not None:
        client.submit(ingest_nifti, bold, cache_root, info=info, pure=False).result()
    image = open_image(bold, cache_dir=cache_root, t_r=t_r)
    require_signal(image)  # constant / all-zero data: refused before motion correction
    bold_sha = image.meta["sha256"]
    rel = (str(run.relpath) if fmriprep is None
           else f"fmriprep:{Path(bold).name}")
    sources: list[tuple[Path, str | None, str]] = [(bold, rel, bold_sha)]
    catalog, collection = None, config.catalog_collection or ""
    if config.catalog:
        from neuroscale.catalog.api import open_for_pipeline

        catalog, collection = open_for_pipeline(config.catalog, config.catalog_collection)
    space = fmriprep.space if fmriprep is not None else None
    ctx = _RunContext(run, out_dir, sources, catalog, collection,
                      space=space)
    outcome = ctx.outcome
    outcome.warnings.extend(anat.warnings)
    outcome.warnings.extend(image.meta.get("warnings", []))  # ingest: NaN voxels, TR mismatch
    if image.meta.get("warnings"):
        ctx.extra["InputChecks"] = image.meta["input_checks"]
    prefix = Path(run.path).name.split("_bold")[0]
    run_work = work / "runs" / prefix
    run_work.mkdir(parents=True, exist_ok=True)
    base_params: dict[str, Any] = {}
    if fmriprep is not None:
        base_params["input"] = f"fMRIPrep {fmriprep.space or 'native'} space"

    # -- 1b. head-motion correction (raw input) ---------------------------------------------
    motion_params: np.ndarray | None = None
    fd: np.ndarray | None = None
    n_dummy = 0
    if fmriprep is None and config.motion_correction:
        from neuroscale.pipelines.preprocessing import motion_correction

        def compute(lazy: dict[str, Any], label: str, step: str) -> dict[str, Any]:
            return _compute_phase(client, lazy, label=label, step=step, run=run,
                                  progress=config.progress)

        image, motion_params, n_dummy, hmc_params = motion_correction(
            image, ctx, run_work, client, config, prefix, compute)
        base_params["head_motion_correction"] = hmc_params
        from neuroscale.preproc.motion import framewise_displacement

        fd = framewise_displacement(motion_params)

    # -- 2. mask -------------------------------------------------------------------------------
    mask_sources: list[tuple[Path, str | None, str]] = []
    mask_file = Path(config.mask) if config.mask is not None else (
        Path(fmriprep.brain_mask) if fmriprep is not None else None)
    if mask_file is not None:
        mask = load_mask(mask_file, image)
        mask_sources = [(mask_file, None, _sha256(mask_file))]
        mask_params = {"mask": str(mask_file), "mask_sha256": mask_sources[0][2]}
    else:
        mask = compute_brain_mask(image)
        mask_params = {"mask": "nilearn.masking.compute_epi_mask (defaults)"}
    base_params.update(mask_params)
    mask_path = ctx.path(desc="brain", suffix="mask", extension=".nii.gz")
    mask_hash = ctx.hash(base_params, [s[2] for s in mask_sources])
    if ctx.up_to_date(mask_path, mask_hash):
        outcome.skipped.append("mask")
        outcome.outputs["mask"] = mask_path
    else:
        save_nifti(mask.astype(np.uint8), image.affine, mask_path, header=info.header,
                   dtype=np.uint8)
        ctx.record("mask", mask_path, base_params, mask_sources)
    mean_volume = np.asarray(image.mean().compute_volume(), dtype=np.float32)

    # -- 2b. boldref -> T1w, tissue masks and atlases in the BOLD's native space --------------
    registration = None
    tissue: dict[str, np.ndarray] = {}
    reg_shas: list[str] = []
    if fmriprep is None and anat.result is not None:
        registration, tissue, reg_shas = register_run(
            anat, mean_volume, mask, image, ctx, client)
        base_params["registration"] = {"boldref_to_T1w": reg_shas[0],
                                       "T1w_to_template": anat.sha256}
        outcome.registration = registration
    gm = tissue.get("GM")
    atlases = resolve_atlases(config, anat, registration, fmriprep, image, mask, outcome, gm)
    raw = image.to_series(mask)

    # -- confounds -----------------------------------------------------------------------------
    strategy = config.nuisance_strategy
    conf_path = (Path(fmriprep.confounds) if fmriprep is not None and fmriprep.confounds
                 else find_confounds_file(Path(run.path)))
    # without motion correction neuroscale still builds the global signal (+ expansions)
    build_confounds = conf_path is None and strategy.lower() != "none"
    confound_sources: list[tuple[Path, str | None, str]] = []
    conf_key: list[str] = []
    if conf_path is not None and strategy.lower() != "none":
        confound_sources = [(conf_path, None, _sha256(conf_path))]
        conf_key = [confound_sources[0][2]]
        if fd is None:
            fd = _fd_from_confounds(conf_path, image.n_volumes)
    elif build_confounds:
        built: dict[str, Any] = {"confounds": "built", "tissue": sorted(tissue),
                                 "registration": reg_shas}
        if motion_params is None:
            built["motion"] = "none (no motion correction)"
        conf_key = [provenance_key(built)]

    # -- censoring (scrubbing) ---------------------------------------------------------------
    sample_mask = None
    fd_threshold = config.fd_threshold if config.fd_threshold else None
    n_kept = image.n_volumes
    if fd is not None and fd_threshold is not None:
        from neuroscale.analysis.denoise import censoring_mask

        keep = censoring_mask(fd, threshold_mm=fd_threshold, n_dummy=0)
        n_kept = int(keep.sum())
        if n_kept < image.n_volumes:
            sample_mask = keep
    fd_facts: dict[str, Any] = {}
    if fd is not None:
        fd_facts = {"fd_mean": float(np.mean(fd[1:])) if fd.size > 1 else 0.0,
                    "fd_max": float(np.max(fd)), "fd_threshold_mm": fd_threshold,
                    "n_volumes_censored": int(image.n_volumes - n_kept),
                    "n_volumes_kept": int(n_kept)}

    den_params = {
        **base_params,
        "detrend": config.detrend,
        "standardize": config.standardize,
        "high_pass_hz": config.high_pass,
        "low_pass_hz": config.low_pass,
        "filter": config.filter,
        "t_r_s": t_r,
        "nuisance_strategy": strategy,
        "fd_threshold_mm": fd_threshold,
        "n_volumes_censored": int(image.n_volumes - n_kept),
    }
    alff_params = {**base_params, "detrend": config.detrend, "nuisance_strategy": strategy,
                   "band_hz": list(config.alff_band), "t_r_s": t_r}
    mask_shas = [s[2] for s in mask_sources]

    # -- plan outputs ----------------------------------------------------------------------------
    def plan(name: str, path: Path, params: dict[str, Any], extra: list[str] | None = None
             ) -> tuple[str, Path, dict[str, Any], str, bool]:
        # the confounds and mask checksums go into the parameters, so that the hash written
        # by ctx.record (sources + parameters) is the planned one
        params = {**params, "input_sha256": (extra or []) + conf_key + mask_shas}
        digest = ctx.hash(params)
        fresh = ctx.up_to_date(path, digest)
        if fresh:
            outcome.skipped.append(name)
            outcome.outputs[name] = path
        return name, path, params, digest, not fresh

    qc_plan = plan("qc", ctx.path(desc="qc", suffix="bold", extension=".json"),
                   {**base_params, "fd_threshold_mm": fd_threshold})
    tsnr_plan = plan("tsnr", ctx.path(stat="tsnr", suffix="boldmap", extension=".nii.gz"),
                     base_params)
    conf_plan = plan("confounds", ctx.path(desc="confounds", suffix="timeseries",
                                           extension=".tsv"), base_params)
    if not build_confounds:
        conf_plan = (*conf_plan[:4], False)
    alff_plan = plan("alff", ctx.path(stat="alff", suffix="boldmap", extension=".nii.gz"),
                     alff_params)
    falff_plan = plan("falff", ctx.path(stat="falff", suffix="boldmap", extension=".nii.gz"),
                      alff_params)
    reho_plan = plan("reho", ctx.path(stat="reho", suffix="boldmap", extension=".nii.gz"),
                     den_params)
    dc_params = {**den_params, "threshold_r": config.dc_threshold}
    dcb_plan = plan("dcb", ctx.path(stat="dcb", suffix="boldmap", extension=".nii.gz"), dc_params)
    dcw_plan = plan("dcw", ctx.path(stat="dcw", suffix="boldmap", extension=".nii.gz"), dc_params)
    if not config.centrality:
        dcb_plan, dcw_plan = (*dcb_plan[:4], False), (*dcw_plan[:4], False)

    # each voxel's scale and offset before z-scoring (2, n_voxels): parcel and seed signals are
    # means of the unstandardised denoised voxels (nilearn's maskers, XCP-D)
    keeps_scale = config.standardize != "psc"
    atlas_plans = []
    a_space = config.atlas_space
    for atlas, a_sha, a_extra in atlases:
        name = atlas.name
        _check_atlas_overlap(atlas, mask)
        a_params = {**den_params, "atlas": str(atlas.path), "atlas_sha256": a_sha,
                    "atlas_space": a_space, "resampling": a_extra,
                    "parcel_signal": _PARCEL_SIGNAL if keeps_scale else _PARCEL_SIGNAL_PSC,
                    "pearson_correlation": _PEARSON, "partial_correlation": _PARTIAL,
                    "input_sha256": conf_key + mask_shas}
        files = {
            "timeseries": ctx.path(atlas=name, stat="mean", suffix="timeseries", extension=".tsv"),
            "pearson": ctx.path(atlas=name, stat="pearsoncorrelation", suffix="relmat",
                                extension=".tsv"),
            "partial": ctx.path(atlas=name, stat="partialcorrelation", suffix="relmat",
                                extension=".tsv"),
            "coverage": ctx.path(atlas=name, stat="coverage", suffix="bold", extension=".tsv"),
        }
        digest = ctx.hash(a_params, [a_sha])
        fresh = all(ctx.up_to_date(p, digest) for p in files.values())
        if fresh:
            outcome.skipped.append(f"atlas-{name}")
            for key, p in files.items():
                outcome.outputs[f"atlas-{name}-{key}"] = p
        atlas_plans.append((name, atlas, a_sha, a_params, files, not fresh))

    seed_plans = []
    for i, (sx, sy, sz, sr) in enumerate(config.seeds, start=1):
        s_params = {**den_params, "seed_center_mm": [float(sx), float(sy), float(sz)],
                    "seed_radius_mm": float(sr),
                    "seed_signal": _SEED_SIGNAL if keeps_scale else _PARCEL_SIGNAL_PSC}
        seed_plans.append(plan(f"seed-{i}", ctx.path(seed=str(i), stat="fisherz",
                                                      suffix="boldmap", extension=".nii.gz"),
                               s_params))

    carpet_path = run_work / "carpet.npy"
    need_phase_c = any(p[4] for p in (reho_plan, dcb_plan, dcw_plan, *seed_plans)) or any(
        a[5] for a in atlas_plans)
    need_qc = qc_plan[4] or tsnr_plan[4] or not carpet_path.exists()
    den_store = run_work / "denoised.zarr"
    den_scale_path = den_store / "voxel_scale.npy"
    den_hash = ctx.hash(den_params, conf_key + mask_shas)
    den_marker = den_store / "_provenance_hash"
    den_fresh = (den_marker.is_file() and den_marker.read_text() == den_hash
                 and (den_scale_path.is_file() or not keeps_scale))
    need_den = need_phase_c and not den_fresh
    need_alff = alff_plan[4] or falff_plan[4]
    need_confounds_now = strategy.lower() != "none" and (need_den or need_alff)

    # -- 3. phase A (+ B): QC, carpet, confound signals; ALFF and the denoised series -------
    # When neuroscale builds the confounds, their signals come from one pass over the raw
    # series (phase A) and the denoising needs them (phase B); otherwise A and B are one graph.
    lazy: dict[str, Any] = {}
    if need_qc:
        lazy["qc"] = qc.qc_arrays(raw, image=image)
        n_rows = min(config.carpet_rows, raw.n_voxels)
        rows = np.unique(np.linspace(0, raw.n_voxels - 1, n_rows).astype(int))
        lazy["carpet"] = raw.data[:, rows]
    conf_table_path = conf_plan[1]
    if build_confounds and (conf_plan[4] or (need_confounds_now
                                             and not conf_table_path.is_file())):
        from neuroscale.preproc.confounds import confound_signals

        lazy["confsig"] = confound_signals(raw, tissue, t_r=t_r)
    confounds = None

    def select() -> None:
        nonlocal confounds
        # also when only phase C runs again (its sidecars record the regressors the reused
        # denoised series was cleaned with, as a clean run's do)
        if conf_path is not None and (need_confounds_now or (
                strategy.lower() != "none" and Path(conf_path).is_file())):
            confounds, names, used, why = _choose_confounds(
                conf_path, strategy, image.n_volumes, outcome, motion=motion_params is not None,
                tissue=bool(tissue) or fmriprep is not None)
            ctx.extra.update(ConfoundRegressors=list(names), NuisanceStrategyApplied=used)
            if why:
                ctx.extra["NuisanceStrategyFallback"] = why
                print(f"neuroscale: warning: {run.relpath}: {why}", file=sys.stderr)

    def phase_b(into: dict[str, Any]) -> None:
        if need_alff:
            unfiltered = denoise.clean(raw, t_r=t_r, detrend=config.detrend, standardize=False,
                                       low_pass=None, high_pass=None, confounds=confounds)
            into["alff"] = alff_mod.alff(unfiltered, low=config.alff_band[0],
                                         high=config.alff_band[1])
        if need_den:
            import shutil

            clean_kw: dict[str, Any] = dict(
                t_r=t_r, detrend=config.detrend, standardize=config.standardize,
                low_pass=config.low_pass, high_pass=config.high_pass, filter=config.filter,
                confounds=confounds, sample_mask=sample_mask)
            if keeps_scale:
                denoised, into["denoised_scale"] = denoise.clean_with_scale(raw, **clean_kw)
            else:
                denoised = denoise.clean(raw, **clean_kw)
            shutil.rmtree(den_store, ignore_errors=True)
            # narrow regular Zarr chunks (the slab chunks are irregular): small writes, see
            # neuroscale.image.store_series; phase C reads the slabs back
            into["denoised"] = store_series(denoised.data, den_store, compute=False)

    if build_confounds:
        conf_path = conf_table_path
        if "confsig" not in lazy:
            select()
            phase_b(lazy)
        computed = _compute_phase(client, lazy, label=f"{prefix}: QC, confounds",
                                  step="phase A: QC, confounds", run=run,
                                  progress=config.progress)
        if "confsig" in computed:
            from neuroscale.preproc.confounds import confounds_table, write_confounds_tsv

            if motion_params is not None and fd is not None:
                table = confounds_table(computed["confsig"], motion_params, fd, t_r=t_r)
            else:  # no motion correction: the signals' columns only, no motion or FD columns
                from neuroscale.preproc.confounds import MOTION_COLUMNS

                table = confounds_table(computed["confsig"], np.zeros((image.n_volumes, 6)),
                                        np.zeros(image.n_volumes), t_r=t_r)
                table = table.drop(columns=[c for c in table.columns
                                            if c.startswith(MOTION_COLUMNS)
                                            or c == "framewise_displacement"])
            write_confounds_tsv(conf_table_path, table)
            ctx.record("confounds", conf_table_path, conf_plan[2])
        if "confsig" in lazy:
            select()
            lazy_b: dict[str, Any] = {}
            phase_b(lazy_b)
            computed.update(_compute_phase(client, lazy_b, label=f"{prefix}: ALFF, denoising",
                                           step="phase B: ALFF, denoising", run=run,
                                           progress=config.progress))
    else:
        select()
        phase_b(lazy)
        computed = _compute_phase(client, lazy, label=f"{prefix}: QC, ALFF, denoising",
                                  step="phase A: QC, ALFF, denoising", run=run,
                                  progress=config.progress)
    if need_den:
        if keeps_scale:
            from neuroscale.io.atomic import atomic_write_bytes

            buf = io.BytesIO()
            np.save(buf, np.asarray(computed["denoised_scale"], dtype=np.float32))
            atomic_write_bytes(den_scale_path, buf.getvalue())
        den_marker.write_text(den_hash)

    if "qc" in computed:
        qc_values = computed["qc"]
        summary = qc.qc_summary(qc_values, t_r=t_r)
        carpet = np.asarray(computed["carpet"], dtype=np.float32)
        np.save(carpet_path, carpet)
        scalars = {k: v for k, v in summary.items() if not isinstance(v, list)}
        traces = {k: v for k, v in summary.items() if isinstance(v, list)}
        if fd is not None:
            traces["framewise_displacement"] = [float(v) for v in fd]
        qc_doc = {**scalars, **fd_facts, "traces": traces, "n_volumes": image.n_volumes,
                  "n_voxels_in_mask": int(mask.sum()), "t_r_s": t_r,
                  "input_checks": image.meta.get("input_checks", {})}
        if anat.result is not None and fmriprep is None:
            qc_doc["t1w_to_template_dice"] = float(anat.result.dice)
        for atlas, _, _ in atlases:
            qc_doc[f"atlas_{atlas.name}_mask_coverage"] = float(
                _atlas_mask_coverage(atlas, mask))
            if gm is not None:
                qc_doc[f"atlas_{atlas.name}_gm_coverage"] = float(
                    _atlas_mask_coverage(atlas, mask & np.asarray(gm, bool)))
        if qc_plan[4]:
            _write_json_output(ctx, "qc", qc_plan[1], qc_doc, qc_plan[2])
        if tsnr_plan[4]:
            save_nifti(values_to_volume(np.asarray(qc_values["tsnr"], dtype=np.float32), mask),
                       image.affine, tsnr_plan[1], header=info.header)
            ctx.record("tsnr", tsnr_plan[1], tsnr_plan[2])
    if "alff" in computed:
        alff_v, falff_v = computed["alff"]
        for plan_, values in ((alff_plan, alff_v), (falff_plan, falff_v)):
            if plan_[4]:
                save_nifti(values_to_volume(np.asarray(values, dtype=np.float32), mask),
                           image.affine, plan_[1], header=info.header)
                ctx.record(plan_[0], plan_[1], plan_[2])

    # -- 5. phase C: one graph over the denoised store ---------------------------------------
    if need_phase_c:
        import zarr

        n_den = int(zarr.open_array(str(den_store), mode="r").shape[0])
        # one chunk per x-slab of the raw series (all time points), as the data were computed
        den_data = read_series_store(den_store, chunks=((n_den,), raw.data.chunks[1]))
        den = Series(data=den_data, mask=mask, affine=image.affine, t_r=t_r,
                     header=info.header, source=bold)
        voxel_scale = np.load(den_scale_path) if keeps_scale else None
        lazy_c: dict[str, Any] = {}
        if reho_plan[4]:
            lazy_c["reho"] = reho.reho(den)
        if dcb_plan[4] or dcw_plan[4]:
            lazy_c["dc"] = centrality.degree_centrality(den, threshold=config.dc_threshold)
        if any(a[5] for a in atlas_plans):
            from neuroscale.analysis import parcellate

            for name, atlas, _, _, _, needed in atlas_plans:
                if needed:
                    with warnings.catch_warnings():  # empty parcels: reported in the report
                        warnings.simplefilter("ignore", RuntimeWarning)
                        lazy_c[f"atlas-{name}"] = parcellate.parcel_timeseries(
                            den, atlas, voxel_scale=voxel_scale)
        for (name, *_rest), (sx, sy, sz, sr) in zip(seed_plans, config.seeds, strict=True):
            if _rest[3]:
                lazy_c[name] = seed.seed_correlation(den, center_mm=(sx, sy, sz), radius_mm=sr,
                                                     voxel_scale=voxel_scale)
        computed_c = _compute_phase(client, lazy_c,
                                    label=f"{prefix}: ReHo, centrality, connectivity",
                                    step="phase C: ReHo, centrality, connectivity", run=run,
                                    progress=config.progress)
        if "reho" in computed_c:
            save_nifti(values_to_volume(np.asarray(computed_c["reho"], np.float32), mask),
                       image.affine, reho_plan[1], header=info.header)
            ctx.record("reho", reho_plan[1], reho_plan[2])
        if "dc" in computed_c:
            dcb_v, dcw_v = computed_c["dc"]
            for plan_, values in ((dcb_plan, dcb_v), (dcw_plan, dcw_v)):
                save_nifti(values_to_volume(np.asarray(values, np.float32), mask),
                           image.affine, plan_[1], header=info.header)
                ctx.record(plan_[0], plan_[1], plan_[2])
        for seed_plan in seed_plans:
            if seed_plan[0] in computed_c:
                save_nifti(values_to_volume(np.asarray(computed_c[seed_plan[0]], np.float32),
                                            mask), image.affine, seed_plan[1], header=info.header)
                ctx.record(seed_plan[0], seed_plan[1], seed_plan[2])
        for name, atlas, a_sha, a_params, files, needed in atlas_plans:
            if needed:
                _write_atlas_outputs(ctx, name, Path(atlas.path), a_sha, a_params, files, atlas,
                                     np.asarray(computed_c[f"atlas-{name}"]), mask, outcome)

    # -- 6. report ------------------------------------------------------------------------------
    qc_doc = json.loads(outcome.outputs["qc"].read_text()) if "qc" in outcome.outputs else {}
    outcome.qc = {k: v for k, v in qc_doc.items() if k not in ("traces", "Provenance")}
    outcome.mean = mean_volume
    outcome.mask = mask
    outcome.affine = image.affine
    outcome.t_r = t_r
    outcome.carpet_path = carpet_path
    outcome.fd = fd
    return outcome


#: What the parcel time series are (recorded in the atlas outputs' sidecars).
_PARCEL_SIGNAL = ("mean over the parcel's in-mask voxels of the denoised, unstandardised signal "
                  "(nilearn NiftiLabelsMasker(strategy='mean', standardize=False) on the denoised "
                  "image, as XCP-D's NiftiParcellate)")
_PARCEL_SIGNAL_PSC = "mean of the voxels' percent signal change (standardize='psc')"
_SEED_SIGNAL = ("mean over the sphere's in-mask voxels of the denoised, unstandardised signal "
                "(nilearn NiftiSpheresMasker on the denoised image)")
_PEARSON = "Pearson correlation of the parcel time series (numpy.corrcoef; XCP-D)"
_PARTIAL = {"input": "parcel time series z-scored (zero mean, unit sample SD) first",
            "estimator": "sklearn.covariance.LedoitWolf (nilearn ConnectivityMeasure "
                         "kind='partial correlation')",
            "zscored_before_estimation": True}


def provenance_key(params: dict[str, Any]) -> str:
    """A sha256-like key of parameters (stands for an input that is built, not read)."""
    from neuroscale.provenance import provenance_hash

    return str(provenance_hash([], params))


def _compute_phase(client: Any, lazy: dict[str, Any], *, label: str, step: str, run: Any,
                   progress: bool) -> dict[str, Any]:
    """:func:`_compute_named`, with cluster failures named by run and step."""
    try:
        return _compute_named(client, lazy, label=label, progress=progress)
    except NeuroscaleError:
        raise
    except Exception as exc:
        from neuroscale.compute.cluster import compute_error

        raise compute_error(exc, step=step, run=run) from exc


def _compute_named(client: Any, lazy: dict[str, Any], *, label: str, progress: bool
                   ) -> dict[str, Any]:
    """Compute a dict of (possibly nested: tuple/dict) dask collections in ONE graph."""
    from neuroscale.compute.cluster import compute_with_progress

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


def _write_json_output(ctx: _RunContext, name: str, path: Path, doc: dict[str, Any],
                       params: dict[str, Any]) -> None:
    from neuroscale.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=2, default=_json_default))
    ctx.record(name, path, params)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _check_atlas_overlap(atlas: Any, mask: np.ndarray) -> None:
    """Refuse an atlas with fewer than 2 parcels inside the brain mask (before any compute)."""
    from neuroscale.analysis import parcellate

    counts = parcellate.parcel_voxel_counts(mask, atlas)
    n_in = int((counts > 0).sum())
    if n_in < 2:
        on_grid = int((parcellate.parcel_voxel_counts(np.ones_like(mask, dtype=bool), atlas)
                       > 0).sum())
        raise AnalysisError(
            f"atlas {atlas.name}: only {n_in} of {atlas.n_parcels} parcels have a voxel inside "
            f"the BOLD's brain mask ({on_grid} land on the BOLD grid at all): a connectivity "
            "matrix needs at least 2; is the atlas in the BOLD's space (see --atlas-space) and "
            "does it cover the brain?", atlas.path)


def _write_atlas_outputs(ctx: _RunContext, name: str, atlas_path: Path, a_sha: str,
                         params: dict[str, Any], files: dict[str, Path], atlas: Any,
                         timeseries: np.ndarray, mask: np.ndarray, outcome: RunOutcome) -> None:
    from neuroscale.analysis import connectivity, parcellate
    from neuroscale.io.atomic import atomic_write_text

    extra: list[tuple[Path, str | None, str]] = [(atlas_path, None, a_sha)]
    names = list(atlas.names)
    try:
        mats = connectivity.correlation_matrices(timeseries)
    except AnalysisError as exc:
        raise AnalysisError(f"atlas {name}: {exc}", atlas_path) from exc
    connectivity.write_timeseries_tsv(files["timeseries"], timeseries, names)
    connectivity.write_relmat_tsv(files["pearson"], mats["pearson"], names)
    connectivity.write_relmat_tsv(files["partial"], mats["partial"], names)
    coverage = parcellate.parcel_coverage(mask, atlas)
    lines = ["label\tname\tcoverage"] + [
        f"{int(v)}\t{n}\t{c:.6g}" for v, n, c in zip(atlas.values, names, coverage, strict=True)]
    atomic_write_text(files["coverage"], "\n".join(lines) + "\n")
    empty = [n for n, c in zip(names, coverage, strict=True) if not c > 0]
    if empty:
        outcome.warnings.append(
            f"atlas {name}: {len(empty)} of {len(names)} parcels have no voxel in the brain mask")
    for key, path in files.items():
        ctx.record(f"atlas-{name}-{key}", path, params, extra)


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
    from neuroscale.bids.derivatives import write_dataset_description
    from neuroscale.bids.layout import find_bold_runs

    runs = find_bold_runs(bids_dir, participant_labels=participant_labels, filters=filters)
    out_dir = Path(out_dir)
    validate_config(config)
    if "fmriprep" in config.derivatives:
        # every run must have its fMRIPrep counterpart before anything is written
        from neuroscale.bids.fmriprep import find_fmriprep_bold

        for run in runs:
            find_fmriprep_bold(Path(config.derivatives["fmriprep"]), run)
    if config.catalog:  # results must be registrable before any work
        from neuroscale.catalog.api import open_for_pipeline

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
    from neuroscale.errors import InputNotFoundError

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
        from neuroscale.analysis.confounds import load_strategy_file

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
    from neuroscale.analysis.confounds import load_confounds

    n_warn = len(outcome.warnings)
    if motion:
        confounds, names, used = _select_confounds(path, strategy, n_volumes, outcome)
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
    from neuroscale.compute.cluster import compute_error, describe_failure, is_cluster_failure

    if is_cluster_failure(exc):
        return compute_error(exc, step="processing", run=run)
    log.debug("unexpected error on %s", getattr(run, "relpath", run), exc_info=exc)
    subject = (getattr(run, "entities", None) or {}).get("sub")
    where = f"sub-{subject}: " if subject else ""
    from neuroscale.compute.logs import current_log_file

    log_file = current_log_file()
    details = f"traceback in {log_file}" if log_file else "run with -vv for the traceback"
    return NeuroscaleError(f"{where}unexpected error ({describe_failure(exc)}); {details}",
                           path=getattr(run, "path", None))


def _write_reports(out_dir: Path, outcomes: list[RunOutcome], config: ParticipantConfig) -> None:
    from neuroscale.pipelines.reporting import write_participant_reports

    write_participant_reports(out_dir, outcomes, config_dict=dataclasses.asdict(config),
                              work_dir=config.work_dir)
