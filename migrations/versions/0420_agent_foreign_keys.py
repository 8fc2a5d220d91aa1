"""Foreign keys from the agent device tables to the core's agents table.

Wave 1 keyed assignments, schedules and device credentials by an agent code with nothing to
check it against; now that the core owns `agents`, they must name a real agent. Rows that name
no agent cannot be used (commands need the agent's PIN and float) and are removed first: device
credentials of a code that is no agent would otherwise keep a login at the broker. The keys
cascade on delete: an assignment, a schedule or a device login means nothing without its agent
(the core closes agents rather than deleting them, so this is for a deliberate clean-up).

The history tables keep no foreign key, on purpose:
- `agent_locations` takes every accepted fix (thousands a second at the benchmark's load), by
  COPY in batches that mix agents. A foreign key costs each row a look-up in `agents` and a
  KEY SHARE lock on the agent's row: measured on this machine (PostgreSQL 15, COPY of
  2,000-row batches over 1,000 agents), 80,000 rows/s with the key against 149,000 without,
  0.53x. And one row naming an unknown code (a device on a broker without the ACL) would fail
  the whole batch, which the history writer retries, so every agent's history would stall.
- `agent_events` is written per engine batch across agents as well (one unknown agent's
  "online" would take other agents' breach events down with it), and as an audit trail it
  must outlive any change to the agent's row.
Both are read by agent code and joined to `agents` where a report needs the agent.

Revision ID: 0420_agent_foreign_keys
Revises: 0410_agent_decisions
"""

from __future__ import annotations

from alembic import op

revision = "0420_agent_foreign_keys"
down_revision = "0410_agent_decisions"
branch_labels = None
depends_on = None

TABLES = ("agent_geofences", "agent_schedules", "agent_devices")


def upgrade() -> None:
    for table in TABLES:
        op.execute(
            f"DELETE FROM {table} t WHERE NOT EXISTS "  # noqa: S608 (a constant)
            f"(SELECT 1 FROM agents a WHERE a.code = t.agent_code)"
        )
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {table}_agent_fk FOREIGN KEY (agent_code) "
            f"REFERENCES agents (code) ON DELETE CASCADE"
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_agent_fk")
