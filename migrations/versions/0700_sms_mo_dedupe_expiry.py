"""MO de-duplication keys carry their own expiry, and the hot MO table sheds an index.

A key now expires when its MO's kind of identity says so (see core/sms_messages.py): an MO
the SMSC identified (a user_message_reference, SMSC timestamps, a concatenation reference)
is remembered for the long window, a plain MO for the short one, and a key whose
acknowledgement may not have reached the SMSC is extended to the long window. One
`expires_at` column says all of that; `seen_at` and its index go (the purge scans this small
table, which holds only keys inside their window, instead of keeping a second index entry
per MO).

Revision ID: 0700_sms_mo_dedupe_expiry
Revises: 0641_loan_receipt_index
"""

from __future__ import annotations

from alembic import op

revision = "0700_sms_mo_dedupe_expiry"
down_revision = "0641_loan_receipt_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE sms_mo_seen ADD COLUMN expires_at timestamptz")
    # Keys on record keep the old rule: 600 s from when they were last seen.
    op.execute("UPDATE sms_mo_seen SET expires_at = seen_at + interval '600 seconds'")
    op.execute("ALTER TABLE sms_mo_seen ALTER COLUMN expires_at SET NOT NULL")
    op.execute("DROP INDEX sms_mo_seen_at")
    op.execute("ALTER TABLE sms_mo_seen DROP COLUMN seen_at")


def downgrade() -> None:
    op.execute("ALTER TABLE sms_mo_seen ADD COLUMN seen_at timestamptz")
    op.execute("UPDATE sms_mo_seen SET seen_at = expires_at - interval '600 seconds'")
    op.execute("ALTER TABLE sms_mo_seen ALTER COLUMN seen_at SET NOT NULL")
    op.execute("ALTER TABLE sms_mo_seen ALTER COLUMN seen_at SET DEFAULT now()")
    op.execute("ALTER TABLE sms_mo_seen DROP COLUMN expires_at")
    op.execute("CREATE INDEX sms_mo_seen_at ON sms_mo_seen (seen_at)")
