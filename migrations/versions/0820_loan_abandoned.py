"""Abandoned loan requests: a loan application or repayment given up is refused under its
request key for good.

A USSD loan application or repayment whose outcome stayed unknown was promised "the result will
come by SMS". Past the promise's limit (or once the instance that made it is gone) the gateway
settles it: what the loan service did under the step's request key if it did anything (an
application, a repayment: its own notice is the result), else the request abandoned and the
customer told that nothing happened. The loan service keys its ledger movements itself
(`loan-disburse:<application>`, `loan-repay:<loan>:<request key>`), so abandoning the request
key in `money_abandoned` would stop none of them: the abandonment is held where the loan service
claims the request key, per customer, as the key is unique there: (msisdn, key) for
applications, and for repayments the key on any of the customer's loans.

The claim, `loan_claim_key`, is the FIRST statement of an application's or a repayment's
transaction: a SHARED transaction advisory lock on (msisdn, key) in a namespace of its own (the
two-int form, class 820; no other lock uses it), held until the commit, then the refusal if the
request was abandoned. `loan_abandon` takes the lock EXCLUSIVE, so it waits for a request in
flight and then sees its application or repayment committed (or not), and a request that comes
after waits for the abandonment and then is refused. Lock order: an ask takes the key's lock
before any other (the applicant's lock, the loan's row, the ledger's key lock and account rows);
an abandonment takes the key's lock and then writes only rows no ask locks (loan_abandoned, and
its caller's outbox row under the result's dedupe key). Every wait is so an abandonment waiting
for an ask, or an ask waiting at its first statement for an abandonment: no cycle. Each
statement of these volatile functions reads a fresh snapshot under READ COMMITTED, so what the
lock waited for is seen. A hash collision of two requests in the lock only serialises them.

The triggers on the two tables check again at the INSERT that claims the key (any path that
forgot the claim is still refused); they re-take the shared lock the claim holds already.

Revision ID: 0820_loan_abandoned
Revises: 0810_money_abandoned
"""

from __future__ import annotations

from alembic import op

revision = "0820_loan_abandoned"
down_revision = "0810_money_abandoned"
branch_labels = None
depends_on = None

UPGRADE = (
    """
    CREATE TABLE loan_abandoned (
        msisdn varchar(16) NOT NULL,
        idempotency_key varchar(128) NOT NULL CHECK (length(idempotency_key) >= 1),
        action varchar(8) NOT NULL CHECK (action IN ('apply', 'repay')),
        abandoned_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (msisdn, idempotency_key)
    )
    """,
    # msisdn has no space (E.164), so msisdn || ' ' || key names one request.
    """
    CREATE FUNCTION loan_claim_key(p_msisdn text, p_key text) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'loan_claim_key needs READ COMMITTED, not %',
                current_setting('transaction_isolation');
        END IF;
        PERFORM pg_advisory_xact_lock_shared(820, hashtext(p_msisdn || ' ' || p_key));
        IF EXISTS (SELECT 1 FROM loan_abandoned
                   WHERE msisdn = p_msisdn AND idempotency_key = p_key) THEN
            PERFORM ledger_fail('MONEY_ABANDONED',
                                'This request was given up; nothing happens under its key',
                                jsonb_build_object('idempotency_key', p_key));
        END IF;
    END $$
    """,
    """
    CREATE FUNCTION loan_application_key_open() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM loan_claim_key(NEW.msisdn, NEW.idempotency_key);
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER loan_applications_key_open BEFORE INSERT ON loan_applications
        FOR EACH ROW EXECUTE FUNCTION loan_application_key_open()
    """,
    """
    CREATE FUNCTION loan_repayment_key_open() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM loan_claim_key((SELECT msisdn FROM loans WHERE id = NEW.loan_id),
                               NEW.idempotency_key);
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER loan_repayments_key_open BEFORE INSERT ON loan_repayments
        FOR EACH ROW EXECUTE FUNCTION loan_repayment_key_open()
    """,
    # 'apply' or 'repay' for what the loan service did under the request (either kind: one
    # request key never names two requests), or NULL: nothing, and now nothing ever will.
    """
    CREATE FUNCTION loan_abandon(p_msisdn text, p_key text, p_action text) RETURNS text
    LANGUAGE plpgsql AS $$
    BEGIN
        IF p_msisdn IS NULL OR p_msisdn !~ '^\\+[1-9][0-9]{6,14}$'
           OR p_key IS NULL OR length(p_key) NOT BETWEEN 1 AND 128
           OR p_action IS NULL OR p_action NOT IN ('apply', 'repay') THEN
            PERFORM ledger_fail('VALIDATION_ERROR',
                                'A phone number, a request key and apply or repay are needed',
                                jsonb_build_object('field', 'idempotency_key'));
        END IF;
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'loan_abandon needs READ COMMITTED, not %',
                current_setting('transaction_isolation');
        END IF;
        PERFORM pg_advisory_xact_lock(820, hashtext(p_msisdn || ' ' || p_key));
        IF EXISTS (SELECT 1 FROM loan_applications
                   WHERE msisdn = p_msisdn AND idempotency_key = p_key) THEN
            RETURN 'apply';
        END IF;
        IF EXISTS (SELECT 1 FROM loan_repayments r JOIN loans l ON l.id = r.loan_id
                   WHERE l.msisdn = p_msisdn AND r.idempotency_key = p_key) THEN
            RETURN 'repay';
        END IF;
        INSERT INTO loan_abandoned (msisdn, idempotency_key, action)
        VALUES (p_msisdn, p_key, p_action) ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$
    """,
)

DOWNGRADE = (
    "DROP FUNCTION loan_abandon(text, text, text)",
    "DROP TRIGGER loan_repayments_key_open ON loan_repayments",
    "DROP FUNCTION loan_repayment_key_open()",
    "DROP TRIGGER loan_applications_key_open ON loan_applications",
    "DROP FUNCTION loan_application_key_open()",
    "DROP FUNCTION loan_claim_key(text, text)",
    "DROP TABLE loan_abandoned",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
