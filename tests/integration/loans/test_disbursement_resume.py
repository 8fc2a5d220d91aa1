"""An approval whose disbursement never committed: the connection drops in the middle of the
disbursement's transaction and the database refuses the next, so the application is left
approved with no loan and no money moved. The customer asking again gets the loan once; so does
the customer who never asks, from `resume_disbursements` (every instance runs it); and an
application settled meanwhile is never disbursed twice. The world fixture's ledger and loan-book
checks run after each test."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from core.errors import Unavailable
from core.loans.core_ledger import CoreCustomerDirectory, CoreLoanLedger, OutboxNotifier
from core.loans.lifecycle import State
from menus.loans.service import RESUME_AFTER_S, LoanPolicy, LoanService
from tests.integration.loans.conftest import World, new_key
from tests.tcp_proxy import CuttableProxy, postgres_proxy


class CutInTheMiddle(CoreLoanLedger):
    """The core's ledger, but the first disbursement meets a dropped connection (and a refused
    one after it)."""

    def __init__(self, proxy: CuttableProxy) -> None:
        self.proxy = proxy
        self.cuts = 0

    async def disburse(self, conn: Any, **kw: Any) -> Any:
        if self.cuts == 0:
            self.cuts += 1
            self.proxy.cut(refuse=1)
        return await super().disburse(conn, **kw)


@dataclass(frozen=True)
class StalledLoan:
    product_code: str
    msisdn: str
    balance_before: int
    key: str
    application_id: int


class Stalled:
    def __init__(self, world: World, database_url: str) -> None:
        self.world = world
        self.proxy, self.via = postgres_proxy(database_url)
        self.pool: asyncpg.Pool | None = None
        self.service: LoanService | None = None

    async def start(self) -> None:
        port = await self.proxy.start()
        # No connection floor: every connection the pool makes is one the service asked for.
        self.pool = await asyncpg.create_pool(self.via(port), min_size=0, max_size=2)
        self.service = LoanService(
            clock=self.world.clock,
            policy=LoanPolicy(),
            ledger=CutInTheMiddle(self.proxy),
            customers=CoreCustomerDirectory(),
            notifier=OutboxNotifier(),
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        await self.proxy.close()

    async def new(self) -> StalledLoan:
        """A new product and customer, and the customer's application of 100,000 left
        approved with no loan."""
        product = await self.world.product()
        msisdn = await self.world.customer()
        before = await self.world.balance(msisdn)
        key = new_key()
        application_id = await self.stall(msisdn, product.code, 100_000, key)
        assert await self.world.balance(msisdn) == before  # nothing moved
        return StalledLoan(product.code, msisdn, before, key, application_id)

    async def stall(self, msisdn: str, product_code: str, amount: int, key: str) -> int:
        """Apply through the cutting relay; the id of the application left approved."""
        assert self.service is not None and self.pool is not None
        # The ledger call fails on the dead connection (Unavailable), and the transaction's
        # rollback on it raises asyncpg's InterfaceError in its place.
        with pytest.raises(asyncpg.InterfaceError):
            await self.service.apply(
                self.pool,
                msisdn=msisdn,
                product_code=product_code,
                amount_minor=amount,
                channel="ussd",
                idempotency_key=key,
            )
        self.proxy.restore()
        row = await self.world.pool.fetchrow(
            "SELECT a.id, a.status, l.id AS loan_id FROM loan_applications a"
            " LEFT JOIN loans l ON l.application_id = a.id"
            " WHERE a.msisdn = $1 AND a.idempotency_key = $2",
            msisdn,
            key,
        )
        assert row is not None
        assert (row["status"], row["loan_id"]) == (State.APPROVED.value, None)
        return int(row["id"])


@pytest.fixture
async def stalled(world: World, database_url: str) -> Any:
    s = Stalled(world, database_url)
    await s.start()
    yield s
    await s.close()


async def test_the_customer_asking_again_gets_the_stalled_loan_once(
    world: World, stalled: Stalled
) -> None:
    loan = await stalled.new()
    again = await world.apply(loan.msisdn, loan.product_code, 100_000, key=loan.key)
    assert again.replayed and again.loan is not None
    assert again.application.status == State.DISBURSED
    assert await world.balance(loan.msisdn) == loan.balance_before + 100_000
    third = await world.apply(loan.msisdn, loan.product_code, 100_000, key=loan.key)
    assert third.loan is not None and third.loan.id == again.loan.id
    assert await world.transfers_for(again.loan.id, "loan_disbursement") == 1


async def test_a_stalled_approval_is_resumed_by_any_instance_once(
    world: World, stalled: Stalled
) -> None:
    loan = await stalled.new()
    msisdn = loan.msisdn
    # Too fresh: it may still be disbursing somewhere.
    assert await world.service.resume_disbursements(world.pool) == 0
    world.clock.advance(seconds=RESUME_AFTER_S + 1)
    # Two instances at once: one disburses, the other finds it settled.
    other = LoanService(
        clock=world.clock,
        policy=LoanPolicy(),
        ledger=CoreLoanLedger(),
        customers=CoreCustomerDirectory(),
        notifier=OutboxNotifier(),
    )
    done = await asyncio.gather(
        world.service.resume_disbursements(world.pool),
        other.resume_disbursements(world.pool),
    )
    assert sorted(done) == [0, 1]
    assert await world.service.resume_disbursements(world.pool) == 0
    assert await world.balance(msisdn) == loan.balance_before + 100_000
    loan_id = await world.pool.fetchval(
        "SELECT id FROM loans WHERE application_id = $1", loan.application_id
    )
    assert await world.transfers_for(loan_id, "loan_disbursement") == 1
    # The customer was told by SMS (the disbursement notice in the outbox).
    notices = await world.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE recipient = $1 AND template = 'loan_disbursed'",
        msisdn,
    )
    assert notices == 1
    # And asking again later shows the same loan.
    replay = await world.apply(msisdn, loan.product_code, 100_000, key=loan.key)
    assert replay.loan is not None and replay.loan.id == loan_id


async def test_the_officer_approving_again_disburses_a_stalled_approval_once(
    world: World, stalled: Stalled
) -> None:
    """An officer's approval commits and its disbursement meets the dropped connection: the
    officer, told the request failed, approves again and the loan is disbursed then, once;
    a third approval answers the same loan."""
    assert stalled.service is not None and stalled.pool is not None
    product = await world.product(auto_approve_max_minor=100_000)
    msisdn = await world.customer()
    before = await world.balance(msisdn)
    applied = await world.apply(msisdn, product.code, 150_000)
    assert applied.application.status == State.APPLIED  # waiting for review
    with pytest.raises((asyncpg.InterfaceError, Unavailable)):
        await stalled.service.approve(stalled.pool, applied.application.id, actor="officer1")
    stalled.proxy.restore()
    assert await world.balance(msisdn) == before  # approved, nothing moved
    again = await world.service.approve(world.pool, applied.application.id, actor="officer1")
    assert again.application.status == State.DISBURSED and again.loan is not None
    assert await world.balance(msisdn) == before + 150_000
    third = await world.service.approve(world.pool, applied.application.id, actor="officer1")
    assert third.loan is not None and third.loan.id == again.loan.id
    assert await world.transfers_for(again.loan.id, "loan_disbursement") == 1
