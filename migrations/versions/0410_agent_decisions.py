"""Agent decisions: one row per device command whose agent PIN was right (cash-in, cash-out,
customer registration): the geofence gate's answer and evidence, and the outcome ("ok" or the
refusal's code). A completed command binds its id (a partial unique index), in the same
transaction as the money or the registration, so a retried registration finds its customer.

Revision ID: 0410_agent_decisions
Revises: 0400_agents_geofences
"""

from __future__ import annotations

from alembic import op

revision = "0410_agent_decisions"
down_revision = "0400_agents_geofences"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE agent_decisions (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT now(),
            -- Written only after the agent's PIN was verified, at a human's pace: the
            -- foreign key costs nothing that matters and keeps every row an agent's.
            agent_code text NOT NULL REFERENCES agents (code),
            command_id text NOT NULL CHECK (length(command_id) BETWEEN 1 AND 64),
            op text NOT NULL CHECK (op IN ('cash_in', 'cash_out', 'register_customer')),
            allowed boolean NOT NULL,
            reason text,
            outcome text NOT NULL CHECK (length(outcome) BETWEEN 1 AND 64),
            reference text,
            target text,
            evidence jsonb NOT NULL DEFAULT '{}',
            CHECK (allowed = (reason IS NULL)),
            CHECK (outcome <> 'ok' OR allowed)
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX agent_decisions_done ON agent_decisions (agent_code, command_id) "
        "WHERE outcome = 'ok'"
    )
    op.execute("CREATE INDEX agent_decisions_agent ON agent_decisions (agent_code, id DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE agent_decisions")
