"""Loan test fixtures on the real banking core: registered customers with real wallets, money
through the core's ledger functions (the app's own `CoreLoanLedger`, `CoreCustomerDirectory`
and `OutboxNotifier`), a manual clock, and product and loan factories.

The loan tests' money is in XTS, ISO 4217's code reserved for testing: no tariff bands exist
for it, so a test can empty a wallet exactly with a free P2P transfer (in KES the demo tariffs
that other tests seed would leave a fee-shaped remainder). Its tier limits are copied from the
KES defaults and its loan fund is funded from settlement once per run.

After every test that builds a `World`: the core's ledger check (`core.ledger.check_ledger`)
and the loan book against the ledger: every loan's disbursement is a posted transfer of its
principal, every repayment a posted transfer whose legs carry exactly the allocation's
principal, interest, fees and penalties, the installments say what the repayments paid, and
nothing was applied for or repaid under an abandoned request (migration 0820).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import pytest
from aiohttp import web

from core.clock import ManualClock
from core.crypto import FieldCipher
from core.customers import register_customer, set_tier
from core.ledger import check_ledger, ensure_system_accounts
from core.limits import DEFAULT_LIMITS_KES, set_limits
from core.loans.core_ledger import CoreCustomerDirectory, CoreLoanLedger, OutboxNotifier
from core.loans.decision import Outcome
from core.loans.products import Product
from core.transfers import balance, deposit, fund_loans, send_money
from gateway.keys import CIPHER
from menus.loans.service import ApplyResult, LoanPolicy, LoanService, RepayResult
from tests.helpers import new_msisdn

CURRENCY = "XTS"
START = datetime(2024, 1, 10, 9, 0, tzinfo=UTC)
FUND_MINOR = 10**12  # far more than the run lends
TEST_SHARDS = 8  # system account shards for the test currencies (256 in production)
PIN = "2580"


def new_key(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


async def prepare_currency(pool: asyncpg.Pool, currency: str, fund_minor: int = 0) -> None:
    """System accounts and tier limits for `currency`, and `fund_minor` for the loan fund."""
    await ensure_system_accounts(pool, currency, shards=TEST_SHARDS)
    for limits in DEFAULT_LIMITS_KES.values():
        await set_limits(pool, replace(limits, currency=currency))
    if fund_minor:
        await fund_loans(
            pool,
            amount_minor=fund_minor,
            idempotency_key=new_key("fund"),
            channel="test",
            currency=currency,
        )


_INVARIANTS = (
    (
        "installments say what the repayments paid",
        """
        SELECT l.id FROM loans l
        LEFT JOIN (SELECT loan_id, sum(amount_minor) AS paid FROM loan_repayments
                   GROUP BY loan_id) r ON r.loan_id = l.id
        JOIN (SELECT loan_id, sum(principal_paid_minor + interest_paid_minor
                                 + fee_paid_minor + penalty_paid_minor) AS paid
              FROM loan_installments GROUP BY loan_id) i ON i.loan_id = l.id
        WHERE coalesce(r.paid, 0) <> i.paid
        """,
    ),
    (
        "each loan's disbursement is a posted transfer of its principal",
        """
        SELECT l.id FROM loans l
        LEFT JOIN transfers t ON t.id = ledger_reference_id(l.disbursement_ref)
        WHERE t.id IS NULL OR t.type <> 'loan_disbursement' OR t.amount <> l.principal_minor
           OR t.note <> 'loan:' || l.id
        """,
    ),
    (
        "each repayment is one transfer whose legs are its allocation",
        """
        SELECT r.id FROM loan_repayments r
        LEFT JOIN transfers t ON t.id = ledger_reference_id(r.ledger_ref)
        LEFT JOIN LATERAL (
            SELECT sum(e.amount) FILTER (WHERE a.kind = 'loan_fund') AS principal,
                   sum(e.amount) FILTER (WHERE a.kind = 'loan_interest_income') AS interest,
                   sum(e.amount) FILTER (WHERE a.kind = 'loan_fee_income') AS fee,
                   sum(e.amount) FILTER (WHERE a.kind = 'loan_penalty_income') AS penalty,
                   sum(e.amount) FILTER (WHERE a.kind = 'wallet') AS wallet
            FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE e.transfer_id = t.id) legs ON true
        WHERE t.id IS NULL OR t.type <> 'loan_repayment' OR t.amount <> r.amount_minor
           OR t.note <> 'loan:' || r.loan_id
           OR coalesce(legs.principal, 0) <> r.principal_minor
           OR coalesce(legs.interest, 0) <> r.interest_minor
           OR coalesce(legs.fee, 0) <> r.fee_minor
           OR coalesce(legs.penalty, 0) <> r.penalty_minor
           OR coalesce(legs.wallet, 0) <> -r.amount_minor
        """,
    ),
    (
        "nothing applied or repaid under an abandoned request",
        """
        SELECT a.id FROM loan_abandoned x JOIN loan_applications a
          ON a.msisdn = x.msisdn AND a.idempotency_key = x.idempotency_key
        UNION ALL
        SELECT r.id FROM loan_abandoned x JOIN loans l ON l.msisdn = x.msisdn
        JOIN loan_repayments r ON r.loan_id = l.id AND r.idempotency_key = x.idempotency_key
        """,
    ),
)


async def check_invariants(pool: asyncpg.Pool) -> None:
    """The core's books balance, and the loan book agrees with them."""
    report = await check_ledger(pool)
    assert report.ok, "\n".join(report.lines())
    for name, sql in _INVARIANTS:
        broken = [r["id"] for r in await pool.fetch(sql)]
        assert broken == [], f"{name}: {broken}"


