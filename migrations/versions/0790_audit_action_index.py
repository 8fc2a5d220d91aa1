"""An index on the audit log by action, target and time.

A wrong PIN is counted once per request (core.pins.register_failure): before counting, the
statement looks in the audit log for this request's `customer.pin_failed` or
`agent.pin_failed` row of the last hour. Without an index that look-up read the whole log,
which every admin action and every wrong PIN grows. The same index serves an operator reading
one customer's or agent's history by action. Built CONCURRENTLY: every admin action, wrong PIN
and money movement writes the audit log, which a plain CREATE INDEX would hold for the whole
build; a build that died half-way leaves an invalid index, dropped first on the next run.

Revision ID: 0790_audit_action_index
Revises: 0780_agent_event_ids
"""

from __future__ import annotations

from alembic import op

revision = "0790_audit_action_index"
down_revision = "0780_agent_event_ids"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():  # CONCURRENTLY cannot run in a transaction
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS audit_log_action_target")
        op.execute(
            "CREATE INDEX CONCURRENTLY audit_log_action_target ON audit_log (action, target, at)"
        )


def downgrade() -> None:
    op.execute("DROP INDEX audit_log_action_target")
