"""Content-addressed object stores: a local directory, or any fsspec URL (``s3://...``).

Layout under the store root::

    objects/ab/<sha256>           stored content (named by its SHA-256)
    tmp/<pid>~<host>~<uuid>.part  copies in progress (removed on success or by cleanup)
    LAYOUT                        layout version of a local store (``2``)

Content is hashed *while* it is copied into ``tmp/``, moved to its final key (an atomic
``os.replace`` locally) and then read back and hashed again by the caller before the catalog
record is committed.  Small contents, already hashed in memory, are written straight to their
final key with ``O_EXCL`` (:meth:`Store.write_new`): never over an existing file, so a partial
file can only exist while its content is claimed ``pending`` by the writer, and is removed by
the catalog's recovery if the writer dies.  Store keys are made only from validated hex digests and from names this
module generates, and the local store refuses symlinks and any path whose real location is
outside the root, so nothing read or written through a store can escape it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import queue
import socket
import stat
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from neuroscale.catalog._deps import require
from neuroscale.catalog.errors import CatalogConfigError, StoreError, UnsafePathError
from neuroscale.catalog.paths import check_sha256, is_sha256, legacy_object_key, object_key
from neuroscale.errors import NeuroscaleError

CHUNK = 1 << 20
#: Block size of large copies and re-hashes: large blocks keep the per-call overhead negligible
#: and let hashing (hashlib releases the GIL) overlap reading/writing in a second thread.
BIG_CHUNK = 8 << 20
HOST = socket.gethostname()[:200]
#: At least this many files are made durable with one ``syncfs(2)`` rather than an
#: ``fsync(2)`` per file and per directory (each fsync is one journal commit on ext4/xfs).
SYNCFS_MIN_FILES = 8
#: Layout version written to a local store's ``LAYOUT`` file (1: ``objects/ab/cd/<sha>``,
#: 2: ``objects/ab/<sha>``).
LAYOUT_VERSION = "2"


@dataclass(frozen=True)
class TempObject:
    """A copy written to the store's ``tmp/`` area, with the SHA-256 and size of what was written."""

    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class TempEntry:
    """A file found in ``tmp/``: who wrote it (pid, host) and its age in seconds."""

    key: str
    pid: int | None
    host: str | None
    age_s: float


def temp_key() -> str:
    """A fresh ``tmp/`` key naming this process (pid and host) so cleanup knows its owner."""
    return f"tmp/{os.getpid()}~{HOST}~{uuid.uuid4().hex}.part"


def parse_temp_key(key: str) -> tuple[int | None, str | None]:
    """(pid, host) encoded in a ``tmp/`` key, or (None, None) for a foreign file."""
    name = key.rsplit("/", 1)[-1]
    parts = name.split("~")
    if len(parts) == 3 and parts[0].isdigit() and parts[2].endswith(".part"):
        return int(parts[0]), parts[1]
    return None, None


def hash_stream(fh: BinaryIO, out: BinaryIO | None = None) -> tuple[str, int]:
    """SHA-256 hex digest and byte count of what remains in ``fh``, copying it to ``out``.

    A file smaller than 1 MiB is read in one call.  A larger one is read in 8 MiB blocks and
    hashed in a second thread (``hashlib`` releases the GIL on large buffers) while the next
    block is read and the current one written, so hashing overlaps I/O.

    Parameters
    ----------
    fh : binary file
        Source, read to its end.
    out : binary file, optional
        Destination of a copy (every byte of ``fh`` is written to it).

    Returns
    -------
    (str, int)
        Hex digest and number of bytes.
    """
    digest = hashlib.sha256()
    first = fh.read(CHUNK)
    if len(first) < CHUNK:  # a small file (or a stream that returns short reads)
        digest.update(first)
        if out is not None:
            out.write(first)
        size = len(first)
        if not first:
            return digest.hexdigest(), 0
        first = fh.read(BIG_CHUNK)
        if not first:
            return digest.hexdigest(), size
    else:
        size = 0
    blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=3)

    def hasher() -> None:
        while (b := blocks.get()) is not None:
            digest.update(b)

    worker = threading.Thread(target=hasher, name="neuroscale-sha256", daemon=True)
    worker.start()
    try:
        block = first
        while block:
            blocks.put(block)
            if out is not None:
                out.write(block)
            size += len(block)
            block = fh.read(BIG_CHUNK)
    finally:
        blocks.put(None)
        worker.join()
    return digest.hexdigest(), size


