"""The loan money path on the core (migration 0510_loan_money): one repayment split over the loan
fund and the interest, fee and penalty income accounts in ONE transfer; a loan fund that lends
only what it holds (and never lends its last money twice); funding it from settlement; bad
parts refused with nothing written. The ledger check runs after every test (conftest)."""

from __future__ import annotations

import asyncio
import secrets
import string
from dataclasses import replace

import asyncpg
import pytest

from core import errors as E
from core.crypto import FieldCipher
from core.customers import open_wallet
from core.ledger import ensure_system_accounts, system_balance
from core.limits import DEFAULT_LIMITS_KES, set_limits
from core.transfers import balance, deposit, disburse_loan, fund_loans, repay_loan, reverse
from tests.integration.core.conftest import make_customer, new_key

INCOME = ("loan_interest_income", "loan_fee_income", "loan_penalty_income")


_TAKEN = {"QAR"}  # a real currency; the rest are this run's own


async def fresh_currency(db: asyncpg.Pool) -> str:
    """A currency no other test uses (its own small fund), with the KES tier limits."""
    code = "QAR"
    while code in _TAKEN:
        code = "Q" + "".join(secrets.choice(string.ascii_uppercase) for _ in range(2))
    _TAKEN.add(code)
    await ensure_system_accounts(db, code, shards=4)
    for limits in DEFAULT_LIMITS_KES.values():
        await set_limits(db, replace(limits, currency=code))
    return code


async def borrower(db: asyncpg.Pool, cipher: FieldCipher, currency: str, minor: int = 0) -> str:
    msisdn = await make_customer(db, cipher)
    await open_wallet(db, msisdn, currency)
    if minor:
        await deposit(
            db,
            msisdn=msisdn,
            amount_minor=minor,
            idempotency_key=new_key(),
            channel="test",
            currency=currency,
        )
    return msisdn


async def balances(db: asyncpg.Pool, currency: str) -> dict[str, int]:
    kinds = ("loan_fund", "settlement", *INCOME)
    return {k: await system_balance(db, k, currency) for k in kinds}


