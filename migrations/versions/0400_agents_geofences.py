"""Agent devices and geofences: fences (GeoJSON + version), assignments and schedules keyed by
agent code, device credentials (hashes only), location history and geofence events.

The agents table belongs to the banking core; the foreign keys from `agent_code` to it are added
when both branches meet.

Revision ID: 0400_agents_geofences
Revises: 0100_core_banking
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0400_agents_geofences"
down_revision = "0100_core_banking"
branch_labels = None
depends_on = None

CODE = sa.String(32)


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "geofences",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("geometry", postgresql.JSONB, nullable=False),
        sa.Column("radius_m", sa.Float, nullable=True),
        sa.Column("properties", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint("kind IN ('polygon', 'circle')", name="geofences_kind"),
        sa.CheckConstraint("(kind = 'circle') = (radius_m IS NOT NULL)", name="geofences_radius"),
        sa.CheckConstraint("version >= 1", name="geofences_version"),
    )
    op.create_table(
        "agent_geofences",
        sa.Column("agent_code", CODE, primary_key=True),
        sa.Column(
            "geofence_id",
            sa.BigInteger,
            sa.ForeignKey("geofences.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_index("agent_geofences_fence", "agent_geofences", ["geofence_id"])
    op.create_table(
        "agent_schedules",
        sa.Column("agent_code", CODE, primary_key=True),
        sa.Column("schedule", postgresql.JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "agent_devices",
        sa.Column("agent_code", CODE, primary_key=True),
        sa.Column("mqtt_username", sa.String(64), nullable=False, unique=True),
        # Mosquitto's own PBKDF2-SHA512 format ($7$...), so the password file is written as is.
        sa.Column("mqtt_password_hash", sa.Text, nullable=False),
        sa.Column("device_token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("credentials_version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "agent_locations",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("agent_code", CODE, nullable=False),
        sa.Column("fix_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("lat", sa.Float, nullable=False),
        sa.Column("lon", sa.Float, nullable=False),
        sa.Column("accuracy_m", sa.Float, nullable=True),
        sa.Column("mock", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("zone", sa.String(16), nullable=True),
        sa.Column("fence_id", sa.BigInteger, nullable=True),
    )
    op.create_index(
        "agent_locations_agent_ts", "agent_locations", ["agent_code", sa.text("fix_ts DESC")]
    )
    op.create_table(
        "agent_events",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("agent_code", CODE, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("fix_ts", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fence_id", sa.BigInteger, nullable=True),
        sa.Column("fence_version", sa.Integer, nullable=True),
        sa.Column("details", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.CheckConstraint(
            "kind IN ('enter', 'exit', 'breach', 'online', 'offline')", name="agent_events_kind"
        ),
    )
    op.create_index("agent_events_agent_id", "agent_events", ["agent_code", sa.text("id DESC")])


def downgrade() -> None:
    op.drop_table("agent_events")
    op.drop_table("agent_locations")
    op.drop_table("agent_devices")
    op.drop_table("agent_schedules")
    op.drop_table("agent_geofences")
    op.drop_table("geofences")
