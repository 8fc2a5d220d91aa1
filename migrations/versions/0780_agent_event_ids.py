"""Agent events: a stable id per event, unique, so a retried write stores an event once.

The gateway gives each event a UUID when the event happens (core.devices.EventRow), before any
write, and inserts with ON CONFLICT (event_id) DO NOTHING: an insert whose COMMIT answer was
lost, tried again, stores nothing twice, and a breach's alerts go to the outbox only with the
event's first insert. Rows written before this revision keep NULL (NULLs never collide in a
unique index), so the column is added without a rewrite of the table, and the index is built
CONCURRENTLY: agent_events grows with every fix event, and a plain CREATE INDEX would hold its
writes (every agent's events) for the whole build. A build that died half-way leaves an invalid
index of that name, dropped first so that running the migration again finishes it.

Revision ID: 0780_agent_event_ids
Revises: 0775_admin_push_devices
"""

from __future__ import annotations

from alembic import op

revision = "0780_agent_event_ids"
down_revision = "0775_admin_push_devices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE agent_events ADD COLUMN IF NOT EXISTS event_id uuid")
    with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS agent_events_event_id")
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY agent_events_event_id ON agent_events (event_id)"
        )


def downgrade() -> None:
    op.execute("DROP INDEX agent_events_event_id")
    op.execute("ALTER TABLE agent_events DROP COLUMN event_id")
