"""Loans on the banking core's money path: interest, fee and penalty income accounts, a
repayment that splits one wallet debit over the loan fund and those accounts in ONE transfer, a
loan fund that lends only what it holds, and funding it from settlement.

- accounts: three more system account kinds per currency (`loan_interest_income`,
  `loan_fee_income`, `loan_penalty_income`), sharded like fee income (every repayment credits
  them); `ledger_ensure_system_accounts` opens them with the others.
- `ledger_loan_repay` gains `p_interest`, `p_fee`, `p_penalty` (parts of `p_amount`, default
  0): the wallet is debited the amount once, the loan fund credited the principal and each
  income account its part; zero legs are skipped, the legs sum to zero.
- `ledger_loan_disburse` refuses (INSUFFICIENT_FUNDS) when the fund's balance, the sum of its
  shards, cannot cover the loan. Disbursements of one fund take a transaction-level advisory
  lock, so two cannot both spend the last of it; repayments only add and take no such lock.
  The shards themselves may go below zero (a debit lands on one random shard, like every
  sharded account that may go negative); the fund as a whole may not, which the ledger check
  verifies (`loan_funds_not_overdrawn`).
- `ledger_loan_fund_topup`: settlement -> loan fund (transfer type `loan_fund_topup`).
- `loan_notices.outbox_id`: loan notices go to the core outbox; `loan_notices` stays as each
  loan's notice history and points at the outbox row that delivers it.

Downgrade restores the 0100_core_banking functions; it refuses (a constraint violation) once
money has moved through the new account kinds or transfer type, because removing them would
break the books.

Revision ID: 0510_loan_money
Revises: 0400_agents_geofences
"""

from __future__ import annotations

from alembic import op

revision = "0510_loan_money"
down_revision = "0400_agents_geofences"
branch_labels = None
depends_on = None

OLD_KINDS = (
    "'wallet', 'agent_float', 'agent_commission', 'fee_income', 'settlement', 'loan_fund', "
    "'suspense'"
)
INCOME_KINDS = "'loan_interest_income', 'loan_fee_income', 'loan_penalty_income'"
OLD_TYPES = (
    "'p2p', 'deposit', 'float_topup', 'cash_in', 'cash_out', 'reversal', 'loan_disbursement', "
    "'loan_repayment'"
)

ENSURE_SYSTEM_ACCOUNTS = """
CREATE OR REPLACE FUNCTION ledger_ensure_system_accounts(p_currency text, p_shards integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_kind text;
BEGIN
    PERFORM pg_advisory_xact_lock(7384100);
    FOREACH v_kind IN ARRAY ARRAY[%s] LOOP
        IF NOT EXISTS (SELECT 1 FROM accounts WHERE kind = v_kind AND currency = p_currency
                       AND parent_id IS NULL AND customer_id IS NULL AND agent_id IS NULL) THEN
            PERFORM ledger_open_account(v_kind, p_currency, NULL, NULL, p_shards, true);
        END IF;
    END LOOP;
END $$
"""

DISBURSE_HEAD = """
CREATE OR REPLACE FUNCTION ledger_loan_disburse(p_key text, p_hash text, p_msisdn text,
                                                p_amount bigint, p_currency text,
                                                p_channel text, p_initiator text, p_note text)
RETURNS ledger_outcome LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_fund bigint;
    v_id bigint;
    v_lock record;
    v_available bigint;
BEGIN
    PERFORM ledger_check_amount(p_amount);
    SELECT * INTO r FROM ledger_party(p_msisdn, p_currency, false, 'recipient');
    v_fund := ledger_system_account('loan_fund', p_currency);
    v_id := ledger_claim('loan_disbursement', p_key, p_hash, p_currency, p_amount, 0, 0, 'LOANS',
                         p_msisdn, r.o_wallet, NULL, p_channel, p_initiator, p_note);
    IF v_id IS NULL THEN
        RETURN ledger_result(ledger_replay(p_key, p_hash), true);
    END IF;
"""
# One disbursement of a fund at a time (until the caller commits), then the fund's balance
# read fresh (READ COMMITTED: this statement sees every earlier disbursement's commit).
DISBURSE_FUND_CHECK = """
    PERFORM pg_advisory_xact_lock(hashtext('ledger_loan_fund'), hashtext(p_currency));
    SELECT coalesce(sum(balance), 0) INTO v_available FROM accounts
    WHERE id = v_fund OR parent_id = v_fund;
    IF v_available < p_amount THEN
        PERFORM ledger_fail('INSUFFICIENT_FUNDS', 'The loan fund cannot cover this loan now',
                            jsonb_build_object('account', 'loan_fund', 'currency', p_currency,
                                               'available_minor', v_available,
                                               'needed_minor', p_amount));
    END IF;
"""
DISBURSE_TAIL = """
    SELECT * INTO v_lock FROM ledger_lock_legs(ARRAY[v_fund, r.o_wallet],
                                               ARRAY[-p_amount, p_amount], false);
    PERFORM ledger_check_credit(r.o_wallet, p_amount, r.o_max_balance);
    PERFORM ledger_apply(v_id, v_lock.o_ids, v_lock.o_deltas, NULL, 0);
    PERFORM ledger_notify(v_id, p_msisdn, r.o_language, 'loan_disbursed',
                          (SELECT balance FROM accounts WHERE id = r.o_wallet));
    RETURN ledger_result(v_id, false);
END $$
"""

