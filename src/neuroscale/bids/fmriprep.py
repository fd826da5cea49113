"""fMRIPrep derivatives as input (``--derivatives fmriprep=PATH``).

With fMRIPrep's outputs at hand neuroscale uses, for each raw BOLD run, fMRIPrep's
preprocessed series (``*_space-<space>_desc-preproc_bold.nii.gz``), its BOLD brain mask
(``*_space-<space>_desc-brain_mask.nii.gz``) and its confounds table
(``*_desc-confounds_timeseries.tsv``) instead of redoing motion correction, registration and
confound extraction.

Matching a raw run to fMRIPrep's files
--------------------------------------
A derivative matches a raw run when the acquisition entities ``sub``, ``ses``, ``task``,
``acq``, ``ce``, ``rec``, ``dir``, ``run`` agree (index entities compared as numbers, so
fMRIPrep's ``run-1`` matches the raw ``run-01``, as in bids-examples' ``ds000001-fmriprep``
against ``ds001``); an entity present on one side only is a mismatch.  ``echo`` is the
exception: fMRIPrep writes one optimally combined series *without* ``echo`` for a multi-echo
run, so a derivative without ``echo`` matches every echo of its run.

Space choice: ``space=None`` prefers ``MNI152NLin2009cAsym`` (fMRIPrep's default output
space), then ``T1w``, then any other volumetric space (alphabetical), then a file without a
``space`` entity (fMRIPrep < 1.4 / ``boldref`` space).  ``space`` may be given in fMRIPrep's
``--output-spaces`` syntax, ``NAME[:res-N][:den-N][:cohort-N]``.  Among files of one space the
one without ``res`` wins, then the lowest ``res`` label (natural order); pin it with
``:res-N``.  The mask, boldref and confounds are taken with the same entities (the confounds
file carries no space), from the same folder.

References: fMRIPrep's outputs documentation ("Outputs of fMRIPrep", 20.2+ naming); BIDS
derivatives specification (``DatasetType: derivative``, ``GeneratedBy``); XCP-D's input
collection (``xcp_d/utils/bids.py``), which matches on the same entities.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscale.bids.confounds import find_confounds_file
from neuroscale.bids.layout import INDEX_ENTITIES, BoldRun, parse_bids_name
from neuroscale.errors import AnalysisError, BIDSError, ConfigurationError, InputNotFoundError

__all__ = [
    "DEFAULT_SPACES",
    "FmriprepBold",
    "check_fmriprep_dir",
    "find_fmriprep_bold",
    "parse_derivatives_arg",
    "parse_space",
]

#: Space preference when none is asked for: fMRIPrep's default output space first.
DEFAULT_SPACES = ("MNI152NLin2009cAsym", "T1w")
#: Entities that must agree between the raw run and fMRIPrep's file.
_MATCH_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run")
_NIFTI = (".nii.gz", ".nii")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_SPACE_RE = re.compile(r"^[A-Za-z0-9+]+$")


@dataclass(frozen=True)
class FmriprepBold:
    """fMRIPrep's files for one raw BOLD run.

    Attributes
    ----------
    preproc_bold : Path
        ``*_desc-preproc_bold.nii[.gz]``.
    brain_mask : Path
        ``*_desc-brain_mask.nii[.gz]`` of the same space (and ``res``).
    confounds : Path or None
        ``*_desc-confounds_timeseries.tsv`` (or the pre-20.2 ``_regressors.tsv``).
    boldref : Path or None
        ``*_boldref.nii[.gz]`` of the same space, if written.
    space : str or None
        The ``space`` entity of the chosen series (None: no space entity).
    entities : dict of str to str
        All entities of ``preproc_bold``.
    """

    preproc_bold: Path
    brain_mask: Path
    confounds: Path | None
    boldref: Path | None
    space: str | None
    entities: dict[str, str]


def parse_derivatives_arg(values: Iterable[str] | None) -> dict[str, Path]:
    """Parse ``--derivatives NAME=PATH`` values (fMRIPrep / XCP-D syntax).

    Parameters
    ----------
    values : iterable of str or None
        E.g. ``["fmriprep=/data/derivatives/fmriprep"]``.

    Returns
    -------
    dict of str to Path
        ``{"fmriprep": Path("/data/derivatives/fmriprep")}`` (``~`` expanded, existence not
        checked: see :func:`check_fmriprep_dir`).

    Raises
    ------
    ConfigurationError
        A value without ``=``, an empty or malformed name or path, or a name given twice.
    """
    out: dict[str, Path] = {}
    for value in values or ():
        if not isinstance(value, str) or "=" not in value:
            raise ConfigurationError(
                f"--derivatives takes NAME=PATH (e.g. fmriprep=/data/derivatives/fmriprep), "
                f"got {value!r}"
            )
        name, _, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not _NAME_RE.match(name):
            raise ConfigurationError(f"--derivatives: bad name {name!r} in {value!r} "
                                     "(letters, digits, '-', '_' or '.')")
        if not path:
            raise ConfigurationError(f"--derivatives: empty path in {value!r}")
        if name in out:
            raise ConfigurationError(f"--derivatives: {name!r} given twice")
        out[name] = Path(path).expanduser()
    return out


def parse_space(space: str) -> tuple[str, dict[str, str]]:
    """Split fMRIPrep's ``NAME[:res-N][:den-N][:cohort-N]`` space syntax.

    Raises
    ------
    ConfigurationError
        Malformed text.
    """
    parts = str(space).split(":")
    name = parts[0]
    if not _SPACE_RE.match(name):
        raise ConfigurationError(f"bad space {space!r}: expected NAME[:res-N][:den-N]")
    mods: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, val = part.partition("-")
        if key not in ("res", "den", "cohort") or not sep or not _SPACE_RE.match(val):
            raise ConfigurationError(f"bad space modifier {part!r} in {space!r}: expected "
                                     "res-N, den-N or cohort-N")
        mods[key] = val
    return name, mods


def _generated_by_fmriprep(desc: Mapping[str, Any]) -> bool:
    gen = desc.get("GeneratedBy")
    items = gen if isinstance(gen, list) else []
    legacy = desc.get("PipelineDescription")  # BIDS < 1.4
    if isinstance(legacy, dict):
        items = [*items, legacy]
    return any(isinstance(g, dict) and "fmriprep" in str(g.get("Name", "")).lower()
               for g in items)


def check_fmriprep_dir(fmriprep_dir: str | Path) -> Path:
    """Check that a directory is a BIDS derivatives dataset (e.g. fMRIPrep's output).

    Accepted: ``dataset_description.json`` with ``"DatasetType": "derivative"`` or a
    ``GeneratedBy`` (or legacy ``PipelineDescription``) entry named fMRIPrep, as in
    bids-examples' ``ds000001-fmriprep`` (both, fMRIPrep 20.2.0rc0).

    Returns
    -------
    Path
        The directory, absolute.

    Raises
    ------
    InputNotFoundError
        The directory does not exist, is not a directory, has no readable
        ``dataset_description.json``, or that file says neither derivative nor fMRIPrep.
    """
    root = Path(fmriprep_dir).expanduser()
    if not root.exists():
        raise InputNotFoundError("fMRIPrep derivatives directory does not exist", root)
    if not root.is_dir():
        raise InputNotFoundError("fMRIPrep derivatives path is not a directory", root)
    desc_path = root / "dataset_description.json"
    if not desc_path.is_file():
        raise InputNotFoundError("not a BIDS derivatives dataset (no dataset_description.json)",
                                 root)
    try:
        desc = json.loads(desc_path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise InputNotFoundError(f"unreadable dataset_description.json ({exc})", root) from None
    if not isinstance(desc, dict) or not (
        str(desc.get("DatasetType", "")).lower() == "derivative" or _generated_by_fmriprep(desc)
    ):
        raise InputNotFoundError(
            "not a BIDS derivatives dataset: dataset_description.json has neither "
            "DatasetType 'derivative' nor GeneratedBy fMRIPrep", root
        )
    return root.resolve()


def _same(key: str, a: str, b: str) -> bool:
    if a == b:
        return True
    return key in INDEX_ENTITIES and a.isdigit() and b.isdigit() and int(a) == int(b)


def _matches(run_ent: Mapping[str, str], ent: Mapping[str, str]) -> bool:
    for key in _MATCH_ENTITIES:
        a, b = run_ent.get(key), ent.get(key)
        if (a is None) != (b is None):
            return False
        if a is not None and b is not None and not _same(key, a, b):
            return False
    if "echo" in ent:  # a derivative without echo is the optimally combined series
        return "echo" in run_ent and _same("echo", run_ent["echo"], ent["echo"])
    return True


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _func_dirs(root: Path, run: BoldRun) -> list[Path]:
    sub = root / f"sub-{run.subject}"
    dirs = []
    if run.session is not None:
        dirs.append(sub / f"ses-{run.session}" / "func")
    dirs.append(sub / "func")
    return [d for d in dirs if d.is_dir()]


def _companion(folder: Path, ent: Mapping[str, str], desc: str | None, suffix: str) -> Path | None:
    keep = {k: v for k, v in ent.items() if k != "desc"}
    for ext in _NIFTI:
        parts = [f"{k}-{v}" for k, v in keep.items()]
        if desc is not None:
            parts.append(f"desc-{desc}")
        cand = folder / ("_".join([*parts, suffix]) + ext)
        if cand.is_file():
            return cand
    # same entities in another order
    for cand in sorted(folder.iterdir()):
        parsed = parse_bids_name(cand.name)
        if parsed is None or parsed[1] != suffix or parsed[2] not in _NIFTI:
            continue
        e = dict(parsed[0])
        if e.pop("desc", None) != desc:
            continue
        if e == keep:
            return cand
    return None


def find_fmriprep_bold(fmriprep_dir: str | Path, run: BoldRun, *,
                       space: str | None = None) -> FmriprepBold:
    """fMRIPrep's preprocessed BOLD, brain mask, confounds and boldref for a raw run.

    Parameters
    ----------
    fmriprep_dir : str or Path
        fMRIPrep's output directory (the derivatives dataset root).
    run : BoldRun
        The raw run (its entities are matched; see the module docstring).
    space : str, optional
        ``NAME[:res-N][:den-N]``; default: MNI152NLin2009cAsym, then T1w, then any other
        space, then no space entity.

    Returns
    -------
    FmriprepBold

    Raises
    ------
    InputNotFoundError
        ``fmriprep_dir`` is missing or not a derivatives dataset (:func:`check_fmriprep_dir`).
    BIDSError
        No ``desc-preproc_bold`` file matches the run (in the requested space), the chosen
        series has no ``desc-brain_mask`` beside it, or several confounds files match it
        equally; the message names the run and the directory (and the spaces that exist).
    ConfigurationError
        A malformed ``space``.
    """
    root = check_fmriprep_dir(fmriprep_dir)
    want: tuple[str, dict[str, str]] | None = None if space is None else parse_space(space)
    found: list[tuple[Path, dict[str, str]]] = []
    for folder in _func_dirs(root, run):
        for path in sorted(folder.iterdir()):
            parsed = parse_bids_name(path.name)
            if parsed is None:
                continue
            ent, suffix, ext = parsed
            if suffix != "bold" or ext not in _NIFTI or ent.get("desc") != "preproc":
                continue
            if "hemi" in ent or not _matches(run.entities, ent):
                continue
            found.append((path, ent))
    where = f"for {run.relpath} in {root}"
    if not found:
        raise BIDSError(f"no fMRIPrep preprocessed BOLD (desc-preproc_bold) {where}")
    if want is not None:
        name, mods = want
        chosen = [(p, e) for p, e in found if e.get("space") == name
                  and all(_same(k, e.get(k, ""), v) for k, v in mods.items())]
        if not chosen:
            spaces = sorted({":".join([e.get("space", "(none)")]
                                      + [f"{k}-{e[k]}" for k in ("res", "den") if k in e])
                             for _, e in found})
            raise BIDSError(f"no fMRIPrep preprocessed BOLD in space {space!r} {where} "
                            f"(available: {', '.join(spaces)})")
    else:
        def space_rank(e: Mapping[str, str]) -> tuple[int, Any]:
            sp = e.get("space")
            if sp in DEFAULT_SPACES:
                return (DEFAULT_SPACES.index(sp), "")
            if sp is not None:
                return (len(DEFAULT_SPACES), _natural(sp))
            return (len(DEFAULT_SPACES) + 1, "")

        best = min(space_rank(e) for _, e in found)
        chosen = [(p, e) for p, e in found if space_rank(e) == best]
    chosen.sort(key=lambda pe: ("res" in pe[1], _natural(pe[1].get("res", "")),
                                _natural(pe[1].get("den", "")), pe[0].name))
    bold, ent = chosen[0]
    folder = bold.parent
    mask = _companion(folder, ent, "brain", "mask")
    if mask is None:
        raise BIDSError(f"fMRIPrep's brain mask (desc-brain_mask) for {bold.name} is missing "
                        f"{where}")
    boldref = _companion(folder, ent, None, "boldref")

    try:
        confounds = find_confounds_file(bold)
    except AnalysisError as exc:  # several equally specific candidates
        raise BIDSError(f"{exc} ({where})") from None
    return FmriprepBold(preproc_bold=bold, brain_mask=mask, confounds=confounds,
                        boldref=boldref, space=ent.get("space"), entities=dict(ent))
