"""Abandoning a loan request (migration 0820, core.loans.store.abandon_request) on the real
core: what the loan service did under a request key is found and left alone; a request that did
nothing is abandoned so that no later application or repayment happens under its key, refused
where the service claims the key (and at the INSERT, for a path that skipped the claim); the two
orders of a race with a request in flight, each waited for on the key's lock; and the USSD
settler's one SMS in the customer's language. The ledger and the loan book are checked after
every test (this package's `world`)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from core import errors as E
from core.loans import store
from core.loans.book import get_loan, open_loan_for
from menus.bindings import LATE_RESULT_KIND, PromiseSettler
from menus.loans.service import late_result_text
from menus.pending import Pending
from tests.helpers import eventually
from tests.integration.loans.conftest import World, new_key

NOT_DONE = {
    ("loans.apply", "sw"): "Ombi lako la mkopo halikufanikiwa: hakuna mkopo uliotolewa wala "
    "pesa iliyochukuliwa kwenye akaunti yako. Unaweza kuomba tena.",
    ("loans.repay", "fr"): "Votre remboursement n'a pas abouti et aucun montant n'a été prélevé "
    "sur votre compte. Votre crédit est inchangé; vous pouvez rembourser à nouveau.",
}


# Advisory locks waited for in this run's database (other runs share the server).
_WAITING = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def waiting_on_request_lock(pool: asyncpg.Pool) -> int:
    """Sessions waiting for a loan request key's lock (class 820 of the two-int advisory locks)."""
    return int(await pool.fetchval(_WAITING + " AND classid = 820 AND objsubid = 2"))


async def waiting_on_applicant_lock(pool: asyncpg.Pool) -> int:
    """Sessions waiting for an applicant's lock (store.lock_applicant: the one-bigint form)."""
    return int(await pool.fetchval(_WAITING + " AND objsubid = 1"))


async def applications(world: World, msisdn: str) -> int:
    return int(
        await world.pool.fetchval(
            "SELECT count(*) FROM loan_applications WHERE msisdn = $1", msisdn
        )
    )


async def repayments(world: World, loan_id: int) -> int:
    return int(
        await world.pool.fetchval(
            "SELECT count(*) FROM loan_repayments WHERE loan_id = $1", loan_id
        )
    )


async def abandoned(world: World, msisdn: str, key: str) -> int:
    return int(
        await world.pool.fetchval(
            "SELECT count(*) FROM loan_abandoned WHERE msisdn = $1 AND idempotency_key = $2",
            msisdn,
            key,
        )
    )


async def told(world: World, msisdn: str) -> list[str]:
    rows = await world.pool.fetch(
        "SELECT body FROM outbox WHERE recipient = $1 AND kind = $2 ORDER BY id",
        msisdn,
        LATE_RESULT_KIND,
    )
    return [r["body"] for r in rows]


def promise(msisdn: str, key: str, action: str, language: str = "en") -> Pending:
    now = time.time()
    return Pending(
        key=key,
        action=action,
        msisdn=msisdn,
        language=language,
        menu="default",
        version=1,
        screen="loan_do",
        promised_at=now,
        until=now + 60.0,
    )


async def test_an_abandoned_request_never_applies_nor_repays(world: World) -> None:
    product = await world.product()
    msisdn, loan_id, _ = await world.new_loan(300_000)
    key = new_key("gone")
    assert await store.abandon_request(world.pool, msisdn, key, "apply") is None
    assert await store.abandon_request(world.pool, msisdn, key, "repay") is None  # the same
    assert await abandoned(world, msisdn, key) == 1
    before = await world.balance(msisdn)
    with pytest.raises(E.MoneyAbandoned):
        await world.apply(msisdn, product.code, 100_000, key=key)
    with pytest.raises(E.MoneyAbandoned):
        await world.repay(msisdn, 50_000, key=key)
    assert await applications(world, msisdn) == 1  # the loan's own, nothing under the key
    assert await repayments(world, loan_id) == 0
    assert await world.balance(msisdn) == before
    # Another customer's request under the same key text is another request.
    other = await world.customer()
    fine = await world.apply(other, product.code, 100_000, key=key)
    assert fine.loan is not None


