"""The participant level's derivatives of one BOLD run, as declared steps.

Three phases (:class:`~neuroscale.pipelines.steps.Phase`), as few Dask computes as the data
allow:

* **A** over the raw :class:`~neuroscale.image.Series`: QC traces and tSNR, the carpet sample,
  and (when neuroscale builds the confounds) the confound signals;
* **B** over the raw series and the confounds: ALFF/fALFF (confound-regressed, not
  band-passed) and the denoised series, kept as a Zarr store in the work directory.  B is
  computed in A's graph unless it needs the confounds table A builds;
* **C** over the denoised store: ReHo, degree centrality, parcel time series and
  connectivity per atlas, seed maps.

Each output is a :class:`~neuroscale.pipelines.steps.Step` below (its BIDS entities, its
parameters, what it writes from, how it writes); :class:`RunState` carries what they read.
Adding a map: a kernel in ``kernels/``, a graph function in ``analysis/``, one
:class:`Product` and one :class:`Step` here (``DEVELOPING.md``, "How to add a step").
"""

from __future__ import annotations

import io
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuroscale.analysis import alff as alff_mod
from neuroscale.analysis import centrality, connectivity, denoise, parcellate, qc, reho, seed
from neuroscale.bids.tables import write_relmat_tsv, write_timeseries_tsv
from neuroscale.compute.gpu import to_device, to_host
from neuroscale.errors import AnalysisError
from neuroscale.image import Series, read_series_store, store_series, values_to_volume
from neuroscale.io.atomic import atomic_write_bytes, atomic_write_text
from neuroscale.io.nifti import save_nifti
from neuroscale.pipelines.steps import (
    Derivative,
    Phase,
    Product,
    RunRecord,
    Source,
    Step,
    StepPlan,
)
from neuroscale.preproc.confounds import (
    MOTION_COLUMNS,
    confound_signals,
    confounds_table,
    write_confounds_tsv,
)
from neuroscale.provenance import provenance_hash

__all__ = ["PARCEL_SIGNAL", "RunState", "bold_run_steps"]

#: What the parcel time series are (recorded in the atlas outputs' sidecars).
PARCEL_SIGNAL = ("mean over the parcel's in-mask voxels of the denoised, unstandardised signal "
                 "(nilearn NiftiLabelsMasker(strategy='mean', standardize=False) on the denoised "
                 "image, as XCP-D's NiftiParcellate)")
PARCEL_SIGNAL_PSC = "mean of the voxels' percent signal change (standardize='psc')"
SEED_SIGNAL = ("mean over the sphere's in-mask voxels of the denoised, unstandardised signal "
               "(nilearn NiftiSpheresMasker on the denoised image)")
PEARSON = "Pearson correlation of the parcel time series (numpy.corrcoef; XCP-D)"
PARTIAL = {"input": "parcel time series z-scored (zero mean, unit sample SD) first",
           "estimator": "sklearn.covariance.LedoitWolf (nilearn ConnectivityMeasure "
                        "kind='partial correlation')",
           "zscored_before_estimation": True}