REPAY = """
CREATE FUNCTION ledger_loan_repay(p_key text, p_hash text, p_msisdn text, p_amount bigint,
                                  p_currency text, p_channel text, p_initiator text,
                                  p_note text, p_interest bigint DEFAULT 0,
                                  p_fee bigint DEFAULT 0, p_penalty bigint DEFAULT 0)
RETURNS ledger_outcome LANGUAGE plpgsql AS $$
DECLARE
    s record;
    v_principal bigint;
    v_accounts bigint[];
    v_deltas bigint[];
    v_id bigint;
    v_lock record;
BEGIN
    PERFORM ledger_check_amount(p_amount);
    IF p_interest IS NULL OR p_fee IS NULL OR p_penalty IS NULL
       OR p_interest < 0 OR p_fee < 0 OR p_penalty < 0
       OR p_interest + p_fee + p_penalty > p_amount THEN
        PERFORM ledger_fail('VALIDATION_ERROR',
                            'Interest, fees and penalties are non-negative parts of the amount',
                            jsonb_build_object('field', 'amount_minor'));
    END IF;
    v_principal := p_amount - p_interest - p_fee - p_penalty;
    SELECT * INTO s FROM ledger_party(p_msisdn, p_currency, true, 'sender');
    v_accounts := ARRAY[s.o_wallet, ledger_system_account('loan_fund', p_currency)];
    v_deltas := ARRAY[-p_amount, v_principal];
    IF p_interest > 0 THEN
        v_accounts := v_accounts || ledger_system_account('loan_interest_income', p_currency);
        v_deltas := v_deltas || p_interest;
    END IF;
    IF p_fee > 0 THEN
        v_accounts := v_accounts || ledger_system_account('loan_fee_income', p_currency);
        v_deltas := v_deltas || p_fee;
    END IF;
    IF p_penalty > 0 THEN
        v_accounts := v_accounts || ledger_system_account('loan_penalty_income', p_currency);
        v_deltas := v_deltas || p_penalty;
    END IF;
    v_id := ledger_claim('loan_repayment', p_key, p_hash, p_currency, p_amount, 0, 0, p_msisdn,
                         'LOANS', s.o_wallet, NULL, p_channel, p_initiator, p_note);
    IF v_id IS NULL THEN
        RETURN ledger_result(ledger_replay(p_key, p_hash), true);
    END IF;
    -- Zero legs (no principal in this payment, say) are skipped by ledger_lock_legs.
    SELECT * INTO v_lock FROM ledger_lock_legs(v_accounts, v_deltas, true);
    PERFORM ledger_apply(v_id, v_lock.o_ids, v_lock.o_deltas, NULL, 0);
    PERFORM ledger_notify(v_id, p_msisdn, s.o_language, 'loan_repaid',
                          (SELECT balance FROM accounts WHERE id = s.o_wallet));
    RETURN ledger_result(v_id, false);
END $$
"""

OLD_REPAY = """
CREATE FUNCTION ledger_loan_repay(p_key text, p_hash text, p_msisdn text, p_amount bigint,
                                  p_currency text, p_channel text, p_initiator text,
                                  p_note text)
RETURNS ledger_outcome LANGUAGE plpgsql AS $$
DECLARE
    s record;
    v_fund bigint;
    v_id bigint;
    v_lock record;
BEGIN
    PERFORM ledger_check_amount(p_amount);
    SELECT * INTO s FROM ledger_party(p_msisdn, p_currency, true, 'sender');
    v_fund := ledger_system_account('loan_fund', p_currency);
    v_id := ledger_claim('loan_repayment', p_key, p_hash, p_currency, p_amount, 0, 0, p_msisdn,
                         'LOANS', s.o_wallet, NULL, p_channel, p_initiator, p_note);
    IF v_id IS NULL THEN
        RETURN ledger_result(ledger_replay(p_key, p_hash), true);
    END IF;
    SELECT * INTO v_lock FROM ledger_lock_legs(ARRAY[s.o_wallet, v_fund],
                                               ARRAY[-p_amount, p_amount], true);
    PERFORM ledger_apply(v_id, v_lock.o_ids, v_lock.o_deltas, NULL, 0);
    PERFORM ledger_notify(v_id, p_msisdn, s.o_language, 'loan_repaid',
                          (SELECT balance FROM accounts WHERE id = s.o_wallet));
    RETURN ledger_result(v_id, false);
END $$
"""

