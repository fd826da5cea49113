"""Head-motion correction of a BOLD run: rigid realignment of every volume, on Dask, with ANTsPy.

Every volume is registered rigidly to one reference volume with ANTsPy's ``antsRegistration``
(the engine behind ``ants.registration``; no optimiser of our own), resampled (linear) onto the
reference grid and written into a Zarr v3 working copy, one Dask task per block of volumes.
The realigned run is the working copy everything downstream reads.

Parameter convention
--------------------
The six parameters of volume ``t`` describe the rigid **motion of the head in volume t relative
to the reference volume** (the direction of fMRIPrep's ``_desc-confounds_timeseries.tsv``
motion columns, which come from MCFLIRT): the tissue at world point ``p`` in the reference is at
world point

    ``M(p) = R (p - c) + c + d``

in volume ``t``, so realigning volume ``t`` samples it at ``M(p)`` for every reference point
``p`` (which is ANTs' forward transform, fixed -> moving points).  Here

* the frame is **scanner RAS+ world coordinates, mm** (the NIfTI affine's output space; ANTs
  works in LPS, and its transforms are converted with ``F = diag(-1, -1, 1)``:
  ``M_ras = F M_lps F``);
* ``c`` is the **centre of the reference grid**, ``affine @ ((shape - 1) / 2)`` in mm (MCFLIRT
  also rotates about the volume's centre), so rotations do not leak into the translations of a
  head near the centre of the field of view;
* ``d = (trans_x, trans_y, trans_z)`` in mm, the displacement of the grid centre;
* ``R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)`` with right-handed rotations (radians) about the
  world x, y and z axes, ``Rx(a) = [[1, 0, 0], [0, cos a, -sin a], [0, sin a, cos a]]`` and
  likewise; applied to a vector, the z rotation acts first.  Angles are recovered from ``R``
  by ``rot_y = arcsin(R[0, 2])``, ``rot_x = atan2(-R[1, 2], R[2, 2])``,
  ``rot_z = atan2(-R[0, 1], R[0, 0])`` (exact for ``|rot_y| < 90`` degrees).

:func:`rigid_matrix` builds the 4 x 4 world matrix ``M`` from the parameters and
:func:`apply_rigid_motion` moves a volume by known parameters in exactly this convention (the
accuracy tests and the benchmark use it to create ground truth).  The ``.tsv`` written by
:func:`write_motion_tsv` uses fMRIPrep's column names and units (``trans_*`` mm, ``rot_*``
rad).  MCFLIRT's own ``.par`` files hold the parameters of the matrix mapping volume t onto the
reference in FSL's scaled-voxel frame, so their signs and centre can differ from ours; FD
(:func:`framewise_displacement`) is the same to first order.

Voxel order, coarse grids and implausible estimates
---------------------------------------------------
* Every volume is registered in the **closest-RAS voxel order** of its grid (axes permuted and
  flipped as ``nibabel.as_closest_canonical`` does; the world space and so the parameters are
  unchanged): ITK's regular sampling and its shrink factors follow the order of the voxels in
  memory, so a run stored with permuted or flipped axes would otherwise be registered on other
  sample points and its estimates differ by the sampling noise (FD r = 0.83 against the original
  on the studyforrest run).  With it, such copies give the same estimates.
* The schedule is adapted to the grid (:func:`registration_schedule`): a shrink level whose
  shrunk grid would hold fewer than ``min_level_voxels`` voxels is dropped, the metric sample is
  at least ``min_samples`` points, and a grid with fewer voxels than that uses ANTs'
  ``MeanSquares`` (the least-squares cost of AFNI's ``3dvolreg``) on every voxel instead of a
  32 x 32-bin mutual-information histogram it cannot fill.  MCFLIRT likewise sets its scales in
  mm, not in voxels.  The studyforrest run block-averaged to 24 x 24 x 26.4 mm voxels had
  estimates up to 5.7 mm / 0.064 rad with the fixed schedule (2x shrink of a 10 x 10 x 4 grid,
  15 % of 400 voxels as the MI sample); the adapted one gives at most 0.17 mm.
* Each estimate is checked against the image's own similarity (:func:`_check_estimate`): the
  residual ``1 - r`` of the Pearson correlation with the reference over the reference's bright
  voxels (``reference > mean``, inside the realigned field of view), before and after
  realignment.  An estimate is **implausible** when realignment makes the residual worse by more
  than ``max_residual_increase``, or moves some voxel of the brain's bounding box by more than
  ``max_shift_voxels`` voxels without reducing the residual by ``min_residual_gain``.  It is then
  estimated again with the small-grid schedule (dense ``MeanSquares``, one level) and, if that is
  implausible too, replaced by the identity (the volume is kept as acquired).  The per-volume
  numbers are returned (``RealignGraph.qc``, :data:`QC_COLUMNS`) and :func:`qc_report` turns
  them into the motion sidecar's ``HeadMotionQC`` and the run's warnings; when more than half
  the volumes fall back to the identity, :func:`realign`'s computation raises
  :class:`~neuroscale.errors.AnalysisError` instead (rigid realignment is not possible on that
  run; ``--no-motion-correction`` skips it).

Scale
-----
:func:`realign` builds one task per block of ``volumes_per_task`` volumes; each task reads its
volumes with one Zarr read (``Image._raw``), runs single-threaded ITK
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``: Dask provides the parallelism), writes its realigned
volumes as one Zarr shard (tasks write disjoint shards) and returns its parameters and its
partial sum for the mean.  A final small task joins them and writes a completion marker last:
a store without it is never opened.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from neuroscale.errors import AnalysisError, ImageFormatError, RegistrationError
from neuroscale.image import Image
from neuroscale.io.atomic import atomic_path, atomic_write_text
from neuroscale.preproc.motion_params import (
    MOTION_COLUMNS,
    apply_rigid_motion,
    framewise_displacement,
    grid_center,
    matrix_to_params,
    rigid_matrix,
    write_motion_tsv,
)
from neuroscale.preproc.motion_params import (
    ants_transform_to_matrix as ants_transform_to_matrix,
)
from neuroscale.preproc.motion_registration import (
    REGISTRATION_SETTINGS,
    _ants_image,
    _canonical_orientation,
    _check_estimate,
    _register_volume,
    _small_grid_schedule,
    registration_schedule,
)

# The parameters' geometry, FD and the .tsv (motion_params) and the per-volume registration
# (motion_registration) were split out of this module; their names are re-exported here.
__all__ = [
    "MOTION_COLUMNS",
    "QC_COLUMNS",
    "REGISTRATION_SETTINGS",
    "RealignGraph",
    "apply_rigid_motion",
    "framewise_displacement",
    "matrix_to_params",
    "open_realigned",
    "qc_report",
    "read_realigned",
    "realign",
    "registration_schedule",
    "rigid_matrix",
    "select_reference",
    "write_motion_tsv",
]


#: Completion marker of a realigned store, written last.
MARKER = "_neuroscale_realigned.json"
STORE_VERSION = 2

#: Columns of the per-volume check (``RealignGraph.qc``): the residual ``1 - r`` of the
#: correlation with the reference before and after realignment, the largest displacement (mm)
#: of the brain's bounding box by the estimate kept, and the outcome (0: first estimate kept,
#: 1: re-estimated with the small-grid schedule, 2: implausible twice, identity used).
QC_COLUMNS = ("residual_before", "residual_after", "max_displacement_mm", "outcome")

#: Target bytes of one realigned Zarr inner chunk (float32) along x, as the ingest layout.
_SERIES_CHUNK_BYTES = 16 * 2**20


# --------------------------------------------------------------------------- reference


def select_reference(image: Image, n_dummy: int = 0, n_volumes: int = 10) -> np.ndarray:
    """The reference volume: voxelwise median of the first steady-state volumes.

    Parameters
    ----------
    image : Image
        4D BOLD run.
    n_dummy : int
        Leading non-steady-state volumes to skip (e.g. ``qc_summary(...)["n_nonsteady"]``,
        nipype's ``NonSteadyStateDetector``).
    n_volumes : int
        How many volumes after them to take the median of (fewer if the run is shorter).

    Returns
    -------
    (x, y, z) ndarray of float32
        Scaled intensities.  Only the selected volumes are read.

    Raises
    ------
    ImageFormatError
        Not a 4D image.
    AnalysisError
        ``n_dummy`` leaves no volume.

    Notes
    -----
    A median of several volumes is robust to one volume with a spike or a sudden motion, as
    fMRIPrep's ``init_bold_reference_wf`` (median of the non-steady-state volumes, or of the
    first volumes) does.
    """
    image.require_4d(1)
    nt = image.n_volumes
    start = max(0, int(n_dummy))
    if start >= nt:
        raise AnalysisError(f"{n_dummy} non-steady-state volumes leave no volume of {nt}",
                            image.source)
    stop = min(nt, start + max(1, int(n_volumes)))
    raw, slope, inter = image._raw({0: stop - start, 1: -1, 2: -1, 3: -1})
    block = np.asarray(raw[start:stop].compute(), dtype=np.float32)
    vols = block * np.float32(slope) + np.float32(inter)
    return np.median(vols, axis=0).astype(np.float32)


# --------------------------------------------------------------------------- realign


def _realign_block(
    block: np.ndarray, slope: float, inter: float, reference: np.ndarray, affine: np.ndarray,
    store: str, t0: int, settings: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task: register the (n, x, y, z) raw volumes of ``block`` and write them at ``t0``.

    ``settings`` is the grid's schedule (:func:`registration_schedule`).  Volumes are
    registered in the closest-RAS voxel order (module docstring) and written back in the
    run's own.  Returns the (n, 6) parameters, the (x, y, z) float64 sum of the realigned
    volumes and the (n, 4) per-volume check (:data:`QC_COLUMNS`).
    """
    from neuroscale.compute.determinism import pin_itk

    pin_itk()  # one ITK thread in any worker (the seed is in the command line)
    import zarr
    from nibabel.orientations import apply_orientation

    center = grid_center(affine, reference.shape)
    ornt, back, canon_affine = _canonical_orientation(affine, reference.shape)
    canon_ref = np.ascontiguousarray(apply_orientation(reference, ornt), dtype=np.float32)
    fixed = _ants_image(canon_ref, canon_affine)
    bright = canon_ref > float(canon_ref.mean())
    idx = np.argwhere(bright) if bright.any() else np.zeros((1, 3), dtype=np.int64)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])]).T
    corners_mm = canon_affine @ corners
    voxel_mm = float(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)).min())
    retry = _small_grid_schedule(settings)
    n = block.shape[0]
    params = np.zeros((n, 6))
    qc = np.zeros((n, len(QC_COLUMNS)))
    total = np.zeros(reference.shape, dtype=np.float64)
    out = np.empty((n, *reference.shape), dtype=np.float32)
    workdir = tempfile.mkdtemp(prefix="neuroscale-motion-")
    try:
        for i in range(n):
            vol = block[i].astype(np.float32) * np.float32(slope) + np.float32(inter)
            canon = np.ascontiguousarray(apply_orientation(vol, ornt), dtype=np.float32)
            outcome = 0
            for attempt in (settings, retry):
                try:
                    p, warped = _register_volume(fixed, canon, canon_affine, center, workdir,
                                                 attempt)
                except (RuntimeError, RegistrationError) as exc:
                    raise RegistrationError(f"registration of volume {t0 + i} failed ({exc})",
                                            store) from exc
                ok, before, after, disp = _check_estimate(
                    canon_ref, bright, corners_mm, canon, warped, p, center, voxel_mm, settings)
                if ok or attempt is retry or settings == retry:
                    break
                outcome = 1
            if not ok:  # implausible twice: keep the volume as acquired
                p, warped, after, disp, outcome = np.zeros(6), canon, before, 0.0, 2
            params[i] = p
            qc[i] = (before, after, disp, outcome)
            out[i] = apply_orientation(warped, back)
            total += out[i]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    arr = zarr.open_array(store, path="data", mode="r+")
    arr[t0 : t0 + n] = out
    return params, total, qc


