"""fMRIPrep confound regressors: find the TSV beside a BOLD run, select columns by strategy.

The named strategies are XCP-D's nuisance-regression configurations (Mehta et al. 2024,
Imaging Neuroscience 2:1-26; Ciric et al. 2017, NeuroImage 154:174-187; Satterthwaite et al.
2013, NeuroImage 64:240-256), copied column for column from the YAML files in
``xcp_d/data/nuisance/`` of PennLINC/xcp_d (``24P.yml``, ``27P.yml``, ``36P.yml``,
``acompcor.yml``, ``acompcor_gsr.yml``, ``aroma.yml``, ``aroma_gsr.yml``, ``gsr_only.yml``)
as of the fix for xcp_d issue #1497 / PR #1498 (August 2025), which made ``acompcor`` take
the *first* five WM and CSF components (``^w_comp_cor_0[0-4]$``; before it was ``0[1-5]``)
and removed the mean WM/CSF signals from ``acompcor_gsr``:

============  ==================================================================
``none``      no regressor
``6P``        6 rigid-body motion parameters (not an XCP-D strategy: Ciric et al.
              2017's 6P model, nilearn ``motion="basic"``)
``24P``       6 motion parameters, their temporal derivatives, and the squares of
              both (``_power2``, ``_derivative1_power2``)
``27P``       24P + mean global, white-matter and CSF signals
``36P``       24P + global/WM/CSF signals with derivatives and squares of both
``acompcor``  6 motion + derivatives (12), the first 5 WM (``w_comp_cor_00-04``)
              and first 5 CSF (``c_comp_cor_00-04``) aCompCor components, and all
              ``cosine`` regressors (aCompCor was estimated on high-passed data)
``acompcor_gsr``  ``acompcor`` + mean global signal
``gsr_only``  mean global signal
``aroma``     WM + CSF signals + ICA-AROMA noise components orthogonalised to the
              signal components (``aroma_orth_motion_*``, fMRIPost-AROMA)
``aroma_gsr`` ``aroma`` + mean global signal
============  ==================================================================

Columns given as ``^...$`` are regular expressions, as in XCP-D's files (matched with
:func:`re.fullmatch` against every column, in file order).  The order of the 24P/36P
expansion columns is normalised to ``x, x_derivative1, x_power2, x_derivative1_power2``.

Custom strategies are read from a file in XCP-D's own nuisance format (the format of the
files above; XCP-D ``--nuisance-regressors PATH.yml``), YAML or the same structure in JSON,
by :func:`load_strategy_file`::

    name: my_strategy
    description: |
        Text for the report.
    confounds:
        preproc_confounds:              # XCP-D >= 0.8: a mapping of named sources
            dataset: preprocessed
            query:
                space: null
                desc: confounds
                extension: .tsv
                suffix: timeseries
            columns:
            - trans_x
            - ^a_comp_cor_0[0-4]$

XCP-D's older list form (``confounds: [{dataset: ..., query: ..., columns: [...]}]``) is
accepted too.  Only the preprocessing confounds table (``dataset: preprocessed``, or
``fmriprep``; ``query`` naming ``desc: confounds`` / ``suffix: timeseries`` if it names them)
is supported; other sources (custom TSVs, fMRIPost-AROMA, rapidtide voxelwise regressors)
are refused with a :class:`~neuroscale.errors.ConfigurationError`.  A path ending in
``.yml``, ``.yaml`` or ``.json`` may be given wherever a strategy name is.

Missing first-row values of the derivative columns (fMRIPrep writes ``n/a``) are filled as
nilearn's ``load_confounds`` fills them: with the value of the second row
(``nilearn/interfaces/fmriprep/load_confounds_utils.py::prepare_output``, nilearn 0.14.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroscale.errors import AnalysisError, ConfigurationError, InputNotFoundError

__all__ = [
    "STRATEGIES",
    "STRATEGY_FILE_SUFFIXES",
    "Strategy",
    "check_confounds_length",
    "find_confounds_file",
    "load_confounds",
    "load_strategy_file",
    "non_steady_state_mask",
    "read_confounds_tsv",
    "select_columns",
]

_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_TISSUE = ("global_signal", "csf", "white_matter")


def _expand(names: Sequence[str], derivatives: bool, squares: bool) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        out.append(n)
        if derivatives:
            out.append(f"{n}_derivative1")
        if squares:
            out.append(f"{n}_power2")
        if derivatives and squares:
            out.append(f"{n}_derivative1_power2")
    return tuple(out)


@dataclass(frozen=True)
class Strategy:
    """A named confound selection.

    Parameters
    ----------
    name : str
        The strategy name (XCP-D's ``--nuisance-regressors`` value).
    columns : tuple of str
        Exact column names, all required.
    patterns : tuple of (str, bool)
        ``(regex, required)``: columns whose whole name matches ``regex`` (XCP-D's
        ``^...$`` entries); ``required`` means at least one column must match.
    aroma : bool
        The patterns select ICA-AROMA columns, which may come from a separate TSV.
    description : str
        One line for reports.
    """

    name: str
    columns: tuple[str, ...]
    patterns: tuple[tuple[str, bool], ...] = ()
    aroma: bool = False
    description: str = ""


_ACOMPCOR = (
    (r"^w_comp_cor_0[0-4]$", True),
    (r"^c_comp_cor_0[0-4]$", True),
    # XCP-D's acompcor.yml: ``^cosine\d+$`` (fMRIPrep >= 1.4 names ``cosine00``); earlier
    # versions of the file used ``^cosine_\d+$``; both spellings are accepted.
    (r"^cosine_?\d+$", False),
)
_AROMA = ((r"^aroma_orth_motion_.*$", True),)

#: The named strategies (see the module docstring for their sources).
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("none", (), description="no nuisance regressors"),
        Strategy("6P", _MOTION, description="6 motion parameters"),
        Strategy("24P", _expand(_MOTION, True, True),
                 description="6 motion parameters, derivatives, and squares of both"),
        Strategy("27P", _expand(_MOTION, True, True) + _TISSUE,
                 description="24P + mean global, white-matter and CSF signals"),
        Strategy("36P", _expand(_MOTION, True, True) + _expand(_TISSUE, True, True),
                 description="24P + global/WM/CSF signals, derivatives, and squares of both"),
        Strategy("acompcor", _expand(_MOTION, True, False), _ACOMPCOR,
                 description="12 motion + 5 WM + 5 CSF aCompCor components + cosine drifts"),
        Strategy("acompcor_gsr", _expand(_MOTION, True, False) + ("global_signal",), _ACOMPCOR,
                 description="acompcor + mean global signal"),
        Strategy("gsr_only", ("global_signal",), description="mean global signal"),
        Strategy("aroma", ("csf", "white_matter"), _AROMA, aroma=True,
                 description="WM + CSF + orthogonalised ICA-AROMA noise components"),
        Strategy("aroma_gsr", ("global_signal", "csf", "white_matter"), _AROMA, aroma=True,
                 description="aroma + mean global signal"),
    )
}


def _is_regex(name: str) -> bool:
    return len(name) > 1 and name.startswith("^") and name.endswith("$")


#: File name endings read as custom strategy files.
STRATEGY_FILE_SUFFIXES = (".yml", ".yaml", ".json")
_PREPROC_DATASETS = ("preprocessed", "fmriprep", "neuroscale")
_ENTRY_KEYS = {"dataset", "query", "columns"}


def _parse_columns(columns: Any, where: str, path: Path) -> list[str]:
    if not isinstance(columns, list) or not columns:
        raise ConfigurationError(f"{where}: 'columns' must be a non-empty list of column "
                                 "names", path)
    out: list[str] = []
    for c in columns:
        if not isinstance(c, str) or not c.strip():
            raise ConfigurationError(f"{where}: column {c!r} is not a non-empty string", path)
        c = c.strip()
        if _is_regex(c):
            try:
                re.compile(c)
            except re.error as exc:
                raise ConfigurationError(f"{where}: bad regular expression {c!r} ({exc})",
                                         path) from None
        out.append(c)
    return out


def _check_entry(entry: Any, where: str, path: Path) -> list[str]:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be a mapping with dataset/query/columns", path)
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown keys {unknown} (allowed: dataset, query, "
                                 "columns)", path)
    dataset = entry.get("dataset", "preprocessed")
    if dataset not in _PREPROC_DATASETS:
        raise ConfigurationError(
            f"{where}: dataset {dataset!r} is not supported; only the preprocessing confounds "
            f"table ({' / '.join(_PREPROC_DATASETS)}) can be used", path)
    query = entry.get("query", {})
    if query is None:
        query = {}
    if not isinstance(query, dict):
        raise ConfigurationError(f"{where}: 'query' must be a mapping", path)
    desc = query.get("desc", query.get("description", "confounds"))
    if desc != "confounds" or query.get("suffix", "timeseries") not in ("timeseries",
                                                                         "regressors"):
        raise ConfigurationError(f"{where}: only the desc-confounds_timeseries table is "
                                 f"supported, the query asks for {query}", path)
    if query.get("extension", ".tsv") != ".tsv":
        raise ConfigurationError(f"{where}: only .tsv confounds are supported (voxelwise "
                                 "regressors are not)", path)
    if "columns" not in entry:
        raise ConfigurationError(f"{where}: 'columns' is missing", path)
    return _parse_columns(entry["columns"], where, path)


def load_strategy_file(path: str | Path) -> Strategy:
    """Read a custom nuisance strategy in XCP-D's YAML format (or the same as JSON).

    Parameters
    ----------
    path : str or Path
        ``.yml``, ``.yaml`` or ``.json`` file (see the module docstring for the format).

    Returns
    -------
    Strategy
        ``name`` (the file's ``name``, else the file stem), exact columns and ``^...$``
        patterns (each required to match at least one column), ``description``.

    Raises
    ------
    InputNotFoundError
        The file does not exist.
    ConfigurationError
        Unreadable or malformed file: not YAML/JSON, not a mapping, unknown top-level keys,
        no ``confounds``, a source other than the preprocessing confounds table, empty or
        non-string columns, a bad regular expression, a column listed twice.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputNotFoundError("nuisance strategy file not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".json":
            import json

            spec = json.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the nuisance strategy file: {exc}".replace(
            "\n", " "), path) from None
    except Exception as exc:  # yaml.YAMLError
        msg = " ".join(str(exc).split())
        raise ConfigurationError(f"not valid YAML: {msg}", path) from None
    if not isinstance(spec, dict):
        raise ConfigurationError("a nuisance strategy file is a mapping with name, "
                                 "description and confounds", path)
    unknown = sorted(set(spec) - {"name", "description", "confounds"})
    if unknown:
        raise ConfigurationError(f"unknown keys {unknown} (allowed: name, description, "
                                 "confounds)", path)
    name = spec.get("name", path.stem.split(".")[0])
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError("'name' must be a non-empty string", path)
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise ConfigurationError("'description' must be a string", path)
    sources = spec.get("confounds")
    if isinstance(sources, dict):
        entries = [(f"confounds.{k}", v) for k, v in sources.items()]
    elif isinstance(sources, list):
        entries = [(f"confounds[{i}]", v) for i, v in enumerate(sources)]
    else:
        raise ConfigurationError("'confounds' must be a mapping of sources (or a list) with "
                                 "columns", path)
    if not entries:
        raise ConfigurationError("'confounds' is empty", path)
    columns: list[str] = []
    for where, entry in entries:
        columns.extend(_check_entry(entry, where, path))
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise ConfigurationError(f"columns listed twice: {dup}", path)
    return Strategy(
        name.strip(),
        tuple(c for c in columns if not _is_regex(c)),
        tuple((c, True) for c in columns if _is_regex(c)),
        description=" ".join(description.split()),
    )


def _is_strategy_file(strategy: Any) -> bool:
    return isinstance(strategy, Path) or (
        isinstance(strategy, str) and strategy.lower().endswith(STRATEGY_FILE_SUFFIXES))


def _resolve_strategy(strategy: str | Sequence[str] | Strategy | Path) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, Path) or _is_strategy_file(strategy):
        return load_strategy_file(str(strategy))
    if isinstance(strategy, str):
        try:
            return STRATEGIES[strategy]
        except KeyError:
            raise ConfigurationError(
                f"unknown confound strategy {strategy!r}; valid strategies: "
                f"{', '.join(STRATEGIES)} (or a list of column names)"
            ) from None
    names: list[Any] = list(strategy)
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError(f"a custom confound strategy is a list of column names, got "
                                 f"{strategy!r}")
    for n in names:
        if _is_regex(n):
            try:
                re.compile(n)
            except re.error as exc:
                raise ConfigurationError(f"bad regular expression {n!r} in confounds: {exc}"
                                         ) from None
    return Strategy(
        "custom",
        tuple(n for n in names if not _is_regex(n)),
        tuple((n, True) for n in names if _is_regex(n)),
        description="custom column list",
    )