@dataclass
class RunState:
    """What the steps of one BOLD run read (built by the participant pipeline).

    Attributes
    ----------
    config : ParticipantConfig
        The parameters.
    record : RunRecord
        Output paths, provenance, catalog.
    outcome : RunOutcome
        Outputs, warnings.
    image : Image
        The working copy (x, y, z, t), realigned when motion correction ran.
    header : nibabel header
        The BOLD's NIfTI header (written into the maps).
    raw : Series
        ``image`` in the brain mask, (n_volumes, n_voxels) float32.
    mask : ndarray, shape (x, y, z), bool
        Brain mask.
    t_r : float
        Repetition time (s).
    prefix : str
        The run's name (progress labels).
    run_work : Path
        The run's work directory.
    base_params, den_params, alff_params : dict
        Parameters of every output, of the denoised series, of ALFF/fALFF.
    input_sha256 : list of str
        Checksums of the confounds and mask that every planned output's parameters carry.
    conf_path : Path or None
        The confounds table (fMRIPrep's, or the one neuroscale builds at ``conf_table_path``).
    build_confounds : bool
        neuroscale builds the confounds table (raw input, strategy not ``"none"``).
    tissue : dict of str to ndarray
        Tissue masks on the BOLD grid (``"WM"``, ``"CSF"``, ``"GM"``), maybe empty.
    motion_params : ndarray (n_volumes, 6) or None
        Head-motion parameters (trans mm, rot rad).
    fd : ndarray (n_volumes,) or None
        Framewise displacement (mm).
    fd_threshold : float or None
        Censoring threshold (mm), None: no censoring.
    fd_facts : dict
        FD summary for the QC document.
    sample_mask : ndarray of bool or None
        Volumes kept after censoring (None: all).
    atlases : list of (Atlas, str, str)
        Atlases on the BOLD grid, their sha256, how they were resampled.
    choose_confounds : callable
        ``choose_confounds(state, path)`` -> (confounds, names, used, why): the strategy's
        regressors from the table at ``path`` (with fallbacks).
    qc_facts : dict
        Extra keys of the QC document (registration Dice...).
    """

    config: Any
    record: RunRecord
    outcome: Any
    image: Any
    header: Any
    raw: Any
    mask: np.ndarray
    t_r: float
    prefix: str
    run_work: Path
    base_params: dict[str, Any]
    den_params: dict[str, Any]
    alff_params: dict[str, Any]
    input_sha256: list[str]
    conf_path: Path | None
    build_confounds: bool
    tissue: dict[str, np.ndarray]
    motion_params: np.ndarray | None
    fd: np.ndarray | None
    fd_threshold: float | None
    fd_facts: dict[str, Any]
    sample_mask: np.ndarray | None
    atlases: list[tuple[Any, str, str]]
    choose_confounds: Any
    qc_facts: dict[str, Any] = field(default_factory=dict)
    #: the confounds applied (set in phase B's ``before``; None: no regression)
    confounds: np.ndarray | None = None
    _denoised: Series | None = None

    # -- where things are ------------------------------------------------------------------
    @property
    def strategy(self) -> str:
        """The nuisance strategy asked for."""
        return str(self.config.nuisance_strategy)

    @property
    def keeps_scale(self) -> bool:
        """The denoised store keeps each voxel's scale (parcel/seed signals unstandardised)."""
        return bool(self.config.standardize != "psc")

    @property
    def carpet_path(self) -> Path:
        """The carpet sample (the report's carpet plot)."""
        return self.run_work / "carpet.npy"

    @property
    def den_store(self) -> Path:
        """The denoised series' Zarr store."""
        return self.run_work / "denoised.zarr"

    @property
    def den_hash(self) -> str:
        """Provenance hash of the denoised store (in its ``_provenance_hash`` file)."""

        shas = [s[2] for s in self.record.sources] + self.input_sha256
        return str(provenance_hash(shas, self.den_params))

    def planned(self, params: dict[str, Any], extra: list[str] | None = None) -> dict[str, Any]:
        """``params`` with the confounds' and mask's checksums (``input_sha256``)."""
        return {**params, "input_sha256": (extra or []) + self.input_sha256}

    def denoised(self) -> Series:
        """The denoised series read back from its store, one chunk per raw column chunk."""
        if self._denoised is None:
            import zarr

            n_den = int(zarr.open_array(str(self.den_store), mode="r").shape[0])
            data = read_series_store(self.den_store, chunks=((n_den,), self.raw.data.chunks[1]))
            self._denoised = Series(data=data, mask=self.mask, affine=self.image.affine,
                                    t_r=self.t_r, header=self.header, source=self.image.source)
        return self._denoised

    def voxel_scale(self) -> np.ndarray | None:
        """Each voxel's (scale, offset) before z-scoring, (2, n_voxels), or None."""
        return np.load(self.den_store / "voxel_scale.npy") if self.keeps_scale else None

    def save_map(self, values: Any, path: Path) -> None:
        """Write a (n_voxels,) vector as a 3D map on the BOLD grid, atomically."""
        save_nifti(values_to_volume(np.asarray(values, dtype=np.float32), self.mask),
                   self.image.affine, path, header=self.header)


# -- phase B's "before": the confounds, once their table exists ------------------------------
def _choose(state: RunState) -> None:
    """Choose the regressors (also when only phase C runs again: its sidecars record the
    regressors the reused denoised series was cleaned with, as a clean run's do)."""
    conf_path = state.conf_path
    if conf_path is None or state.strategy.lower() == "none" or not Path(conf_path).is_file():
        return
    confounds, names, used, why = state.choose_confounds(state, Path(conf_path))
    state.confounds = confounds
    state.record.extra.update(ConfoundRegressors=list(names), NuisanceStrategyApplied=used)
    if why:
        state.record.extra["NuisanceStrategyFallback"] = why
        print(f"neuroscale: warning: {state.outcome.run.relpath}: {why}", file=sys.stderr)


