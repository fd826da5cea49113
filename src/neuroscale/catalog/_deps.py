"""Import the catalog's optional dependencies with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from neuroscale.catalog.errors import MissingDependencyError

EXTRA = "neuroscale[catalog]"


def require(module: str, purpose: str = "the data catalog") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the ``[catalog]`` extra.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"sqlalchemy"``.
    purpose : str
        What needs it, for the message.

    Returns
    -------
    module

    Raises
    ------
    MissingDependencyError
        The module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingDependencyError(
            f"{purpose} needs the Python package {top!r}: pip install '{EXTRA}' ({exc})"
        ) from exc
