"""Outbox: an optional dedupe key, unique per channel, so a caller that retries an enqueue
(the USSD engine's late-result SMS after a crash, say) queues the message once.

The index is partial (`WHERE dedupe_key IS NOT NULL`): the ledger's receipts carry no key and
add no index entry on the money path.

Revision ID: 0601_outbox_dedupe_key
Revises: 0600_accounts_static_checks
"""

from __future__ import annotations

from alembic import op

revision = "0601_outbox_dedupe_key"
down_revision = "0600_accounts_static_checks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE outbox ADD COLUMN dedupe_key text "
        "CONSTRAINT outbox_dedupe_key_length CHECK (length(dedupe_key) BETWEEN 1 AND 200)"
    )
    op.execute(
        "CREATE UNIQUE INDEX outbox_dedupe ON outbox (channel, dedupe_key) "
        "WHERE dedupe_key IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX outbox_dedupe")
    op.execute("ALTER TABLE outbox DROP COLUMN dedupe_key")
