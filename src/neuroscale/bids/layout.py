"""A lean BIDS index: find the BOLD runs of a dataset, BIDS-App style.

This is the *front door* of the participant-level pipelines.  It does what fMRIPrep and other
BIDS-Apps do with pybids (``BIDSLayout(...).get(suffix="bold", ...)``) for the one query we
need, without indexing the whole dataset: it walks ``sub-*/[ses-*/]func/`` only, so it costs
one ``scandir`` per directory and reads only the JSON sidecars that apply to the runs found.

Rules (BIDS specification, "Common principles" and "The Inheritance Principle"):

* The dataset root must hold ``dataset_description.json`` with ``Name`` and ``BIDSVersion``.
* BOLD runs are ``sub-<label>/[ses-<label>/]func/*_bold.nii[.gz]``.  ``derivatives/``,
  ``sourcedata/``, ``code/`` and dot-directories are never entered (only ``sub-*`` is).
* A metadata file applies to a data file when it sits in the data file's directory or one of
  its parents up to the root, has the same suffix (``bold``), and its entities are a subset of
  the data file's entities.  JSON metadata are merged from the top level down; the closer file
  wins on conflicting keys.  (Reference implementation: pybids
  ``BIDSLayout.get_metadata``, and the specification's inheritance-principle examples.)
* ``*_events.tsv`` follows the same applicability rule; the closest applicable file is used.
* An fMRIPrep ``*_desc-confounds_timeseries.tsv`` (or the pre-20.2 ``_desc-confounds_regressors``)
  beside a preprocessed BOLD file is attached as :attr:`BoldRun.confounds`.

``--bids-filter-file`` follows fMRIPrep's format (``fmriprep/cli/parser.py::_bids_filter``):
``{"bold": {"task": "rest", "run": 1, "session": null, "acquisition": ["a", "b"]}}`` with
pybids entity names; ``null`` means *the entity must be absent*, ``"*"`` means *any value but
present* (fMRIPrep ``_filter_pybids_none_any``: ``Query.NONE`` / ``Query.ANY``) and a list
means *any of*.  Index entities (``run``, ``echo``...) compare as integers, so ``1``
matches ``run-01`` (pybids ``PaddedInt``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from neuroscale.errors import (
    BIDSError,
    ConfigurationError,
    InputNotFoundError,
    MissingMetadataError,
    NoBoldRunError,
)

__all__ = [
    "ENTITY_ALIASES",
    "INDEX_ENTITIES",
    "BoldRun",
    "find_bold_runs",
    "find_t1w",
    "list_participants",
    "load_bids_filter_file",
    "normalize_filters",
    "parse_bids_name",
    "read_dataset_description",
]

log = logging.getLogger(__name__)

_LONG_NAMES: dict[str, str] = {
    "subject": "sub",
    "session": "ses",
    "sample": "sample",
    "task": "task",
    "tracksys": "tracksys",
    "acquisition": "acq",
    "nucleus": "nuc",
    "volume": "voi",
    "ceagent": "ce",
    "tracer": "trc",
    "stain": "stain",
    "reconstruction": "rec",
    "direction": "dir",
    "run": "run",
    "modality": "mod",
    "echo": "echo",
    "flip": "flip",
    "inversion": "inv",
    "mtransfer": "mt",
    "part": "part",
    "processing": "proc",
    "hemisphere": "hemi",
    "space": "space",
    "cohort": "cohort",
    "split": "split",
    "recording": "recording",
    "chunk": "chunk",
    "segmentation": "seg",
    "atlas": "atlas",
    "roi": "roi",
    "seed": "seed",
    "resolution": "res",
    "density": "den",
    "label": "label",
    "from": "from",
    "to": "to",
    "mode": "mode",
    "model": "model",
    "subset": "subset",
    "measure": "meas",
    "statistic": "stat",
    "description": "desc",
}

#: Entity name (pybids / BIDS-schema long form, or the short file-name key) -> short key.
#: Sources: BIDS schema ``objects/entities.yaml``; pybids ``bids/layout/config/bids.json`` and
#: ``derivatives.json`` (whose names are a mix: ``acquisition`` but ``inv``, ``desc``...).
ENTITY_ALIASES: dict[str, str] = {**{v: v for v in _LONG_NAMES.values()}, **_LONG_NAMES}

#: Entities whose values are indices (compared as integers: ``run-01`` == 1).
INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "split", "chunk", "cohort"})

#: Filter keys that are not entities but file properties (pybids accepts them in queries).
_PSEUDO_ENTITIES = frozenset({"suffix", "datatype", "extension"})

#: Top-level keys of an fMRIPrep/niworkflows filter file (query names); only ``bold`` is used.
_FILTER_QUERIES = frozenset({
    "bold", "sbref", "t1w", "t2w", "flair", "fmap", "roi", "dwi", "asl", "m0scan", "pet",
    "t2star",
})

_LABEL_RE = re.compile(r"^[a-zA-Z0-9+]+$")
_ENTITY_RE = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9+]+)$")
_SUFFIX_RE = re.compile(r"^([a-zA-Z0-9]+)(\..*)?$")
_BOLD_EXTENSIONS = (".nii.gz", ".nii")
_CONFOUNDS_DESCS = ("confounds",)
_CONFOUNDS_SUFFIXES = ("timeseries", "regressors")


def parse_bids_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """Split a BIDS file name into entities, suffix and extension.

    Parameters
    ----------
    name : str
        A file name (no directory), e.g. ``"sub-01_ses-1_task-rest_run-02_bold.nii.gz"``.

    Returns
    -------
    (dict, str, str) or None
        ``({"sub": "01", "ses": "1", "task": "rest", "run": "02"}, "bold", ".nii.gz")``; entity
        values are kept as written (zero padding preserved).  ``None`` when the name is not a
        BIDS name (a part without ``key-value``, a repeated entity, a bad suffix).
    """
    if not name or name.startswith("."):
        return None
    parts = name.split("_")
    m = _SUFFIX_RE.match(parts[-1])
    if m is None:
        return None
    suffix, extension = m.group(1), m.group(2) or ""
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        em = _ENTITY_RE.match(part)
        if em is None or em.group(1) in entities:
            return None
        entities[em.group(1)] = em.group(2)
    return entities, suffix, extension


def _is_subset(small: Mapping[str, str], big: Mapping[str, str]) -> bool:
    return all(k in big and _same_value(k, v, big[k]) for k, v in small.items())


def _same_value(key: str, a: str, b: str) -> bool:
    if a == b:
        return True
    if key in INDEX_ENTITIES and a.isdigit() and b.isdigit():
        return int(a) == int(b)
    return False


@dataclass(frozen=True)
class BoldRun:
    """One BOLD run found in a BIDS dataset.

    Parameters
    ----------
    path : Path
        The ``*_bold.nii[.gz]`` file (absolute; symlinks such as git-annex ones not resolved).
    root : Path
        The dataset root (absolute).
    entities : dict of str to str
        Entities of the file name with short keys, in file-name order, values as written
        (``{"sub": "01", "ses": "test", "task": "rest", "run": "02"}``).
    sidecar : dict
        The merged JSON metadata (inheritance principle: top level, then subject, session,
        datatype directory, the file's own ``.json`` last; the closer file wins).
    sidecar_files : tuple of Path
        The JSON files merged into :attr:`sidecar`, in merge order (general to specific).
    events : Path or None
        The applicable ``*_events.tsv`` (closest level), if any.
    confounds : Path or None
        An fMRIPrep ``*_desc-confounds_timeseries.tsv`` beside the file, if any.
    """

    path: Path
    root: Path
    entities: dict[str, str]
    sidecar: dict[str, Any] = field(default_factory=dict)
    sidecar_files: tuple[Path, ...] = ()
    events: Path | None = None
    confounds: Path | None = None

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def relpath(self) -> PurePosixPath:
        """The file's path relative to the dataset root, with ``/`` separators."""
        return PurePosixPath(self.path.relative_to(self.root).as_posix())

    @property
    def subject(self) -> str:
        """The participant label (without ``sub-``)."""
        return self.entities["sub"]

    @property
    def session(self) -> str | None:
        """The session label (without ``ses-``), or None."""
        return self.entities.get("ses")

    @property
    def extension(self) -> str:
        """``".nii.gz"`` or ``".nii"``."""
        return ".nii.gz" if self.path.name.endswith(".nii.gz") else ".nii"

    @property
    def t_r(self) -> float | None:
        """Repetition time in seconds (sidecar ``RepetitionTime``), or None if absent.

        Raises
        ------
        MissingMetadataError
            ``RepetitionTime`` is present but not a positive finite number.
        """
        value = self.sidecar.get("RepetitionTime")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0
        ):
            where = self.sidecar_files[-1] if self.sidecar_files else self.path
            raise MissingMetadataError(
                f"RepetitionTime must be a positive number of seconds, got {value!r}", where
            )
        return float(value)

    def bids_uri(self, dataset: str = "raw") -> str:
        """The BIDS URI of the file, ``bids:<dataset>:<relpath>`` (BIDS >= 1.8, "BIDS URI")."""
        return f"bids:{dataset}:{self.relpath}"

    def __repr__(self) -> str:
        return f"BoldRun({str(self.relpath)!r})"