async def test_one_repayment_splits_principal_and_income_in_one_transfer(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    cur = await fresh_currency(core_db)
    alice = await borrower(core_db, cipher, cur, 500_00)
    before = await balances(core_db, cur)
    paid = await repay_loan(
        core_db,
        msisdn=alice,
        amount_minor=300_00,
        interest_minor=40_00,
        fee_minor=15_00,
        penalty_minor=5_00,
        idempotency_key=new_key(),
        channel="test",
        loan_reference="loan:1",
        currency=cur,
    )
    assert (paid.kind, paid.amount_minor, paid.fee_minor) == ("loan_repayment", 300_00, 0)
    assert paid.balance_after_minor == 200_00
    after = await balances(core_db, cur)
    moved = {k: after[k] - before[k] for k in after}
    assert moved == {
        "loan_fund": 240_00,
        "settlement": 0,
        "loan_interest_income": 40_00,
        "loan_fee_income": 15_00,
        "loan_penalty_income": 5_00,
    }
    legs = await core_db.fetch(
        "SELECT a.kind, e.amount FROM entries e JOIN accounts a ON a.id = e.account_id"
        " WHERE e.transfer_id = ledger_reference_id($1) ORDER BY e.amount",
        paid.reference,
    )
    assert [(r["kind"], r["amount"]) for r in legs] == [
        ("wallet", -300_00),
        ("loan_penalty_income", 5_00),
        ("loan_fee_income", 15_00),
        ("loan_interest_income", 40_00),
        ("loan_fund", 240_00),
    ]
    receipt = await core_db.fetchval(
        "SELECT template FROM outbox WHERE transfer_id = ledger_reference_id($1)", paid.reference
    )
    assert receipt == "loan_repaid"


async def test_a_payment_of_charges_only_has_no_principal_leg(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    cur = await fresh_currency(core_db)
    alice = await borrower(core_db, cipher, cur, 100_00)
    paid = await repay_loan(
        core_db,
        msisdn=alice,
        amount_minor=30_00,
        interest_minor=30_00,
        idempotency_key=new_key(),
        channel="test",
        currency=cur,
    )
    kinds = await core_db.fetch(
        "SELECT a.kind FROM entries e JOIN accounts a ON a.id = e.account_id"
        " WHERE e.transfer_id = ledger_reference_id($1) ORDER BY a.kind",
        paid.reference,
    )
    assert [r["kind"] for r in kinds] == ["loan_interest_income", "wallet"]


async def test_split_repayments_replay_and_conflict_on_another_split(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    cur = await fresh_currency(core_db)
    alice = await borrower(core_db, cipher, cur, 500_00)
    key = new_key()
    args = {"msisdn": alice, "idempotency_key": key, "channel": "test", "currency": cur}
    first = await repay_loan(core_db, amount_minor=100_00, interest_minor=10_00, **args)
    again = await repay_loan(core_db, amount_minor=100_00, interest_minor=10_00, **args)
    assert again.replayed and again.reference == first.reference
    with pytest.raises(E.IdempotencyConflict):  # same total, another split: another request
        await repay_loan(core_db, amount_minor=100_00, interest_minor=20_00, **args)
    assert await balance(core_db, alice, cur) == 400_00


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        ({"interest_minor": -1}, "interest_minor"),
        ({"fee_minor": 1.5}, "fee_minor"),
        ({"penalty_minor": True}, "penalty_minor"),
        ({"interest_minor": 60_00, "fee_minor": 40_01}, "amount_minor"),
    ],
)
async def test_bad_parts_are_refused_and_nothing_is_written(
    core_db: asyncpg.Pool, cipher: FieldCipher, parts: dict[str, object], field: str
) -> None:
    cur = await fresh_currency(core_db)
    alice = await borrower(core_db, cipher, cur, 500_00)
    before = await balances(core_db, cur)
    with pytest.raises(E.ValidationFailed) as info:
        await repay_loan(
            core_db,
            msisdn=alice,
            amount_minor=100_00,
            idempotency_key=new_key(),
            channel="test",
            currency=cur,
            **parts,  # type: ignore[arg-type]
        )
    assert info.value.details["field"] == field
    assert await balances(core_db, cur) == before
    assert await balance(core_db, alice, cur) == 500_00


async def test_the_database_refuses_bad_parts_too(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    """The PL/pgSQL function checks the parts itself (a caller bypassing Python)."""
    cur = await fresh_currency(core_db)
    alice = await borrower(core_db, cipher, cur, 500_00)
    for interest, fee in ((-1, 0), (60_00, 40_01)):
        with pytest.raises(asyncpg.RaiseError) as info:
            await core_db.fetchrow(
                "SELECT * FROM ledger_loan_repay($1, 'h', $2, 10000, $3, 'test', '', '', $4, $5)",
                new_key(),
                alice,
                cur,
                interest,
                fee,
            )
        assert info.value.detail == "VALIDATION_ERROR"
    assert await balance(core_db, alice, cur) == 500_00


async def test_an_empty_fund_lends_nothing_and_funding_it_lets_it_lend(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    cur = await fresh_currency(core_db)
    alice = await borrower(core_db, cipher, cur)
    key = new_key()
    with pytest.raises(E.InsufficientFunds) as info:
        await disburse_loan(
            core_db, msisdn=alice, amount_minor=100_00, idempotency_key=key, channel="test",
            currency=cur,
        )  # fmt: skip
    assert info.value.details["needed_minor"] == 100_00
    assert await balance(core_db, alice, cur) == 0
    assert await core_db.fetchval(
        "SELECT count(*) FROM transfers WHERE idempotency_key = $1", key
    ) == 0  # fmt: skip
    funded = await fund_loans(
        core_db, amount_minor=150_00, idempotency_key=new_key(), channel="admin", currency=cur
    )
    assert (funded.kind, funded.debit_party, funded.credit_party) == (
        "loan_fund_topup",
        "BANK",
        "LOANS",
    )
    out = await disburse_loan(  # the same key works: a refused request bound nothing
        core_db, msisdn=alice, amount_minor=100_00, idempotency_key=key, channel="test",
        currency=cur,
    )  # fmt: skip
    assert out.balance_after_minor == 100_00
    assert await system_balance(core_db, "loan_fund", cur) == 50_00
    with pytest.raises(E.InsufficientFunds):
        await disburse_loan(
            core_db, msisdn=alice, amount_minor=50_01, idempotency_key=new_key(),
            channel="test", currency=cur,
        )  # fmt: skip


async def test_concurrent_disbursements_never_overdraw_the_fund(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    """Ten loans of 100 race for a fund of 450 spread over four shards: exactly four lend."""
    cur = await fresh_currency(core_db)
    for _ in range(3):
        await fund_loans(
            core_db, amount_minor=150_00, idempotency_key=new_key(), channel="t", currency=cur
        )
    people = [await borrower(core_db, cipher, cur) for _ in range(10)]

    async def lend(msisdn: str) -> bool:
        async with core_db.acquire() as conn, conn.transaction():
            try:
                await disburse_loan(
                    conn, msisdn=msisdn, amount_minor=100_00, idempotency_key=new_key(),
                    channel="test", currency=cur,
                )  # fmt: skip
            except E.InsufficientFunds:
                return False
            await asyncio.sleep(0.01)  # hold the transaction open: others must wait, not skip
            return True

    results = await asyncio.gather(*(lend(m) for m in people))
    assert sum(results) == 4
    assert await system_balance(core_db, "loan_fund", cur) == 50_00


async def test_a_funding_retry_replays(core_db: asyncpg.Pool) -> None:
    cur = await fresh_currency(core_db)
    key = new_key()
    first = await fund_loans(
        core_db, amount_minor=10_00, idempotency_key=key, channel="t", currency=cur
    )
    again = await fund_loans(
        core_db, amount_minor=10_00, idempotency_key=key, channel="t", currency=cur
    )
    assert again.replayed and again.reference == first.reference
    with pytest.raises(E.IdempotencyConflict):
        await fund_loans(
            core_db, amount_minor=11_00, idempotency_key=key, channel="t", currency=cur
        )
    assert await system_balance(core_db, "loan_fund", cur) == 10_00
    assert await system_balance(core_db, "settlement", cur) == -10_00


async def test_loan_movements_cannot_be_reversed_by_the_core(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    """The loan book owns disbursements and repayments: the core's reverse refuses them with
    a typed error and writes nothing; other transfers of the same customer still reverse."""
    cur = await fresh_currency(core_db)
    await fund_loans(
        core_db, amount_minor=500_00, idempotency_key=new_key(), channel="admin", currency=cur
    )
    alice = await borrower(core_db, cipher, cur)
    lent = await disburse_loan(
        core_db, msisdn=alice, amount_minor=200_00, idempotency_key=new_key(), channel="test",
        currency=cur, loan_reference="loan:9",
    )  # fmt: skip
    paid = await repay_loan(
        core_db, msisdn=alice, amount_minor=50_00, interest_minor=5_00, idempotency_key=new_key(),
        channel="test", currency=cur, loan_reference="loan:9",
    )  # fmt: skip
    before = await core_db.fetchval("SELECT count(*) FROM transfers")
    for movement in (lent, paid):
        with pytest.raises(E.NotReversible) as info:
            await reverse(
                core_db, reference=movement.reference.lower(), idempotency_key=new_key(),
                channel="admin", reason="customer asked",
            )  # fmt: skip
        assert info.value.details["type"] == movement.kind
        assert "loan" in info.value.message.lower()
    assert await core_db.fetchval("SELECT count(*) FROM transfers") == before
    assert await balance(core_db, alice, cur) == 150_00

    topped = await deposit(
        core_db, msisdn=alice, amount_minor=10_00, idempotency_key=new_key(), channel="test",
        currency=cur,
    )  # fmt: skip
    undone = await reverse(
        core_db, reference=topped.reference, idempotency_key=new_key(), channel="admin"
    )
    assert undone.kind == "reversal"
    assert await balance(core_db, alice, cur) == 150_00


async def test_loan_transfers_are_not_reversible(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    """The core's reversal refuses a loan disbursement or repayment (the loan book would not
    know); nothing is written. Other transfers stay reversible."""
    cur = await fresh_currency(core_db)
    await fund_loans(
        core_db, amount_minor=1_000_00, idempotency_key=new_key(), channel="test", currency=cur
    )
    alice = await borrower(core_db, cipher, cur, 100_00)
    lent = await disburse_loan(
        core_db,
        msisdn=alice,
        amount_minor=500_00,
        idempotency_key=new_key(),
        channel="test",
        loan_reference="loan:77",
        currency=cur,
    )
    paid = await repay_loan(
        core_db,
        msisdn=alice,
        amount_minor=200_00,
        interest_minor=20_00,
        idempotency_key=new_key(),
        channel="test",
        loan_reference="loan:77",
        currency=cur,
    )
    before = await balances(core_db, cur)
    wallet = await balance(core_db, alice, cur)
    count = await core_db.fetchval("SELECT count(*) FROM transfers WHERE type = 'reversal'")
    for ref, kind in ((lent.reference, "loan_disbursement"), (paid.reference, "loan_repayment")):
        with pytest.raises(E.NotReversible) as info:
            await reverse(core_db, reference=ref, idempotency_key=new_key(), channel="admin")
        assert info.value.error_code == "NOT_REVERSIBLE"
        assert "loan book" in info.value.message
        assert info.value.details == {"reference": ref, "type": kind}
    assert await balances(core_db, cur) == before
    assert await balance(core_db, alice, cur) == wallet
    assert await core_db.fetchval("SELECT count(*) FROM transfers WHERE type = 'reversal'") == count
    # A deposit into the same wallet is still reversed as before.
    dep = await deposit(
        core_db,
        msisdn=alice,
        amount_minor=10_00,
        idempotency_key=new_key(),
        channel="test",
        currency=cur,
    )
    back = await reverse(core_db, reference=dep.reference, idempotency_key=new_key(), channel="a")
    assert back.kind == "reversal" and await balance(core_db, alice, cur) == wallet


async def test_a_top_up_is_reversed_only_while_the_fund_still_holds_it(
    core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    cur = await fresh_currency(core_db)
    alice = await borrower(core_db, cipher, cur)
    first = await fund_loans(
        core_db, amount_minor=1_000_00, idempotency_key=new_key(), channel="test", currency=cur
    )
    back = await reverse(core_db, reference=first.reference, idempotency_key=new_key(), channel="a")
    assert back.kind == "reversal" and (await balances(core_db, cur))["loan_fund"] == 0
    second = await fund_loans(
        core_db, amount_minor=1_000_00, idempotency_key=new_key(), channel="test", currency=cur
    )
    await disburse_loan(
        core_db,
        msisdn=alice,
        amount_minor=800_00,
        idempotency_key=new_key(),
        channel="test",
        loan_reference="loan:78",
        currency=cur,
    )
    with pytest.raises(E.InsufficientFunds) as info:
        await reverse(core_db, reference=second.reference, idempotency_key=new_key(), channel="a")
    assert info.value.details["available_minor"] == 200_00
    assert (await balances(core_db, cur))["loan_fund"] == 200_00
