"""`ledger_p2p` gains `p_sender_receipt` (default true): false leaves out the sender's receipt.

A channel whose own reply to the sender already is the receipt (SMS banking: the reply to
`SEND` carries the reference, amount, fee and new balance) passes false, so the sender gets one
SMS, not two; the recipient's receipt is queued as before. USSD passes nothing (true): its
screen is not a receipt, so the SMS follows. The function stays one INSERT for the receipts
(the flag filters a VALUES list), so the money path keeps its statements and round trip.

The new body is 0100_core_banking's, changed in two places (the signature and the receipts'
INSERT), and checked to change exactly there; downgrade restores 0100's function.

Revision ID: 0720_p2p_sender_receipt
Revises: 0700_sms_mo_dedupe_expiry
"""

from __future__ import annotations

import re
from pathlib import Path

from alembic import op

revision = "0720_p2p_sender_receipt"
down_revision = "0700_sms_mo_dedupe_expiry"
branch_labels = None
depends_on = None

CORE_SQL = Path(__file__).with_name("0100_core_banking.sql")
OLD_SIGNATURE = "text, text, text, text, bigint, text, text, text"
NEW_SIGNATURE = OLD_SIGNATURE + ", boolean"

OLD_PARAMS = "p_amount bigint, p_currency text, p_channel text, p_initiator text)"
NEW_PARAMS = (
    "p_amount bigint, p_currency text, p_channel text, p_initiator text,\n"
    "                           p_sender_receipt boolean DEFAULT true)"
)
OLD_RECEIPTS = """    INSERT INTO outbox (channel, recipient, kind, template, language, transfer_id, balance_minor)
    VALUES ('sms', p_sender, 'receipt', 'p2p_sent', s.language, v_id, v_sender_balance),
           ('sms', p_recipient, 'receipt', 'p2p_received', r.language, v_id,
            v_recipient_balance);"""
NEW_RECEIPTS = """    INSERT INTO outbox (channel, recipient, kind, template, language, transfer_id, balance_minor)
    SELECT 'sms', n.recipient, 'receipt', n.template, n.language, v_id, n.balance
    FROM (VALUES (p_sender, 'p2p_sent', s.language, v_sender_balance, p_sender_receipt),
                 (p_recipient, 'p2p_received', r.language, v_recipient_balance, true))
         AS n (recipient, template, language, balance, wanted)
    WHERE n.wanted IS NOT FALSE;"""


def _core_p2p() -> str:
    """0100_core_banking's `CREATE FUNCTION ledger_p2p ...` statement."""
    parts = re.split(r"^-- statement$", CORE_SQL.read_text(encoding="utf-8"), flags=re.MULTILINE)
    found = [p.strip() for p in parts if "CREATE FUNCTION ledger_p2p(" in p]
    assert len(found) == 1, "0100_core_banking.sql has one ledger_p2p"
    return found[0]


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected once in ledger_p2p: {old[:60]!r}"
    return text.replace(old, new)


def new_p2p() -> str:
    body = _replace_once(_core_p2p(), OLD_PARAMS, NEW_PARAMS)
    return _replace_once(body, OLD_RECEIPTS, NEW_RECEIPTS)


def _run(sql: str) -> None:
    # The driver, not SQLAlchemy's text(): PL/pgSQL's ":=" must not look like a parameter.
    op.get_bind().exec_driver_sql(sql)


def upgrade() -> None:
    _run(f"DROP FUNCTION ledger_p2p({OLD_SIGNATURE})")
    _run(new_p2p())


def downgrade() -> None:
    _run(f"DROP FUNCTION ledger_p2p({NEW_SIGNATURE})")
    _run(_core_p2p())
