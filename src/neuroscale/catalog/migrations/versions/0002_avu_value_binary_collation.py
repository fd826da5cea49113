"""PostgreSQL: metadata values compare in binary ("C") collation, as on SQLite, and the
planner knows which values go with which attribute.

With the database's default (linguistic) collation PostgreSQL cannot use the
``(attribute, value, object_id)`` index for a prefix pattern (``sub like '0004%'``), so
such a query read every triple of the attribute (0.1 s at 100,000 objects).  Under the "C"
collation the pattern's literal prefix is an index range, text comparisons (``a < 'x'``) are
byte order on both databases, and equality is unchanged.  SQLite already compares in binary.

PostgreSQL's planner also estimated ``attribute = 'task' and value = 'oneback'`` as if the two
were independent (8x too few rows at 100,000 objects) and hashed every match instead of
walking the objects in result order and stopping at the limit (68 ms instead of 7 ms); the
extended statistics ``st_avus_attr_value`` (functional dependencies and most-common pairs,
PostgreSQL >= 12, filled by ANALYZE / autovacuum) correct the estimate.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "avus",
            "value",
            type_=sa.String(length=2000, collation="C"),
            existing_type=sa.String(length=2000),
            existing_nullable=False,
        )
        op.execute(
            "CREATE STATISTICS IF NOT EXISTS st_avus_attr_value (dependencies, mcv) "
            "ON attribute, value FROM avus"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_avus_attr_value")
        op.alter_column(
            "avus",
            "value",
            type_=sa.String(length=2000),
            existing_type=sa.String(length=2000, collation="C"),
            existing_nullable=False,
        )
