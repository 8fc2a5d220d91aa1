"""Abandoned idempotency keys: a movement given up is refused under its key for good.

A USSD money action whose outcome stayed unknown (its connection lost) was promised "the result
will come by SMS". Past the promise's limit (or once the instance that made it is gone) the
gateway settles it: the movement if the ledger has it under its key, else the key abandoned and
the customer told that nothing moved. From then on no ask under that key may move money (a
retried hop, a paused process waking up): `transfers_key_open` refuses it.

Race-free without touching the money functions' bodies: every claim of a key (the INSERT into
`transfers`, in ledger_p2p, ledger_cash_out and ledger_claim) first takes a SHARED transaction
advisory lock on the key in a namespace of its own (the two-int form, class 810; no other lock
uses it), held until its commit; `ledger_abandon` takes it EXCLUSIVE, so it waits for a
movement under the key in flight and then sees it committed (or not), and a movement that
comes after waits for the abandonment and then sees it. Each statement of these volatile
functions reads a fresh snapshot under READ COMMITTED (every money path's isolation), so what
the lock waited for is seen; both functions refuse to run under any other isolation (a
snapshot from before the wait would miss what it waited for). A hash collision of two keys in
the lock only serialises them.

Revision ID: 0810_money_abandoned
Revises: 0800_admin_credentials
"""

from __future__ import annotations

from alembic import op

revision = "0810_money_abandoned"
down_revision = "0800_admin_credentials"
branch_labels = None
depends_on = None

UPGRADE = (
    """
    CREATE TABLE money_abandoned (
        idempotency_key text PRIMARY KEY CHECK (length(idempotency_key) BETWEEN 1 AND 128),
        abandoned_at timestamptz NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE FUNCTION ledger_key_open() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'transfers_key_open needs READ COMMITTED (a fresh snapshot after '
                            'the key lock), not %', current_setting('transaction_isolation');
        END IF;
        PERFORM pg_advisory_xact_lock_shared(810, hashtext(NEW.idempotency_key));
        IF EXISTS (SELECT 1 FROM money_abandoned WHERE idempotency_key = NEW.idempotency_key)
        THEN
            PERFORM ledger_fail('MONEY_ABANDONED',
                                'This request was given up; nothing moves under its key',
                                jsonb_build_object('idempotency_key', NEW.idempotency_key));
        END IF;
        RETURN NEW;
    END $$
    """,
    # BEFORE INSERT row triggers fire for a row that ON CONFLICT DO NOTHING then skips (a
    # replay) too: a replay of a posted key is never abandoned, so it passes.
    """
    CREATE TRIGGER transfers_key_open BEFORE INSERT ON transfers
        FOR EACH ROW EXECUTE FUNCTION ledger_key_open()
    """,
    """
    CREATE FUNCTION ledger_abandon(p_key text) RETURNS ledger_outcome LANGUAGE plpgsql AS $$
    DECLARE
        v_id bigint;
    BEGIN
        IF p_key IS NULL OR length(p_key) NOT BETWEEN 1 AND 128 THEN
            PERFORM ledger_fail('VALIDATION_ERROR',
                                'An idempotency key of 1 to 128 characters is needed',
                                jsonb_build_object('field', 'idempotency_key'));
        END IF;
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'ledger_abandon needs READ COMMITTED (a fresh snapshot after the '
                            'key lock), not %', current_setting('transaction_isolation');
        END IF;
        PERFORM pg_advisory_xact_lock(810, hashtext(p_key));
        SELECT id INTO v_id FROM transfers
        WHERE key_hash = hashtextextended(p_key, 0) AND idempotency_key = p_key;
        IF v_id IS NOT NULL THEN
            RETURN ledger_result(v_id, true);
        END IF;
        INSERT INTO money_abandoned (idempotency_key) VALUES (p_key) ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$
    """,
)

DOWNGRADE = (
    "DROP FUNCTION ledger_abandon(text)",
    "DROP TRIGGER transfers_key_open ON transfers",
    "DROP FUNCTION ledger_key_open()",
    "DROP TABLE money_abandoned",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