PHASES: tuple[Phase[RunState], ...] = (
    Phase("A", "QC, confounds", merged_title="QC", flush=False),
    Phase("B", "ALFF, denoising", joins_previous=True, before=_choose, reads=("confounds",)),
    Phase("C", "ReHo, centrality, connectivity"),
)


# -- products ---------------------------------------------------------------------------------
def _carpet(state: RunState) -> Any:
    n_rows = min(state.config.carpet_rows, state.raw.n_voxels)
    rows = np.unique(np.linspace(0, state.raw.n_voxels - 1, n_rows).astype(int))
    return state.raw.data[:, rows]


def _keep_carpet(state: RunState, value: Any) -> None:
    np.save(state.carpet_path, np.asarray(value, dtype=np.float32))


def _confound_signals(state: RunState) -> Any:

    return confound_signals(state.raw, state.tissue, t_r=state.t_r)


def _alff(state: RunState) -> Any:
    cfg = state.config
    unfiltered = denoise.clean(state.raw, t_r=state.t_r, detrend=cfg.detrend, standardize=False,
                               low_pass=None, high_pass=None, confounds=state.confounds)
    maps = alff_mod.alff(_on_device(state, unfiltered), low=cfg.alff_band[0],
                         high=cfg.alff_band[1])
    return _on_host(state, maps)


def _on_device(state: RunState, series: Series) -> Series:
    """``series`` with its chunks on the GPU where the run asked for one (``--gpu``)."""
    return series.with_data(to_device(series.data)) if state.config.gpu else series


def _on_host(state: RunState, arrays: tuple[Any, ...]) -> tuple[Any, ...]:
    """Maps computed on the GPU copied back to host memory, chunk by chunk, to be written."""
    return tuple(to_host(a) for a in arrays) if state.config.gpu else arrays


def _denoised(state: RunState) -> Any:
    cfg = state.config
    kw: dict[str, Any] = dict(
        t_r=state.t_r, detrend=cfg.detrend, standardize=cfg.standardize,
        low_pass=cfg.low_pass, high_pass=cfg.high_pass, filter=cfg.filter,
        confounds=state.confounds, sample_mask=state.sample_mask)
    scale = None
    if state.keeps_scale:
        series, scale = denoise.clean_with_scale(state.raw, **kw)
    else:
        series = denoise.clean(state.raw, **kw)
    shutil.rmtree(state.den_store, ignore_errors=True)
    # narrow regular Zarr chunks (the slab chunks are irregular): small writes, see
    # neuroscale.series_store.store_series; phase C reads the slabs back
    stored = store_series(series.data, state.den_store, compute=False)
    return {"stored": stored, "scale": scale} if scale is not None else {"stored": stored}


def _keep_denoised(state: RunState, value: Any) -> None:
    if state.keeps_scale:
        buf = io.BytesIO()
        np.save(buf, np.asarray(value["scale"], dtype=np.float32))
        atomic_write_bytes(state.den_store / "voxel_scale.npy", buf.getvalue())
    (state.den_store / "_provenance_hash").write_text(state.den_hash)


def _denoised_on_disk(state: RunState) -> bool:
    marker = state.den_store / "_provenance_hash"
    return (marker.is_file() and marker.read_text() == state.den_hash
            and ((state.den_store / "voxel_scale.npy").is_file() or not state.keeps_scale))


def _reho(state: RunState) -> Any:
    return reho.reho(state.denoised())


def _dc(state: RunState) -> Any:
    return _on_host(state, centrality.degree_centrality(_on_device(state, state.denoised()),
                                                        threshold=state.config.dc_threshold))


def _parcels(atlas: Any) -> Any:
    def build(state: RunState) -> Any:
        with warnings.catch_warnings():  # empty parcels: reported in the report
            warnings.simplefilter("ignore", RuntimeWarning)
            return parcellate.parcel_timeseries(state.denoised(), atlas,
                                                voxel_scale=state.voxel_scale())
    return build


def _seed_map(center: tuple[float, float, float], radius: float) -> Any:
    def build(state: RunState) -> Any:
        return seed.seed_correlation(state.denoised(), center_mm=center, radius_mm=radius,
                                     voxel_scale=state.voxel_scale())
    return build


