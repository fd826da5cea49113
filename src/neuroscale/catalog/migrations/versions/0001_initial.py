"""Initial catalog schema.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # long: a migration is one declarative listing of the schema (Alembic's own layout)
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("owner_host", sa.String(length=255), nullable=True),
        sa.Column("owner_pid", sa.Integer(), nullable=True),
        sa.Column("verified_at", sa.DateTime(), nullable=True),
        sa.Column("checked_at", sa.DateTime(), nullable=True),
        sa.Column("check_status", sa.String(length=12), nullable=True),
        sa.Column("check_run_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("state IN ('pending', 'ok', 'deleting')", name=op.f("ck_blobs_state")),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blobs")),
    )
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.create_index("ix_blobs_state", ["state"], unique=False)

    op.create_table(
        "collections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["collections.id"], name=op.f("fk_collections_parent_id_collections")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint("path", name=op.f("uq_collections_path")),
    )
    with op.batch_alter_table("collections", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_collections_parent_id"), ["parent_id"], unique=False)

    op.create_table(
        "fixity_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("started", sa.DateTime(), nullable=False),
        sa.Column("finished", sa.DateTime(), nullable=True),
        sa.Column("cursor", sa.String(length=64), nullable=True),
        sa.Column("cutoff", sa.DateTime(), nullable=True),
        sa.Column("n_checked", sa.Integer(), nullable=False),
        sa.Column("n_ok", sa.Integer(), nullable=False),
        sa.Column("n_corrupt", sa.Integer(), nullable=False),
        sa.Column("n_missing", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fixity_runs")),
    )
    op.create_table(
        "principals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('user', 'group')", name=op.f("ck_principals_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_principals")),
        sa.UniqueConstraint("name", name=op.f("uq_principals_name")),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )
    op.create_table(
        "access",
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("principal_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.CheckConstraint("level BETWEEN 1 AND 3", name=op.f("ck_access_level")),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_access_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_access_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("collection_id", "principal_id", name=op.f("pk_access")),
    )
    with op.batch_alter_table("access", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_principal_id"), ["principal_id"], unique=False)

    op.create_table(
        "data_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("creator_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_data_objects_collection_id_collections"),
        ),
        sa.ForeignKeyConstraint(
            ["creator_id"],
            ["principals.id"],
            name=op.f("fk_data_objects_creator_id_principals"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["sha256"], ["blobs.sha256"], name=op.f("fk_data_objects_sha256_blobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_objects")),
        sa.UniqueConstraint(
            "collection_id", "name", name=op.f("uq_data_objects_collection_id_name")
        ),
    )
    with op.batch_alter_table("data_objects", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_data_objects_collection_id"), ["collection_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_data_objects_sha256"), ["sha256"], unique=False)

    op.create_table(
        "derivations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("output_sha256", sa.String(length=64), nullable=False),
        sa.Column("software", sa.String(length=255), nullable=False),
        sa.Column("parameters", sa.Text(), nullable=False),
        sa.Column("started", sa.DateTime(), nullable=True),
        sa.Column("ended", sa.DateTime(), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["principals.id"],
            name=op.f("fk_derivations_user_id_principals"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_derivations")),
    )
    with op.batch_alter_table("derivations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_derivations_output_sha256"), ["output_sha256"], unique=False
        )

    op.create_table(
        "memberships",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["principals.id"],
            name=op.f("fk_memberships_group_id_principals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["principals.id"],
            name=op.f("fk_memberships_user_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("group_id", "user_id", name=op.f("pk_memberships")),
    )
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_memberships_user_id"), ["user_id"], unique=False)

    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("issuer_id", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=True),
        sa.Column("uses_limit", sa.Integer(), nullable=True),
        sa.Column("uses_count", sa.Integer(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.CheckConstraint("level BETWEEN 1 AND 2", name=op.f("ck_tickets_level")),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_tickets_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["issuer_id"],
            ["principals.id"],
            name=op.f("fk_tickets_issuer_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tickets")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_tickets_token_hash")),
    )
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tickets_collection_id"), ["collection_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_tickets_issuer_id"), ["issuer_id"], unique=False)

    op.create_table(
        "avus",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=True),
        sa.Column("collection_id", sa.Integer(), nullable=True),
        sa.Column("attribute", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=2000), nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "(object_id IS NULL) <> (collection_id IS NULL)", name=op.f("ck_avus_one_target")
        ),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_avus_collection_id_collections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["object_id"],
            ["data_objects.id"],
            name=op.f("fk_avus_object_id_data_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_avus")),
    )
    with op.batch_alter_table("avus", schema=None) as batch_op:
        batch_op.create_index(
            "ix_avus_attr_num_obj", ["attribute", "value_num", "object_id"], unique=False
        )
        batch_op.create_index(
            "ix_avus_attr_value_obj", ["attribute", "value", "object_id"], unique=False
        )
        batch_op.create_index("ix_avus_collection_id", ["collection_id"], unique=False)
        batch_op.create_index("ix_avus_object_id", ["object_id"], unique=False)

    op.create_table(
        "derivation_sources",
        sa.Column("derivation_id", sa.Integer(), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["derivation_id"],
            ["derivations.id"],
            name=op.f("fk_derivation_sources_derivation_id_derivations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "derivation_id", "source_sha256", name=op.f("pk_derivation_sources")
        ),
    )
    with op.batch_alter_table("derivation_sources", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_derivation_sources_source_sha256"), ["source_sha256"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("derivation_sources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_derivation_sources_source_sha256"))

    op.drop_table("derivation_sources")
    with op.batch_alter_table("avus", schema=None) as batch_op:
        batch_op.drop_index("ix_avus_object_id")
        batch_op.drop_index("ix_avus_collection_id")
        batch_op.drop_index("ix_avus_attr_value_obj")
        batch_op.drop_index("ix_avus_attr_num_obj")

    op.drop_table("avus")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tickets_issuer_id"))
        batch_op.drop_index(batch_op.f("ix_tickets_collection_id"))

    op.drop_table("tickets")
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_memberships_user_id"))

    op.drop_table("memberships")
    with op.batch_alter_table("derivations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_derivations_output_sha256"))

    op.drop_table("derivations")
    with op.batch_alter_table("data_objects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_data_objects_sha256"))
        batch_op.drop_index(batch_op.f("ix_data_objects_collection_id"))

    op.drop_table("data_objects")
    with op.batch_alter_table("access", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_access_principal_id"))

    op.drop_table("access")
    op.drop_table("settings")
    op.drop_table("principals")
    op.drop_table("fixity_runs")
    with op.batch_alter_table("collections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_collections_parent_id"))

    op.drop_table("collections")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_index("ix_blobs_state")

    op.drop_table("blobs")