def qc_report(qc: np.ndarray, settings: dict[str, Any] | None = None,
              source: str | Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """What the per-volume check found: the sidecar entry and the run's warnings.

    Parameters
    ----------
    qc : (n_volumes, 4) array of float
        ``RealignGraph.qc`` (:data:`QC_COLUMNS`).
    settings : dict, optional
        The schedule used (:func:`registration_schedule`), recorded as is.
    source : str or Path, optional
        The run, named in the warnings.

    Returns
    -------
    summary : dict
        JSON-ready: ``n_volumes``, ``volumes_reestimated`` and ``volumes_identity`` (0-based
        indices), ``max_displacement_mm``, the thresholds and ``schedule``.
    warnings : list of str
        One line per kind of fallback (none when every first estimate was kept).
    """
    q = np.asarray(qc, dtype=np.float64).reshape(-1, len(QC_COLUMNS))
    outcome = q[:, 3].astype(int)
    redo = [int(i) for i in np.flatnonzero(outcome == 1)]
    ident = [int(i) for i in np.flatnonzero(outcome == 2)]
    s = dict(REGISTRATION_SETTINGS if settings is None else settings)
    summary: dict[str, Any] = {
        "n_volumes": int(q.shape[0]),
        "volumes_reestimated": redo,
        "volumes_identity": ident,
        "max_displacement_mm": float(q[:, 2].max()) if q.size else 0.0,
        "check": ("residual 1 - r with the reference (voxels above its mean) before/after "
                  f"realignment; implausible if it grows by > {s['max_residual_increase']:g}x, "
                  f"or a displacement > {s['max_shift_voxels']:g} voxel shrinks it by < "
                  f"{s['min_residual_gain']:g}x; then re-estimated with dense "
                  f"{s.get('small_grid_metric', 'MeanSquares')}, else identity"),
        "schedule": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
    }
    name = Path(source).name if source is not None else "the run"

    def _list(vols: list[int]) -> str:
        return ", ".join(str(v) for v in vols[:10]) + (" ..." if len(vols) > 10 else "")

    warnings = []
    if redo:
        warnings.append(
            f"{name}: head-motion estimate implausible for {len(redo)} of {q.shape[0]} volumes "
            f"(realignment worsened or barely improved the match while moving the brain by "
            f"more than {s['max_shift_voxels']:g} voxel); re-estimated with dense "
            f"{s.get('small_grid_metric', 'MeanSquares')}: volumes {_list(redo)}")
    if ident:
        warnings.append(
            f"{name}: head-motion estimate implausible twice for {len(ident)} of {q.shape[0]} "
            f"volumes; they are kept unrealigned (zero motion parameters): volumes "
            f"{_list(ident)}")
    return summary, warnings


def _finalize(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], store: str,
              n_volumes: int, key: dict[str, Any]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join the tasks' results, store params, mean and check, and write the marker last.

    Raises :class:`AnalysisError` (no marker written) when more than half the volumes fell
    back to the identity.
    """
    import zarr

    params = np.concatenate([p for p, _, _ in parts], axis=0)
    qc = np.concatenate([q for _, _, q in parts], axis=0)
    total = np.zeros_like(parts[0][1])
    for _, s, _ in parts:
        total += s
    mean = (total / n_volumes).astype(np.float32)
    summary, warnings = qc_report(qc, key["settings"], key.get("source"))
    n_ident = len(summary["volumes_identity"])
    if 2 * n_ident > n_volumes:
        voxel = "x".join(f"{v:.3g}" for v in key.get("voxel_mm", []))
        raise AnalysisError(
            f"head-motion estimates are implausible for {n_ident} of {n_volumes} volumes "
            f"({voxel} mm voxels, {int(np.prod(key['shape'][:3]))} voxels a volume): "
            "realignment does not improve their match with the reference; rigid motion "
            "correction is not possible on this run (use --no-motion-correction)",
            key.get("source"))
    group = zarr.open_group(store, mode="r+")
    group.create_array("params", data=params, overwrite=True)
    group.create_array("mean", data=mean, overwrite=True)
    group.create_array("qc", data=qc, overwrite=True)
    atomic_write_text(Path(store) / MARKER, json.dumps(
        {**key, "head_motion_qc": summary, "head_motion_warnings": warnings, "complete": True},
        indent=1))
    return params, mean, qc


@dataclass
class RealignGraph:
    """The lazy result of :func:`realign`.

    Attributes
    ----------
    params : dask.array.Array, shape (n_volumes, 6), float64
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad), per volume.
    mean : dask.array.Array, shape (x, y, z), float32
        Mean of the realigned volumes (the BOLD reference for masking), from the same tasks.
    store : Path
        Zarr v3 store that the realigned volumes are written into when ``params`` or ``mean``
        is computed (``dask.compute(g.params, g.mean)`` registers every volume once).
    n_tasks : int
        Number of registration tasks (volume blocks).
    qc : dask.array.Array, shape (n_volumes, 4), float64
        The per-volume check (:data:`QC_COLUMNS`), from the same tasks; :func:`qc_report`
        summarises it.
    settings : dict
        The schedule used on this grid (:func:`registration_schedule`).
    """

    params: da.Array
    mean: da.Array
    store: Path
    n_tasks: int = 0
    qc: da.Array | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _default_volumes_per_task(n_volumes: int) -> int:
    # ~25 volumes (about 25 s of registration, 22 MB of float32 80x80x35 volumes) per task,
    # and at least ~8 tasks for parallelism on short runs
    return int(max(1, min(25, math.ceil(n_volumes / 8))))


def _x_chunk(shape: tuple[int, ...], n_volumes: int) -> int:
    nx, ny, nz = shape[:3]
    per_x = n_volumes * ny * nz * 4
    return int(max(1, min(nx, _SERIES_CHUNK_BYTES // max(per_x, 1), math.ceil(nx / 8))))


def realign(
    image: Image,
    store: str | Path,
    reference: np.ndarray,
    *,
    volumes_per_task: int | None = None,
    settings: dict[str, Any] | None = None,
) -> RealignGraph:
    """Build the (lazy) rigid realignment of every volume of ``image`` to ``reference``.

    Parameters
    ----------
    image : Image
        4D BOLD run (typically a Zarr working copy from :func:`neuroscale.open_image`).
    store : str or Path
        Zarr v3 store to create for the realigned run: array ``data`` (t, x, y, z) float32,
        shards of ``volumes_per_task`` whole volumes (one per task), inner chunks of a few
        x-planes (as the ingest layout), then ``params``, ``mean`` and the completion marker.
        An existing store there is removed now.
    reference : (x, y, z) array of float
        Reference volume on ``image``'s grid (:func:`select_reference`).
    volumes_per_task : int, optional
        Volumes registered by one task (default: 25, fewer for short runs).
    settings : dict, optional
        Registration settings (default :data:`REGISTRATION_SETTINGS`; same keys), adapted to
        the grid by :func:`registration_schedule`.

    Returns
    -------
    RealignGraph
        Nothing is computed (creating the empty store is the only side effect).

    Raises
    ------
    ImageFormatError
        Not 4D.
    AnalysisError
        ``reference`` is not on the image grid; (when computed) more than half the volumes
        have implausible estimates twice (module docstring), naming the run's source.
    RegistrationError
        (When computed) ANTs failed on a volume.
    """
    import zarr
    from zarr.codecs import BloscCodec

    image.require_4d(1)
    reference = np.asarray(reference, dtype=np.float32)
    if reference.shape != image.shape[:3]:
        raise AnalysisError(
            f"reference shape {reference.shape} does not match the image grid {image.shape[:3]}",
            image.source,
        )
    nt = image.n_volumes
    vpt = int(volumes_per_task or _default_volumes_per_task(nt))
    if vpt < 1:
        raise AnalysisError(f"volumes_per_task must be >= 1, got {volumes_per_task}")
    settings = registration_schedule(image.shape[:3],
                                     REGISTRATION_SETTINGS if settings is None else settings)
    affine = np.asarray(image.affine, dtype=np.float64)
    store = Path(store)
    nx, ny, nz = image.shape[:3]
    xc = _x_chunk(image.shape, nt)

    # start clean: never leave an old marker beside new data
    if store.exists():
        with contextlib.suppress(FileNotFoundError):
            (store / MARKER).unlink()
        shutil.rmtree(store)
    with atomic_path(store, is_dir=True) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.create_array(
            "data", shape=(nt, nx, ny, nz), dtype=np.float32,
            shards=(vpt, -(-nx // xc) * xc, ny, nz), chunks=(vpt, xc, ny, nz),
            compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), fill_value=0,
        )
    raw, slope, inter = image._raw({0: vpt, 1: -1, 2: -1, 3: -1})
    key = {
        "store_version": STORE_VERSION,
        "sha256": image.meta.get("sha256"),
        "source": None if image.source is None else str(image.source),
        "shape": [nx, ny, nz, nt],
        "chunks": [vpt, xc, ny, nz],
        "reference_sha256": _sha256(reference),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "voxel_mm": [float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))],
    }
    task = dask.delayed(_realign_block, pure=True)
    # one graph key each for the reference and the affine, shared by every task
    ref_d = dask.delayed(reference, pure=True)
    aff_d = dask.delayed(affine, pure=True)
    parts = []
    t0 = 0
    for blk, size in zip(raw.to_delayed().ravel(), raw.chunks[0], strict=True):
        parts.append(task(blk, slope, inter, ref_d, aff_d, str(store), t0, settings,
                          dask_key_name=f"realign-block-{_token(store, key)}-{t0}"))
        t0 += size
    final = dask.delayed(_finalize, pure=True)(parts, str(store), nt, key)
    params = da.from_delayed(final[0], shape=(nt, 6), dtype=np.float64)
    mean = da.from_delayed(final[1], shape=(nx, ny, nz), dtype=np.float32)
    qc = da.from_delayed(final[2], shape=(nt, len(QC_COLUMNS)), dtype=np.float64)
    return RealignGraph(params=params, mean=mean, store=store, n_tasks=len(parts), qc=qc,
                        settings=settings)


def _sha256(arr: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _token(store: Path, key: dict[str, Any]) -> str:
    from dask.base import tokenize

    return str(tokenize(str(store), json.dumps(key, sort_keys=True)))


def read_realigned(store: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """``(params (n, 6) float64, mean (x, y, z) float32, manifest)`` of a complete store, or None.

    A store without its completion marker (half-written, or being written) gives None.  The
    manifest holds the per-volume check's summary (``head_motion_qc``, see :func:`qc_report`)
    and its warnings (``head_motion_warnings``).
    """
    import zarr

    marker = Path(store) / MARKER
    try:
        manifest: dict[str, Any] = json.loads(marker.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if manifest.get("store_version") != STORE_VERSION or not manifest.get("complete"):
        return None
    params = np.asarray(zarr.open_array(str(store), path="params", mode="r")[...], np.float64)
    mean = np.asarray(zarr.open_array(str(store), path="mean", mode="r")[...], np.float32)
    return params, mean, manifest


def open_realigned(store: str | Path, like: Image, mean: np.ndarray | None = None) -> Image:
    """The realigned run as an :class:`Image`, read from its Zarr store.

    Parameters
    ----------
    store : str or Path
        A store written by computing :func:`realign`'s graph.
    like : Image
        The original run: affine, TR, header, source and sha256 are taken from it.
    mean : (x, y, z) array of float, optional
        The computed ``RealignGraph.mean`` (default: the one stored).

    Returns
    -------
    Image
        float32 ``(x, y, z, t)``, with ``meta = {"store", "mean", "sha256"}`` and the raw
        ``(t, x, y, z)`` view set, so ``to_series`` and ``_raw`` read it as an ingested
        working copy (one Zarr read per chunk).

    Raises
    ------
    ImageFormatError
        The store is missing or incomplete (no completion marker), or its shape differs from
        ``like``'s.
    """
    store = Path(store)
    found = read_realigned(store)
    if found is None:
        raise ImageFormatError("realigned store is missing or incomplete (no completion "
                               "marker); recompute the realignment", store)
    _, stored_mean, manifest = found
    nx, ny, nz, nt = manifest["shape"]
    if tuple(like.shape) != (nx, ny, nz, nt):
        raise ImageFormatError(f"realigned store shape {(nx, ny, nz, nt)} differs from the run's "
                               f"{like.shape}", store)
    raw = da.from_zarr(str(store), component="data", chunks=tuple(manifest["chunks"]))
    mean_arr = np.asarray(stored_mean if mean is None else mean, dtype=np.float32)
    return replace(
        like,
        data=raw.transpose(1, 2, 3, 0),
        meta={"store": str(store), "mean": da.from_array(mean_arr, chunks=mean_arr.shape),
              "sha256": like.meta.get("sha256"),
              # what the ingest of the raw run found (non-finite voxels, warnings) still holds
              **{k: like.meta[k] for k in ("input_checks", "warnings", "nonfinite")
                 if k in like.meta}},
        _raw_txyz=raw,
        _scaling=(1.0, 0.0),
    )
