"""`agents.language`: the language of the texts an agent is sent (en, sw, fr), like a
customer's. Default 'en', so existing agents keep the English they had; a constant default adds
the column without rewriting the table.

Revision ID: 0740_agent_language
Revises: 0730_limits_timezone
"""

from __future__ import annotations

from alembic import op

revision = "0740_agent_language"
down_revision = "0730_limits_timezone"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE agents ADD COLUMN language text NOT NULL DEFAULT 'en' "
        "CHECK (language IN ('en', 'sw', 'fr'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE agents DROP COLUMN language")