# -- writers ----------------------------------------------------------------------------------
def _write_qc(state: RunState, computed: dict[str, Any], plan: StepPlan) -> None:
    import json

    values = computed["qc"]
    summary = qc.qc_summary(values, t_r=state.t_r)
    scalars = {k: v for k, v in summary.items() if not isinstance(v, list)}
    traces = {k: v for k, v in summary.items() if isinstance(v, list)}
    if state.fd is not None:
        traces["framewise_displacement"] = [float(v) for v in state.fd]
    doc = {**scalars, **state.fd_facts, "traces": traces, "n_volumes": state.image.n_volumes,
           "n_voxels_in_mask": int(state.mask.sum()), "t_r_s": state.t_r,
           "input_checks": state.image.meta.get("input_checks", {}), **state.qc_facts}
    atomic_write_text(plan.path, json.dumps(doc, indent=2, default=_json_default))


def _write_tsnr(state: RunState, computed: dict[str, Any], plan: StepPlan) -> None:
    state.save_map(computed["qc"]["tsnr"], plan.path)


def _write_confounds(state: RunState, computed: dict[str, Any], plan: StepPlan) -> None:

    n = state.image.n_volumes
    if state.motion_params is not None and state.fd is not None:
        table = confounds_table(computed["confsig"], state.motion_params, state.fd,
                                t_r=state.t_r)
    else:  # no motion correction: the signals' columns only, no motion or FD columns
        table = confounds_table(computed["confsig"], np.zeros((n, 6)), np.zeros(n), t_r=state.t_r)
        table = table.drop(columns=[c for c in table.columns
                                    if c.startswith(MOTION_COLUMNS)
                                    or c == "framewise_displacement"])
    write_confounds_tsv(plan.path, table)


def _write_map(product: str, index: int | None = None) -> Any:
    def write(state: RunState, computed: dict[str, Any], plan: StepPlan) -> None:
        value = computed[product]
        state.save_map(value if index is None else value[index], plan.path)
    return write


def _write_atlas(atlas: Any, a_sha: str) -> Any:
    def write(state: RunState, computed: dict[str, Any], plan: StepPlan) -> None:
        name, files = atlas.name, plan.files
        timeseries = np.asarray(computed[f"atlas-{name}"])
        names = list(atlas.names)
        try:
            mats = connectivity.correlation_matrices(timeseries)
        except AnalysisError as exc:
            raise AnalysisError(f"atlas {name}: {exc}", Path(atlas.path)) from exc
        write_timeseries_tsv(files[f"atlas-{name}-timeseries"], timeseries, names)
        write_relmat_tsv(files[f"atlas-{name}-pearson"], mats["pearson"], names)
        write_relmat_tsv(files[f"atlas-{name}-partial"], mats["partial"], names)
        coverage = parcellate.parcel_coverage(state.mask, atlas)
        lines = ["label\tname\tcoverage"] + [
            f"{int(v)}\t{n}\t{c:.6g}" for v, n, c in zip(atlas.values, names, coverage,
                                                          strict=True)]
        atomic_write_text(files[f"atlas-{name}-coverage"], "\n".join(lines) + "\n")
        empty = [n for n, c in zip(names, coverage, strict=True) if not c > 0]
        if empty:
            state.outcome.warnings.append(f"atlas {name}: {len(empty)} of {len(names)} parcels "
                                          "have no voxel in the brain mask")
    return write


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _planned(params: dict[str, Any]) -> Any:
    def get(state: RunState) -> dict[str, Any]:
        return state.planned(params)
    return get


def _fixed(params: dict[str, Any]) -> Any:
    def get(state: RunState) -> dict[str, Any]:
        return dict(params)
    return get


def _fixed_sources(sources: list[Source]) -> Any:
    def get(state: RunState) -> list[Source]:
        return list(sources)
    return get


def _map(key: str, **entities: str) -> tuple[Derivative, ...]:
    return (Derivative(key, {**entities, "suffix": "boldmap", "extension": ".nii.gz"}),)


