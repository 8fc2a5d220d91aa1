"""Loan notices on the real core: ONE message per customer per money movement (the core's
receipt row takes the loan's text: reference, amount, what is still owed, the due date, the new
balance), and every notice in the customer's language (en, sw, fr), reminders and penalties
included; refusal reasons in every language with their figures. The world's invariants
(ledger check, loan book = ledger) run after each test."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from core.errors import LoanRefused, NotFound, Overpayment
from core.loans.jobs import JobScheduler
from core.loans.messages import refusal_text
from menus.loans.jobs import loan_jobs
from tests.integration.loans.conftest import World, new_key
from tests.integration.loans.test_jobs import Scoped

# What each language says, on a 1,000.00 loan at 5 % a week for 3 weeks (1,150.00 in all,
# 383.33 due 17 January), then 500.00 repaid (650.00 left, next due 24 January), then the rest.
EXPECTED = {
    "en": (
        "Confirmed. Loan of XTS 1,000.00 is in your wallet. Pay XTS 383.33 by 17/01/2024, "
        "XTS 1,150.00 in all. New balance XTS 101,000.00.",
        "Confirmed. Loan repayment of XTS 500.00 received. Still to pay XTS 650.00, next by "
        "24/01/2024. New balance XTS 100,500.00.",
        "Confirmed. XTS 650.00 received. Your loan is fully repaid, thank you. "
        "New balance XTS 99,850.00.",
    ),
    "sw": (
        "Imethibitishwa. Mkopo wa XTS 1,000.00 uko kwenye pochi yako. Lipa XTS 383.33 kufikia "
        "17/01/2024, jumla XTS 1,150.00. Salio XTS 101,000.00.",
        "Imethibitishwa. Malipo ya mkopo ya XTS 500.00 yamepokelewa. Deni XTS 650.00, lipa "
        "kufikia 24/01/2024. Salio jipya XTS 100,500.00.",
        "Imethibitishwa. XTS 650.00 imepokelewa. Mkopo wako umelipwa wote, asante. "
        "Salio jipya XTS 99,850.00.",
    ),
    "fr": (
        "Confirmé. Crédit de XTS 1,000.00 versé sur votre compte. Payez XTS 383.33 le "
        "17/01/2024, XTS 1,150.00 au total. Solde XTS 101,000.00.",
        "Confirmé. Remboursement de XTS 500.00 enregistré. Reste XTS 650.00, prochaine "
        "échéance le 24/01/2024. Solde XTS 100,500.00.",
        "Confirmé. XTS 650.00 enregistré. Votre crédit est entièrement remboursé, merci. "
        "Solde XTS 99,850.00.",
    ),
}


async def _customer(world: World, language: str) -> str:
    msisdn = await world.customer()
    await world.pool.execute(
        "UPDATE customers SET language = $2 WHERE msisdn = $1", msisdn, language
    )
    return msisdn


async def _mark(world: World) -> int:
    return int(await world.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox"))


async def _queued(world: World, msisdn: str, after: int) -> list[Any]:
    """Every outbox row for `msisdn` since `after`, with its loan notice (if any)."""
    return list(
        await world.pool.fetch(
            "SELECT o.id, o.kind, o.template, o.language, o.body, o.transfer_id, n.loan_id"
            " FROM outbox o LEFT JOIN loan_notices n ON n.outbox_id = o.id"
            " WHERE o.recipient = $1 AND o.id > $2 ORDER BY o.id",
            msisdn,
            after,
        )
    )


async def _one(world: World, msisdn: str, after: int, reference: str) -> Any:
    rows = await _queued(world, msisdn, after)
    assert len(rows) == 1, [dict(r) for r in rows]
    transfer = await world.pool.fetchval("SELECT ledger_reference_id($1)", reference)
    assert rows[0]["transfer_id"] == transfer
    return rows[0]


@pytest.mark.parametrize("language", ["en", "sw", "fr"])
async def test_one_message_per_movement_in_the_customers_language(
    world: World, language: str
) -> None:
    product = await world.product()
    msisdn = await _customer(world, language)
    lent_text, part_text, cleared_text = EXPECTED[language]

    mark = await _mark(world)
    applied = await world.apply(msisdn, product.code, 100_000)
    loan = applied.loan
    assert loan is not None and loan.disbursement_ref is not None
    row = await _one(world, msisdn, mark, loan.disbursement_ref)
    assert (row["kind"], row["language"], row["loan_id"]) == ("loan_disbursed", language, loan.id)
    assert row["body"] == f"{loan.disbursement_ref} {lent_text}"

    mark = await _mark(world)
    key = new_key()
    part = await world.repay(msisdn, 50_000, key=key)
    ref = part.repayment.ledger_ref
    assert ref is not None
    row = await _one(world, msisdn, mark, ref)
    assert (row["kind"], row["language"], row["loan_id"]) == ("loan_repayment", language, loan.id)
    assert row["body"] == f"{ref} {part_text}"
    again = await world.repay(msisdn, 50_000, key=key)
    assert again.replayed and len(await _queued(world, msisdn, row["id"])) == 0

    mark = await _mark(world)
    last = await world.repay(msisdn, 65_000)
    assert last.outstanding_minor == 0 and last.repayment.ledger_ref is not None
    row = await _one(world, msisdn, mark, last.repayment.ledger_ref)
    assert row["body"] == f"{last.repayment.ledger_ref} {cleared_text}"
    assert await world.balance(msisdn) == 99_850_00


REMINDERS = {
    "sw": (
        "Kumbusho: malipo ya mkopo wako ya XTS 1,100.00 yanatakiwa tarehe 17/01/2024.",
        "Kumbusho: malipo ya mkopo wako ya XTS 1,100.00 yanatakiwa leo.",
        "Malipo ya mkopo wako ya XTS 1,100.00 yalitakiwa tarehe 17/01/2024 (siku 1 "
        "zilizopita). Tafadhali lipa ili kuepuka adhabu.",
        "Adhabu ya kuchelewa ya XTS 21.00 imeongezwa kwenye mkopo wako. Sasa unadaiwa "
        "XTS 2,221.00.",
    ),
    "fr": (
        "Rappel: le paiement de XTS 1,100.00 pour votre crédit est attendu le 17/01/2024.",
        "Rappel: le paiement de XTS 1,100.00 pour votre crédit est attendu aujourd'hui.",
        "Le paiement de XTS 1,100.00 pour votre crédit était attendu le 17/01/2024 (il y a 1 "
        "jours). Payez pour éviter des pénalités.",
        "Une pénalité de retard de XTS 21.00 a été ajoutée à votre crédit. Vous devez "
        "maintenant XTS 2,221.00.",
    ),
}


@pytest.mark.parametrize("language", ["sw", "fr"])
async def test_reminders_and_penalties_in_the_customers_language(
    world: World, language: str
) -> None:
    # 200,000 flat 5 % a week, 2 weekly installments of 110,000 due 17 and 24 January; a
    # penalty of 1,000 + 1 % once an installment is more than 2 days late.
    product = await world.product(
        repayments=2,
        late_penalty_flat_minor=1_000,
        late_penalty_percent="1",
        penalty_grace_days=2,
        default_after_days=60,
    )
    msisdn = await _customer(world, language)
    applied = await world.apply(msisdn, product.code, 200_000)
    assert applied.loan is not None
    await world.spend_all(msisdn)  # nothing to sweep: the loan goes late
    jobs = [Scoped(j, [msisdn]) for j in loan_jobs(world.service, (-3, 0, 1))]
    scheduler = JobScheduler(world.pool, jobs, world.clock, interval_s=3600)
    mark = await _mark(world)
    for _ in range(11):  # 10 to 20 January
        await scheduler.run_once()
        world.clock.advance(days=1)
    rows = await _queued(world, msisdn, mark)
    texts = [(r["kind"], r["language"], r["body"]) for r in rows if r["kind"] != "receipt"]
    before, today, late, penalty = REMINDERS[language]
    assert texts == [
        ("loan_reminder", language, before),  # 14 January
        ("loan_reminder", language, today),  # 17 January
        ("loan_reminder", language, late),  # 18 January
        ("loan_penalty", language, penalty),  # 20 January
    ]


async def test_refusals_from_apply_carry_their_figures_for_every_language(world: World) -> None:
    """What the SMS executor does with a refused application: `refusal_error()` and
    `refusal_text` in the customer's language, the figures included; a replayed refusal (its
    figures are not stored) reads without them."""
    product = await world.product(principal_min_minor=50_000, principal_max_minor=400_000)
    msisdn = await world.customer()
    key = new_key()
    refused = await world.apply(msisdn, product.code, 500_000, key=key, channel="sms")
    error = refused.refusal_error()
    assert error is not None and error.error_code == "AMOUNT_OUT_OF_RANGE"
    assert refusal_text(error, "en") == "Borrow between XTS 500.00 and XTS 4,000.00"
    assert refusal_text(error, "sw") == "Kopa kati ya XTS 500.00 na XTS 4,000.00"
    assert refusal_text(error, "fr") == "Empruntez entre XTS 500.00 et XTS 4,000.00"
    replay = await world.apply(msisdn, product.code, 500_000, key=key, channel="sms")
    again = replay.refusal_error()
    assert replay.replayed and again is not None
    assert refusal_text(again, "fr") == "Ce montant n'est pas proposé pour ce crédit"
    with pytest.raises(LoanRefused) as info:
        await world.service.quote(
            world.pool, msisdn=msisdn, product_code=product.code, amount_minor=10_000
        )
    assert refusal_text(info.value, "sw") == "Kopa kati ya XTS 500.00 na XTS 4,000.00"
    with pytest.raises(Overpayment) as over:
        other = await world.product()
        await world.apply(msisdn, other.code, 100_000, channel="sms")
        await world.repay(msisdn, 200_000)
    assert refusal_text(over.value, "fr") == "Vous devez XTS 1,150.00; ne payez pas plus"
    with pytest.raises(NotFound) as none:
        await world.repay(await world.customer(inflow_minor=0), 100)
    assert refusal_text(none.value, "sw") == "Huna mkopo wa kulipa"


async def test_a_notice_on_another_channel_is_a_message_of_its_own(world: World) -> None:
    """The receipt is folded only into a notice for the same channel (the core writes receipts
    for `sms`); a loan service notifying on another channel queues its notice apart, in the
    customer's language, and the core's receipt stays as it was."""
    world.service.policy = replace(world.service.policy, notify_channel="log")
    product = await world.product()
    msisdn = await _customer(world, "sw")
    mark = await _mark(world)
    applied = await world.apply(msisdn, product.code, 100_000)
    assert applied.loan is not None
    rows = await world.pool.fetch(
        "SELECT o.channel, o.kind, o.template, o.language, o.body, n.loan_id FROM outbox o"
        " LEFT JOIN loan_notices n ON n.outbox_id = o.id WHERE o.recipient = $1 AND o.id > $2"
        " ORDER BY o.id",
        msisdn,
        mark,
    )
    shaped = [(r["channel"], r["kind"], r["template"], r["language"], r["loan_id"]) for r in rows]
    assert shaped == [
        ("sms", "receipt", "loan_disbursed", "sw", None),
        ("log", "loan_disbursed", None, "sw", applied.loan.id),
    ]
    assert rows[0]["body"] is None
    assert rows[1]["body"] == f"{applied.loan.disbursement_ref} {EXPECTED['sw'][0]}"
