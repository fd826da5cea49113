"""BIDS-Derivatives naming and the derivative ``dataset_description.json``.

File names follow the BIDS entity order (BIDS specification, "Entity table" /
schema ``rules/entities.yaml``) extended, for the derivative entities that the specification
does not (yet) order, the way fMRIPrep and XCP-D write them (XCP-D
``xcp_d/data/xcp_d_bids_config.json`` and its documented outputs, BEP012 / BEP017)::

    sub ses sample task tracksys acq nuc voi ce trc stain rec dir run mod echo flip inv mt part
    proc hemi space cohort atlas seg roi seed res den label from to mode split recording chunk
    model subset meas stat desc

``seed`` (seed-based connectivity maps, ``seed-<label>``) is not a BIDS entity; it sits with
the other region entities (``atlas``, ``seg``, ``roi``).

``desc`` always comes last (BIDS: "desc" is the last entity of the table), preceded by
``stat`` as in XCP-D (``..._space-X_den-91k_stat-alff_desc-smooth_boldmap.dscalar.nii``).
Examples::

    sub-02/func/sub-02_task-oneback_run-1_stat-alff_boldmap.nii.gz
    sub-02/func/sub-02_task-oneback_run-1_desc-brain_mask.nii.gz
    sub-02/func/sub-02_task-oneback_run-1_atlas-AAL_stat-pearsoncorrelation_relmat.tsv
    sub-01/ses-test/func/sub-01_ses-test_task-rest_desc-qc_bold.json
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neuroscale import __version__
from neuroscale.bids.layout import ENTITY_ALIASES, INDEX_ENTITIES
from neuroscale.errors import ConfigurationError, InputNotFoundError
from neuroscale.io.atomic import atomic_write_text

__all__ = [
    "BIDS_VERSION",
    "DERIVATIVE_ENTITY_ORDER",
    "RAW_DATASET_NAME",
    "code_commit",
    "dataset_link_names",
    "derivative_name",
    "derivative_path",
    "sanitize_label",
    "write_dataset_description",
]

log = logging.getLogger(__name__)

#: The BIDS version the derivative layout and ``bids:`` URIs follow.
BIDS_VERSION = "1.10.0"

#: Name under which the (first) input dataset is linked in ``DatasetLinks``; provenance
#: sidecars refer to its files as ``bids:raw:<relpath>``.
RAW_DATASET_NAME = "raw"

#: Entity order of derivative file names (see the module docstring for the sources).
DERIVATIVE_ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain",
    "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space",
    "cohort", "atlas", "seg", "roi", "seed", "res", "den", "label", "from", "to", "mode", "split",
    "recording", "chunk", "model", "subset", "meas", "stat", "desc",
)
_ORDER_INDEX = {k: i for i, k in enumerate(DERIVATIVE_ENTITY_ORDER)}

_LABEL_RE = re.compile(r"^[a-zA-Z0-9+]+$")
_SUFFIX_RE = re.compile(r"^[a-zA-Z0-9]+$")
_EXTENSION_RE = re.compile(r"^(\.[a-zA-Z0-9]+)*$")
_DATATYPE_RE = re.compile(r"^[a-z]+$")


def sanitize_label(text: str) -> str:
    """Make a BIDS label out of arbitrary text: keep ASCII letters and digits only.

    ``"HarvardOxford-cort-maxprob_thr0"`` -> ``"HarvardOxfordcortmaxprobthr0"`` (the rule
    XCP-D and nilearn's BIDS writers use for atlas names).

    Raises
    ------
    ConfigurationError
        Nothing is left.
    """
    label = re.sub(r"[^a-zA-Z0-9]", "", str(text))
    if not label:
        raise ConfigurationError(f"cannot make a BIDS label from {text!r}")
    return label


def _normalize_entities(entities: Mapping[str, Any], keep_none: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entities.items():
        short = ENTITY_ALIASES.get(key)
        if short is None or short not in _ORDER_INDEX:
            raise ConfigurationError(
                f"unknown BIDS entity {key!r} for a derivative file name (known: "
                f"{', '.join(DERIVATIVE_ENTITY_ORDER)})"
            )
        if value is None:
            if keep_none:
                out[short] = None
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigurationError(
                f"entity {short!r} must be a string or an integer, got {type(value).__name__}"
            )
        text = str(value)
        if short in INDEX_ENTITIES:
            if not text.isdigit():
                raise ConfigurationError(
                    f"entity {short!r} is an index and must be a non-negative integer, "
                    f"got {value!r}"
                )
        elif not _LABEL_RE.match(text):
            raise ConfigurationError(
                f"entity {short}-{text!r} is not a BIDS label (letters and digits only; "
                "see neuroscale.bids.derivatives.sanitize_label)"
            )
        out[short] = text
    return out


def _merged_entities(entities: Mapping[str, Any], inherit_desc: bool,
                     overrides: Mapping[str, Any]) -> dict[str, str]:
    ents = _normalize_entities(entities)
    if not inherit_desc:
        ents.pop("desc", None)
    for key, value in _normalize_entities(overrides, keep_none=True).items():
        if value is None:
            ents.pop(key, None)
        else:
            ents[key] = value
    return ents


def derivative_name(
    entities: Mapping[str, Any],
    *,
    suffix: str,
    extension: str,
    inherit_desc: bool = False,
    **overrides: Any,
) -> str:
    """Build a derivative file name from source entities plus overrides.

    Parameters
    ----------
    entities : mapping
        Source entities (short keys such as ``BoldRun.entities``, or pybids long names).
    suffix : str
        The BIDS suffix (``"boldmap"``, ``"mask"``, ``"bold"``, ``"timeseries"``,
        ``"relmat"``...).
    extension : str
        ``".nii.gz"``, ``".tsv"``, ``".json"``... (``""`` for none).
    inherit_desc : bool
        Keep the source's ``desc`` (default False: a source ``desc-preproc`` describes the
        source's processing, not this derivative's; pass ``desc=`` to set one).
    **overrides
        Entities to add or replace (``stat="alff"``, ``atlas="AAL"``, ``desc="brain"``,
        ``space="MNI152NLin2009cAsym"``); ``None`` removes an entity.  Long names are
        accepted; use ``**{"from": ...}`` for the Python keyword.

    Returns
    -------
    str
        e.g. ``"sub-02_task-oneback_run-1_stat-alff_boldmap.nii.gz"``.

    Raises
    ------
    ConfigurationError
        Unknown entity, a value that is not a BIDS label/index, no ``sub``, bad suffix or
        extension.
    """
    ents = _merged_entities(entities, inherit_desc, overrides)
    if "sub" not in ents:
        raise ConfigurationError("a derivative file name needs the 'sub' entity")
    if not _SUFFIX_RE.match(suffix or ""):
        raise ConfigurationError(f"invalid BIDS suffix {suffix!r} (letters and digits only)")
    if not _EXTENSION_RE.match(extension):
        raise ConfigurationError(f"invalid extension {extension!r} (e.g. '.nii.gz', '.tsv')")
    parts = [f"{k}-{ents[k]}" for k in sorted(ents, key=_ORDER_INDEX.__getitem__)]
    return "_".join([*parts, suffix]) + extension


def derivative_path(
    out_dir: str | Path,
    entities: Mapping[str, Any],
    *,
    suffix: str,
    extension: str,
    datatype: str = "func",
    inherit_desc: bool = False,
    **overrides: Any,
) -> Path:
    """The full path of a derivative file: ``OUT/sub-X/[ses-Y/]<datatype>/<name>``.

    Parameters
    ----------
    out_dir : str or Path
        The derivative dataset root (e.g. ``<output_dir>`` of the BIDS-App).
    entities, suffix, extension, inherit_desc, **overrides
        See :func:`derivative_name`.
    datatype : str
        The datatype directory (``"func"``, ``"anat"``, ``"figures"``...).

    Returns
    -------
    Path
        Nothing is created on disk.

    Raises
    ------
    ConfigurationError
        See :func:`derivative_name`; or an invalid ``datatype``.

    Examples
    --------
    >>> derivative_path("OUT", {"sub": "02", "task": "oneback", "run": "1"},
    ...                 suffix="boldmap", extension=".nii.gz", stat="alff").as_posix()
    'OUT/sub-02/func/sub-02_task-oneback_run-1_stat-alff_boldmap.nii.gz'
    """
    name = derivative_name(entities, suffix=suffix, extension=extension,
                           inherit_desc=inherit_desc, **overrides)
    if not _DATATYPE_RE.match(datatype):
        raise ConfigurationError(f"invalid BIDS datatype directory {datatype!r}")
    ents = _merged_entities(entities, inherit_desc, overrides)
    directory = Path(out_dir) / f"sub-{ents['sub']}"
    if "ses" in ents:
        directory = directory / f"ses-{ents['ses']}"
    return directory / datatype / name


# -- dataset_description.json ------------------------------------------------------------


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=8)
def _git_commit(source_dir: str) -> str | None:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        top = subprocess.run(
            ["git", "-C", source_dir, "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=5, env=env, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = top.stdout.split()
    if top.returncode != 0 or len(lines) != 2 or not re.fullmatch(r"[0-9a-f]{40}", lines[1]):
        return None
    toplevel = Path(lines[0]).resolve()
    src = Path(source_dir).resolve()
    # guard: the checkout must be *this* package's source tree (src layout or flat layout),
    # not an unrelated repository that happens to contain site-packages.
    if src not in (toplevel / "src" / src.name, toplevel / src.name):
        return None
    commit = lines[1]
    try:
        dirty = subprocess.run(
            ["git", "-C", source_dir, "status", "--porcelain", "--untracked-files=no", "--",
             "."],
            capture_output=True, text=True, timeout=5, env=env, check=False,
        )
        if dirty.returncode == 0 and dirty.stdout.strip():
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return commit


def code_commit(source_dir: str | Path | None = None) -> str | None:
    """The git commit of neuroscale's source tree, when it is run from a git checkout.

    Parameters
    ----------
    source_dir : str or Path, optional
        The package directory (default: the installed ``neuroscale`` package).

    Returns
    -------
    str or None
        40 hex digits, with ``"-dirty"`` appended when tracked files under the package differ
        from the commit; None when not a git checkout of this package, git is missing, or it
        fails (never raises).  Cached per process.

    Notes
    -----
    Runs ``git rev-parse --show-toplevel HEAD`` and ``git status --porcelain -uno`` with
    ``GIT_OPTIONAL_LOCKS=0`` (read-only: no index refresh is written).
    """
    return _git_commit(str(Path(source_dir) if source_dir is not None else _package_dir()))


def _source_mapping(source_dirs: Any) -> dict[str, Path]:
    if isinstance(source_dirs, str | os.PathLike):
        source_dirs = [source_dirs]
    if isinstance(source_dirs, Mapping):
        out = {}
        for name, path in source_dirs.items():
            if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_-]+", name):
                raise ConfigurationError(f"invalid dataset link name {name!r}")
            out[name] = Path(path)
        return out
    return dataset_link_names(list(source_dirs))


def dataset_link_names(source_dirs: Sequence[str | Path]) -> dict[str, Path]:
    """Name the source datasets for ``DatasetLinks``: the first is ``"raw"``.

    Later ones are named after their directory (letters and digits), made unique with a
    number.  Provenance sidecars use these names in ``bids:<name>:<path>`` URIs.
    """
    out: dict[str, Path] = {}
    for i, path in enumerate(source_dirs):
        p = Path(path)
        if i == 0:
            name = RAW_DATASET_NAME
        else:
            base = re.sub(r"[^a-zA-Z0-9]", "", p.resolve().name) or "source"
            name, n = base, 2
            while name in out:
                name, n = f"{base}{n}", n + 1
        out[name] = p
    return out


def _doi(desc: Mapping[str, Any]) -> str | None:
    doi = desc.get("DatasetDOI")
    if not isinstance(doi, str) or not doi.strip():
        return None
    doi = doi.strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "http://dx.doi.org/",
                   "https://dx.doi.org/"):
        if doi.startswith(prefix):
            doi = doi[len(prefix):]
    return doi if doi.startswith("doi:") else f"doi:{doi}"


def write_dataset_description(
    out_dir: str | Path,
    source_dirs: Sequence[str | Path] | Mapping[str, str | Path] | str | Path,
    *,
    name: str = "neuroscale",
    version: str | None = None,
    code_url: str | None = None,
    commit: str | None | bool = True,
    description: str | None = None,
    container: Mapping[str, Any] | None = None,
) -> Path:
    """Write the derivative dataset's ``dataset_description.json`` atomically.

    Parameters
    ----------
    out_dir : str or Path
        The derivative dataset root (created if needed).
    source_dirs : path, sequence of paths or mapping of name to path
        The input dataset(s).  A sequence is named by :func:`dataset_link_names` (the first is
        ``"raw"``).  Each must exist; its ``DatasetDOI`` (if any) is recorded.
    name : str
        The pipeline name (``GeneratedBy[0].Name``; the dataset is named
        ``"<name> derivatives"``).
    version : str, optional
        The pipeline version (default: ``neuroscale.__version__``).
    code_url : str, optional
        ``GeneratedBy[0].CodeURL``.
    commit : str, None or bool
        The code commit, recorded in ``GeneratedBy[0].Description`` (BIDS has no commit field);
        True (default): :func:`code_commit`, omitted when not a git checkout; None/False: omit.
    description : str, optional
        Replaces the default ``GeneratedBy[0].Description`` text (the commit is appended).
    container : mapping, optional
        ``GeneratedBy[0].Container`` (``{"Type": "docker", "Tag": "..."}``).

    Returns
    -------
    Path
        ``out_dir/dataset_description.json``.

    Raises
    ------
    InputNotFoundError
        A source directory does not exist.
    ConfigurationError
        An invalid dataset link name.

    Notes
    -----
    Fields per BIDS "Derived dataset and pipeline description": ``Name``, ``BIDSVersion``,
    ``DatasetType: "derivative"``, ``GeneratedBy`` (``Name``, ``Version``, ``Description``,
    ``CodeURL``, ``Container``), ``SourceDatasets`` (``URL``, ``DOI``) and ``DatasetLinks``
    (required when ``bids:<name>:`` URIs are used, as the provenance sidecars do).
    """
    if version is None:
        version = __version__
    sources = _source_mapping(source_dirs)
    if commit is True:
        commit = code_commit()
    elif commit is False:
        commit = None

    source_entries: list[dict[str, str]] = []
    links: dict[str, str] = {}
    for link_name, path in sources.items():
        if not path.is_dir():
            raise InputNotFoundError("source dataset directory does not exist", path)
        uri = path.resolve().as_uri()
        entry = {"URL": uri}
        desc_file = path / "dataset_description.json"
        try:
            desc = json.loads(desc_file.read_text(encoding="utf-8-sig"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            desc = {}
        if isinstance(desc, dict):
            doi = _doi(desc)
            if doi:
                entry["DOI"] = doi
        source_entries.append(entry)
        links[link_name] = uri

    text = description or f"{name}: out-of-core, Dask-based analysis of BIDS fMRI data"
    if commit:
        text = f"{text} (git commit {commit})"
    generated: dict[str, Any] = {"Name": name, "Version": str(version), "Description": text}
    if code_url:
        generated["CodeURL"] = code_url
    if container:
        generated["Container"] = dict(container)
    payload = {
        "Name": f"{name} derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": source_entries,
        "DatasetLinks": links,
    }
    target = Path(out_dir) / "dataset_description.json"
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    return target
