"""Shared harness of the table-driven hostile-input tests (issue "trust what exists").

Each ``tests/hostile/test_hostile_*.py`` module holds a table of :class:`Case` rows. A case builds its
malformed input from the real example shipped in ``examples/`` (cropped to a few volumes so a run takes
seconds), runs the ``neuroscale`` command line as a user would (a subprocess, its own LocalCluster unless
the case says otherwise) and asserts, through :func:`check_failure`:

* the documented exit code;
* one clear line on the terminal that matches the case's message and names the offending file, and no
  traceback (ours or a Dask worker's ``distributed.worker - ERROR`` block);
* that nothing half-written or misleading is left in the output directory (:func:`assert_no_misleading_outputs`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ds-studyforrest-oneback"
EXAMPLE_ATLAS = REPO / "examples" / "atlas" / "aal.nii.gz"
BOLD_REL = Path("sub-02") / "func" / "sub-02_task-oneback_run-1_bold.nii.gz"
T1W_REL = Path("sub-02") / "anat" / "sub-02_T1w.nii.gz"
#: options that keep a case fast: no T1w processing, no motion correction, one worker, no report
FAST = ["--no-registration", "--no-motion-correction", "--no-progress", "--n-workers", "1",
        "--no-centrality"]

_ERROR_LINE = re.compile(r"^neuroscale(?: catalog)?: (?:error|.*FAILED)")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|distributed\.\w+(\.\w+)* - ERROR")


@dataclass
class CliResult:
    """What a user sees of one command."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def terminal(self) -> str:
        return self.stdout + self.stderr

    def error_lines(self) -> list[str]:
        """The lines of stderr that report an error or a failed run (each once)."""
        return list(dict.fromkeys(line for line in self.stderr.splitlines() if _ERROR_LINE.match(line)))


@dataclass
class Case:
    """One hostile input: how to build it, and what the user must be told.

    ``make(root)`` receives a fresh directory holding ``bids/`` (the cropped example) and returns the
    command-line arguments after ``neuroscale`` (paths may be absolute). ``message`` is a regular
    expression the one error line must match; ``names`` a substring it must contain (the offending file
    or option); ``exit_code`` the documented code.
    """

    id: str
    make: Callable[[Path], Sequence[str]]
    exit_code: int
    message: str
    names: str | None = None
    #: extra checks on the finished case: ``check(root, result)``
    check: Callable[[Path, CliResult], None] | None = None
    timeout: float = 300.0
    marks: list = field(default_factory=list)


def small_bids(root: Path, n_volumes: int = 40, *, with_t1w: bool = True) -> Path:
    """Copy the shipped example into ``root / "bids"`` with its BOLD cropped to ``n_volumes``.

    Returns the BIDS root. The cropped BOLD keeps the example's header (int16, scaling, affine, TR).
    """
    bids = root / "bids"
    shutil.copytree(EXAMPLE, bids, ignore=None if with_t1w else shutil.ignore_patterns("anat"))
    bold = bids / BOLD_REL
    img = nib.load(str(EXAMPLE / BOLD_REL))
    data = np.asarray(img.dataobj.get_unscaled()[..., :n_volumes])
    out = nib.Nifti1Image(data, img.affine, img.header.copy())
    out.header.set_data_dtype(img.get_data_dtype())
    out.header.set_slope_inter(*img.header.get_slope_inter())
    nib.save(out, str(bold))
    return bids


def bold_path(bids: Path) -> Path:
    return bids / BOLD_REL


def rewrite_bold(bids: Path, data: np.ndarray | None = None, *, affine: np.ndarray | None = None,
                 header_edit: Callable[[nib.Nifti1Header], None] | None = None,
                 dtype: object | None = None) -> Path:
    """Rewrite the BOLD of ``bids`` with new data, affine or header fields (scaling removed)."""
    path = bold_path(bids)
    img = nib.load(str(path))
    arr = np.asarray(img.get_fdata(dtype=np.float32)) if data is None else data
    hdr = img.header.copy()
    new = nib.Nifti1Image(arr, img.affine if affine is None else affine, hdr)
    new.header.set_data_dtype(dtype if dtype is not None else arr.dtype)
    new.header.set_slope_inter(1.0, 0.0)
    if header_edit is not None:
        header_edit(new.header)
    nib.save(new, str(path))
    return path


def neuroscale_command() -> list[str]:
    exe = Path(sys.executable).with_name("neuroscale")
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from neuroscale.cli.main import main; sys.exit(main())"]


