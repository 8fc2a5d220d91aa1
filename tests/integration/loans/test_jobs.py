"""The daily jobs under a controllable clock, with real money on the banking core: a loan going
overdue day by day, penalties, reminders and arrears buckets; each job acting once per loan per
day however often and however concurrently it runs; the sweep collecting once a day; and an
overdue loan collected from money that arrives late."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from core.loans.jobs import DailyJob, JobScheduler, run_daily
from menus.loans.jobs import ArrearsJob, OverdueJob, PenaltyJob, ReminderJob, SweepJob, loan_jobs
from tests.integration.loans.conftest import World


@dataclass
class Scoped:
    """A job limited to some customers, so a test never touches another test's loans."""

    job: DailyJob
    msisdns: list[str]

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def where(self) -> str:
        n = 5 + len(self.job.params)
        return f"({self.job.where}) AND l.msisdn = ANY(${n}::text[])"

    @property
    def params(self) -> tuple[Any, ...]:
        return (*self.job.params, self.msisdns)

    async def run(self, conn: Any, loan_id: int, day: date, now: Any) -> str:
        return await self.job.run(conn, loan_id, day, now)


async def _state(world: World, loan_id: int) -> tuple[str, int, str]:
    row = await world.pool.fetchrow(
        "SELECT status, days_past_due, arrears_bucket FROM loans WHERE id = $1", loan_id
    )
    return row["status"], row["days_past_due"], row["arrears_bucket"]


async def _notices(world: World, loan_id: int, kind: str) -> list[str]:
    rows = await world.pool.fetch(
        "SELECT body FROM loan_notices WHERE loan_id = $1 AND kind = $2 ORDER BY id",
        loan_id,
        kind,
    )
    return [r["body"] for r in rows]


TERMS = {
    "repayments": 2,
    "frequency": "weeks",
    "late_penalty_flat_minor": 1_000,
    "late_penalty_percent": "1",
    "penalty_grace_days": 2,
    "default_after_days": 10,
}


async def test_a_loan_goes_overdue_day_by_day(world: World) -> None:
    # 200,000 flat 5 % a week, 2 weekly installments of 110,000 due 17 and 24 January.
    msisdn, loan_id, _ = await world.new_loan(200_000, **TERMS)
    await world.spend_all(msisdn)  # nothing to sweep: the loan must go late
    jobs = [Scoped(j, [msisdn]) for j in loan_jobs(world.service, (-3, 0, 1, 7))]
    assert [j.name for j in jobs] == ["sweep", "overdue", "arrears", "penalties", "reminders"]
    scheduler = JobScheduler(world.pool, jobs, world.clock, interval_s=3600)
    seen: dict[date, tuple[str, int, str]] = {}
    start = world.clock.today()
    for _ in range(100):
        await scheduler.run_once()
        seen[world.clock.today()] = await _state(world, loan_id)
        world.clock.advance(days=1)
    jan = lambda d: date(2024, 1, d)  # noqa: E731
    assert start == jan(10)
    assert seen[jan(17)] == ("active", 0, "current")  # due today is not late
    assert seen[jan(18)] == ("overdue", 1, "1-30")
    assert seen[jan(26)] == ("overdue", 9, "1-30")
    assert seen[jan(27)] == ("defaulted", 10, "1-30")  # default_after_days = 10
    assert seen[jan(17) + timedelta(days=30)] == ("defaulted", 30, "1-30")
    assert seen[jan(17) + timedelta(days=31)] == ("defaulted", 31, "31-60")
    assert seen[jan(17) + timedelta(days=61)] == ("defaulted", 61, "61-90")
    assert seen[jan(17) + timedelta(days=90)] == ("defaulted", 90, "61-90")
    assert seen[jan(17) + timedelta(days=91)] == ("defaulted", 91, "90+")
    # One penalty per installment, on the first day more than 2 days late:
    # 1,000 + 1 % of the 110,000 still owed = 2,100.
    penalties = await world.pool.fetch(
        "SELECT installment_number, amount_minor, charged_on FROM loan_penalties"
        " WHERE loan_id = $1 ORDER BY installment_number",
        loan_id,
    )
    assert [tuple(p) for p in penalties] == [(1, 2_100, jan(20)), (2, 2_100, jan(27))]
    reminders = await _notices(world, loan_id, "loan_reminder")
    # 14 Jan (3 days before #1), 17 (due), 18 (1 late), 21 (3 before #2), 24 (#1 7 late),
    # 25 (#2 1 late), 31 (#2 7 late): one notice a day at most.
    assert len(reminders) == 7
    assert reminders[0] == "Reminder: your loan payment of XTS 1,100.00 is due on 17/01/2024."
    assert reminders[1] == "Reminder: your loan payment of XTS 1,100.00 is due today."
    assert reminders[2].startswith("Your loan payment of XTS 1,100.00 was due on 17/01/2024")
    assert "(1 days ago)" in reminders[2]
    # 2,200.00 owed + 21.00 penalty, then the second installment's 21.00 as well.
    assert await _notices(world, loan_id, "loan_penalty") == [
        "A late payment penalty of XTS 21.00 was added to your loan. You now owe XTS 2,221.00.",
        "A late payment penalty of XTS 21.00 was added to your loan. You now owe XTS 2,242.00.",
    ]
    runs = await world.pool.fetch(
        "SELECT job, count(*) AS n FROM loan_job_runs WHERE loan_id = $1 GROUP BY job", loan_id
    )
    counts = {r["job"]: r["n"] for r in runs}
    assert counts["arrears"] == 100  # every day, once
    assert counts["penalties"] == 2 and counts["reminders"] == 7
    # 18 January (active -> overdue) to 27 January (-> defaulted): a defaulted loan leaves it.
    assert counts["overdue"] == 10
    history = await world.pool.fetch(
        "SELECT trigger FROM loan_status_history WHERE loan_id IS NULL AND application_id ="
        " (SELECT application_id FROM loans WHERE id = $1) ORDER BY id",
        loan_id,
    )
    assert [h["trigger"] for h in history] == ["apply", "approve", "disburse"]


