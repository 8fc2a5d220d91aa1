"""Loans: products, applications, loans, installments, repayments, penalties, notices, job runs,
and the lifecycle table with the trigger that refuses any status change it does not list.

Customers are referenced by MSISDN (E.164 text) for now; foreign keys to the banking core's
customers table are added when that table exists.

Revision ID: 0500_loans
Revises: 0001
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0500_loans"
down_revision = "0001"
branch_labels = None
depends_on = None

# A frozen copy of core.loans.lifecycle.TRANSITIONS (migrations never import live code; a test
# keeps the two equal): (trigger, source, dest).
TRANSITIONS = (
    ("approve", "applied", "approved"),
    ("reject", "applied", "rejected"),
    ("reject", "approved", "rejected"),
    ("disburse", "approved", "disbursed"),
    ("activate", "disbursed", "active"),
    ("fall_overdue", "active", "overdue"),
    ("cure", "overdue", "active"),
    ("repay", "active", "repaid"),
    ("repay", "overdue", "repaid"),
    ("repay", "defaulted", "repaid"),
    ("default", "overdue", "defaulted"),
    ("write_off", "defaulted", "written_off"),
)

SCHEMA = r"""
CREATE TABLE loan_transitions (
    trigger varchar(16) NOT NULL,
    source varchar(16) NOT NULL,
    dest varchar(16) NOT NULL,
    PRIMARY KEY (trigger, source)
);