async def test_the_insert_refuses_a_path_that_skipped_the_claim(world: World) -> None:
    """`collect` is the repayment without the service's entry (the claim is `repay`'s): the
    INSERT that records the repayment refuses the abandoned key, and the whole transaction,
    its ledger movement with it, rolls back."""
    msisdn, loan_id, _ = await world.new_loan(300_000)
    key = new_key("skip")
    assert await store.abandon_request(world.pool, msisdn, key, "repay") is None
    before = await world.balance(msisdn)
    async with world.pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="given up"):
            async with conn.transaction():
                loan = await get_loan(conn, loan_id, for_update=True)
                await world.service.collect(conn, loan, 50_000, key, "ussd")
    assert await world.balance(msisdn) == before
    assert await repayments(world, loan_id) == 0


async def test_a_done_request_is_found_and_not_abandoned(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer()
    key = new_key("done")
    applied = await world.apply(msisdn, product.code, 300_000, key=key)
    assert applied.loan is not None
    assert await store.abandon_request(world.pool, msisdn, key, "apply") == "apply"
    again = await world.apply(msisdn, product.code, 300_000, key=key)  # still replays
    assert again.replayed and again.loan is not None and again.loan.id == applied.loan.id
    paid_key = new_key("paid")
    await world.repay(msisdn, 50_000, key=paid_key)
    assert await store.abandon_request(world.pool, msisdn, paid_key, "repay") == "repay"
    assert await abandoned(world, msisdn, key) + await abandoned(world, msisdn, paid_key) == 0
    assert (await world.repay(msisdn, 50_000, key=paid_key)).replayed


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_the_abandonment_waits_for_a_repayment_in_flight(world: World, outcome: str) -> None:
    """The repayment's transaction holds its key from its first statement: the abandonment
    waits, then finds the repayment (committed) or abandons the key (rolled back)."""
    msisdn, loan_id, _ = await world.new_loan(300_000)
    key = new_key("race")
    before = await world.balance(msisdn)
    async with world.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        # What `repay` does, held open before its commit.
        await store.claim_request(conn, msisdn, key)
        loan = await open_loan_for(conn, msisdn, for_update=True)
        assert loan is not None
        await world.service.collect(conn, loan, 50_000, key, "ussd")
        settling = asyncio.ensure_future(store.abandon_request(world.pool, msisdn, key, "repay"))
        await eventually(lambda: waiting_on_request_lock(world.pool))
        assert not settling.done()
        await (tx.commit() if outcome == "commit" else tx.rollback())
    found = await asyncio.wait_for(settling, timeout=10)
    if outcome == "commit":
        assert found == "repay" and await repayments(world, loan_id) == 1
        assert await world.balance(msisdn) == before - 50_000
    else:
        assert found is None and await repayments(world, loan_id) == 0
        assert await world.balance(msisdn) == before
        with pytest.raises(E.MoneyAbandoned):
            await world.repay(msisdn, 50_000, key=key)


async def test_the_abandonment_waits_for_an_application_in_flight(world: World) -> None:
    """The service's own apply, held after its claim (the applicant's lock, the next one it
    takes, is held here): the abandonment waits, and finds the application once it commits;
    its disbursement follows, under the loan service's key."""
    product = await world.product()
    msisdn = await world.customer()
    key = new_key("race")
    async with world.pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await store.lock_applicant(holder, msisdn)
        applying = asyncio.ensure_future(world.apply(msisdn, product.code, 300_000, key=key))
        await eventually(lambda: waiting_on_applicant_lock(world.pool))
        settling = asyncio.ensure_future(store.abandon_request(world.pool, msisdn, key, "apply"))
        await eventually(lambda: waiting_on_request_lock(world.pool))
        assert not settling.done() and not applying.done()
        await tx.rollback()
    assert await asyncio.wait_for(settling, timeout=10) == "apply"
    applied = await asyncio.wait_for(applying, timeout=10)
    assert applied.loan is not None
    assert await abandoned(world, msisdn, key) == 0


@pytest.mark.parametrize("action", ["apply", "repay"])
async def test_a_request_waits_for_an_abandonment_in_flight_and_is_refused(
    world: World, action: str
) -> None:
    product = await world.product()
    msisdn, loan_id, _ = await world.new_loan(300_000)
    if action == "apply":  # no open loan, so that only the abandonment could refuse it
        await world.repay(msisdn, 345_000)
    key = new_key("race")
    before = await world.balance(msisdn)
    async with world.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        assert await store.abandon_request(conn, msisdn, key, action) is None
        asking = asyncio.ensure_future(
            world.apply(msisdn, product.code, 100_000, key=key)
            if action == "apply"
            else world.repay(msisdn, 50_000, key=key)
        )
        await eventually(lambda: waiting_on_request_lock(world.pool))
        assert not asking.done()
        await tx.commit()
    with pytest.raises(E.MoneyAbandoned):
        await asyncio.wait_for(asking, timeout=10)
    assert await world.balance(msisdn) == before
    assert await applications(world, msisdn) == 1
    assert await repayments(world, loan_id) == (1 if action == "apply" else 0)


@pytest.mark.parametrize(("action", "language"), sorted(NOT_DONE))
async def test_the_settler_abandons_a_request_and_tells_once(
    world: World, action: str, language: str
) -> None:
    msisdn, loan_id, _ = await world.new_loan(300_000)
    settler = PromiseSettler(world.pool)
    pending = promise(msisdn, new_key("ussd"), action, language)
    assert settler.settles(action)
    assert await settler.settle_or_abandon(pending) is False
    assert await settler.settle_or_abandon(pending) is False  # again: still one SMS
    assert await told(world, msisdn) == [NOT_DONE[(action, language)]]
    assert await abandoned(world, msisdn, pending.key) == 1
    assert await repayments(world, loan_id) == 0


async def test_the_settler_finds_a_disbursed_loan_and_adds_nothing(world: World) -> None:
    product = await world.product()
    msisdn = await world.customer()
    pending = promise(msisdn, new_key("ussd"), "loans.apply")
    await world.apply(msisdn, product.code, 300_000, key=pending.key)
    assert await PromiseSettler(world.pool).settle_or_abandon(pending) is True
    assert await told(world, msisdn) == []  # the disbursement's notice is the result
    notices = await world.pool.fetchval(
        "SELECT count(*) FROM loan_notices WHERE recipient = $1 AND kind = 'loan_disbursed'",
        msisdn,
    )
    assert notices == 1


async def test_the_settler_tells_a_refusal_that_sent_no_notice(world: World) -> None:
    """The system refused the application (no notice of its own): the customer is told the
    refusal, in their language, once; nothing is abandoned."""
    product = await world.product()
    msisdn = await world.customer(tier="basic")  # the product lends to standard and premium
    pending = promise(msisdn, new_key("ussd"), "loans.apply", "sw")
    refused = await world.apply(msisdn, product.code, 300_000, key=pending.key)
    assert refused.refusal_error() is not None
    settler = PromiseSettler(world.pool)
    assert await settler.settle_or_abandon(pending) is True
    assert await settler.settle_or_abandon(pending) is True
    assert await told(world, msisdn) == [
        "Ombi lako la mkopo halikukubaliwa. Mkopo huu haupatikani kwa kiwango cha akaunti yako"
    ]
    assert await abandoned(world, msisdn, pending.key) == 0


async def test_the_settler_tells_a_review_and_leaves_an_officers_decision_to_its_notice(
    world: World,
) -> None:
    """Sent to review (over the product's auto-approve amount): the customer is told so. Once
    an officer has decided, the officer's notice is the result: nothing more."""
    product = await world.product(auto_approve_max_minor=100_000)
    msisdn = await world.customer()
    waiting = promise(msisdn, new_key("ussd"), "loans.apply", "fr")
    applied = await world.apply(msisdn, product.code, 300_000, key=waiting.key)
    assert applied.loan is None and applied.refusal_error() is None
    settler = PromiseSettler(world.pool)
    assert await settler.settle_or_abandon(waiting) is True
    assert await told(world, msisdn) == ["Votre demande sera examinée"]
    rejected = await world.service.reject(
        world.pool, applied.application.id, actor="officer", reason="No"
    )
    assert late_result_text(rejected.application, "fr") is None
    assert await settler.settle_or_abandon(waiting) is True
    assert await told(world, msisdn) == ["Votre demande sera examinée"]


@pytest.mark.parametrize(
    ("msisdn", "key", "action"),
    [
        ("0712345678", "k", "apply"),
        ("+254712345678", "", "apply"),
        ("+254712345678", "k" * 129, "repay"),
        ("+254712345678", "k", "withdraw"),
    ],
)
async def test_a_bad_abandonment_is_refused_and_writes_nothing(
    world: World, msisdn: str, key: str, action: str
) -> None:
    with pytest.raises(E.ValidationFailed):
        await store.abandon_request(world.pool, msisdn, key, action)
    assert (
        await world.pool.fetchval("SELECT count(*) FROM loan_abandoned WHERE msisdn = $1", msisdn)
        == 0
    )
