"""Cluster profiles: named Dask cluster set-ups read from the Dask configuration.

A profile says where the workers run (this machine, or jobs of a SLURM / PBS / SGE batch
system through `dask-jobqueue <https://jobqueue.dask.org>`_) and how large they are, so that
moving an analysis from a laptop to a cluster is ``--cluster NAME``.  Profiles live under the
``neuroscale.profiles`` key of the Dask configuration (:mod:`dask.config`): neuroscale ships
``neuroscale.yaml`` (an example profile, merged with :func:`dask.config.update_defaults`);
users add theirs in ``~/.config/dask/neuroscale.yaml`` or with ``DASK_NEUROSCALE__...``
environment variables.  Every profile is validated: an unknown key or a value of the wrong
type is a :class:`~neuroscale.errors.ConfigurationError` naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroscale.errors import ConfigurationError

__all__ = [
    "BATCH_KINDS",
    "ClusterProfile",
    "available_profiles",
    "load_default_config",
    "parse_adaptive",
    "profile_from_mapping",
    "resolve_profile",
]

#: Cluster kinds started through dask-jobqueue.
BATCH_KINDS = ("slurm", "pbs", "sge")
_KINDS = ("local", *BATCH_KINDS)
DEFAULT_CONFIG = Path(__file__).with_name("neuroscale.yaml")

_loaded = False


@dataclass(frozen=True)
class ClusterProfile:
    """A validated cluster profile.

    Attributes
    ----------
    name : str
        Profile name (``--cluster NAME``), or the kind for a profile-less ``--cluster slurm``.
    kind : {"local", "slurm", "pbs", "sge"}
        Where the workers run.
    description : str
        Free text.
    queue, account : str or None
        Partition/queue and account/project charged (batch kinds).
    cores : int or None
        CPU cores per job (batch kinds).
    memory : str or None
        Memory per job, e.g. ``"32GB"`` (batch kinds).
    processes : int or None
        Dask worker processes per job.
    walltime : str or None
        Job time limit, ``"HH:MM:SS"``.
    jobs : int or None
        Fixed number of jobs (default 1 when ``adaptive`` is not set).
    adaptive : (int, int) or None
        Minimum and maximum number of jobs for adaptive scaling.
    interface, local_directory, log_directory, resource_spec : str or None
        Passed to dask-jobqueue.
    job_extra_directives, job_script_prologue : tuple of str
        Extra batch directives; shell lines before the worker starts.
    n_workers, threads_per_worker : int or None
        Local workers and their threads (kind ``local``).
    memory_limit : str or None
        Memory bound of each local worker.
    """

    name: str
    kind: str
    description: str = ""
    queue: str | None = None
    account: str | None = None
    cores: int | None = None
    memory: str | None = None
    processes: int | None = None
    walltime: str | None = None
    jobs: int | None = None
    adaptive: tuple[int, int] | None = None
    interface: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    resource_spec: str | None = None
    job_extra_directives: tuple[str, ...] = field(default_factory=tuple)
    job_script_prologue: tuple[str, ...] = field(default_factory=tuple)
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None

    @property
    def is_batch(self) -> bool:
        """True for SLURM / PBS / SGE profiles (started through dask-jobqueue)."""
        return self.kind in BATCH_KINDS

    def with_overrides(self, **overrides: Any) -> ClusterProfile:
        """A copy with the non-None ``overrides`` applied and validated (command-line flags).

        Raises
        ------
        ConfigurationError
            An override of the wrong type or an unknown key.
        """
        values = {k: v for k, v in overrides.items() if v is not None}
        if not values:
            return self
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        current.pop("name")
        current["type"] = current.pop("kind")
        current.update(values)
        return profile_from_mapping(self.name, current, where="command line")


# key -> (expected type(s) after YAML parsing, description for messages)
_STR = (str,)
_INT = (int,)
_SCHEMA: dict[str, tuple[tuple[type, ...], str]] = {
    "type": (_STR, "one of " + ", ".join(_KINDS)),
    "description": (_STR, "text"),
    "queue": (_STR, "text"),
    "account": (_STR, "text"),
    "cores": (_INT, "an integer >= 1"),
    "memory": ((str, int), "a memory size such as 32GB"),
    "processes": (_INT, "an integer >= 1"),
    "walltime": (_STR, 'a time limit such as "04:00:00"'),
    "jobs": (_INT, "an integer >= 0"),
    "adaptive": ((str, list, tuple), '"MIN:MAX" or [MIN, MAX]'),
    "interface": (_STR, "a network interface name"),
    "local_directory": (_STR, "a directory"),
    "log_directory": (_STR, "a directory"),
    "resource_spec": (_STR, "text"),
    "job_extra_directives": ((list, tuple), "a list of strings"),
    "job_script_prologue": ((list, tuple), "a list of strings"),
    "n_workers": (_INT, "an integer >= 1"),
    "threads_per_worker": (_INT, "an integer >= 1"),
    "memory_limit": ((str, int), "a memory size such as 4GB"),
}
_MIN = {"cores": 1, "processes": 1, "jobs": 0, "n_workers": 1, "threads_per_worker": 1}
_BATCH_ONLY = ("queue", "account", "cores", "memory", "processes", "walltime", "jobs",
               "adaptive", "interface", "local_directory", "log_directory", "resource_spec",
               "job_extra_directives", "job_script_prologue")
_LOCAL_ONLY = ("n_workers", "threads_per_worker", "memory_limit")


def parse_memory(value: str | int | None) -> int | None:
    """Parse ``"2GB"``, ``"512MiB"`` or a number of bytes; None stays None.

    Raises
    ------
    ConfigurationError
        The text is not a memory size.
    """
    if value is None or value == "auto":
        return None
    if isinstance(value, int):
        return value
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(value))
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid memory size {value!r} (e.g. 2GB, 512MiB)") from exc


def parse_adaptive(value: Any, *, key: str = "adaptive") -> tuple[int, int]:
    """Parse adaptive bounds ``"MIN:MAX"`` (or a 2-list) into ``(min_jobs, max_jobs)``.

    Raises
    ------
    ConfigurationError
        Not two integers with ``0 <= MIN <= MAX`` and ``MAX >= 1``.
    """
    parts: list[Any]
    if isinstance(value, str):
        parts = value.split(":")
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = []
    try:
        if len(parts) != 2 or any(isinstance(p, bool | float) for p in parts):
            raise ValueError
        lo, hi = int(parts[0]), int(parts[1])
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{key}: expected MIN:MAX numbers of jobs (e.g. 0:10), got {value!r}") from None
    if lo < 0 or hi < 1 or lo > hi:
        raise ConfigurationError(f"{key}: expected 0 <= MIN <= MAX and MAX >= 1, got {value!r}")
    return lo, hi


def _canonical(key: Any) -> str:
    return str(key).strip().lower().replace("-", "_")


def profile_from_mapping(name: str, raw: Mapping[str, Any], *,
                         where: str | None = None) -> ClusterProfile:
    """Validate one profile (a mapping from the Dask config) into a :class:`ClusterProfile`.

    Parameters
    ----------
    name : str
        Profile name, used in messages.
    raw : mapping
        The profile's keys (``-`` and ``_`` are equivalent, case-insensitive).
    where : str, optional
        Where the values came from, for messages (default ``neuroscale.profiles.NAME``).

    Returns
    -------
    ClusterProfile

    Raises
    ------
    ConfigurationError
        Not a mapping, an unknown key, a missing or unknown ``type``, a value of the wrong type
        or out of range, or a key that does not apply to the profile's kind; the message names
        the key.
    """
    where = where or f"neuroscale.profiles.{name}"

    def at(key: str) -> str:  # how messages name a key: config path, or --flag
        if where == "command line":
            return f"--{_canonical(key).replace('_', '-')}"
        return f"{where}.{key}"

    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"{where}: a profile must be a mapping of keys to values, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        ckey = _canonical(key)
        if ckey not in _SCHEMA:
            known = ", ".join(k.replace("_", "-") for k in _SCHEMA)
            raise ConfigurationError(f"{at(key)}: unknown key (known keys: {known})")
        if value is None:
            continue
        types, text = _SCHEMA[ckey]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigurationError(
                f"{at(key)}: expected {text}, got {type(value).__name__} {value!r}")
        if ckey in _MIN and isinstance(value, int) and value < _MIN[ckey]:
            raise ConfigurationError(f"{at(key)}: expected {text}, got {value!r}")
        values[ckey] = value
    kind = values.pop("type", None)
    if kind is None:
        raise ConfigurationError(f"{where}.type: missing; expected one of {', '.join(_KINDS)}")
    kind = kind.strip().lower()
    if kind not in _KINDS:
        raise ConfigurationError(
            f"{where}.type: expected one of {', '.join(_KINDS)}, got {kind!r}")
    wrong = _LOCAL_ONLY if kind in BATCH_KINDS else _BATCH_ONLY
    for key in wrong:
        if key in values:
            raise ConfigurationError(
                f"{at(key.replace('_', '-'))}: does not apply to a {kind} cluster")
    for key in ("memory", "memory_limit"):
        if key in values:
            try:
                parse_memory(values[key])
            except ConfigurationError as exc:
                raise ConfigurationError(f"{at(key.replace('_', '-'))}: {exc}") from None
            values[key] = str(values[key])
    if "adaptive" in values:
        values["adaptive"] = parse_adaptive(values["adaptive"], key=at("adaptive"))
    for key in ("job_extra_directives", "job_script_prologue"):
        if key in values:
            items = values[key]
            if not all(isinstance(v, str) for v in items):
                raise ConfigurationError(
                    f"{at(key.replace('_', '-'))}: expected a list of strings, got {items!r}")
            values[key] = tuple(items)
    return ClusterProfile(name=name, kind=kind, **values)


def load_default_config() -> None:
    """Merge neuroscale's shipped ``neuroscale.yaml`` into the Dask config defaults (once).

    User files (``~/.config/dask/*.yaml``) and ``DASK_`` environment variables, which Dask
    reads at import, keep priority over these defaults.
    """
    global _loaded
    if _loaded:
        return
    import dask.config
    import yaml

    with open(DEFAULT_CONFIG, encoding="utf-8") as fh:
        defaults = yaml.safe_load(fh)
    dask.config.update_defaults(defaults)
    _loaded = True


def _profiles_section() -> dict[str, Any]:
    import dask.config

    load_default_config()
    section = dask.config.get("neuroscale.profiles", default={})
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigurationError(
            f"neuroscale.profiles: expected a mapping of profile names to profiles, got "
            f"{type(section).__name__}")
    return {str(k): v for k, v in section.items()}


def available_profiles() -> dict[str, ClusterProfile]:
    """Every profile of the Dask config, validated.

    Raises
    ------
    ConfigurationError
        A profile is invalid (the message names the profile and key).
    """
    return {name: profile_from_mapping(name, raw) for name, raw in _profiles_section().items()}


def resolve_profile(name: str) -> ClusterProfile:
    """The profile ``--cluster NAME`` refers to.

    A profile of that name in the Dask config wins; otherwise ``local``, ``slurm``, ``pbs`` and
    ``sge`` are bare profiles of that kind (sizes from flags or dask-jobqueue's own config).

    Raises
    ------
    ConfigurationError
        No such profile (the message lists the known ones), or the profile is invalid.
    """
    section = _profiles_section()
    if name in section:
        return profile_from_mapping(name, section[name])
    lowered = name.strip().lower()
    if lowered in _KINDS:
        return ClusterProfile(name=lowered, kind=lowered)
    known = sorted(set(section) | set(_KINDS))
    raise ConfigurationError(
        f"--cluster {name}: no such cluster profile (known: {', '.join(known)}; profiles are "
        "read from the Dask config, e.g. ~/.config/dask/neuroscale.yaml)")
