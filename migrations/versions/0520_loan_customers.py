"""Loan applications and loans belong to the banking core's customers: foreign keys by MSISDN
(`customers.msisdn` is unique; the loan tables already carry it and index it).

ON UPDATE CASCADE: a customer's number, if it ever changes, carries their loans with it.
ON DELETE RESTRICT: customers are closed, never deleted; a customer with loan history cannot
disappear from under it.

Revision ID: 0520_loan_customers
Revises: 0510_loan_money
"""

from __future__ import annotations

from alembic import op

revision = "0520_loan_customers"
down_revision = "0510_loan_money"
branch_labels = None
depends_on = None

FOREIGN_KEYS = (
    ("loan_applications", "loan_applications_customer_fk"),
    ("loans", "loans_customer_fk"),
)


def upgrade() -> None:
    for table, name in FOREIGN_KEYS:
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY (msisdn) "
            "REFERENCES customers (msisdn) ON UPDATE CASCADE ON DELETE RESTRICT"
        )


def downgrade() -> None:
    for table, name in reversed(FOREIGN_KEYS):
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