FUND_TOPUP = """
CREATE FUNCTION ledger_loan_fund_topup(p_key text, p_hash text, p_amount bigint,
                                       p_currency text, p_channel text, p_initiator text,
                                       p_note text)
RETURNS ledger_outcome LANGUAGE plpgsql AS $$
DECLARE
    v_settlement bigint;
    v_fund bigint;
    v_id bigint;
    v_lock record;
BEGIN
    PERFORM ledger_check_amount(p_amount);
    v_settlement := ledger_system_account('settlement', p_currency);
    v_fund := ledger_system_account('loan_fund', p_currency);
    v_id := ledger_claim('loan_fund_topup', p_key, p_hash, p_currency, p_amount, 0, 0, 'BANK',
                         'LOANS', NULL, NULL, p_channel, p_initiator, p_note);
    IF v_id IS NULL THEN
        RETURN ledger_result(ledger_replay(p_key, p_hash), true);
    END IF;
    SELECT * INTO v_lock FROM ledger_lock_legs(ARRAY[v_settlement, v_fund],
                                               ARRAY[-p_amount, p_amount], false);
    PERFORM ledger_apply(v_id, v_lock.o_ids, v_lock.o_deltas, NULL, 0);
    RETURN ledger_result(v_id, false);
END $$
"""

REPAY_SIGNATURE_NEW = "text, text, text, bigint, text, text, text, text, bigint, bigint, bigint"
REPAY_SIGNATURE_OLD = "text, text, text, bigint, text, text, text, text"


def _run(sql: str) -> None:
    # The driver, not SQLAlchemy's text(): PL/pgSQL's ":=" must not look like a parameter.
    op.get_bind().exec_driver_sql(sql)


def _checks(kinds: str, types: str) -> None:
    _run(
        "ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check, "
        f"ADD CONSTRAINT accounts_kind_check CHECK (kind IN ({kinds}))"
    )
    _run(
        "ALTER TABLE transfers DROP CONSTRAINT transfers_type_check, "
        f"ADD CONSTRAINT transfers_type_check CHECK (type IN ({types}))"
    )


def upgrade() -> None:
    _checks(f"{OLD_KINDS}, {INCOME_KINDS}", f"{OLD_TYPES}, 'loan_fund_topup'")
    _run(ENSURE_SYSTEM_ACCOUNTS % f"'settlement', 'fee_income', 'loan_fund', {INCOME_KINDS}")
    _run(DISBURSE_HEAD + DISBURSE_FUND_CHECK + DISBURSE_TAIL)
    _run(f"DROP FUNCTION ledger_loan_repay({REPAY_SIGNATURE_OLD})")
    _run(REPAY)
    _run(FUND_TOPUP)
    _run("ALTER TABLE loan_notices ADD COLUMN outbox_id bigint")


def downgrade() -> None:
    _run("ALTER TABLE loan_notices DROP COLUMN outbox_id")
    _run("DROP FUNCTION ledger_loan_fund_topup")
    _run(f"DROP FUNCTION ledger_loan_repay({REPAY_SIGNATURE_NEW})")
    _run(OLD_REPAY)
    _run(DISBURSE_HEAD + DISBURSE_TAIL)
    _run(ENSURE_SYSTEM_ACCOUNTS % "'settlement', 'fee_income', 'loan_fund'")
    # Income accounts that never held money go; any with entries make the CHECK below fail.
    _run(
        f"DELETE FROM accounts WHERE kind IN ({INCOME_KINDS}) AND parent_id IS NOT NULL "  # noqa: S608
        "AND last_entry_id IS NULL"
    )
    _run(
        f"DELETE FROM accounts p WHERE kind IN ({INCOME_KINDS}) AND parent_id IS NULL "  # noqa: S608
        "AND last_entry_id IS NULL AND NOT EXISTS (SELECT 1 FROM accounts c "
        "WHERE c.parent_id = p.id)"
    )
    _checks(OLD_KINDS, OLD_TYPES)