CREATE TABLE loan_products (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code varchar(32) NOT NULL UNIQUE CHECK (code ~ '^[A-Z0-9][A-Z0-9_-]{1,31}$'),
    name varchar(64) NOT NULL CHECK (length(btrim(name)) > 0),
    currency char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    principal_min_minor bigint NOT NULL CHECK (principal_min_minor > 0),
    principal_max_minor bigint NOT NULL CHECK (principal_max_minor >= principal_min_minor),
    interest_rate_percent numeric(9, 4) NOT NULL CHECK (interest_rate_percent BETWEEN 0 AND 100),
    interest_method varchar(24) NOT NULL CHECK (interest_method IN ('flat', 'declining_balance')),
    amortization varchar(24) NOT NULL
        CHECK (amortization IN ('equal_installments', 'equal_principal')),
    repayments smallint NOT NULL CHECK (repayments BETWEEN 1 AND 120),
    frequency varchar(8) NOT NULL CHECK (frequency IN ('days', 'weeks', 'months')),
    repayment_every smallint NOT NULL DEFAULT 1 CHECK (repayment_every BETWEEN 1 AND 365),
    grace_principal_periods smallint NOT NULL DEFAULT 0
        CHECK (grace_principal_periods >= 0 AND grace_principal_periods < repayments),
    grace_interest_periods smallint NOT NULL DEFAULT 0
        CHECK (grace_interest_periods BETWEEN 0 AND grace_principal_periods),
    installment_multiple_minor integer NOT NULL DEFAULT 1 CHECK (installment_multiple_minor >= 1),
    facility_fee_percent numeric(9, 4) NOT NULL DEFAULT 0 CHECK (facility_fee_percent >= 0),
    facility_fee_flat_minor bigint NOT NULL DEFAULT 0 CHECK (facility_fee_flat_minor >= 0),
    late_penalty_percent numeric(9, 4) NOT NULL DEFAULT 0 CHECK (late_penalty_percent >= 0),
    late_penalty_flat_minor bigint NOT NULL DEFAULT 0 CHECK (late_penalty_flat_minor >= 0),
    penalty_grace_days smallint NOT NULL DEFAULT 0 CHECK (penalty_grace_days >= 0),
    default_after_days smallint NOT NULL DEFAULT 90 CHECK (default_after_days >= 1),
    min_account_age_days integer NOT NULL DEFAULT 0 CHECK (min_account_age_days >= 0),
    auto_approve_max_minor bigint NOT NULL DEFAULT 0 CHECK (auto_approve_max_minor >= 0),
    tiers text[] NOT NULL CHECK (cardinality(tiers) >= 1),
    active boolean NOT NULL DEFAULT true,
    created_by varchar(128) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE loan_applications (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msisdn varchar(16) NOT NULL CHECK (msisdn ~ '^\+[1-9][0-9]{6,14}$'),
    product_id bigint NOT NULL REFERENCES loan_products (id),
    principal_minor bigint NOT NULL CHECK (principal_minor > 0),
    currency char(3) NOT NULL,
    channel varchar(16) NOT NULL,
    idempotency_key varchar(128) NOT NULL,
    status varchar(16) NOT NULL
        CHECK (status IN ('applied', 'approved', 'rejected', 'disbursed')),
    decision varchar(8) NOT NULL CHECK (decision IN ('approve', 'review', 'refuse')),
    decision_code varchar(32) NOT NULL,
    decision_message varchar(160) NOT NULL,
    score integer CHECK (score BETWEEN 0 AND 1000),
    score_limit_minor bigint CHECK (score_limit_minor >= 0),
    score_detail jsonb NOT NULL DEFAULT '{}',
    decided_by varchar(128),
    decided_at timestamptz,
    note varchar(500),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (msisdn, idempotency_key)
);
CREATE INDEX loan_applications_msisdn_created ON loan_applications (msisdn, created_at);
CREATE INDEX loan_applications_status_id ON loan_applications (status, id);

CREATE TABLE loans (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    application_id bigint NOT NULL UNIQUE REFERENCES loan_applications (id),
    msisdn varchar(16) NOT NULL CHECK (msisdn ~ '^\+[1-9][0-9]{6,14}$'),
    product_id bigint NOT NULL REFERENCES loan_products (id),
    currency char(3) NOT NULL,
    terms jsonb NOT NULL,
    principal_minor bigint NOT NULL CHECK (principal_minor > 0),
    interest_minor bigint NOT NULL CHECK (interest_minor >= 0),
    fee_minor bigint NOT NULL CHECK (fee_minor >= 0),
    status varchar(16) NOT NULL CHECK (status IN
        ('disbursed', 'active', 'overdue', 'repaid', 'defaulted', 'written_off')),
    disbursed_on date NOT NULL,
    maturity_date date NOT NULL CHECK (maturity_date >= disbursed_on),
    days_past_due integer NOT NULL DEFAULT 0 CHECK (days_past_due >= 0),
    max_days_past_due integer NOT NULL DEFAULT 0 CHECK (max_days_past_due >= days_past_due),
    arrears_bucket varchar(8) NOT NULL DEFAULT 'current'
        CHECK (arrears_bucket IN ('current', '1-30', '31-60', '61-90', '90+')),
    disbursement_key varchar(128) NOT NULL UNIQUE,
    disbursement_ref varchar(64),
    closed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- One open loan per customer: the database backs the LOAN_OUTSTANDING rule.
CREATE UNIQUE INDEX loans_one_open_per_msisdn ON loans (msisdn)
    WHERE status IN ('disbursed', 'active', 'overdue', 'defaulted');
CREATE INDEX loans_status ON loans (status, id);
CREATE INDEX loans_msisdn ON loans (msisdn);

CREATE TABLE loan_installments (
    loan_id bigint NOT NULL REFERENCES loans (id) ON DELETE CASCADE,
    number smallint NOT NULL CHECK (number >= 1),
    due_date date NOT NULL,
    principal_minor bigint NOT NULL CHECK (principal_minor >= 0),
    interest_minor bigint NOT NULL CHECK (interest_minor >= 0),
    fee_minor bigint NOT NULL DEFAULT 0 CHECK (fee_minor >= 0),
    penalty_minor bigint NOT NULL DEFAULT 0 CHECK (penalty_minor >= 0),
    principal_paid_minor bigint NOT NULL DEFAULT 0
        CHECK (principal_paid_minor BETWEEN 0 AND principal_minor),
    interest_paid_minor bigint NOT NULL DEFAULT 0
        CHECK (interest_paid_minor BETWEEN 0 AND interest_minor),
    fee_paid_minor bigint NOT NULL DEFAULT 0 CHECK (fee_paid_minor BETWEEN 0 AND fee_minor),
    penalty_paid_minor bigint NOT NULL DEFAULT 0
        CHECK (penalty_paid_minor BETWEEN 0 AND penalty_minor),
    paid_at timestamptz,
    PRIMARY KEY (loan_id, number)
);
CREATE INDEX loan_installments_due ON loan_installments (due_date);

CREATE TABLE loan_repayments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    loan_id bigint NOT NULL REFERENCES loans (id),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    penalty_minor bigint NOT NULL CHECK (penalty_minor >= 0),
    fee_minor bigint NOT NULL CHECK (fee_minor >= 0),
    interest_minor bigint NOT NULL CHECK (interest_minor >= 0),
    principal_minor bigint NOT NULL CHECK (principal_minor >= 0),
    portions jsonb NOT NULL,
    channel varchar(16) NOT NULL,
    idempotency_key varchar(128) NOT NULL,
    ledger_ref varchar(64),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (loan_id, idempotency_key),
    CHECK (penalty_minor + fee_minor + interest_minor + principal_minor = amount_minor)
);

CREATE TABLE loan_penalties (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    loan_id bigint NOT NULL,
    installment_number smallint NOT NULL,
    reason varchar(16) NOT NULL CHECK (reason IN ('late')),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    charged_on date NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (loan_id, installment_number)
        REFERENCES loan_installments (loan_id, number) ON DELETE CASCADE,
    UNIQUE (loan_id, installment_number, reason)
);

CREATE TABLE loan_status_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    application_id bigint NOT NULL REFERENCES loan_applications (id),
    loan_id bigint REFERENCES loans (id),
    trigger varchar(16) NOT NULL,
    from_status varchar(16),
    to_status varchar(16) NOT NULL,
    actor varchar(128) NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX loan_status_history_application ON loan_status_history (application_id, id);

-- Notification intents (reminders, receipts); the banking core's outbox takes them over when
-- it is merged (same fields as core.outbox.enqueue).
CREATE TABLE loan_notices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    loan_id bigint REFERENCES loans (id),
    channel varchar(16) NOT NULL,
    recipient varchar(64) NOT NULL,
    kind varchar(32) NOT NULL,
    body varchar(1000) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX loan_notices_loan ON loan_notices (loan_id, id);

-- One row per (job, loan, business day): claimed before the work, committed with it.
CREATE TABLE loan_job_runs (
    job varchar(32) NOT NULL,
    loan_id bigint NOT NULL REFERENCES loans (id) ON DELETE CASCADE,
    run_date date NOT NULL,
    outcome varchar(64) NOT NULL DEFAULT 'done',
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, loan_id, run_date)
);

