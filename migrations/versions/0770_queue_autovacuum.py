"""Autovacuum sooner on the tables that work as queues.

Every SMS round trip updates its MO once (`processed`), every outbox row is updated when it is
sent, and the MO de-duplication keys are deleted once their window has passed: each leaves a
dead row. PostgreSQL's defaults vacuum a table once a fifth of it is dead, which for a table
holding months of messages means millions of dead rows in its recent, busy end before a vacuum
comes; PostgreSQL's CPU per statement grows with them (measured in bench/sms.py with autovacuum
off: 0.25 -> 0.60 s per 1,000 round trips over six runs of 4,000). These tables are vacuumed
after a fixed number of changes instead (and analysed as often, so their plans see them).

Revision ID: 0770_queue_autovacuum
Revises: 0760_kyc_documents
"""

from __future__ import annotations

from alembic import op

revision = "0770_queue_autovacuum"
down_revision = "0760_kyc_documents"
branch_labels = None
depends_on = None

# table -> dead (or changed) rows before a vacuum (and an analyze), whatever the table's size.
QUEUES = {
    "sms_messages": 10_000,
    "sms_mt_parts": 10_000,
    "sms_mo_seen": 2_000,
    "outbox": 10_000,
}
SETTINGS = (
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_threshold",
    "autovacuum_analyze_scale_factor",
    "autovacuum_analyze_threshold",
)


def upgrade() -> None:
    for table, rows in QUEUES.items():
        op.execute(
            f"ALTER TABLE {table} SET (autovacuum_vacuum_scale_factor = 0, "
            f"autovacuum_vacuum_threshold = {rows}, autovacuum_analyze_scale_factor = 0, "
            f"autovacuum_analyze_threshold = {rows})"
        )


def downgrade() -> None:
    for table in QUEUES:
        op.execute(f"ALTER TABLE {table} RESET ({', '.join(SETTINGS)})")
