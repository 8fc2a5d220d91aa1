"""Abandoned registrations and PIN changes: a request given up is refused under its key for good.

A USSD registration or PIN change that outlived its deadline was promised "the result will
come by SMS". Once the instance that made the promise is gone (or past the promise's limit) the
gateway settles it: the change, if it was made under the step's key (the customer is told it
was), else the key abandoned and the customer told that nothing changed. From then on no ask
under that key may make the change (a paused process waking up): `action_claim_key` refuses it.

The keys: `customers.registered_by` (new, nullable, no default: adding it rewrites nothing) is
the key of the request that registered the customer; `customers.pin_changed_by` (0721) the key
of the change that set the PIN last, and the change's audit row (`customer.pin_changed`) now
names its key in `details.request`, so a change overwritten since by another is still found.

Race-free as 0810 and 0820 are: the registration's INSERT and the PIN change's UPDATE of
`pin_changed_by` take, in a BEFORE trigger, a SHARED transaction advisory lock on (msisdn,
key) in a namespace of their own (the two-int form, class 840; no other lock uses it), held
until their commit, then refuse an abandoned request (`ACTION_ABANDONED`). `action_abandon`
takes the lock EXCLUSIVE, so it waits for a change in flight and then sees it committed (or
not), and a change that comes after waits for the abandonment and is refused. Lock order: the
UPDATE holds the customer's row when its trigger waits for the key; the abandonment holds the
key and then only reads customers and audit_log (no row lock) and writes action_abandoned and
its caller's outbox row: no cycle. Each statement of these volatile functions reads a fresh
snapshot under READ COMMITTED, so what the lock waited for is seen; they refuse to run under
any other isolation. A hash collision of two requests in the lock only serialises them.

Revision ID: 0840_ussd_action_abandoned
Revises: 0830_agent_event_order
"""

from __future__ import annotations

from alembic import op

revision = "0840_ussd_action_abandoned"
down_revision = "0830_agent_event_order"
branch_labels = None
depends_on = None

UPGRADE = (
    "ALTER TABLE customers ADD COLUMN registered_by text",
    """
    CREATE TABLE action_abandoned (
        msisdn varchar(16) NOT NULL,
        idempotency_key varchar(200) NOT NULL CHECK (length(idempotency_key) >= 1),
        action varchar(16) NOT NULL CHECK (action IN ('register', 'pin.change')),
        abandoned_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (msisdn, idempotency_key)
    )
    """,
    # msisdn has no space (E.164), so msisdn || ' ' || key names one request.
    """
    CREATE FUNCTION action_claim_key(p_msisdn text, p_key text) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'action_claim_key needs READ COMMITTED, not %',
                current_setting('transaction_isolation');
        END IF;
        PERFORM pg_advisory_xact_lock_shared(840, hashtext(p_msisdn || ' ' || p_key));
        IF EXISTS (SELECT 1 FROM action_abandoned
                   WHERE msisdn = p_msisdn AND idempotency_key = p_key) THEN
            PERFORM ledger_fail('ACTION_ABANDONED',
                                'This request was given up; nothing changes under its key',
                                jsonb_build_object('idempotency_key', p_key));
        END IF;
    END $$
    """,
    """
    CREATE FUNCTION customer_registration_key_open() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM action_claim_key(NEW.msisdn, NEW.registered_by);
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER customers_registration_key_open BEFORE INSERT ON customers
        FOR EACH ROW WHEN (NEW.registered_by IS NOT NULL)
        EXECUTE FUNCTION customer_registration_key_open()
    """,
    """
    CREATE FUNCTION customer_pin_change_key_open() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM action_claim_key(NEW.msisdn, NEW.pin_changed_by);
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER customers_pin_change_key_open BEFORE UPDATE OF pin_changed_by ON customers
        FOR EACH ROW WHEN (NEW.pin_changed_by IS NOT NULL
                           AND NEW.pin_changed_by IS DISTINCT FROM OLD.pin_changed_by)
        EXECUTE FUNCTION customer_pin_change_key_open()
    """,
    # True when the request was done under the key (the customer registered by it; the PIN set
    # by it, now or before a later change), else the request abandoned for good: false.
    """
    CREATE FUNCTION action_abandon(p_msisdn text, p_key text, p_action text) RETURNS boolean
    LANGUAGE plpgsql AS $$
    BEGIN
        IF p_msisdn IS NULL OR p_msisdn !~ '^\\+[1-9][0-9]{6,14}$'
           OR p_key IS NULL OR length(p_key) NOT BETWEEN 1 AND 200
           OR p_action IS NULL OR p_action NOT IN ('register', 'pin.change') THEN
            PERFORM ledger_fail('VALIDATION_ERROR',
                                'A phone number, a request key and register or pin.change '
                                'are needed',
                                jsonb_build_object('field', 'idempotency_key'));
        END IF;
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'action_abandon needs READ COMMITTED, not %',
                current_setting('transaction_isolation');
        END IF;
        PERFORM pg_advisory_xact_lock(840, hashtext(p_msisdn || ' ' || p_key));
        IF p_action = 'register' THEN
            IF EXISTS (SELECT 1 FROM customers
                       WHERE msisdn = p_msisdn AND registered_by = p_key) THEN
                RETURN true;
            END IF;
        ELSIF EXISTS (SELECT 1 FROM customers
                      WHERE msisdn = p_msisdn AND pin_changed_by = p_key)
              OR EXISTS (SELECT 1 FROM audit_log
                         WHERE action = 'customer.pin_changed' AND target = p_msisdn
                           AND details->>'request' = p_key) THEN
            RETURN true;
        END IF;
        INSERT INTO action_abandoned (msisdn, idempotency_key, action)
        VALUES (p_msisdn, p_key, p_action) ON CONFLICT DO NOTHING;
        RETURN false;
    END $$
    """,
)

DOWNGRADE = (
    "DROP FUNCTION action_abandon(text, text, text)",
    "DROP TRIGGER customers_pin_change_key_open ON customers",
    "DROP FUNCTION customer_pin_change_key_open()",
    "DROP TRIGGER customers_registration_key_open ON customers",
    "DROP FUNCTION customer_registration_key_open()",
    "DROP FUNCTION action_claim_key(text, text)",
    "DROP TABLE action_abandoned",
    "ALTER TABLE customers DROP COLUMN registered_by",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