def read_confounds_tsv(path: str | Path) -> pd.DataFrame:
    """Read an fMRIPrep confounds TSV (``n/a`` -> NaN).

    Parameters
    ----------
    path : str or Path
        ``*_desc-confounds_timeseries.tsv`` (or the pre-20.2 ``*_desc-confounds_regressors.tsv``).

    Returns
    -------
    pandas.DataFrame
        One row per volume, float64 columns where numeric.

    Raises
    ------
    InputNotFoundError
        The file does not exist.
    AnalysisError
        The file cannot be parsed as a tab-separated table with a header.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError("confounds file not found", path)
    try:
        df = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"cannot read the confounds table: {exc}", path) from None
    if df.shape[1] == 0:
        raise AnalysisError("the confounds table has no columns", path)
    return df


def select_columns(
    columns: Sequence[str],
    strategy: str | Sequence[str] | Strategy | Path,
    path: str | Path | None = None,
) -> list[str]:
    """Names of the confound columns that ``strategy`` selects among ``columns``.

    Parameters
    ----------
    columns : sequence of str
        The columns available (a confounds TSV header, plus AROMA columns if any).
    strategy : str, sequence of str, Strategy or Path
        A key of :data:`STRATEGIES`, a custom list of column names / ``^regex$`` entries, a
        :class:`Strategy`, or an XCP-D-format strategy file (``.yml``/``.yaml``/``.json``).
    path : str or Path, optional
        The file, for error messages.

    Returns
    -------
    list of str
        Exact names first (strategy order), then regex matches (file order).

    Raises
    ------
    ConfigurationError
        Unknown strategy name (the message lists the valid ones), or a malformed custom list.
    AnalysisError
        Required columns are absent (the message names them), or a required pattern matches
        nothing.
    """
    strat = _resolve_strategy(strategy)
    available = list(columns)
    have = set(available)
    missing = [c for c in strat.columns if c not in have]
    chosen = [c for c in strat.columns if c in have]
    unmatched: list[str] = []
    for pattern, required in strat.patterns:
        rx = re.compile(pattern)
        hits = [c for c in available if rx.fullmatch(c) and c not in chosen]
        if required and not hits:
            unmatched.append(pattern)
        chosen.extend(hits)
    if missing or unmatched:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if unmatched:
            parts.append(f"no column matches {unmatched}")
        hint = ""
        if strat.aroma and unmatched:
            hint = (" (the aroma strategies need fMRIPost-AROMA's aroma_orth_motion_* columns: "
                    "pass aroma_path=; fMRIPrep < 23.1's aroma_motion_* columns are the "
                    "non-orthogonalised components, selectable with a custom list)")
        raise AnalysisError(
            f"confound strategy {strat.name!r}: {'; '.join(parts)}{hint}", path
        )
    return chosen


def load_confounds(
    path: str | Path,
    strategy: str | Sequence[str] | Strategy | Path = "36P",
    *,
    aroma_path: str | Path | None = None,
    demean: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Read an fMRIPrep confounds TSV and select the regressors of a strategy.

    Parameters
    ----------
    path : str or Path
        ``*_desc-confounds_timeseries.tsv`` (see :func:`find_confounds_file`).
    strategy : str, sequence of str, Strategy or Path
        ``"none"``, ``"6P"``, ``"24P"``, ``"27P"``, ``"36P"``, ``"acompcor"``,
        ``"acompcor_gsr"``, ``"gsr_only"``, ``"aroma"``, ``"aroma_gsr"`` (see the module
        docstring), a list of column names (entries written ``^...$`` are regexes), a
        :class:`Strategy`, or the path of an XCP-D-format strategy file
        (:func:`load_strategy_file`).
    aroma_path : str or Path, optional
        fMRIPost-AROMA's confounds TSV with ``aroma_orth_motion_*`` columns (same number of
        rows); without it those columns are looked for in ``path``.
    demean : bool
        Subtract each column's mean over all volumes (nilearn ``load_confounds(demean=True)``
        without a sample mask; irrelevant to :func:`neuroscale.analysis.denoise.clean`, which
        z-scores confounds by default).

    Returns
    -------
    confounds : ndarray, shape (n_volumes, n_selected), float64
        Finite values; the first row's NaN (derivatives) filled with the second row's value,
        as nilearn does.
    names : list of str
        The column names, in the order of ``confounds``' columns.

    Raises
    ------
    InputNotFoundError
        ``path``, ``aroma_path`` or the strategy file does not exist.
    ConfigurationError
        Unknown strategy name (the message lists the valid ones); a malformed strategy file.
    AnalysisError
        Required columns missing (named in the message), the AROMA table's row count differs,
        or NaN/inf left after the first-row fill.
    """
    strat = _resolve_strategy(strategy)  # fail on a bad name before touching files
    df = read_confounds_tsv(path)
    if aroma_path is not None:
        aroma = read_confounds_tsv(aroma_path)
        if len(aroma) != len(df):
            raise AnalysisError(
                f"the AROMA table has {len(aroma)} rows but {path} has {len(df)}", aroma_path
            )
        extra = [c for c in aroma.columns if c not in df.columns]
        df = pd.concat([df, aroma[extra]], axis=1)
    names = select_columns(list(df.columns), strat, path)
    if not names:
        return np.zeros((len(df), 0), dtype=np.float64), []
    sel = df[names]
    try:
        arr = sel.to_numpy(dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise AnalysisError(f"non-numeric confound columns: {exc}", path) from None
    if arr.shape[0] >= 2:
        # nilearn prepare_output: "Derivatives have NaN on the first row. Replace them by
        # estimates at second time point"
        first_nan = np.isnan(arr[0])
        arr[0, first_nan] = arr[1, first_nan]
    bad = ~np.isfinite(arr)
    if bad.any():
        cols = [names[j] for j in np.unique(np.nonzero(bad)[1])]
        raise AnalysisError(f"confound columns {cols} contain n/a or infinite values beyond "
                            "the first row", path)
    if demean:
        arr -= arr.mean(axis=0)
    return arr, names


def non_steady_state_mask(path: str | Path) -> np.ndarray:
    """Volumes not flagged by fMRIPrep's ``non_steady_state_outlier*`` columns.

    nilearn's ``load_confounds`` always removes these volumes through its ``sample_mask``
    (``_load_non_steady_state`` + ``extract_outlier_regressors``); pass the result as
    ``sample_mask`` to :func:`neuroscale.analysis.denoise.clean` to do the same.

    Parameters
    ----------
    path : str or Path
        fMRIPrep confounds TSV.

    Returns
    -------
    ndarray of bool, shape (n_volumes,)
        True for volumes to keep (all True when the file has no such column).
    """
    df = read_confounds_tsv(path)
    cols = [c for c in df.columns if str(c).startswith("non_steady_state_outlier")]
    if not cols:
        return np.ones(len(df), dtype=bool)
    flags = df[cols].fillna(0).to_numpy(dtype=np.float64)
    return ~(flags != 0).any(axis=1)


def check_confounds_length(
    confounds: np.ndarray, n_volumes: int, path: str | Path | None = None
) -> None:
    """Raise :class:`AnalysisError` unless ``confounds`` has one row per volume.

    Parameters
    ----------
    confounds : ndarray, shape (n_rows, ...)
        Confound regressors.
    n_volumes : int
        Number of volumes of the BOLD series.
    path : str or Path, optional
        The confounds (or BOLD) file, named in the message.

    Raises
    ------
    AnalysisError
        ``confounds.shape[0] != n_volumes``.
    """
    n_rows = int(np.shape(confounds)[0])
    if n_rows != int(n_volumes):
        raise AnalysisError(
            f"the confounds have {n_rows} rows but the BOLD series has {n_volumes} volumes "
            "(dummy scans removed from one and not the other?)",
            path,
        )


_CONFOUND_SUFFIXES = ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv")
# entities of a preprocessed BOLD file that its confounds file does not carry
_NOT_IN_CONFOUNDS = {"space", "res", "den", "cohort", "desc", "hemi"}


def _entities(stem_parts: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in stem_parts:
        if "-" in part:
            k, v = part.split("-", 1)
            out[k] = v
    return out


def find_confounds_file(bold_path: str | Path) -> Path | None:
    """The fMRIPrep confounds TSV that belongs to a (preprocessed) BOLD file, if any.

    Looks in the BOLD file's directory for ``*_desc-confounds_timeseries.tsv`` and the
    pre-20.2 name ``*_desc-confounds_regressors.tsv`` whose entities (``sub``, ``ses``,
    ``task``, ``acq``, ``run``...) all appear, with the same values, in the BOLD file name;
    ``space``/``res``/``den``/``cohort``/``desc``/``hemi`` of the BOLD file are ignored.  The
    candidate with the most matching entities wins, ``_timeseries`` before ``_regressors``
    (as nilearn's ``load_confounds_utils._get_file_name`` ranks candidates).

    Parameters
    ----------
    bold_path : str or Path
        e.g. ``sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz``.

    Returns
    -------
    Path or None
        The confounds file, or None when there is none.

    Raises
    ------
    AnalysisError
        Several equally specific candidates (the message lists them).
    """
    bold_path = Path(bold_path)
    folder = bold_path.parent
    if not folder.is_dir():
        return None
    stem = bold_path.name.split(".", 1)[0]
    bold_ent = {k: v for k, v in _entities(stem.split("_")).items()
                if k not in _NOT_IN_CONFOUNDS}
    # fast path: the canonical name
    prefix = "_".join(f"{k}-{v}" for k, v in bold_ent.items())
    for suffix in _CONFOUND_SUFFIXES if prefix else ():
        cand = folder / f"{prefix}{suffix}"
        if cand.is_file():
            return cand
    ranked: list[tuple[int, int, Path]] = []
    for rank, suffix in enumerate(_CONFOUND_SUFFIXES):
        for cand in folder.glob(f"*{suffix}"):
            ent = _entities(cand.name[: -len(suffix)].split("_"))
            if ent and all(bold_ent.get(k) == v for k, v in ent.items()):
                ranked.append((len(ent), -rank, cand))
    if not ranked:
        return None
    ranked.sort(key=lambda t: (t[0], t[1]), reverse=True)
    best = [c for n, r, c in ranked if (n, r) == ranked[0][:2]]
    if len(best) > 1:
        raise AnalysisError(
            f"several confounds files match equally: {sorted(p.name for p in best)}", bold_path
        )
    return best[0]
