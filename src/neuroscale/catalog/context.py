"""What the catalog's services need of the catalog they act for.

Each service module (:mod:`~neuroscale.catalog.permissions`, :mod:`~neuroscale.catalog.ingest`,
...) is a set of functions whose first argument is a :class:`Context`; a
:class:`~neuroscale.catalog.api.Catalog` is one, and its methods pass themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # types only: this module imports nothing at run time
    from sqlalchemy.orm import Session, sessionmaker

    from neuroscale.catalog.store import Store


class Context(Protocol):
    """The acting identity, the database sessions and the store of one catalog handle.

    Attributes
    ----------
    user : str
        Name of the acting user (trusted as given; see :mod:`neuroscale.catalog.api`).
    ticket : str or None
        Share-ticket token the handle acts with, if any.
    sessions : sessionmaker
        Opens a SQLAlchemy session on the catalog's database.
    store : Store
        The content-addressed store recorded in the catalog's settings (opened on first use).
    """

    user: str
    ticket: str | None

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Factory of database sessions."""
        ...

    @property
    def store(self) -> Store:
        """The catalog's object store."""
        ...