CREATE FUNCTION loan_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> TG_ARGV[0] THEN
            RAISE EXCEPTION 'a new % row starts as %, not %', TG_TABLE_NAME, TG_ARGV[0],
                NEW.status USING ERRCODE = 'LN001';
        END IF;
        -- Nested, not ANDed: NEW.application_id exists only on loans.
        IF TG_TABLE_NAME = 'loans' THEN
            IF NOT EXISTS (
                SELECT 1 FROM loan_applications a
                WHERE a.id = NEW.application_id AND a.status = 'disbursed'
            ) THEN
                RAISE EXCEPTION 'a loan needs its application moved to disbursed first'
                    USING ERRCODE = 'LN001';
            END IF;
        END IF;
    ELSIF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM loan_transitions t WHERE t.source = OLD.status AND t.dest = NEW.status
    ) THEN
        RAISE EXCEPTION 'illegal loan transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'LN001';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER loan_applications_status BEFORE INSERT OR UPDATE OF status ON loan_applications
    FOR EACH ROW EXECUTE FUNCTION loan_status_guard('applied');
CREATE TRIGGER loans_status BEFORE INSERT OR UPDATE OF status ON loans
    FOR EACH ROW EXECUTE FUNCTION loan_status_guard('disbursed');
"""

TABLES = (
    "loan_job_runs",
    "loan_notices",
    "loan_status_history",
    "loan_penalties",
    "loan_repayments",
    "loan_installments",
    "loans",
    "loan_applications",
    "loan_products",
    "loan_transitions",
)


def _statements(sql: str) -> list[str]:
    # One statement per execute (asyncpg prepares each); a ';' ending a line that is followed by
    # a blank line, a comment or CREATE ends a statement (function bodies are indented).
    return [s.strip() for s in re.split(r";\n(?=\n|CREATE|--)", sql) if s.strip()]


def upgrade() -> None:
    for statement in _statements(SCHEMA):
        op.execute(statement)
    table = sa.table(
        "loan_transitions", sa.column("trigger"), sa.column("source"), sa.column("dest")
    )
    op.bulk_insert(table, [{"trigger": t, "source": s, "dest": d} for t, s, d in TRANSITIONS])


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP FUNCTION IF EXISTS loan_status_guard()")
