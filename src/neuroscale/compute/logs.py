"""The run's log file: full details there, one line per failure on the terminal.

The command line opens ``WORK_DIR/logs/neuroscale-<UTC time>-<pid>.log``
(:func:`start_log_file`): neuroscale's own records at every level (the tracebacks of
unexpected errors are logged at debug level), warnings of every library, and the records of
Dask and asyncio in this process (the client; with a LocalCluster also its scheduler and
nannies), which leave the terminal.  The workers of
a LocalCluster that neuroscale starts write their Dask records (``distributed.worker - ERROR -
Compute Failed`` with the task's traceback) and their Python warnings into the same file through
:class:`WorkerLogToFile` instead of the terminal.  Workers that the user started (an existing
scheduler, batch jobs) keep their own logging: their stderr is the user's terminal or job log.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["WorkerLogToFile", "current_log_file", "start_log_file", "stop_log_file"]

_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
_current: Path | None = None
_handlers: list[tuple[logging.Logger, logging.Handler]] = []
_propagate: dict[str, bool] = {}
_restore: list[Callable[[], None]] = []

#: Libraries whose records (Dask's failed tasks, closing clients' asyncio errors) go to the log
#: file only: they do not propagate to the terminal handler of the root logger
_FILE_ONLY_LOGGERS = ("distributed", "asyncio", "tornado", "bokeh")


def current_log_file() -> Path | None:
    """The log file of this process's run, or None when none was started."""
    return _current


class _AppendHandler(logging.Handler):
    """Append formatted records to a file, opened on the first record.

    Not a :class:`logging.StreamHandler`: Dask's ``silence_logs`` changes the level of every
    stream handler of its loggers, and must not silence this one.
    """

    def __init__(self, path: Path, level: int) -> None:
        super().__init__(level)
        self.path = path
        self._stream: Any = None
        self.setFormatter(logging.Formatter(_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            if self._stream is None:
                self._stream = open(self.path, "a", encoding="utf-8")
            self._stream.write(text)
            self._stream.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        finally:
            self.release()
        super().close()


def _file_handler(path: Path, level: int) -> logging.Handler:
    return _AppendHandler(path, level)


def _quiet_stream_handlers(logger: logging.Logger) -> None:
    """Keep the terminal handlers of ``logger`` (Dask's stderr handler) to critical records."""
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.CRITICAL)


def _attach(path: Path) -> list[tuple[logging.Logger, logging.Handler]]:
    """File handlers on the root logger and on :data:`_FILE_ONLY_LOGGERS`, which stop
    propagating and whose own terminal handlers (Dask's) keep critical records only."""
    root = logging.getLogger()
    handler = _file_handler(path, logging.DEBUG)
    root.addHandler(handler)
    added = [(root, handler)]
    for name in _FILE_ONLY_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        own = _file_handler(path, logging.DEBUG)
        logger.addHandler(own)
        added.append((logger, own))
        _quiet_stream_handlers(logger)
    return added


def start_log_file(work_dir: str | os.PathLike[str]) -> Path:
    """Open the run's log file under ``work_dir/logs`` and route this process's records to it.

    Parameters
    ----------
    work_dir : path-like
        The run's work directory (created).

    Returns
    -------
    Path
        ``work_dir/logs/neuroscale-YYYYMMDDTHHMMSSZ-PID.log`` (written when the first record
        arrives; :func:`stop_log_file` removes it if nothing was written).

    Notes
    -----
    ``neuroscale`` loggers are set to debug level, so their debug records (tracebacks) reach the
    file while the terminal handler keeps its own level; Dask's stderr handler in this process
    is limited to critical records (their details are in the file).
    """
    global _current
    stop_log_file()
    logs = Path(work_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = logs / f"neuroscale-{stamp}-{os.getpid()}.log"
    root = logging.getLogger()
    ns = logging.getLogger("neuroscale")
    _propagate.update({name: logging.getLogger(name).propagate for name in _FILE_ONLY_LOGGERS})
    if ns.getEffectiveLevel() > logging.DEBUG:
        # the terminal handler keeps the level the root logger had (-v / -vv lower it)
        for handler in root.handlers:
            if handler.level == logging.NOTSET:
                handler.setLevel(root.getEffectiveLevel())
                _restore.append(functools.partial(handler.setLevel, logging.NOTSET))
        _restore.append(functools.partial(ns.setLevel, ns.level))
        ns.setLevel(logging.DEBUG)
    _handlers.extend(_attach(path))
    _current = path
    return path


def stop_log_file() -> Path | None:
    """Detach the handlers of :func:`start_log_file`; remove the file if it stayed empty.

    Returns
    -------
    Path or None
        The log file, if one was written (None when there was none or it was empty).
    """
    global _current
    path, _current = _current, None
    for logger, handler in _handlers:
        logger.removeHandler(handler)
        handler.close()
    for name, propagate in _propagate.items():
        logging.getLogger(name).propagate = propagate
    _propagate.clear()
    _handlers.clear()
    while _restore:
        _restore.pop()()
    if path is None:
        return None
    try:
        if path.stat().st_size == 0:
            path.unlink()
            return None
    except FileNotFoundError:
        return None
    return path


class WorkerLogToFile(WorkerPlugin):
    """Dask worker plugin: the worker's Dask records, warnings and stderr into the run's log.

    Registered on the LocalCluster that neuroscale starts, so that a failed task's ``Compute
    Failed`` block (with its traceback) goes to the log file and not the user's terminal: the
    worker's file descriptor 2 is redirected to the log (ITK's own messages too) and its stderr
    handler keeps critical records only.  The worker also ignores SIGINT: Ctrl-C at the
    terminal reaches every process of the group, and the command closes its cluster itself.
    """

    name = "neuroscale-log-to-file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._added: list[tuple[logging.Logger, logging.Handler]] = []

    def setup(self, worker: Any) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            # Ctrl-C reaches the whole process group: the command stops its cluster itself, a
            # worker's own KeyboardInterrupt would only print a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        # what the worker process writes to stderr (ITK's messages, tracebacks at exit)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        self._added = _attach(Path(self.path))
        # the LocalCluster's silence_logs (critical) also set this logger's level in workers
        logging.getLogger("distributed").setLevel(logging.WARNING)
        logging.getLogger("neuroscale").setLevel(logging.INFO)
        logging.captureWarnings(True)

    def teardown(self, worker: Any) -> None:
        for logger, handler in self._added:
            logger.removeHandler(handler)
            handler.close()
        self._added.clear()