async def test_each_job_acts_once_a_day_however_often_it_runs(world: World) -> None:
    msisdn, loan_id, _ = await world.new_loan(200_000, **TERMS)
    await world.spend_all(msisdn)
    world.clock.advance(days=10)  # #1 is 3 days late: overdue, penalty due
    for job in (OverdueJob(world.service), ArrearsJob(), PenaltyJob(world.service)):
        scoped = Scoped(job, [msisdn])
        first = await run_daily(world.pool, scoped, world.clock)
        second = await run_daily(world.pool, scoped, world.clock)
        assert (first.done, second.done) == (1, 0), job.name
    assert await _state(world, loan_id) == ("overdue", 3, "1-30")
    # Several instances at once on the next day: the claim lets exactly one act.
    world.clock.advance(days=1)
    reminders = Scoped(ReminderJob(world.service, (4,)), [msisdn])
    reports = await asyncio.gather(
        *[run_daily(world.pool, reminders, world.clock) for _ in range(4)]
    )
    assert sum(r.done for r in reports) == 1
    assert len(await _notices(world, loan_id, "loan_reminder")) == 1
    penalties = await world.pool.fetchval(
        "SELECT count(*) FROM loan_penalties WHERE loan_id = $1", loan_id
    )
    assert penalties == 1


async def test_the_sweep_collects_what_is_due_once_a_day(world: World) -> None:
    msisdn, loan_id, _ = await world.new_loan(200_000, **TERMS)
    sweep = Scoped(SweepJob(world.service), [msisdn])
    assert (await run_daily(world.pool, sweep, world.clock)).done == 0  # nothing due yet
    world.clock.advance(days=7)  # installment 1 (110,000) is due today
    before = await world.balance(msisdn)
    reports = await asyncio.gather(*[run_daily(world.pool, sweep, world.clock) for _ in range(3)])
    assert sum(r.done for r in reports) == 1
    again = await run_daily(world.pool, sweep, world.clock)
    assert again.done == 0
    assert await world.transfers_for(loan_id, "loan_repayment") == 1  # one ledger transfer
    assert await world.balance(msisdn) == before - 110_000
    repayments = await world.pool.fetch(
        "SELECT amount_minor, channel, idempotency_key FROM loan_repayments WHERE loan_id = $1",
        loan_id,
    )
    assert [tuple(r) for r in repayments] == [(110_000, "sweep", "sweep:2024-01-17")]
    status = await world.service.status(world.pool, msisdn)
    assert status is not None and status.due_now_minor == 0
    # A wallet short of the whole amount gives what it has; the loan stays on schedule.
    await world.spend_all(msisdn)
    await world.deposit(msisdn, 40_000)
    world.clock.advance(days=7)
    report = await run_daily(world.pool, sweep, world.clock)
    assert report.outcomes == {"swept_part": 1}
    assert await world.balance(msisdn) == 0
    status = await world.service.status(world.pool, msisdn)
    assert status is not None and status.due_now_minor == 70_000


