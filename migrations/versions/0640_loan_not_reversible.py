"""Loan disbursements and repayments cannot be reversed by the core's generic reversal.

`ledger_reverse` undoes any transfer's legs. For a loan's money that would leave the loan book
(`loans`, `loan_installments`, `loan_repayments`) telling a different story from the ledger: a
reversed disbursement leaves a loan owed on money the customer never kept, a reversed
repayment leaves installments marked paid. Loan money is corrected through the loan book
(write-off, a further repayment, a new loan), which keeps both sides in step.

The guard is a trigger on `transfers`, not an edit of `ledger_reverse`, so the core's function
stays as the core owns it: a reversal is an INSERT with `reversal_of` set (`ledger_claim`), and
`WHEN (NEW.reversal_of IS NOT NULL)` leaves every other insert untouched (the condition is
evaluated without calling the function). The refusal is the ledger's typed error
(`ledger_fail`: SQLSTATE P0001, code NOT_REVERSIBLE -> core.errors.NotReversible, HTTP 409);
it aborts the reversal's statement, so nothing is written.

The same trigger keeps a reversed loan fund top-up from overdrawing the fund: taking back money
the fund has already lent would leave it below zero as a whole (the ledger check's
`loan_funds_not_overdrawn` breach; its shards may go negative, so the core's own checks do not
stop it). Such a reversal takes the disbursements' advisory lock and is refused with
INSUFFICIENT_FUNDS when the fund holds less than the top-up; otherwise it proceeds as before.

Revision ID: 0640_loan_not_reversible
Revises: 0602_admin_permissions
"""

from __future__ import annotations

from alembic import op

revision = "0640_loan_not_reversible"
down_revision = "0602_admin_permissions"
branch_labels = None
depends_on = None

GUARD = """
CREATE FUNCTION ledger_refuse_loan_reversal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_type text;
    v_fund bigint;
    v_available bigint;
BEGIN
    SELECT type INTO v_type FROM transfers WHERE id = NEW.reversal_of;
    IF v_type IN ('loan_disbursement', 'loan_repayment') THEN
        PERFORM ledger_fail('NOT_REVERSIBLE',
                            'Loan transfers are corrected through the loan book, not reversed',
                            jsonb_build_object('reference', ledger_reference(NEW.reversal_of),
                                               'type', v_type));
    ELSIF v_type = 'loan_fund_topup' THEN
        -- Taking a top-up back must leave the fund what it has lent out: the disbursements'
        -- own check, under their lock (held to the commit) and on a fresh read.
        PERFORM pg_advisory_xact_lock(hashtext('ledger_loan_fund'), hashtext(NEW.currency));
        v_fund := ledger_system_account('loan_fund', NEW.currency);
        SELECT coalesce(sum(balance), 0) INTO v_available FROM accounts
        WHERE id = v_fund OR parent_id = v_fund;
        IF v_available < NEW.amount THEN
            PERFORM ledger_fail('INSUFFICIENT_FUNDS',
                                'The loan fund has lent this money out; it cannot be taken back',
                                jsonb_build_object('account', 'loan_fund',
                                                   'currency', NEW.currency,
                                                   'available_minor', v_available,
                                                   'needed_minor', NEW.amount));
        END IF;
    END IF;
    RETURN NEW;
END $$
"""
TRIGGER = """
CREATE TRIGGER transfers_loan_not_reversible BEFORE INSERT ON transfers
FOR EACH ROW WHEN (NEW.reversal_of IS NOT NULL)
EXECUTE FUNCTION ledger_refuse_loan_reversal()
"""


def _run(sql: str) -> None:
    # The driver, not SQLAlchemy's text(): PL/pgSQL's ":=" must not look like a parameter.
    op.get_bind().exec_driver_sql(sql)


def upgrade() -> None:
    _run(GUARD)
    _run(TRIGGER)


def downgrade() -> None:
    _run("DROP TRIGGER transfers_loan_not_reversible ON transfers")
    _run("DROP FUNCTION ledger_refuse_loan_reversal()")
