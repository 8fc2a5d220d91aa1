"""`customers.pin_changed_by`: the idempotency key of the request that last set the PIN.

A PIN change processed again (an SMS `PIN <old> <new>` re-run after a crash between the change
and the reply, a USSD step retried) finds its own key there and answers the same success,
instead of checking the old PIN against the new hash and counting a wrong PIN. Any other
request is checked as before (see core.pins.change_pin). Nullable, no default: adding it
rewrites nothing.

Revision ID: 0721_pin_change_key
Revises: 0720_p2p_sender_receipt
"""

from __future__ import annotations

from alembic import op

revision = "0721_pin_change_key"
down_revision = "0720_p2p_sender_receipt"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE customers ADD COLUMN pin_changed_by text")


def downgrade() -> None:
    op.execute("ALTER TABLE customers DROP COLUMN pin_changed_by")
