"""Names in Unicode normalisation form NFC: collection paths, object names, metadata.

From 0.x the catalog normalises every name, path, metadata triple and query to NFC on input
(``paths.nfc``), so ``café`` typed with a combining accent (NFD, as macOS writes file names)
and with a precomposed ``é`` are one object instead of two that look identical.  This data
migration brings what an older catalog stored into that form:

* every collection path and object name not in NFC is renamed to its NFC form, unless an
  object or collection of that NFC name already exists beside it (two objects that look
  identical, made before this release): such a twin keeps its exact name and stays reachable
  by it (lookups try the NFC form first, then the exact text), and the migration logs it;
* metadata attributes, values and units are normalised (they have no uniqueness constraint).

No schema change; the downgrade keeps the normalised names (they are valid in 0002).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import logging
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _non_ascii(column: str, dialect: str) -> str:
    """SQL that keeps only rows whose ``column`` has a character outside printable ASCII
    (only those can change under NFC), so the migration reads few of millions of rows."""
    if dialect == "postgresql":
        return f"{column} ~ '[^ -~]'"
    return f"{column} GLOB '*[^ -~]*'"


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    # collections, parents first: a renamed parent renames the paths below it
    cols = bind.execute(sa.text("SELECT id, parent_id, path FROM collections")).all()
    by_id = {cid: (parent, path) for cid, parent, path in cols}
    taken = {path for _, _, path in cols if _nfc(path) == path}
    new_path: dict[int, str] = {}
    for cid, parent, path in sorted(cols, key=lambda r: (r[2].count("/"), _nfc(r[2]) != r[2])):
        last = path.rsplit("/", 1)[1]
        head = new_path.get(parent, by_id[parent][1]) if parent is not None else ""
        want = f"{head}/{_nfc(last)}"
        if want != path and want in taken:
            log.warning("collection %r kept as it is: %r exists", path, want)
            want = f"{head}/{last}"
        new_path[cid] = want
        taken.add(want)
    for cid, want in new_path.items():
        if want != by_id[cid][1]:
            bind.execute(
                sa.text("UPDATE collections SET path = :p WHERE id = :i"), {"p": want, "i": cid}
            )
    # object names, per collection
    rows = bind.execute(
        sa.text(
            f"SELECT id, collection_id, name FROM data_objects WHERE {_non_ascii('name', dialect)}"
        )
    ).all()
    for oid, cid, name in rows:
        want = _nfc(name)
        if want == name:
            continue
        twin = bind.execute(
            sa.text("SELECT 1 FROM data_objects WHERE collection_id = :c AND name = :n"),
            {"c": cid, "n": want},
        ).first()
        if twin is not None:
            log.warning("object %r of collection %s kept as it is: %r exists", name, cid, want)
            continue
        bind.execute(
            sa.text("UPDATE data_objects SET name = :n WHERE id = :i"), {"n": want, "i": oid}
        )
    # metadata
    for column in ("attribute", "value", "unit"):
        rows = bind.execute(
            sa.text(
                f"SELECT id, {column} FROM avus WHERE {column} IS NOT NULL AND "
                f"{_non_ascii(column, dialect)}"
            )
        ).all()
        for aid, text in rows:
            if _nfc(text) != text:
                bind.execute(
                    sa.text(f"UPDATE avus SET {column} = :v WHERE id = :i"),
                    {"v": _nfc(text), "i": aid},
                )


def downgrade() -> None:
    pass  # NFC names are valid names of revision 0002