def product_terms(**overrides: Any) -> dict[str, Any]:
    terms: dict[str, Any] = {
        "code": "P" + secrets.token_hex(4).upper(),
        "name": "Test loan",
        "currency": CURRENCY,
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


class Borrowed(NamedTuple):
    """A loan `World.new_loan` made: its customer, the loan and the application behind it."""

    msisdn: str
    loan_id: int
    application_id: int


@dataclass
class World:
    pool: asyncpg.Pool
    clock: ManualClock
    cipher: FieldCipher
    service: LoanService
    currency: str = CURRENCY

    async def product(self, **overrides: Any) -> Product:
        terms = product_terms(**{"currency": self.currency, **overrides})
        return await self.service.create_product(self.pool, terms, "test")

    async def customer(
        self,
        *,
        inflow_minor: int = 10_000_000,
        tier: str = "standard",
        age_days: int = 400,
        currency: str | None = None,
        msisdn: str | None = None,
    ) -> str:
        """A registered customer (PIN 2580) with a wallet in `currency`, at `tier`, who
        registered `age_days` before the clock's now, and whose 20 deposits of
        `inflow_minor` in all earn a full wallet score and a limit at the product maximum."""
        number = msisdn or new_msisdn()
        await register_customer(
            self.pool,
            self.cipher,
            msisdn=number,
            first_name="Loan",
            last_name="Tester",
            national_id="LN" + secrets.token_hex(6).upper(),
            pin=PIN,
            channel="test",
            pin_rounds=4,
            currency=currency or self.currency,
        )
        if tier != "basic":
            await set_tier(self.pool, number, tier, actor="test")
        await self.pool.execute(
            "UPDATE customers SET created_at = $2 WHERE msisdn = $1",
            number,
            self.clock.now() - timedelta(days=age_days),
        )
        for _ in range(20 if inflow_minor else 0):
            await self.deposit(number, inflow_minor // 20, currency=currency)
        return number

    async def apply(
        self,
        msisdn: str,
        product_code: str,
        amount_minor: int,
        *,
        key: str | None = None,
        channel: str = "ussd",
    ) -> ApplyResult:
        """The customer applies on `channel`; `key` is the idempotency key (a fresh one when
        not given)."""
        return await self.service.apply(
            self.pool,
            msisdn=msisdn,
            product_code=product_code,
            amount_minor=amount_minor,
            channel=channel,
            idempotency_key=key or new_key(),
        )

    async def repay(
        self, msisdn: str, amount_minor: int, *, key: str | None = None, channel: str = "sms"
    ) -> RepayResult:
        """The customer repays from the wallet on `channel` (a fresh key when not given)."""
        return await self.service.repay(
            self.pool,
            msisdn=msisdn,
            amount_minor=amount_minor,
            idempotency_key=key or new_key(),
            channel=channel,
        )

    async def new_loan(self, amount_minor: int = 100_000, **terms: Any) -> Borrowed:
        """A new product on `terms`, a new customer, and that customer's loan of
        `amount_minor`: approved on the spot and disbursed."""
        product = await self.product(**terms)
        msisdn = await self.customer()
        result = await self.apply(msisdn, product.code, amount_minor)
        assert result.decision.outcome is Outcome.APPROVE and result.loan is not None
        return Borrowed(msisdn, result.loan.id, result.application.id)

    async def deposit(self, msisdn: str, amount_minor: int, *, currency: str | None = None) -> None:
        await deposit(
            self.pool,
            msisdn=msisdn,
            amount_minor=amount_minor,
            idempotency_key=new_key("dep"),
            channel="test",
            currency=currency or self.currency,
        )

    async def balance(self, msisdn: str, *, currency: str | None = None) -> int:
        return await balance(self.pool, msisdn, currency or self.currency)

    async def spend(self, msisdn: str, amount_minor: int) -> None:
        """The customer pays `amount_minor` to a shop (a free P2P in the test currency)."""
        shop = await self.customer(inflow_minor=0, tier="business")
        await send_money(
            self.pool,
            sender=msisdn,
            recipient=shop,
            amount_minor=amount_minor,
            idempotency_key=new_key("spend"),
            channel="test",
            currency=self.currency,
        )

    async def spend_all(self, msisdn: str) -> None:
        await self.spend(msisdn, await self.balance(msisdn))

    async def transfers_for(self, loan_id: int, kind: str) -> int:
        """How many `kind` transfers the ledger holds for a loan."""
        value = await self.pool.fetchval(
            "SELECT count(*) FROM transfers WHERE type = $1 AND note = $2",
            kind,
            f"loan:{loan_id}",
        )
        return int(value)

    async def income(self) -> dict[str, int]:
        """The loan fund's and the loan income accounts' balances in the test currency."""
        rows = await self.pool.fetch(
            "SELECT kind, sum(balance)::bigint AS b FROM accounts WHERE currency = $1"
            " AND kind LIKE 'loan%' GROUP BY kind",
            self.currency,
        )
        return {r["kind"]: r["b"] for r in rows}


def core_service(clock: ManualClock, **kw: Any) -> LoanService:
    """A loan service on the real core, as `gateway serve` builds it, with a test clock."""
    return LoanService(
        clock=clock,
        policy=kw.pop("policy", LoanPolicy()),
        ledger=CoreLoanLedger(),
        customers=CoreCustomerDirectory(),
        notifier=OutboxNotifier(),
        **kw,
    )


@pytest.fixture(scope="session")
async def loan_money(pg_pool: asyncpg.Pool) -> None:
    await prepare_currency(pg_pool, CURRENCY, FUND_MINOR)


@pytest.fixture(scope="session")
def cipher(app: web.Application) -> FieldCipher:
    return app[CIPHER]


@pytest.fixture
async def world(
    pg_pool: asyncpg.Pool, loan_money: None, cipher: FieldCipher
) -> AsyncIterator[World]:
    clock = ManualClock(START)
    yield World(pg_pool, clock, cipher, core_service(clock))
    await check_invariants(pg_pool)
