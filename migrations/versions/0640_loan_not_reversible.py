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

Revision ID: 0640_loan_not_reversible
Revises: 0520_loan_customers
"""

from __future__ import annotations

from alembic import op

revision = "0640_loan_not_reversible"
down_revision = "0520_loan_customers"
branch_labels = None
depends_on = None

GUARD = """
CREATE FUNCTION ledger_refuse_loan_reversal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_type text;
BEGIN
    SELECT type INTO v_type FROM transfers WHERE id = NEW.reversal_of;
    IF v_type IN ('loan_disbursement', 'loan_repayment') THEN
        PERFORM ledger_fail('NOT_REVERSIBLE',
                            'Loan transfers are corrected through the loan book, not reversed',
                            jsonb_build_object('reference', ledger_reference(NEW.reversal_of),
                                               'type', v_type));
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
