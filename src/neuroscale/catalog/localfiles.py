"""The local files an ingest reads: walking directory trees, reading regular files safely.

Only regular files are ingested; devices, FIFOs, sockets, broken symlinks and symlinks that
resolve outside the walked directory are reported as skipped, with the reason.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from neuroscale.catalog.paths import check_object_name
from neuroscale.catalog.results import IngestReport
from neuroscale.errors import InputNotFoundError


def file_kind(path: Path) -> str:
    """What ``path`` is, in words (it is not a regular file).

    Parameters
    ----------
    path : Path

    Returns
    -------
    str
        e.g. ``"named pipe"``, ``"directory behind a symlink"``, ``"unreadable"``.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return "unreadable"
    for test, kind in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return kind + (" behind a symlink" if path.is_symlink() else "")
    return "special file"


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file ``path``, opened without blocking (a file replaced by a
    FIFO since the walk would block an ordinary open for ever) and checked to be regular.

    Parameters
    ----------
    path : Path

    Returns
    -------
    bytes

    Raises
    ------
    InputNotFoundError
        ``path`` is no longer a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputNotFoundError(f"not a regular file any more ({file_kind(path)})", path)
        os.set_blocking(fd, True)
        return fh.readall()


def walk(path: Path, report: IngestReport, name: str | None) -> list[tuple[Path, str, int]]:
    """(file, object name, size in bytes) of every regular file under ``path``.

    A directory's files are named by their path relative to it, in sorted order; symlinks
    that resolve outside it, and what is not a regular file, are added to
    ``report.skipped`` with the reason.

    Parameters
    ----------
    path : Path
        A file or a directory.
    report : IngestReport
        Receives the skipped paths.
    name : str or None
        Object name of ``path`` when it is a file (default: its file name).

    Returns
    -------
    list of (Path, str, int)

    Raises
    ------
    InputNotFoundError
        ``path`` does not exist.
    UnsafePathError
        An object name that would escape.
    """
    if not path.exists():
        raise InputNotFoundError("no such file or directory", path)
    if path.is_file():
        return [(path, check_object_name(name or path.name), path.stat().st_size)]
    if not path.is_dir():  # /dev/zero, a FIFO, a socket (or a symlink to one)
        report.skipped.append((str(path), f"not a regular file ({file_kind(path)})"))
        return []
    root = path.resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, path)
        for fname in sorted(filenames):
            full = os.path.join(dirpath, fname)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):  # only symlinks need resolving
                real = Path(full).resolve()
                if not real.is_relative_to(root):
                    report.skipped.append((full, f"symlink to {real}, outside {root}"))
                    continue
                try:
                    st = os.stat(real)
                except OSError:
                    st = None  # type: ignore[assignment]
            if st is None or not stat.S_ISREG(st.st_mode):
                kind = "broken symlink" if st is None else file_kind(Path(full))
                report.skipped.append((full, f"not a regular file ({kind})"))
                continue
            rel = fname if rel_dir == "." else f"{rel_dir}/{fname}".replace(os.sep, "/")
            out.append((Path(full), check_object_name(rel), st.st_size))
    return out