async def test_repaying_arrears_cures_an_overdue_loan(world: World) -> None:
    msisdn, loan_id, _ = await world.new_loan(200_000, **TERMS)
    await world.spend_all(msisdn)
    world.clock.advance(days=8)
    overdue = Scoped(OverdueJob(world.service), [msisdn])
    await run_daily(world.pool, overdue, world.clock)
    assert (await _state(world, loan_id))[0] == "overdue"
    await world.deposit(msisdn, 110_000)
    result = await world.repay(msisdn, 110_000, key="cure")
    assert result.loan.status == "active"
    assert await _state(world, loan_id) == ("active", 0, "current")


async def test_an_overdue_loan_is_collected_day_by_day_with_real_money(world: World) -> None:
    """Money arrives late: the daily sweep takes the arrears with their penalty (to penalty
    income), the loan is cured, goes late again on a short wallet, and is cleared."""
    msisdn, loan_id, _ = await world.new_loan(200_000, **TERMS)
    await world.spend_all(msisdn)
    books = await world.income()
    jobs = [Scoped(j, [msisdn]) for j in loan_jobs(world.service, (-3, 0, 1, 7))]
    scheduler = JobScheduler(world.pool, jobs, world.clock, interval_s=3600)
    seen: dict[date, tuple[str, int, str]] = {}
    money_in = {date(2024, 1, 22): 120_000, date(2024, 1, 25): 150_000}
    for _ in range(20):
        await scheduler.run_once()
        today = world.clock.today()
        seen[today] = await _state(world, loan_id)
        if today in money_in:  # after the day's run: the next day's sweep finds it
            await world.deposit(msisdn, money_in[today])
        world.clock.advance(days=1)
    jan = lambda d: date(2024, 1, d)  # noqa: E731
    assert seen[jan(22)] == ("overdue", 5, "1-30")  # #1 (110,000) due 17 Jan; penalty on 20th
    assert seen[jan(23)] == ("active", 0, "current")  # 112,100 swept: #1 with its 2,100 penalty
    assert seen[jan(24)] == ("active", 0, "current")  # #2 due: 7,900 is all the wallet had
    assert seen[jan(25)] == ("overdue", 1, "1-30")
    assert seen[jan(26)] == ("repaid", 0, "current")  # the rest, 102,100, swept
    assert seen[jan(29)] == ("repaid", 0, "current")
    swept = await world.pool.fetch(
        "SELECT amount_minor, penalty_minor, interest_minor, principal_minor, idempotency_key"
        " FROM loan_repayments WHERE loan_id = $1 ORDER BY id",
        loan_id,
    )
    assert [tuple(r) for r in swept] == [
        (112_100, 2_100, 10_000, 100_000, "sweep:2024-01-23"),
        (7_900, 0, 7_900, 0, "sweep:2024-01-24"),
        (102_100, 0, 2_100, 100_000, "sweep:2024-01-26"),
    ]
    assert await world.transfers_for(loan_id, "loan_repayment") == 3
    assert await world.balance(msisdn) == 120_000 + 150_000 - 222_100
    after = await world.income()
    assert {k: after[k] - books[k] for k in after} == {
        "loan_fund": 200_000,
        "loan_interest_income": 20_000,
        "loan_fee_income": 0,
        "loan_penalty_income": 2_100,  # #2's penalty was never charged: repaid on the 26th
    }
    max_dpd = await world.pool.fetchval(
        "SELECT max_days_past_due FROM loans WHERE id = $1", loan_id
    )
    assert max_dpd == 5  # 22 January; on the 23rd the sweep ran before the arrears job
