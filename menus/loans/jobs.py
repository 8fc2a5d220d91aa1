"""The daily loan jobs: sweep, overdue marking, arrears buckets, late penalties, reminders.

Each is a `core.loans.jobs.DailyJob`: an SQL condition choosing candidate loans for the business
day, and `run` acting on one locked loan inside the runner's transaction (claimed once per loan
per day). Status changes go through the service, so they ask the shared lifecycle machine.

- sweep: takes what has fallen due from the wallet (up to the spendable balance) through the
  ledger; idempotency key `sweep:<day>` on the loan. Only with a ledger (the banking core).
- overdue: active -> overdue the day after an unpaid due date; overdue -> active when arrears
  are cleared; overdue -> defaulted at the product's `default_after_days`.
- arrears: days past due and the bucket (current, 1-30, 31-60, 61-90, 90+).
- penalties: one late penalty per installment once it is more than `penalty_grace_days` late
  (flat + percent of what the installment still owes), a loan-side record plus a notice.
- reminders: a notice on the days relative to a due date in `LOAN_REMINDER_DAYS` (-3 = three
  days before, 0 = the day, 7 = a week late).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from core.loans import book
from core.loans.allocation import due_by, outstanding_minor
from core.loans.arrears import bucket_for, days_past_due
from core.loans.jobs import DONE, UNPAID, DailyJob
from core.loans.lifecycle import State
from core.loans.schedule import round_minor
from menus.loans.service import SYSTEM, LoanService

OPEN = "l.status IN ('active', 'overdue', 'defaulted')"
DEFAULT_REMINDER_DAYS = (-3, 0, 1, 7)
_HUNDRED = Decimal(100)


class SweepJob:
    name = "sweep"
    where = (
        f"{OPEN} AND EXISTS (SELECT 1 FROM loan_installments i"  # noqa: S608 (constant SQL, no input)
        f" WHERE i.loan_id = l.id AND i.due_date <= $2 AND {UNPAID})"
    )
    params: tuple[Any, ...] = ()

    def __init__(self, service: LoanService) -> None:
        self.service = service

    async def run(self, conn: Any, loan_id: int, day: date, now: datetime) -> str:
        loan = await book.get_loan(conn, loan_id)
        dues = [r.due() for r in await book.installments(conn, loan_id)]
        owed_now = due_by(dues, day)
        ledger = self.service.require_ledger()
        available = await ledger.available_minor(conn, loan.msisdn, loan.currency)
        amount = min(owed_now, available)
        if amount <= 0:
            return "nothing" if owed_now == 0 else "empty_wallet"
        await self.service.collect(conn, loan, amount, f"sweep:{day.isoformat()}", "sweep")
        return "swept" if amount == owed_now else "swept_part"


class OverdueJob:
    name = "overdue"
    where = (
        f"(l.status = 'active' AND EXISTS (SELECT 1 FROM loan_installments i"  # noqa: S608 (constant SQL, no input)
        f" WHERE i.loan_id = l.id AND i.due_date < $2 AND {UNPAID})) OR l.status = 'overdue'"
    )
    params: tuple[Any, ...] = ()

    def __init__(self, service: LoanService) -> None:
        self.service = service

    async def run(self, conn: Any, loan_id: int, day: date, now: datetime) -> str:
        loan = await book.get_loan(conn, loan_id)
        dues = [r.due() for r in await book.installments(conn, loan_id)]
        dpd = days_past_due(dues, day)
        moves = []
        if loan.status == State.ACTIVE and dpd > 0:
            loan = await self.service.move_loan(conn, loan, "fall_overdue", SYSTEM)
            moves.append("overdue")
        if loan.status == State.OVERDUE and dpd == 0:
            loan = await self.service.move_loan(conn, loan, "cure", SYSTEM)
            moves.append("cured")
        if loan.status == State.OVERDUE and dpd >= loan.product().default_after_days:
            loan = await self.service.move_loan(conn, loan, "default", SYSTEM)
            moves.append("defaulted")
        return "+".join(moves) or "unchanged"


class ArrearsJob:
    name = "arrears"
    where = OPEN
    params: tuple[Any, ...] = ()

    async def run(self, conn: Any, loan_id: int, day: date, now: datetime) -> str:
        loan = await book.get_loan(conn, loan_id)
        dues = [r.due() for r in await book.installments(conn, loan_id)]
        dpd = days_past_due(dues, day)
        bucket = bucket_for(dpd)
        if dpd == loan.days_past_due and bucket == loan.arrears_bucket:
            return DONE
        await book.set_arrears(conn, loan_id, dpd, bucket, now)
        return bucket


class PenaltyJob:
    name = "penalties"
    where = (
        f"{OPEN} AND ((l.terms->>'late_penalty_flat_minor')::bigint > 0"  # noqa: S608 (constant SQL, no input)
        " OR (l.terms->>'late_penalty_percent')::numeric > 0)"
        " AND EXISTS (SELECT 1 FROM loan_installments i WHERE i.loan_id = l.id"
        f" AND i.due_date + (l.terms->>'penalty_grace_days')::int < $2 AND {UNPAID}"
        " AND NOT EXISTS (SELECT 1 FROM loan_penalties p"
        " WHERE p.loan_id = i.loan_id AND p.installment_number = i.number))"
    )
    params: tuple[Any, ...] = ()

    def __init__(self, service: LoanService) -> None:
        self.service = service

    async def run(self, conn: Any, loan_id: int, day: date, now: datetime) -> str:
        loan = await book.get_loan(conn, loan_id)
        product = loan.product()
        charged = 0
        for row in await book.installments(conn, loan_id):
            due = row.due()
            late_days = (day - row.due_date).days
            base = due.principal_minor + due.interest_minor + due.fee_minor
            if late_days <= product.penalty_grace_days or base <= 0:
                continue
            amount = product.late_penalty_flat_minor + round_minor(
                Decimal(base) * product.late_penalty_percent / _HUNDRED
            )
            if amount > 0 and await book.add_penalty(
                conn, loan_id, row.number, amount_minor=amount, day=day, now=now
            ):
                charged += amount
        if charged:
            owed = outstanding_minor([r.due() for r in await book.installments(conn, loan_id)])
            params = {"amount_minor": charged, "outstanding_minor": owed, "currency": loan.currency}
            await self.service.notify(conn, loan.msisdn, "loan_penalty", params, loan_id)
            return "charged"
        return "nothing"


class ReminderJob:
    name = "reminders"

    def __init__(self, service: LoanService, days: Sequence[int] = DEFAULT_REMINDER_DAYS) -> None:
        self.service = service
        self.days = sorted(set(days))
        self.where = (
            f"{OPEN} AND EXISTS (SELECT 1 FROM loan_installments i WHERE i.loan_id = l.id"  # noqa: S608 (constant SQL, no input)
            f" AND {UNPAID} AND ($2 - i.due_date) = ANY($5::int[]))"
        )

    @property
    def params(self) -> tuple[Any, ...]:
        return (self.days,)

    async def run(self, conn: Any, loan_id: int, day: date, now: datetime) -> str:
        loan = await book.get_loan(conn, loan_id)
        dues = [r.due() for r in await book.installments(conn, loan_id)]
        hits = [d for d in dues if d.total_minor > 0 and (day - d.due_date).days in self.days]
        if not hits:
            return "nothing"
        target = hits[0]
        # Late: everything that has fallen due; ahead of time: the installment itself.
        amount = due_by(dues, day) if target.due_date <= day else target.total_minor
        late_days = (day - target.due_date).days
        when = "before" if late_days < 0 else "today" if late_days == 0 else "late"
        params = {
            "amount_minor": amount,
            "due_date": target.due_date,
            "days": late_days,
            "currency": loan.currency,
        }
        await self.service.notify(
            conn, loan.msisdn, "loan_reminder", params, loan_id, template=f"loan_reminder_{when}"
        )
        return "reminded"


def loan_jobs(service: LoanService, reminder_days: Sequence[int]) -> list[DailyJob]:
    """The daily jobs in the order they should run each day (collect before marking late)."""
    jobs: list[DailyJob] = []
    if service.ledger is not None:
        jobs.append(SweepJob(service))
    jobs += [
        OverdueJob(service),
        ArrearsJob(),
        PenaltyJob(service),
        ReminderJob(service, reminder_days),
    ]
    return jobs
