"""Loan test fixtures: a stand-in ledger and customer directory for the banking core that is
being built in parallel (issue 3), a manual clock, and product and loan factories.

`SqlTestLedger` keeps real double-entry rows in the *same* database and the *same*
transaction as the loan rows (test-only tables created here, not in the migrations), so a
rolled-back loan operation rolls its money back too, idempotency keys behave like the core's,
and `check_invariants` verifies the books after every test that moves money. Wave 2 replaces it
with the real core ledger behind the same `core.loans.ports.LoanLedger` interface.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from core.clock import ManualClock
from core.errors import Conflict, IdempotencyConflict
from core.loans.ports import CustomerFacts, LedgerReceipt, WalletActivity
from core.loans.products import Product
from menus.loans.service import LoanPolicy, LoanService

TEST_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS loan_test_transfers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    request text NOT NULL,
    at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS loan_test_entries (
    transfer_id bigint NOT NULL REFERENCES loan_test_transfers (id),
    account text NOT NULL,
    amount_minor bigint NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS loan_test_entries_account ON loan_test_entries (account);
"""
START = datetime(2024, 1, 10, 9, 0, tzinfo=UTC)


class InsufficientFunds(Conflict):
    """What the core raises when an account cannot cover a debit (its name in CORE_API.md)."""

    code = "INSUFFICIENT_FUNDS"
    default_message = "Not enough money"


def wallet(msisdn: str) -> str:
    return f"wallet:{msisdn}"


@dataclass
class SqlTestLedger:
    clock: ManualClock
    fund: str = field(default_factory=lambda: f"loan_fund:{secrets.token_hex(4)}")
    calls: list[str] = field(default_factory=list)

    async def _balance(self, conn: Any, account: str) -> int:
        value = await conn.fetchval(
            "SELECT coalesce(sum(amount_minor), 0) FROM loan_test_entries WHERE account = $1",
            account,
        )
        return int(value)

    async def post(
        self, conn: Any, key: str, legs: list[tuple[str, int]], *, check: str | None = None
    ) -> LedgerReceipt:
        """One transfer: credits positive, debits negative; legs sum to zero."""
        legs = [(a, m) for a, m in legs if m]
        assert sum(m for _, m in legs) == 0
        request = repr(sorted(legs))
        row = await conn.fetchrow(
            "SELECT id, request FROM loan_test_transfers WHERE idempotency_key = $1", key
        )
        if row is not None:
            if row["request"] != request:
                raise IdempotencyConflict()
            return LedgerReceipt(f"T{row['id']}")
        # Lock the debited account's rows, as the core does FOR UPDATE on balances.
        if check is not None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", check)
            debit = -sum(m for a, m in legs if a == check)
            if await self._balance(conn, check) < debit:
                raise InsufficientFunds(account=check)
        now = self.clock.now()
        transfer_id = await conn.fetchval(
            "INSERT INTO loan_test_transfers (idempotency_key, request, at)"
            " VALUES ($1, $2, $3) RETURNING id",
            key,
            request,
            now,
        )
        await conn.executemany(
            "INSERT INTO loan_test_entries (transfer_id, account, amount_minor, at)"
            " VALUES ($1, $2, $3, $4)",
            [(transfer_id, a, m, now) for a, m in legs],
        )
        return LedgerReceipt(f"T{transfer_id}")

    async def fund_loans(self, pool: asyncpg.Pool, amount_minor: int) -> None:
        async with pool.acquire() as conn:
            await self.post(
                conn,
                f"fund:{self.fund}:{secrets.token_hex(4)}",
                [("bank", -amount_minor), (self.fund, amount_minor)],
            )

    async def deposit(self, pool: asyncpg.Pool, msisdn: str, amount_minor: int) -> None:
        async with pool.acquire() as conn:
            await self.post(
                conn,
                f"dep:{secrets.token_hex(6)}",
                [("bank", -amount_minor), (wallet(msisdn), amount_minor)],
            )

    async def balance(self, pool: asyncpg.Pool, account: str) -> int:
        async with pool.acquire() as conn:
            return await self._balance(conn, account)

    # --- LoanLedger --------------------------------------------------------------------------

    async def disburse(
        self,
        conn: Any,
        *,
        loan_id: int,
        msisdn: str,
        amount_minor: int,
        currency: str,
        idempotency_key: str,
    ) -> LedgerReceipt:
        self.calls.append(f"disburse:{loan_id}")
        legs = [(self.fund, -amount_minor), (wallet(msisdn), amount_minor)]
        return await self.post(conn, idempotency_key, legs, check=self.fund)

    async def collect(
        self,
        conn: Any,
        *,
        loan_id: int,
        msisdn: str,
        currency: str,
        principal_minor: int,
        interest_minor: int,
        fee_minor: int,
        penalty_minor: int,
        idempotency_key: str,
    ) -> LedgerReceipt:
        self.calls.append(f"collect:{loan_id}")
        total = principal_minor + interest_minor + fee_minor + penalty_minor
        legs = [
            (wallet(msisdn), -total),
            (self.fund, principal_minor),
            ("loan_interest_income", interest_minor),
            ("loan_fee_income", fee_minor),
            ("loan_penalty_income", penalty_minor),
        ]
        return await self.post(conn, idempotency_key, legs, check=wallet(msisdn))

    async def available_minor(self, conn: Any, msisdn: str, currency: str) -> int:
        return await self._balance(conn, wallet(msisdn))

    async def wallet_activity(
        self, conn: Any, msisdn: str, currency: str, since: datetime
    ) -> WalletActivity:
        row = await conn.fetchrow(
            """
            SELECT coalesce(sum(amount_minor) FILTER (WHERE amount_minor > 0), 0) AS inflow,
                   coalesce(-sum(amount_minor) FILTER (WHERE amount_minor < 0), 0) AS outflow,
                   count(*) AS n
            FROM loan_test_entries WHERE account = $1 AND at >= $2
            """,
            wallet(msisdn),
            since,
        )
        return WalletActivity(int(row["inflow"]), int(row["outflow"]), int(row["n"]))