def _load_syncfs() -> Any:
    """libc's ``syncfs(2)`` (Linux), or None where it is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


class Store(ABC):
    """Interface of a content-addressed store (see the module docstring for the layout)."""

    url: str

    @abstractmethod
    def write_temp(self, src: BinaryIO, *, sync: bool = True) -> TempObject:
        """Copy ``src`` into ``tmp/`` while hashing it; durable (fsync'd) on return when
        ``sync``, else made durable later by :meth:`sync` of its final key."""

    @abstractmethod
    def commit(self, temp: str, sha256: str, *, sync: bool = True) -> None:
        """Move the temporary copy ``temp`` to the final key of ``sha256``; the move is durable
        on return when ``sync``, else after :meth:`sync`."""

    def sync(self, sha256s: Sequence[str], temp_keys: Sequence[str] = ()) -> None:
        """Make the stored copies of ``sha256s`` and the ``tmp/`` files ``temp_keys`` (and
        their directory entries) durable.

        The default does nothing: remote object stores acknowledge a write once it is durable.
        """
        del sha256s, temp_keys

    @abstractmethod
    def hash_temp(self, key: str) -> tuple[str, int]:
        """Re-hash the ``tmp/`` file ``key``: (digest, size)."""

    def check_writable(self) -> None:
        """Write, make durable and remove a probe file, so that a store this user cannot
        write fails before any work rather than in the middle of an ingest.

        Raises
        ------
        StoreError
            The store cannot be written (permission denied, read-only, full).
        """
        import io

        tmp = self.write_temp(io.BytesIO(b"neuroscale write probe\n"), sync=True)
        with self._writing(f"remove {tmp.key}"):
            self.discard(tmp.key)

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn an ``OSError`` of the store (not of a source file) into one :class:`StoreError`
        line naming the store and what could not be done."""
        try:
            yield
        except NeuroscaleError:
            raise
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise StoreError(
                f"cannot {what} ({reason}): the store must be readable and writable by this user",
                self.url,
            ) from exc

    @abstractmethod
    def write_new(self, sha256: str, data: bytes) -> bool:
        """Write ``data`` (already hashed to ``sha256`` by the caller) straight to its final
        key, unless a file is already there (then False, nothing written).  Durable after
        :meth:`sync`; the caller re-hashes the stored copy before trusting it."""

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group many object operations (a local store keeps its directories open meanwhile)."""
        yield

    @abstractmethod
    def discard(self, key: str) -> None:
        """Remove a ``tmp/`` or ``objects/`` key (missing is fine)."""

    @abstractmethod
    def hash_stored(self, sha256: str) -> tuple[str, int] | None:
        """Re-hash the stored copy of ``sha256``: (digest, size), or None when it is missing.

        Raises
        ------
        UnsafePathError
            The stored entry is a symlink or resolves outside the store.
        """

    @abstractmethod
    def stored_size(self, sha256: str) -> int | None:
        """Size in bytes of the stored copy, None when missing (no hashing)."""

    @abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """Open the stored copy of ``sha256`` for reading."""

    @abstractmethod
    def iter_objects(self) -> Iterator[str]:
        """Every key under ``objects/``."""

    @abstractmethod
    def iter_temp(self) -> Iterator[TempEntry]:
        """Every file under ``tmp/``."""

    def delete(self, sha256: str) -> None:
        """Remove the stored copy of ``sha256`` (missing is fine)."""
        self.discard(object_key(sha256))


class LocalStore(Store):
    """A store in a local directory (atomic renames, fsync of data and directories).

    Objects are opened relative to their directory's file descriptor (``openat`` with
    ``O_NOFOLLOW``), the directory itself opened with ``O_NOFOLLOW | O_DIRECTORY`` from the
    resolved root, so no symlink in the store is ever followed; inside :meth:`batch` those
    directory descriptors are kept open instead of re-opened per object.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root).expanduser()
        if not root.is_absolute():
            raise CatalogConfigError(f"the store path must be absolute, not {str(root)!r}")
        self.url = str(root)
        with self._writing("create the store's directories"):
            root.mkdir(parents=True, exist_ok=True)
            (root / "objects").mkdir(exist_ok=True)
            (root / "tmp").mkdir(exist_ok=True)
        self.root = Path(os.path.realpath(root))
        self._root_str = str(self.root).rstrip("/")
        self.url = str(self.root)
        self._dirfds: dict[str, int] | None = None
        layout = self.root / "LAYOUT"
        if not layout.is_file():
            with self._writing("upgrade the store's layout"):
                self._upgrade_layout()
                tmp = self.root / "tmp" / f"LAYOUT.{os.getpid()}.{uuid.uuid4().hex}"
                tmp.write_text(LAYOUT_VERSION + "\n")
                os.replace(tmp, layout)

    # -- layout ------------------------------------------------------------------------------
    def _upgrade_layout(self) -> None:
        """Move objects of the two-level layout (``objects/ab/cd/<sha>``) to ``objects/ab/``.

        Each move is an atomic rename, so an interrupted upgrade is finished by the next open.
        """
        base = self.root / "objects"
        moved = 0
        for top in sorted(os.scandir(base), key=lambda e: e.name):
            if len(top.name) != 2 or not top.is_dir(follow_symlinks=False):
                continue
            for sub in sorted(os.scandir(top.path), key=lambda e: e.name):
                if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                    continue
                for entry in os.scandir(sub.path):
                    name = entry.name
                    if is_sha256(name) and legacy_object_key(name) == (
                        f"objects/{top.name}/{sub.name}/{name}"
                    ):
                        os.replace(entry.path, base / top.name / name)
                        moved += 1
                with contextlib.suppress(OSError):
                    os.rmdir(sub.path)
        if moved:
            os.sync()

    # -- path safety -------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        """Absolute path of ``key``, checked to lie inside the store and not to be a symlink.

        Raises
        ------
        UnsafePathError
            ``key`` is absolute, has '..', a NUL byte, or resolves outside the root.
        """
        parts = key.split("/")
        if "\x00" in key or key.startswith("/") or ".." in parts:
            raise UnsafePathError(f"store key {key!r} escapes the store", self.root)
        # the root is a real path (resolved at open), so the key stays inside it unless one of
        # its components is a symlink: lstat them from the root down (a missing component
        # ends the walk, nothing below it exists); cheaper than os.path.realpath
        current = self._root_str
        for part in parts:
            if part in ("", "."):
                continue
            current = f"{current}/{part}"
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                break
            if stat.S_ISLNK(mode):
                real = os.path.realpath(current)
                where = "outside the store" if not real.startswith(self._root_str + "/") else ""
                raise UnsafePathError(
                    f"store entry {key!r} is (or is under) a symlink {where}".rstrip(), self.root
                )
        return self.root / key

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open_dir(self, name: str, dir_fd: int | None, create: bool) -> int | None:
        """``open(name, O_DIRECTORY | O_NOFOLLOW)`` (relative to ``dir_fd``), made when
        ``create``; None when missing."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        for _ in range(2):
            try:
                return os.open(name, flags, dir_fd=dir_fd)
            except FileNotFoundError:
                if not create:
                    return None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(
                        f"store directory {name!r} is a symlink or not a directory", self.root
                    ) from exc
                raise
        return None

    def _objects_fd(self) -> int:
        fd = self._open_dir(f"{self._root_str}/objects", None, create=True)
        if fd is None:  # pragma: no cover - made just above
            raise UnsafePathError("the store's objects/ directory cannot be opened", self.root)
        return fd

    @contextlib.contextmanager
    def _object_dir(self, sha256: str, *, create: bool = False) -> Iterator[int | None]:
        """Descriptor of ``objects/<ab>`` for ``sha256`` (None when it does not exist)."""
        check_sha256(sha256)
        prefix = sha256[:2]
        cache = self._dirfds
        if cache is not None:  # inside batch(): descriptors stay open until it ends
            fd = cache.get(prefix)
            if fd is None:
                if "" not in cache:
                    cache[""] = self._objects_fd()
                fd = self._open_dir(prefix, cache[""], create)
                if fd is not None:
                    cache[prefix] = fd
            yield fd
            return
        objects = self._objects_fd()
        try:
            fd = self._open_dir(prefix, objects, create)
        finally:
            os.close(objects)
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if self._dirfds is not None:  # nested
            yield
            return
        self._dirfds = {}
        try:
            yield
        finally:
            fds, self._dirfds = self._dirfds, None
            for fd in fds.values():
                os.close(fd)

    def _open_object(self, sha256: str) -> int | None:
        """A read descriptor of the stored copy of ``sha256`` (None when missing)."""
        with self._object_dir(sha256) as dfd:
            if dfd is None:
                return None
            try:
                fd = os.open(sha256, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafePathError(
                        f"store entry {object_key(sha256)!r} is a symlink", self.root
                    ) from exc
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePathError(
                f"store entry {object_key(sha256)!r} is not a regular file", self.root
            )
        return fd

    # -- Store API ---------------------------------------------------------------------------
    def write_temp(self, src: BinaryIO, *, sync: bool = True) -> TempObject:
        key = temp_key()
        path = self.path(key)
        with self._writing(f"create {key}"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as out:
                sha, size = hash_stream(src, cast(BinaryIO, _Sink(self, out, key)))
                with self._writing(f"write {key}"):
                    out.flush()
                    if sync:
                        os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return TempObject(key=key, sha256=sha, size=size)

    def hash_temp(self, key: str) -> tuple[str, int]:
        with self._writing(f"read {key}"):
            fd = os.open(self.path(key), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            return hash_stream(fh)

    def write_new(self, sha256: str, data: bytes) -> bool:
        key = object_key(sha256)
        with self._writing(f"write {key}"), self._object_dir(sha256, create=True) as dfd:
            try:
                fd = os.open(
                    sha256, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd
                )
            except FileExistsError:
                return False
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(sha256, dir_fd=dfd)
                raise
            finally:
                os.close(fd)
        return True

    def commit(self, temp: str, sha256: str, *, sync: bool = True) -> None:
        src = self.path(temp)
        key = object_key(sha256)
        with self._writing(f"move {temp} to {key}"), self._object_dir(sha256, create=True) as dfd:
            os.replace(src, sha256, dst_dir_fd=dfd)
            if sync:
                os.fsync(dfd)  # type: ignore[arg-type]

    def sync(self, sha256s: Sequence[str], temp_keys: Sequence[str] = ()) -> None:
        """fsync each stored file and its directory; with many files, one ``syncfs(2)``.

        ``syncfs`` writes back the whole file system (data and journal) in one pass, which is
        much cheaper than one journal commit per fsync when a batch holds many small files.
        """
        if not sha256s and not temp_keys:
            return
        with self._writing("make the stored copies durable"):
            self._sync(sha256s, temp_keys)

    def _sync(self, sha256s: Sequence[str], temp_keys: Sequence[str]) -> None:
        if _SYNCFS is not None and len(sha256s) + len(temp_keys) >= SYNCFS_MIN_FILES:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _SYNCFS(fd) == 0:
                    return
            finally:
                os.close(fd)
        for key in temp_keys:
            tfd = os.open(self.path(key), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(tfd)
            finally:
                os.close(tfd)
        if temp_keys:
            self._fsync_dir(self.root / "tmp")
        dirs: dict[str, str] = {}  # one digest per directory to fsync
        for sha in sha256s:
            ofd = self._open_object(sha)
            if ofd is None:
                continue
            try:
                os.fsync(ofd)
            finally:
                os.close(ofd)
            dirs.setdefault(sha[:2], sha)
        for sha in dirs.values():
            with self._object_dir(sha) as dfd:
                if dfd is not None:
                    os.fsync(dfd)

    def discard(self, key: str) -> None:
        path = self.root / key
        self.path(str(Path(key).parent))  # check the directory, the entry may be a symlink
        with self._writing(f"remove {key}"), contextlib.suppress(FileNotFoundError):
            path.unlink()

    def hash_stored(self, sha256: str) -> tuple[str, int] | None:
        fd = self._open_object(sha256)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as fh:
            return hash_stream(fh)

    def stored_size(self, sha256: str) -> int | None:
        with self._object_dir(sha256) as dfd:
            if dfd is None:
                return None
            try:
                st = os.stat(sha256, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def open(self, sha256: str) -> BinaryIO:
        fd = self._open_object(sha256)
        if fd is None:
            raise FileNotFoundError(errno.ENOENT, "stored object missing", object_key(sha256))
        return os.fdopen(fd, "rb")

    def iter_objects(self) -> Iterator[str]:
        base = self.root / "objects"
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames) + [
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ]:
                yield f"{rel}/{name}".replace(os.sep, "/")

    def iter_temp(self) -> Iterator[TempEntry]:
        now = time.time()
        with self._writing("list tmp/"):
            it = os.scandir(self.root / "tmp")
        with it:
            for entry in it:
                key = f"tmp/{entry.name}"
                pid, host = parse_temp_key(key)
                age = now - entry.stat(follow_symlinks=False).st_mtime
                yield TempEntry(key=key, pid=pid, host=host, age_s=age)


class FsspecStore(Store):
    """A store at any fsspec URL (``s3://bucket/prefix``, ``memory://``, ``gcs://``...).

    The move into place is the file system's ``mv`` (a copy and a delete on S3, not atomic);
    safety comes from the catalog protocol instead: the stored copy is re-hashed before the
    record is committed, and half-moved objects without a record are "untracked".
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        fsspec = require("fsspec", f"the store {url}")
        try:
            fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except ImportError as exc:
            raise require_failed(url, exc) from exc
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    def _full(self, key: str) -> str:
        if "\x00" in key or key.startswith("/") or ".." in key.split("/"):
            raise UnsafePathError(f"store key {key!r} escapes the store", self.url)
        return f"{self.root}/{key}"

    def write_temp(self, src: BinaryIO, *, sync: bool = True) -> TempObject:
        key = temp_key()
        with self._writing(f"write {key}"), self.fs.open(self._full(key), "wb") as out:
            sha, size = hash_stream(src, out)
        return TempObject(key=key, sha256=sha, size=size)

    def hash_temp(self, key: str) -> tuple[str, int]:
        with self._writing(f"read {key}"), self.fs.open(self._full(key), "rb") as fh:
            return hash_stream(fh)

    def commit(self, temp: str, sha256: str, *, sync: bool = True) -> None:
        with self._writing(f"move {temp} to {object_key(sha256)}"):
            self.fs.mv(self._full(temp), self._full(object_key(sha256)))

    def write_new(self, sha256: str, data: bytes) -> bool:
        full = self._full(object_key(sha256))
        self.fs.invalidate_cache()
        if self.fs.exists(full):
            return False
        with self._writing(f"write {object_key(sha256)}"):
            self.fs.pipe_file(full, data)  # one PUT: an object store never shows a partial one
        return True

    def discard(self, key: str) -> None:
        with self._writing(f"remove {key}"), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._full(key))

    def hash_stored(self, sha256: str) -> tuple[str, int] | None:
        self.fs.invalidate_cache()
        try:
            with self.fs.open(self._full(object_key(sha256)), "rb") as fh:
                return hash_stream(fh)
        except FileNotFoundError:
            return None

    def stored_size(self, sha256: str) -> int | None:
        self.fs.invalidate_cache()
        try:
            return int(self.fs.size(self._full(object_key(sha256))))
        except FileNotFoundError:
            return None

    def open(self, sha256: str) -> BinaryIO:
        fh: BinaryIO = self.fs.open(self._full(object_key(sha256)), "rb")
        return fh

    def iter_objects(self) -> Iterator[str]:
        self.fs.invalidate_cache()
        base = self._full("objects")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        for path in sorted(found):
            yield "objects/" + path[len(base) :].lstrip("/")

    def iter_temp(self) -> Iterator[TempEntry]:
        self.fs.invalidate_cache()
        base = self._full("tmp")
        try:
            infos = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        now = time.time()
        for path, info in infos.items():
            key = "tmp/" + path[len(base) :].lstrip("/")
            pid, host = parse_temp_key(key)
            modified = info.get("LastModified") or info.get("mtime") or info.get("created")
            if hasattr(modified, "timestamp"):
                age = now - modified.timestamp()
            elif isinstance(modified, int | float):
                age = now - float(modified)
            else:
                age = 0.0
            yield TempEntry(key=key, pid=pid, host=host, age_s=age)


class _Sink:
    """A file's ``write`` whose ``OSError`` becomes the store's :class:`StoreError` (a read
    error of the source stays what it is)."""

    def __init__(self, store: Store, out: BinaryIO, key: str) -> None:
        self.store, self.out, self.key = store, out, key

    def write(self, data: bytes) -> int:
        with self.store._writing(f"write {self.key}"):
            return self.out.write(data)


def require_failed(url: str, exc: ImportError) -> Exception:
    """The error for a store URL whose fsspec backend (s3fs, gcsfs...) is not installed."""
    from neuroscale.catalog.errors import MissingDependencyError

    return MissingDependencyError(
        f"the store {url} needs an fsspec backend that is not installed ({exc}); "
        "for s3:// install 'neuroscale[catalog]' (s3fs)"
    )


def open_store(url: str, options: dict[str, Any] | None = None) -> Store:
    """The store at ``url``: a local directory (plain path or ``file://``) or an fsspec URL."""
    if url.startswith("file://"):
        return LocalStore(url[len("file://") :])
    if "://" not in url:
        return LocalStore(url)
    return FsspecStore(url, options)


def stored_sha_from_key(key: str) -> str | None:
    """The digest a well-formed ``objects/ab/<sha>`` key holds, else None."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "objects" and is_sha256(parts[2]):
        sha = parts[2]
        if parts[1] == sha[:2]:
            return check_sha256(sha)
    return None