# -- dataset-level -----------------------------------------------------------------------


def _check_root(bids_dir: str | Path) -> Path:
    root = Path(bids_dir).expanduser()
    if not root.exists():
        raise InputNotFoundError("BIDS directory does not exist", root)
    if not root.is_dir():
        raise BIDSError("not a directory: a BIDS dataset is a directory", root)
    return root.resolve()


def read_dataset_description(bids_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``dataset_description.json`` of a BIDS dataset.

    Parameters
    ----------
    bids_dir : str or Path
        The dataset root.

    Returns
    -------
    dict
        The parsed description (``Name`` and ``BIDSVersion`` guaranteed non-empty strings).

    Raises
    ------
    InputNotFoundError
        ``bids_dir`` does not exist.
    BIDSError
        Not a directory, no ``dataset_description.json``, invalid JSON, or ``Name`` /
        ``BIDSVersion`` missing.
    """
    root = _check_root(bids_dir)
    desc_path = root / "dataset_description.json"
    if not desc_path.is_file():
        raise BIDSError(
            "not a BIDS dataset: dataset_description.json is missing", root
        )
    try:
        desc = json.loads(desc_path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BIDSError(f"not a BIDS dataset: dataset_description.json is not valid JSON "
                        f"({exc})", root) from None
    if not isinstance(desc, dict):
        raise BIDSError("not a BIDS dataset: dataset_description.json is not a JSON object",
                        root)
    missing = [k for k in ("Name", "BIDSVersion")
               if not (isinstance(desc.get(k), str) and desc[k].strip())]
    if missing:
        raise BIDSError(
            f"not a BIDS dataset: dataset_description.json lacks {' and '.join(missing)}", root
        )
    return desc


def list_participants(bids_dir: str | Path) -> list[str]:
    """Participant labels (without ``sub-``) of the ``sub-*`` directories, sorted.

    Raises
    ------
    InputNotFoundError, BIDSError
        As :func:`read_dataset_description`.
    """
    root = _check_root(bids_dir)
    read_dataset_description(root)
    return sorted(
        (e.name[4:] for e in os.scandir(root)
         if e.name.startswith("sub-") and _LABEL_RE.match(e.name[4:]) and e.is_dir()),
        key=_natural_key,
    )


def _natural_key(text: str) -> list[Any]:
    return [(0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


# -- filters -------------------------------------------------------------------------------


def _normalize_value(key: str, value: Any, where: str) -> Any:
    if value is None or isinstance(value, str):
        if key == "extension" and isinstance(value, str) and value not in ("", "*"):
            return value if value.startswith(".") else "." + value
        return value
    if isinstance(value, bool):
        raise ConfigurationError(f"{where}: entity {key!r} cannot be a boolean ({value})")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigurationError(f"{where}: entity {key!r} has an empty list of values")
        out = []
        for v in value:
            if isinstance(v, list | tuple):
                raise ConfigurationError(f"{where}: entity {key!r} has a nested list")
            out.append(_normalize_value(key, v, where))
        return out
    raise ConfigurationError(
        f"{where}: entity {key!r} must be a string, integer, null or a list of them, "
        f"got {type(value).__name__}"
    )


def normalize_filters(filters: Mapping[str, Any] | None, *, where: str = "filters") -> dict[str, Any]:
    """Validate BOLD filters and convert keys to short entity names.

    Parameters
    ----------
    filters : mapping or None
        Either the ``bold`` query alone (``{"task": "rest", "run": 1}``) or a whole filter-file
        mapping (``{"bold": {...}, "t1w": {...}}``; only ``bold`` is used).  Keys are pybids
        long names (``subject``, ``session``, ``acquisition``, ``ceagent``, ``reconstruction``,
        ``direction``...), short names (``sub``, ``ses``, ``acq``...) or the file properties
        ``suffix``, ``datatype``, ``extension``.
    where : str
        Names the source in error messages (e.g. the filter file path).

    Returns
    -------
    dict
        Short key -> ``None`` (must be absent), ``"*"`` (must be present), a string, or a list
        of strings / ``None`` (any of).  Integers become strings.

    Raises
    ------
    ConfigurationError
        An unknown entity, a non-mapping, or a value of the wrong type.
    """
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise ConfigurationError(f"{where}: BIDS filters must be a JSON object")
    if filters and all(isinstance(v, Mapping) for v in filters.values()) and all(
        k in _FILTER_QUERIES for k in filters
    ):
        filters = filters.get("bold") or {}
        if not isinstance(filters, Mapping):
            raise ConfigurationError(f"{where}: the 'bold' query must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in filters.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"{where}: entity names must be strings, got {key!r}")
        if key in _PSEUDO_ENTITIES:
            short = key
        else:
            short = ENTITY_ALIASES.get(key) or ENTITY_ALIASES.get(key.lower(), "")
            if not short:
                raise ConfigurationError(
                    f"{where}: unknown BIDS entity {key!r} (known: "
                    f"{', '.join(_LONG_NAMES)}, their short forms, suffix, datatype, extension)"
                )
        if short in out:
            raise ConfigurationError(f"{where}: entity {key!r} is given twice")
        out[short] = _normalize_value(key, value, where)
    return out


def load_bids_filter_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Load an fMRIPrep-style ``--bids-filter-file``.

    Parameters
    ----------
    path : str or Path
        A JSON file such as ``{"bold": {"task": "oneback", "run": 1, "session": null}}``.
        Top-level keys are query names (``bold``, ``t1w``, ``fmap``, ``sbref``...), each an
        object of entity filters (see :func:`normalize_filters`).

    Returns
    -------
    dict
        ``{query: normalized filters}``; pass it (or its ``"bold"`` entry) to
        :func:`find_bold_runs`.

    Raises
    ------
    InputNotFoundError
        The file does not exist.
    ConfigurationError
        Invalid JSON, not an object of objects, an unknown query name or entity, a bad value.

    Notes
    -----
    Format and ``null`` / ``"*"`` semantics follow fMRIPrep (``fmriprep/cli/parser.py``,
    ``_bids_filter`` and ``_filter_pybids_none_any``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError("BIDS filter file does not exist", path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"BIDS filter file is not valid JSON ({exc})", path) from None
    if not isinstance(raw, dict):
        raise ConfigurationError("BIDS filter file must hold a JSON object like "
                                 '{"bold": {"task": "rest"}}', path)
    out: dict[str, dict[str, Any]] = {}
    for query, sub in raw.items():
        if query not in _FILTER_QUERIES:
            raise ConfigurationError(
                f"unknown query {query!r} in BIDS filter file (expected one of "
                f"{', '.join(sorted(_FILTER_QUERIES))})", path)
        if not isinstance(sub, dict):
            raise ConfigurationError(f"query {query!r} in BIDS filter file must be a JSON "
                                     "object of entities", path)
        out[query] = normalize_filters(sub, where=f"{path} [{query}]")
    return out


def _matches(spec: Any, key: str, actual: str | None) -> bool:
    if spec is None:
        return actual is None
    if isinstance(spec, list):
        return any(_matches(s, key, actual) for s in spec)
    if spec == "*":
        return actual is not None
    return actual is not None and _same_value(key, spec, actual)


# -- discovery -----------------------------------------------------------------------------


class _Index:
    """Per-call caches: directory listings and parsed JSON files."""

    def __init__(self) -> None:
        self._listing: dict[Path, list[tuple[str, dict[str, str], str, str]]] = {}
        self._json: dict[Path, dict[str, Any]] = {}

    def listing(self, directory: Path) -> list[tuple[str, dict[str, str], str, str]]:
        if directory not in self._listing:
            rows = []
            try:
                names = sorted(e.name for e in os.scandir(directory) if not e.is_dir())
            except OSError:
                names = []
            for name in names:
                parsed = parse_bids_name(name)
                if parsed is not None:
                    rows.append((name, *parsed))
            self._listing[directory] = rows
        return self._listing[directory]

    def read_json(self, path: Path) -> dict[str, Any]:
        if path not in self._json:
            try:
                data = json.loads(path.read_text(encoding="utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BIDSError(f"invalid JSON sidecar ({exc})", path) from None
            except OSError as exc:
                raise BIDSError(f"cannot read JSON sidecar ({exc.strerror})", path) from None
            if not isinstance(data, dict):
                raise BIDSError("JSON sidecar is not a JSON object", path)
            self._json[path] = data
        return self._json[path]

    def applicable(self, root: Path, data_dir: Path, entities: Mapping[str, str], suffix: str,
                   extension: str) -> list[Path]:
        """Applicable metadata files, general (top level) to specific (data directory)."""
        rel = data_dir.relative_to(root)
        levels = [root] + [root.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts))]
        found: list[Path] = []
        for level in levels:
            hits = [
                (len(ents), name)
                for name, ents, suf, ext in self.listing(level)
                if suf == suffix and ext == extension and _is_subset(ents, entities)
            ]
            if len(hits) > 1:
                log.debug("several %s%s files apply at %s: %s", suffix, extension, level, hits)
            found.extend(level / name for _, name in sorted(hits))
        return found


def _subject_func_dirs(root: Path, label: str) -> Iterable[Path]:
    sub_dir = root / f"sub-{label}"
    func = sub_dir / "func"
    if func.is_dir():
        yield func
    try:
        sessions = sorted(
            (e.name for e in os.scandir(sub_dir)
             if e.name.startswith("ses-") and e.is_dir()), key=_natural_key
        )
    except OSError:
        sessions = []
    for ses in sessions:
        func = sub_dir / ses / "func"
        if func.is_dir():
            yield func


def find_t1w(bids_dir: str | Path, subject: str, session: str | None = None) -> Path | None:
    """The participant's T1-weighted image, if any.

    Parameters
    ----------
    bids_dir : str or Path
        BIDS dataset root.
    subject : str
        Participant label (without ``sub-``).
    session : str, optional
        The BOLD run's session: a T1w of the same session is preferred, then one without a
        session, then any session's (fMRIPrep uses one anatomical reference per subject).

    Returns
    -------
    Path or None
        ``sub-<label>/[ses-<label>/]anat/*_T1w.nii[.gz]``, the first by name among the
        preferred ones (no ``ce``/``rec``/``acq`` entity first, as a plain acquisition is
        the usual anatomical reference); None when the participant has none.
    """
    sub_dir = Path(bids_dir) / f"sub-{subject}"
    candidates: list[tuple[int, int, str, Path]] = []
    dirs: list[tuple[str | None, Path]] = [(None, sub_dir / "anat")]
    if sub_dir.is_dir():
        dirs += [(d.name[4:], d / "anat") for d in sorted(sub_dir.iterdir())
                 if d.name.startswith("ses-") and d.is_dir()]
    for ses, anat in dirs:
        if not anat.is_dir():
            continue
        for path in sorted(anat.iterdir()):
            parsed = parse_bids_name(path.name)
            if parsed is None or parsed[1] != "T1w" or parsed[2] not in _BOLD_EXTENSIONS:
                continue
            if parsed[0].get("sub") != subject:
                continue
            rank_ses = 0 if (ses is not None and ses == session) else (1 if ses is None else 2)
            extra = sum(k in parsed[0] for k in ("ce", "rec", "acq", "run"))
            candidates.append((rank_ses, extra, path.name, path))
    return min(candidates)[3] if candidates else None


def _find_confounds(index: _Index, directory: Path, entities: Mapping[str, str]) -> Path | None:
    base = {k: v for k, v in entities.items() if k != "desc"}
    best: tuple[int, str] | None = None
    for name, ents, suf, ext in index.listing(directory):
        if ext != ".tsv" or suf not in _CONFOUNDS_SUFFIXES or ents.get("desc") not in _CONFOUNDS_DESCS:
            continue
        rest = {k: v for k, v in ents.items() if k != "desc"}
        if _is_subset(rest, base):
            key = (len(rest) * 2 + (suf == "timeseries"), name)
            if best is None or key > best:
                best = key
    return None if best is None else directory / best[1]


def _describe(labels: Sequence[str] | None, filters: Mapping[str, Any]) -> str:
    who = ("participant(s) " + ", ".join(labels)) if labels else "any participant"
    if filters:
        return f"{who} with filters {json.dumps(filters, sort_keys=True)}"
    return who


def find_bold_runs(
    bids_dir: str | Path,
    participant_labels: Sequence[str] | str | None = None,
    filters: Mapping[str, Any] | None = None,
) -> list[BoldRun]:
    """Find the BOLD runs of a BIDS dataset (raw or fMRIPrep derivatives).

    Parameters
    ----------
    bids_dir : str or Path
        The dataset root (it must hold a valid ``dataset_description.json``).
    participant_labels : sequence of str or str, optional
        BIDS-App ``--participant-label``: labels with or without ``sub-``.  None or empty:
        every participant.
    filters : mapping, optional
        BOLD filters (fMRIPrep ``--bids-filter-file`` semantics, see
        :func:`normalize_filters`): the ``bold`` query or a whole filter-file mapping as
        returned by :func:`load_bids_filter_file`.

    Returns
    -------
    list of BoldRun
        Sorted by participant, session and file name (numbers in natural order).  Both
        ``*_bold.nii.gz`` and ``*_bold.nii`` are found.

    Raises
    ------
    InputNotFoundError
        ``bids_dir`` does not exist.
    BIDSError
        Not a BIDS dataset; a requested participant label does not exist; a sidecar is not
        valid JSON.
    ConfigurationError
        Invalid filters.
    NoBoldRunError
        No BOLD run matches the participants and filters.
    """
    root = _check_root(bids_dir)
    read_dataset_description(root)
    flt = normalize_filters(filters)
    available = list_participants(root)

    if isinstance(participant_labels, str):
        participant_labels = [participant_labels]
    labels: list[str] | None = None
    if participant_labels:
        labels = []
        for raw_label in participant_labels:
            label = str(raw_label).strip()
            label = label[4:] if label.startswith("sub-") else label
            if label not in labels:
                labels.append(label)
        missing = [lab for lab in labels if lab not in available]
        if missing:
            shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
            raise BIDSError(
                f"participant label(s) {', '.join(missing)} not found "
                f"(available: {shown or 'none'})", root
            )
    selected = labels if labels is not None else available

    index = _Index()
    runs: list[BoldRun] = []
    for label in selected:
        for func_dir in _subject_func_dirs(root, label):
            for name, ents, suffix, ext in index.listing(func_dir):
                if suffix != "bold" or ext not in _BOLD_EXTENSIONS:
                    continue
                if ents.get("sub") != label or (
                    func_dir.parent.name.startswith("ses-")
                    and ents.get("ses") != func_dir.parent.name[4:]
                ):
                    log.warning("skipping %s: its entities disagree with its directory",
                                func_dir / name)
                    continue
                props = {"suffix": suffix, "datatype": "func", "extension": ext}
                if not all(_matches(spec, key, props.get(key, ents.get(key)))
                           for key, spec in flt.items()):
                    continue
                json_files = index.applicable(root, func_dir, ents, "bold", ".json")
                sidecar: dict[str, Any] = {}
                for jf in json_files:
                    sidecar.update(index.read_json(jf))
                events = index.applicable(root, func_dir, ents, "events", ".tsv")
                runs.append(BoldRun(
                    path=func_dir / name,
                    root=root,
                    entities=dict(ents),
                    sidecar=sidecar,
                    sidecar_files=tuple(json_files),
                    events=events[-1] if events else None,
                    confounds=_find_confounds(index, func_dir, ents),
                ))
    if not runs:
        raise NoBoldRunError(
            f"no BOLD run (*_bold.nii[.gz]) found for {_describe(labels, flt)}", root
        )
    if labels:
        without = [lab for lab in labels if not any(r.subject == lab for r in runs)]
        if without:
            log.warning("%s: no BOLD run for participant(s) %s", root, ", ".join(without))
    runs.sort(key=lambda r: _natural_key(str(r.relpath)))
    return runs
