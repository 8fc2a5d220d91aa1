"""`make run` can lend: on a fresh database, two instances starting with GATEWAY_DEMO=1 seed one
demo product and fund the loan fund once, and a demo customer borrows KES 1,000 at once and owes
KES 1,050.00 in 30 days. The ledger check passes afterwards."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from config.settings import Settings
from core.demo import DEMO_CUSTOMERS
from core.ledger import check_ledger, system_balance
from core.loans.decision import Outcome
from core.loans.demo import DEMO_FUND_MINOR, DEMO_PRODUCT
from core.money import format_amount
from core.transfers import balance
from gateway.app import create_app
from gateway.keys import LOANS, PG_POOL
from tests.conftest import running_app


async def test_make_run_can_lend(settings: Settings, empty_database: str) -> None:
    demo = replace(settings, database_url=empty_database, demo_data=True)
    async with (
        running_app(create_app(demo, start_channels=False)) as one,
        running_app(create_app(demo, run_migrations=False, start_channels=False)) as two,
    ):
        assert one.server.app is not None and two.server.app is not None
        pool, service = one.server.app[PG_POOL], two.server.app[LOANS]
        products = await service.products(pool, active_only=True)
        assert [(p.code, p.currency) for p in products] == [(DEMO_PRODUCT["code"], "KES")]
        fundings = await pool.fetchval(
            "SELECT count(*) FROM transfers WHERE type = 'loan_fund_topup'"
        )
        assert fundings == 1
        assert await system_balance(pool, "loan_fund", "KES") == DEMO_FUND_MINOR
        amina, *others = DEMO_CUSTOMERS
        for customer in others:  # every demo customer may borrow 1,000
            quote = await service.quote(
                pool, msisdn=customer.msisdn, product_code="QUICK30", amount_minor=1_000_00
            )
            assert format_amount(quote.total_minor, "KES") == "KES 1,050.00"
        result = await service.apply(
            pool,
            msisdn=amina.msisdn,
            product_code="QUICK30",
            amount_minor=1_000_00,
            channel="ussd",
            idempotency_key="demo-test",
        )
        assert (result.decision.outcome, result.decision.code) == (Outcome.APPROVE, "APPROVED")
        assert await balance(pool, amina.msisdn) == amina.balance_minor + 1_000_00
        status = await service.status(pool, amina.msisdn)
        assert status is not None
        assert format_amount(status.outstanding_minor, "KES") == "KES 1,050.00"
        assert status.next_due_date == service.clock.today() + timedelta(days=30)
        report = await check_ledger(pool)
        assert report.ok, "\n".join(report.lines())