async def check_invariants(pool: asyncpg.Pool) -> None:
    """The books balance: every transfer sums to zero, no wallet or fund is overdrawn, and
    each loan's repayments match what its installments say was paid."""
    async with pool.acquire() as conn:
        unbalanced = await conn.fetchval(
            "SELECT count(*) FROM (SELECT transfer_id FROM loan_test_entries"
            " GROUP BY transfer_id HAVING sum(amount_minor) <> 0) t"
        )
        assert unbalanced == 0
        overdrawn = await conn.fetch(
            "SELECT account, sum(amount_minor) AS b FROM loan_test_entries"
            " WHERE account LIKE 'wallet:%' OR account LIKE 'loan_fund:%'"
            " GROUP BY account HAVING sum(amount_minor) < 0"
        )
        assert overdrawn == []
        mismatched = await conn.fetch(
            """
            SELECT l.id FROM loans l
            LEFT JOIN (SELECT loan_id, sum(amount_minor) AS paid FROM loan_repayments
                       GROUP BY loan_id) r ON r.loan_id = l.id
            JOIN (SELECT loan_id, sum(principal_paid_minor + interest_paid_minor
                                     + fee_paid_minor + penalty_paid_minor) AS paid
                  FROM loan_installments GROUP BY loan_id) i ON i.loan_id = l.id
            WHERE coalesce(r.paid, 0) <> i.paid
            """
        )
        assert mismatched == []


@dataclass
class Directory:
    """Customers as the core's `find_customer` will report them."""

    people: dict[str, CustomerFacts] = field(default_factory=dict)

    async def customer(self, conn: Any, msisdn: str) -> CustomerFacts | None:
        return self.people.get(msisdn)

    def add(
        self, msisdn: str, *, tier: str = "standard", age_days: int = 400, now: datetime = START
    ) -> str:
        self.people[msisdn] = CustomerFacts(msisdn, tier, now - timedelta(days=age_days))
        return msisdn


def new_msisdn() -> str:
    return "+2547" + str(secrets.randbelow(10**8)).zfill(8)


def product_terms(**overrides: Any) -> dict[str, Any]:
    terms: dict[str, Any] = {
        "code": "P" + secrets.token_hex(4).upper(),
        "name": "Test loan",
        "currency": "KES",
        "principal_min_minor": 10_000,
        "principal_max_minor": 1_000_000,
        "interest_rate_percent": "5",
        "interest_method": "flat",
        "amortization": "equal_installments",
        "repayments": 3,
        "frequency": "weeks",
        "min_account_age_days": 30,
        "auto_approve_max_minor": 500_000,
        "tiers": ["standard", "premium"],
    }
    terms.update(overrides)
    return terms


@dataclass
class World:
    pool: asyncpg.Pool
    clock: ManualClock
    ledger: SqlTestLedger
    directory: Directory
    service: LoanService

    async def product(self, **overrides: Any) -> Product:
        return await self.service.create_product(self.pool, product_terms(**overrides), "test")

    async def customer(self, *, inflow_minor: int = 10_000_000, **kw: Any) -> str:
        """A customer whose wallet history earns a full score and a limit at the product max."""
        msisdn = self.directory.add(new_msisdn(), now=self.clock.now(), **kw)
        if inflow_minor:
            for _ in range(20):
                await self.ledger.deposit(self.pool, msisdn, inflow_minor // 20)
        return msisdn


@pytest.fixture(scope="session")
async def loan_tables(pg_pool: asyncpg.Pool) -> None:
    async with pg_pool.acquire() as conn:
        await conn.execute(TEST_LEDGER_SCHEMA)


@pytest.fixture
async def world(pg_pool: asyncpg.Pool, loan_tables: None) -> AsyncIterator[World]:
    clock = ManualClock(START)
    ledger = SqlTestLedger(clock)
    directory = Directory()
    service = LoanService(clock=clock, policy=LoanPolicy(), ledger=ledger, customers=directory)
    await ledger.fund_loans(pg_pool, 100_000_000)
    yield World(pg_pool, clock, ledger, directory, service)
    await check_invariants(pg_pool)
