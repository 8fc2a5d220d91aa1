"""Daily loan jobs that run once across every gateway instance and once per loan per day.

Any number of instances may run the same job at the same time. For each candidate loan:

1. `SELECT ... FOR UPDATE SKIP LOCKED` on the loan: if another instance (or a customer's
   repayment) holds it, move on; it is picked up on a later tick if still undone.
2. Claim `(job, loan, business day)` in `loan_job_runs` with `ON CONFLICT DO NOTHING`: the
   unique key is checked against committed rows whatever the snapshot, so a loan another
   instance already finished today is skipped even if it still looked undone when listed.
3. Do the work in the same transaction, so the claim and the work commit (or vanish) together.

A failure rolls back that loan's claim and work alone; it is logged and retried on the next
tick. Candidates are listed in id order with a cursor, so one run never loops on a loan.
The business day and the time come from a `Clock`, so tests move days by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from core.clock import Clock

log = logging.getLogger("core.loans.jobs")

Pool = Any  # asyncpg.Pool
BATCH = 200
MAX_LOANS_PER_RUN = 100_000  # a bound on one run; the next tick continues
DONE = "done"
BUSY = "busy"
ALREADY = "already"
FAILED = "failed"

# Unpaid: anything still owed on an installment (paid_at alone cannot say it: all-zero grace
# installments never get one).
UNPAID = """(i.principal_paid_minor < i.principal_minor OR i.interest_paid_minor < i.interest_minor
  OR i.fee_paid_minor < i.fee_minor OR i.penalty_paid_minor < i.penalty_minor)"""


class DailyJob(Protocol):
    """One daily job. `where` is an SQL condition on loans `l`; it may use $2 (the business
    day) and $5... (the job's `params`). $1, $3 and $4 belong to the runner."""

    name: str
    where: str

    @property
    def params(self) -> tuple[Any, ...]: ...

    async def run(self, conn: Any, loan_id: int, day: date, now: datetime) -> str:
        """Act on one locked loan; return an outcome word (stored when it is not `done`)."""
        ...


@dataclass(slots=True)
class JobReport:
    job: str
    day: date
    done: int = 0
    busy: int = 0
    already: int = 0
    failed: int = 0
    outcomes: dict[str, int] | None = None

    def count(self, outcome: str) -> None:
        if outcome == BUSY:
            self.busy += 1
        elif outcome == ALREADY:
            self.already += 1
        elif outcome == FAILED:
            self.failed += 1
        else:
            self.done += 1
            self.outcomes = self.outcomes or {}
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def _candidates_sql(job: DailyJob) -> str:
    return (
        "SELECT l.id FROM loans l WHERE l.id > $3 AND ("  # noqa: S608 (job SQL is code, not input)
        + job.where
        + ") AND NOT EXISTS (SELECT 1 FROM loan_job_runs r"
        " WHERE r.job = $1 AND r.loan_id = l.id AND r.run_date = $2)"
        " ORDER BY l.id LIMIT $4"
    )


async def _run_one(pool: Pool, job: DailyJob, loan_id: int, day: date, now: datetime) -> str:
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                locked = await conn.fetchval(
                    "SELECT id FROM loans WHERE id = $1 FOR UPDATE SKIP LOCKED", loan_id
                )
                if locked is None:
                    return BUSY
                claimed = await conn.fetchval(
                    "INSERT INTO loan_job_runs (job, loan_id, run_date, at)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
                    job.name,
                    loan_id,
                    day,
                    now,
                )
                if claimed is None:
                    return ALREADY
                outcome = await job.run(conn, loan_id, day, now)
                if outcome != DONE:
                    await conn.execute(
                        "UPDATE loan_job_runs SET outcome = $4"
                        " WHERE job = $1 AND loan_id = $2 AND run_date = $3",
                        job.name,
                        loan_id,
                        day,
                        outcome[:64],
                    )
                return outcome
        except Exception as exc:  # one loan's failure must not stop the others
            log.exception(
                "loan job failed on a loan",
                extra={"job": job.name, "loan_id": loan_id, "error": type(exc).__name__},
            )
            return FAILED


async def run_daily(pool: Pool, job: DailyJob, clock: Clock, *, batch: int = BATCH) -> JobReport:
    """Run `job` for the clock's business day over every candidate loan."""
    day, now = clock.today(), clock.now()
    report = JobReport(job.name, day)
    after_id, seen = 0, 0
    sql = _candidates_sql(job)
    while seen < MAX_LOANS_PER_RUN:
        async with pool.acquire() as conn:
            rows = await conn.fetch(sql, job.name, day, after_id, batch, *job.params)
        if not rows:
            break
        for row in rows:
            after_id = row["id"]
            report.count(await _run_one(pool, job, after_id, day, now))
        seen += len(rows)
    return report


class JobScheduler:
    """Runs the daily jobs on every tick (`interval_s`); safe on any number of instances."""

    def __init__(
        self, pool: Pool, jobs: Sequence[DailyJob], clock: Clock, *, interval_s: float
    ) -> None:
        self.pool = pool
        self.jobs = list(jobs)
        self.clock = clock
        self.interval_s = interval_s

    async def run_once(self) -> list[JobReport]:
        reports = []
        for job in self.jobs:
            report = await run_daily(self.pool, job, self.clock)
            if report.done or report.failed:
                log.info(
                    "loan job ran",
                    extra={
                        "job": job.name,
                        "day": str(report.day),
                        "done": report.done,
                        "failed": report.failed,
                    },
                )
            reports.append(report)
        return reports

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database may be away; the next tick tries again.
                log.exception("loan jobs tick failed")
            await asyncio.sleep(self.interval_s)
