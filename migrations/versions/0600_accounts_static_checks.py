"""Accounts: the rules on columns the money path never writes move from CHECK constraints to
a trigger that fires only when those columns are written.

Why: PostgreSQL evaluates every CHECK constraint of a table on every UPDATE of a row, whatever
the UPDATE sets, and re-reads each constraint's stored expression tree from its text form
(plus compiles it) once per statement. A P2P transfer runs three balance UPDATEs on
`accounts`, a cash-out four: with eight constraints that was ~20% of the backend's CPU per
transfer (perf, PostgreSQL 15; `stringToNode` and `ExecConstraints` on top). Six of the eight
constrain columns fixed when an account is opened (kind, currency, owner, parent, shard
count, allow_negative); a `BEFORE INSERT OR UPDATE OF <those columns>` trigger enforces the
same rules with the same names (SQLSTATE 23514, check_violation, so callers see the same
error) but never runs for a balance posting. The two rules on the balance itself stay CHECK
constraints: `accounts_no_overdraft` (the last line behind every wallet) and
`accounts_parent_holds_nothing`.

The account kinds now live in `ledger_accounts_static_check()`; a later migration that adds a
kind replaces that function (CREATE OR REPLACE) instead of the old `accounts_kind_check`.

Revision ID: 0600_accounts_static_checks
Revises: 0520_loan_customers
"""

from __future__ import annotations

from alembic import op

revision = "0600_accounts_static_checks"
down_revision = "0520_loan_customers"
branch_labels = None
depends_on = None

KINDS = (
    "'wallet', 'agent_float', 'agent_commission', 'fee_income', 'settlement', 'loan_fund', "
    "'suspense', 'loan_interest_income', 'loan_fee_income', 'loan_penalty_income'"
)

# (name, the CHECK expression as 0100/0510 created it, the same test on the trigger's NEW row).
STATIC_CHECKS = (
    ("accounts_kind_check", f"kind IN ({KINDS})", f"NEW.kind IN ({KINDS})"),
    ("accounts_currency_check", "currency ~ '^[A-Z]{3}$'", "NEW.currency ~ '^[A-Z]{3}$'"),
    ("accounts_shards_check", "shards BETWEEN 1 AND 1024", "NEW.shards BETWEEN 1 AND 1024"),
    (
        "accounts_liabilities_never_negative",
        "kind NOT IN ('wallet', 'agent_float', 'agent_commission') OR NOT allow_negative",
        "NEW.kind NOT IN ('wallet', 'agent_float', 'agent_commission') OR NOT NEW.allow_negative",
    ),
    (
        "accounts_wallet_has_customer",
        "(kind = 'wallet') = (customer_id IS NOT NULL)",
        "(NEW.kind = 'wallet') = (NEW.customer_id IS NOT NULL)",
    ),
    (
        "accounts_wallets_unsharded",
        "kind <> 'wallet' OR shards = 1",
        "NEW.kind <> 'wallet' OR NEW.shards = 1",
    ),
)
STATIC_COLUMNS = "kind, currency, customer_id, agent_id, parent_id, shard, shards, allow_negative"


def _run(sql: str) -> None:
    # The driver, not SQLAlchemy's text(): PL/pgSQL's ":=" must not look like a parameter.
    op.get_bind().exec_driver_sql(sql)


def _trigger_function() -> str:
    # coalesce(..., true): a CHECK passes on NULL; the NOT NULL columns catch NULLs themselves.
    tests = "\n".join(
        f"""    IF NOT coalesce(({test}), true) THEN
        RAISE EXCEPTION 'new row for relation "accounts" violates check constraint "{name}"'
            USING ERRCODE = 'check_violation', CONSTRAINT = '{name}', TABLE = 'accounts';
    END IF;"""
        for name, _, test in STATIC_CHECKS
    )
    return f"""
CREATE OR REPLACE FUNCTION ledger_accounts_static_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
{tests}
    RETURN NEW;
END $$
"""


def upgrade() -> None:
    _run(_trigger_function())
    _run(
        f"CREATE TRIGGER accounts_static_check BEFORE INSERT OR UPDATE OF {STATIC_COLUMNS} "
        "ON accounts FOR EACH ROW EXECUTE FUNCTION ledger_accounts_static_check()"
    )
    _run(
        "ALTER TABLE accounts "
        + ", ".join(f"DROP CONSTRAINT {name}" for name, _, _ in STATIC_CHECKS)
    )


def downgrade() -> None:
    _run(
        "ALTER TABLE accounts "
        + ", ".join(f"ADD CONSTRAINT {name} CHECK ({expr})" for name, expr, _ in STATIC_CHECKS)
    )
    _run("DROP TRIGGER accounts_static_check ON accounts")
    _run("DROP FUNCTION ledger_accounts_static_check()")
