"""Agent events in the order they happened: indexes on (agent_code, at, id) and (at, id).

Events deferred while PostgreSQL was away (the Redis spool, gateway.event_spool) are written
when it is back, after events that happened later: a row's id is the order of the writes, not
of the events. The admin lists (`/api/v1/agents/{code}/events`, `/api/v1/agent-events`) now
page newest first by the event's time, ties by id, with a keyset cursor on (at, id); these
indexes serve that order (read backwards) per agent and across agents. Built CONCURRENTLY:
agent_events grows with every fix event, and a plain CREATE INDEX would hold its writes (every
agent's events) for the whole build; a build that died half-way leaves an invalid index of
that name, dropped first so that running the migration again finishes it.

`agent_events_agent_id` (agent_code, id) stays for now: instances of the release before still
list by id during a rolling upgrade.

Revision ID: 0830_agent_event_order
Revises: 0820_loan_abandoned
"""

from __future__ import annotations

from alembic import op

revision = "0830_agent_event_order"
down_revision = "0820_loan_abandoned"
branch_labels = None
depends_on = None

INDEXES = {
    "agent_events_agent_at": "agent_events (agent_code, at, id)",
    "agent_events_at": "agent_events (at, id)",
}


def upgrade() -> None:
    with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
        for name, target in INDEXES.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON {target}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX {name}")
