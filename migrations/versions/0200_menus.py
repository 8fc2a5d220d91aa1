"""Menus (a working draft per menu and immutable published versions) and USSD step analytics.

Revision ID: 0200_menus
Revises: 0500_loans
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0200_menus"
down_revision = "0500_loans"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "menus",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("draft", postgresql.JSONB, nullable=False),
        sa.Column(
            "draft_updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("draft_updated_by", sa.String(128), nullable=False),
        sa.Column("current_version", sa.Integer),
        # The service code the current version answers (unique among current versions).
        sa.Column("service_code", sa.String(32)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index(
        "menus_service_code",
        "menus",
        ["service_code"],
        unique=True,
        postgresql_where=sa.text("service_code IS NOT NULL"),
    )
    op.create_table(
        "menu_versions",
        sa.Column(
            "menu_id", sa.BigInteger, sa.ForeignKey("menus.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", postgresql.JSONB, nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column(
            "published_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("published_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("menu_id", "version"),
        sa.CheckConstraint("version > 0", name="menu_versions_positive"),
    )
    op.create_foreign_key(
        "menus_current_version",
        "menus",
        "menu_versions",
        ["id", "current_version"],
        ["menu_id", "version"],
    )
    op.execute(
        """
        CREATE FUNCTION menu_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'published menu versions are immutable'
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER menu_versions_no_update BEFORE UPDATE ON menu_versions "
        "FOR EACH ROW EXECUTE FUNCTION menu_versions_immutable()"
    )
    op.create_table(
        "ussd_steps",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("session_id", sa.String(160), nullable=False),
        sa.Column("msisdn", sa.String(16), nullable=False),
        sa.Column("menu", sa.String(64), nullable=False, server_default=""),
        sa.Column("menu_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("step", sa.Integer, nullable=False, server_default="0"),
        sa.Column("screen", sa.String(64), nullable=False, server_default=""),
        sa.Column("outcome", sa.String(48), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        # What the user typed, masked ("****") on secret screens; never a PIN.
        sa.Column("input", sa.String(64)),
        sa.Column("language", sa.String(3), nullable=False, server_default=""),
    )
    op.create_index("ussd_steps_at", "ussd_steps", ["at"])
    op.create_index("ussd_steps_session", "ussd_steps", ["provider", "session_id"])


def downgrade() -> None:
    op.drop_table("ussd_steps")
    op.drop_constraint("menus_current_version", "menus", type_="foreignkey")
    op.execute("DROP TRIGGER menu_versions_no_update ON menu_versions")
    op.execute("DROP FUNCTION menu_versions_immutable()")
    op.drop_table("menu_versions")
    op.drop_index("menus_service_code", table_name="menus")
    op.drop_table("menus")