# -- the declarations -------------------------------------------------------------------------
def bold_run_steps(state: RunState
                   ) -> tuple[tuple[Phase[RunState], ...], list[Product[RunState]],
                              list[Step[RunState]]]:
    """The phases, products and steps of one BOLD run (atlases and seeds expanded).

    Parameters
    ----------
    state : RunState
        The run (its atlases and ``config.seeds`` are expanded into steps).

    Returns
    -------
    phases : tuple of Phase
    products : list of Product
    steps : list of Step
        In write order.
    """
    cfg = state.config
    built = ("confounds",) if state.build_confounds else ()
    products: list[Product[RunState]] = [
        Product("qc", "A", lambda s: qc.qc_arrays(s.raw, image=s.image)),
        Product("carpet", "A", _carpet, keep=_keep_carpet,
                also_when=lambda s: not s.carpet_path.exists()),
        Product("confsig", "A", _confound_signals),
        Product("alff", "B", _alff, reads=built),
        Product("denoised", "B", _denoised, reads=built, keep=_keep_denoised,
                on_disk=_denoised_on_disk),
        Product("reho", "C", _reho, reads=("denoised",)),
        Product("dc", "C", _dc, reads=("denoised",)),
    ]
    dc_params = {**state.den_params, "threshold_r": cfg.dc_threshold,
                 **({"device": "gpu"} if cfg.gpu else {})}
    steps: list[Step[RunState]] = [
        # the carpet sample is refreshed with the QC document and the tSNR map
        Step("qc", (Derivative("qc", {"desc": "qc", "suffix": "bold", "extension": ".json"}),),
             ("qc", "carpet"),
             lambda s: s.planned({**s.base_params, "fd_threshold_mm": s.fd_threshold}),
             _write_qc),
        Step("tsnr", _map("tsnr", stat="tsnr"), ("qc", "carpet"),
             lambda s: s.planned(s.base_params), _write_tsnr),
        Step("confounds", (Derivative("confounds", {"desc": "confounds", "suffix": "timeseries",
                                                    "extension": ".tsv"}),),
             ("confsig",), lambda s: s.planned(s.base_params), _write_confounds,
             enabled=lambda s: s.build_confounds),
        Step("alff", _map("alff", stat="alff"), ("alff",),
             lambda s: s.planned(s.alff_params), _write_map("alff", 0)),
        Step("falff", _map("falff", stat="falff"), ("alff",),
             lambda s: s.planned(s.alff_params), _write_map("alff", 1)),
        Step("reho", _map("reho", stat="reho"), ("reho",),
             lambda s: s.planned(s.den_params), _write_map("reho")),
        Step("dcb", _map("dcb", stat="dcb"), ("dc",), lambda s: s.planned(dc_params),
             _write_map("dc", 0), enabled=lambda s: bool(s.config.centrality)),
        Step("dcw", _map("dcw", stat="dcw"), ("dc",), lambda s: s.planned(dc_params),
             _write_map("dc", 1), enabled=lambda s: bool(s.config.centrality)),
    ]
    # seeds before atlases: the order of the outputs (and of the report's list) as before
    for i, (sx, sy, sz, sr) in enumerate(cfg.seeds, start=1):
        name = f"seed-{i}"
        s_params = {**state.den_params, "seed_center_mm": [float(sx), float(sy), float(sz)],
                    "seed_radius_mm": float(sr),
                    "seed_signal": SEED_SIGNAL if state.keeps_scale else PARCEL_SIGNAL_PSC}
        products.append(Product(name, "C", _seed_map((sx, sy, sz), sr), reads=("denoised",)))
        steps.append(Step(name, _map(name, seed=str(i), stat="fisherz"), (name,),
                          _planned(s_params), _write_map(name)))
    signal = PARCEL_SIGNAL if state.keeps_scale else PARCEL_SIGNAL_PSC
    for atlas, a_sha, how in state.atlases:
        name = atlas.name
        a_params = {**state.den_params, "atlas": str(atlas.path), "atlas_sha256": a_sha,
                    "atlas_space": cfg.atlas_space, "resampling": how,
                    "parcel_signal": signal, "pearson_correlation": PEARSON,
                    "partial_correlation": PARTIAL, "input_sha256": state.input_sha256}
        a_source: list[Source] = [(Path(atlas.path), None, a_sha)]
        outputs = (
            Derivative(f"atlas-{name}-timeseries", {"atlas": name, "stat": "mean",
                                                    "suffix": "timeseries", "extension": ".tsv"}),
            Derivative(f"atlas-{name}-pearson", {"atlas": name, "stat": "pearsoncorrelation",
                                                 "suffix": "relmat", "extension": ".tsv"}),
            Derivative(f"atlas-{name}-partial", {"atlas": name, "stat": "partialcorrelation",
                                                 "suffix": "relmat", "extension": ".tsv"}),
            Derivative(f"atlas-{name}-coverage", {"atlas": name, "stat": "coverage",
                                                  "suffix": "bold", "extension": ".tsv"}),
        )
        products.append(Product(f"atlas-{name}", "C", _parcels(atlas), reads=("denoised",)))
        steps.append(Step(f"atlas-{name}", outputs, (f"atlas-{name}",), _fixed(a_params),
                          _write_atlas(atlas, a_sha), sources=_fixed_sources(a_source)))
    return PHASES, products, steps
