"""A partial index over the core's receipts for loan transfers, so the loan service can find
the receipt a disbursement or repayment just wrote and fold its notice into it (one message
per movement; core.loans.core_ledger.OutboxNotifier).

Only rows with a loan receipt template are in the index: every other outbox insert (the core's
receipts for transfers, SMS replies, alerts) evaluates the predicate and adds no index entry,
so the money path of every other transfer pays nothing for it.

Revision ID: 0641_loan_receipt_index
Revises: 0640_loan_not_reversible
"""

from __future__ import annotations

from alembic import op

revision = "0641_loan_receipt_index"
down_revision = "0640_loan_not_reversible"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX outbox_loan_receipts ON outbox (transfer_id)"
        " WHERE template IN ('loan_disbursed', 'loan_repaid')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX outbox_loan_receipts")