def run_cli(args: Sequence[str], *, cwd: Path | None = None, timeout: float = 300.0,
            env: dict[str, str] | None = None) -> CliResult:
    """Run ``neuroscale ARGS`` as a user would; capture what the terminal shows."""
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([*neuroscale_command(), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)
    return CliResult(list(map(str, args)), proc.returncode, proc.stdout, proc.stderr)


def assert_no_misleading_outputs(out_dir: Path) -> None:
    """Nothing under ``out_dir`` looks complete without being so.

    No temporary leftovers (``.tmp-*``), every derivative NIfTI/TSV has its JSON sidecar, and every NIfTI
    left is all finite (a NaN map that looks like a result is worse than none).
    """
    if not out_dir.exists():
        return
    for path in out_dir.rglob("*"):
        assert not path.name.startswith((".tmp-", ".old-")), f"half-written file left: {path}"
        if path.is_dir() or path.parent == out_dir:
            continue
        if path.name.endswith((".nii.gz", ".nii", ".tsv")):
            stem = re.sub(r"\.(nii\.gz|nii|tsv)$", "", path.name)
            sidecar = path.with_name(stem + ".json")
            assert sidecar.is_file(), f"derivative without its provenance sidecar: {path}"
            json.loads(sidecar.read_text())
        if path.name.endswith((".nii.gz", ".nii")):
            data = np.asarray(nib.load(str(path)).dataobj)
            assert np.isfinite(data).all(), f"non-finite values in a derivative: {path}"


def check_failure(case: Case, result: CliResult, out_dir: Path | None) -> None:
    """The assertions every failing case shares (see the module docstring)."""
    shown = result.terminal
    assert result.returncode == case.exit_code, (
        f"{case.id}: exit {result.returncode}, expected {case.exit_code}\n{shown[-3000:]}")
    assert not _TRACEBACK.search(shown), f"{case.id}: traceback on the terminal\n{shown[-3000:]}"
    lines = result.error_lines()
    matching = [line for line in lines if re.search(case.message, line)]
    assert matching, f"{case.id}: no error line matches {case.message!r}\n{result.stderr[-3000:]}"
    if case.names is not None:
        assert any(case.names in line for line in matching), (
            f"{case.id}: the error line does not name {case.names!r}: {matching}")
    if out_dir is not None:
        assert_no_misleading_outputs(out_dir)
    if case.check is not None:
        case.check(out_dir.parent if out_dir is not None else Path("."), result)


def check_success(result: CliResult, *, warning: str | None = None) -> None:
    """A run that must succeed (exit 0), without a traceback, optionally with a warning shown."""
    shown = result.terminal
    assert result.returncode == 0, f"exit {result.returncode}\n{shown[-3000:]}"
    assert not _TRACEBACK.search(shown), f"traceback on the terminal\n{shown[-3000:]}"
    if warning is not None:
        assert re.search(warning, shown), f"no warning matching {warning!r}\n{shown[-3000:]}"


#: JSON keys that say when or how long, not what (left out of :func:`output_differences`)
_VOLATILE_KEYS = re.compile(r"^(Started|Ended|Timings_s|.*Seconds|.*_s|Date.*|Host.*)$")


def _comparable_json(value: object, roots: list[tuple[str, str]]) -> object:
    if isinstance(value, dict):
        return {k: _comparable_json(v, roots) for k, v in value.items()
                if not _VOLATILE_KEYS.match(str(k))}
    if isinstance(value, list):
        return [_comparable_json(v, roots) for v in value]
    if isinstance(value, str):
        for root, placeholder in roots:
            value = value.replace(root, placeholder)
        # the code's git commit (it moves when a commit lands between two runs of a test)
        value = re.sub(r"git commit [0-9a-f]{7,40}(-dirty)?", "git commit <COMMIT>", value)
    return value


def output_differences(first: Path, second: Path) -> list[str]:
    """Every difference between two output directories of the same analysis, one line each.

    NIfTI files: the same shape, dtype, affine and exactly equal voxel arrays; TSV and text
    files: the same bytes (HDF5 transforms: the same bytes but their write times,
    :func:`neuroscale.preproc.anat.transform_sha256`); JSON files: equal values, except the keys
    that hold times (``Started``, ``Ended``, ``Timings_s``...), with each run's own directory
    (and its ``_work`` twin) and the code's git commit written as placeholders.  HTML reports
    and figures are not compared.
    Returns an empty list when the two are the same.
    """
    roots = sorted([(str(first) + "_work", "<WORK>"), (str(second) + "_work", "<WORK>"),
                    (str(first), "<OUT>"), (str(second), "<OUT>")], key=lambda r: -len(r[0]))
    files = [{p.relative_to(root) for p in root.rglob("*") if p.is_file()}
             for root in (first, second)]
    out = [f"{rel}: only in {first if rel in files[0] else second}"
           for rel in sorted(files[0] ^ files[1])]
    for rel in sorted(files[0] & files[1]):
        a, b = first / rel, second / rel
        if rel.name.endswith((".nii.gz", ".nii")):
            ia, ib = nib.load(str(a)), nib.load(str(b))
            da, db = np.asarray(ia.dataobj), np.asarray(ib.dataobj)
            if da.shape != db.shape or da.dtype != db.dtype:
                out.append(f"{rel}: shape/dtype {da.shape} {da.dtype} vs {db.shape} {db.dtype}")
            elif not np.array_equal(da, db, equal_nan=True):
                diff = np.abs(da.astype(np.float64) - db.astype(np.float64))
                out.append(f"{rel}: {int((diff > 0).sum())} of {diff.size} voxels differ "
                           f"(max |difference| {float(np.nanmax(diff)):.3g})")
            elif not np.array_equal(ia.affine, ib.affine):
                out.append(f"{rel}: affines differ")
        elif rel.name.endswith(".json"):
            ja = _comparable_json(json.loads(a.read_text()), roots)
            jb = _comparable_json(json.loads(b.read_text()), roots)
            if ja != jb:
                keys = (sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k))
                        if isinstance(ja, dict) and isinstance(jb, dict) else [])
                out.append(f"{rel}: JSON values differ {keys[:10]}")
        elif rel.name.endswith((".html", ".svg", ".png")):
            continue
        elif rel.name.endswith(".h5"):  # HDF5 keeps its write times in the file
            from neuroscale.preproc.anat import transform_sha256

            if transform_sha256(a) != transform_sha256(b):
                out.append(f"{rel}: transforms differ")
        elif a.read_bytes() != b.read_bytes():
            out.append(f"{rel}: contents differ")
    return out
