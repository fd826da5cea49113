"""The methods of :class:`~neuroscale.catalog.api.Catalog` that govern the catalog: users and
groups, grants and share tickets, fixity checks and cleanup.

:class:`AdminMethods` is a base class of ``Catalog`` (use ``Catalog``); like the rest of the
facade, each method delegates to one service module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from neuroscale.catalog import cleanup, integrity, principals, sharing
from neuroscale.catalog.context import Context
from neuroscale.catalog.results import (
    AccessInfo,
    CleanupReport,
    FixityReport,
    PrincipalInfo,
    TicketInfo,
)


class AdminMethods:
    """Users and groups, sharing, fixity and cleanup: the governing part of ``Catalog``."""

    # -- users and groups --------------------------------------------------------------------
    def add_user(self: Context, name: str, *, admin: bool = False) -> None:
        """Register a user (administrators only).

        Parameters
        ----------
        name : str
            At most 255 characters, no NUL, no surrounding blanks.
        admin : bool
            Make the user an administrator.

        Raises
        ------
        MetadataError
            An invalid name.
        CatalogPermissionError
            The caller is not an administrator.
        ConflictError
            The name is taken.
        """
        principals.add_principal(self, name, "user", admin)

    def add_group(self: Context, name: str) -> None:
        """Create a group (administrators only).

        Parameters
        ----------
        name : str

        Raises
        ------
        MetadataError, CatalogPermissionError, ConflictError
            As :meth:`add_user`.
        """
        principals.add_principal(self, name, "group", False)

    def remove_principal(self: Context, name: str) -> None:
        """Remove a user or group with its permissions and tickets (administrators only).

        Parameters
        ----------
        name : str

        Raises
        ------
        CatalogPermissionError
            The caller is not an administrator.
        CatalogNotFoundError
            No such user or group.
        ConflictError
            The caller would remove themselves.
        """
        principals.remove_principal(self, name)

    def set_membership(self: Context, group: str, user: str, member: bool = True) -> None:
        """Add ``user`` to ``group`` (or remove with ``member=False``); administrators only.

        Parameters
        ----------
        group, user : str
        member : bool

        Raises
        ------
        CatalogPermissionError
            The caller is not an administrator.
        CatalogNotFoundError
            No such group or user.
        """
        principals.set_membership(self, group, user, member)

    def principals(self: Context) -> list[PrincipalInfo]:
        """All users and groups (any registered user may list them).

        Returns
        -------
        list of PrincipalInfo

        Raises
        ------
        CatalogPermissionError
            The caller is not registered.
        """
        return principals.principals(self)

    # -- sharing -----------------------------------------------------------------------------
    def grant(self: Context, collection: str, principal: str, level: str | int) -> None:
        """Set ``principal``'s level on ``collection`` (``null`` removes it); needs ``own``.

        Lowering someone's ``own`` revokes the tickets they can no longer back.

        Parameters
        ----------
        collection : str
        principal : str
            User or group name.
        level : str or int
            ``null``, ``read``, ``write`` or ``own``.

        Raises
        ------
        MetadataError
            An unknown level.
        CatalogNotFoundError
            No such collection (or not readable), or no such principal.
        CatalogPermissionError
            The caller does not own the collection.
        """
        sharing.grant(self, collection, principal, level)

    def access(self: Context, collection: str) -> list[AccessInfo]:
        """Direct permissions on ``collection`` and its ancestors (needs ``read``).

        Parameters
        ----------
        collection : str

        Returns
        -------
        list of AccessInfo

        Raises
        ------
        CatalogNotFoundError
            No such collection, or not readable.
        """
        return sharing.access(self, collection)

    def create_ticket(
        self: Context,
        collection: str,
        *,
        level: str = "read",
        expires: dt.datetime | dt.timedelta | None = None,
        uses: int | None = None,
    ) -> str:
        """Issue a share ticket on ``collection`` (needs ``own``); returns the secret token.

        Parameters
        ----------
        collection : str
        level : {"read", "write"}
        expires : datetime or timedelta, optional
            Absolute (timezone-aware) expiry or a lifetime from now.
        uses : int, optional
            Number of operations the ticket allows (each catalog call using it counts one).

        Returns
        -------
        str
            The token; only its hash is stored.

        Raises
        ------
        MetadataError
            A level other than read or write, a naive expiry, ``uses`` below 1.
        CatalogPermissionError
            Not a registered user, acting with a ticket, or not an owner of the collection.
        """
        return sharing.create_ticket(self, collection, level=level, expires=expires, uses=uses)

    def tickets(self: Context) -> list[TicketInfo]:
        """Tickets the caller issued or that are on collections the caller owns.

        Returns
        -------
        list of TicketInfo

        Raises
        ------
        CatalogPermissionError
            Not a registered user.
        """
        return sharing.tickets(self)

    def revoke_ticket(self: Context, ticket_id: int) -> None:
        """Revoke a ticket (its issuer, or an owner of its collection).

        Parameters
        ----------
        ticket_id : int

        Raises
        ------
        CatalogNotFoundError
            No such ticket, or one the caller may not manage.
        """
        sharing.revoke_ticket(self, ticket_id)

    # -- fixity ------------------------------------------------------------------------------
    def verify(
        self: Context,
        *,
        incremental: bool = False,
        older_than: dt.timedelta = dt.timedelta(days=30),
        restart: bool = False,
        max_objects: int | None = None,
        progress: Callable[[int, str, str], None] | None = None,
        grace: float = 3600.0,
    ) -> FixityReport:
        """Re-hash stored objects and report corrupted, missing and untracked ones (admins).

        A run records its progress (the last checksum checked, in SHA-256 order) after every
        batch of up to 200 objects (one transaction per batch), so a run interrupted by a crash
        or ``max_objects`` resumes where it stopped (at most one batch is checked again) at the
        next call with the same mode (unless ``restart``).

        Parameters
        ----------
        incremental : bool
            Check only contents never checked, last found bad, or last checked before
            ``older_than`` ago; the default checks everything.
        older_than : timedelta
            Age beyond which ``incremental`` re-checks an object.
        restart : bool
            Abandon an unfinished run of this mode and start afresh.
        max_objects : int, optional
            Stop after checking this many (the run stays resumable).
        progress : callable, optional
            Called as ``progress(n_checked, sha256, status)``.
        grace : float
            Seconds after which a ``tmp/`` file of an unknown or other-host writer is stale.

        Returns
        -------
        FixityReport

        Raises
        ------
        CatalogPermissionError
            The caller is not an administrator.
        """
        return integrity.verify(
            self, incremental=incremental, older_than=older_than, restart=restart,
            max_objects=max_objects, progress=progress, grace=grace,
        )  # fmt: skip

    def recover(self: Context) -> CleanupReport:
        """Remove what crashed ingests *on this host* left (dead owner pid); no permission needed.

        Called automatically at the start of every ingest.

        Returns
        -------
        CleanupReport
        """
        return cleanup.recover(self)

    def cleanup(self: Context, *, grace: float = 3600.0, untracked: bool = False) -> CleanupReport:
        """Remove leftovers of crashed ingests and removals (administrators).

        Pending contents whose writer is dead (this host) or older than ``grace`` seconds
        (another host), half-finished removals, stale ``tmp/`` files, and, with
        ``untracked=True``, stored files the catalog has no record of.

        Parameters
        ----------
        grace : float
            Seconds.
        untracked : bool
            Also delete stored files without a record.

        Returns
        -------
        CleanupReport

        Raises
        ------
        CatalogPermissionError
            The caller is not an administrator.
        """
        return cleanup.cleanup(self, grace=grace, untracked=untracked)
