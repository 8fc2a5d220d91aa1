"""Loan disbursement benchmark: disbursements/s through one currency's loan fund, next to a
floor measured in the same run on the same database.

    .venv/bin/python bench/loans.py [--seconds 3] [--rounds 3] [--customers 20000] [--keep]

A fund lends one disbursement at a time: `ledger_loan_disburse` takes a transaction-level
advisory lock per currency before it reads the fund's balance (so two disbursements cannot
both spend its last money), and the lock is held until the caller commits. This measures what
that costs, at 1, 8 and 32 workers:

- floor: `core.transfers.deposit` (settlement -> a wallet: the same shape of transfer, one
  round trip, no lock of its own);
- ledger: `core.transfers.disburse_loan` alone (loan fund -> a wallet; the lock is held for
  the one statement, which commits at once);
- service: `LoanService.apply`, approved at once and disbursed (application, loan, schedule,
  the money and the notice; the lock is held from the ledger call to the commit of the
  disbursing transaction, a few more statements).

Each cell alternates floor and product `--rounds` times and reports the median round. The
ledger check must pass at the end. Uses DATABASE_URL's server when set (a fresh database on
it, dropped afterwards), else an embedded PostgreSQL under ./var/bench.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import audit_ledger, scratch_database
from config.settings import Settings
from core.clock import SystemClock
from core.ledger import ensure_system_accounts
from core.loans.core_ledger import CoreCustomerDirectory, CoreLoanLedger, OutboxNotifier
from core.loans.products import Product
from core.loans.scoring import Score, ScoringFacts
from core.transfers import deposit, disburse_loan, fund_loans
from gateway import db as dbmod
from menus.loans.service import LoanService

AMOUNT_MINOR = 1_000_00
WORKER_COUNTS = (1, 8, 32)
PRODUCT_CODE = "BENCH30"


@dataclass
class Cell:
    per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


class ApproveAll:
    """The bench measures disbursement, not scoring: every application is within limits."""

    name = "bench"

    async def score(self, facts: ScoringFacts, product: Product) -> Score:
        return Score(1000, 10**12)


def msisdn(i: int) -> str:
    return f"+2547{i:08d}"


async def setup(pool: asyncpg.Pool, customers: int, service: LoanService) -> None:
    print(f"setup: {customers} customers, a funded loan fund, product {PRODUCT_CODE}", flush=True)
    await ensure_system_accounts(pool, "KES")
    await pool.execute(
        "INSERT INTO customers (msisdn, first_name, last_name, national_id_enc, national_id_hash,"
        " tier, pin_hash, created_at) SELECT '+2547' || lpad(i::text, 8, '0'), 'Bench', 'User',"
        " 'x', 'bench' || i, 'Business', 'x', now() - interval '400 days'"
        " FROM generate_series(1, $1) AS i",
        customers,
    )
    await pool.execute(
        "INSERT INTO accounts (kind, currency, customer_id) SELECT 'wallet', 'KES', id "
        "FROM customers"
    )
    await fund_loans(
        pool, amount_minor=10**13, idempotency_key="bench-fund", channel="bench", currency="KES"
    )
    await service.create_product(
        pool,
        {
            "code": PRODUCT_CODE,
            "name": "Bench 30 days",
            "currency": "KES",
            "principal_min_minor": 100_00,
            "principal_max_minor": 2_000_00,
            "interest_rate_percent": "5",
            "interest_method": "flat",
            "amortization": "equal_installments",
            "repayments": 1,
            "frequency": "days",
            "repayment_every": 30,
            "min_account_age_days": 0,
            "auto_approve_max_minor": 2_000_00,
            "tiers": ["business"],
        },
        "bench",
    )
    await pool.execute("VACUUM ANALYZE")


Op = Callable[[asyncpg.Pool, int], Awaitable[None]]


async def floor_op(pool: asyncpg.Pool, i: int) -> None:
    await deposit(
        pool,
        msisdn=msisdn(i),
        amount_minor=AMOUNT_MINOR,
        idempotency_key=f"floor-{uuid.uuid4().hex}",
        channel="bench",
    )


async def ledger_op(pool: asyncpg.Pool, i: int) -> None:
    await disburse_loan(
        pool,
        msisdn=msisdn(i),
        amount_minor=AMOUNT_MINOR,
        idempotency_key=f"disb-{uuid.uuid4().hex}",
        channel="bench",
        loan_reference="loan:bench",
        currency="KES",
    )


def service_op(service: LoanService) -> Op:
    async def op(pool: asyncpg.Pool, i: int) -> None:
        result = await service.apply(
            pool,
            msisdn=msisdn(i),
            product_code=PRODUCT_CODE,
            amount_minor=AMOUNT_MINOR,
            channel="bench",
            idempotency_key=uuid.uuid4().hex,
        )
        if result.loan is None:
            raise RuntimeError(f"not disbursed: {result.decision.code}")

    return op


async def run_cell(pool: asyncpg.Pool, op: Op, workers: int, seconds: float, numbers: Any) -> Cell:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await op(pool, next(numbers))
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    if not latencies:
        return Cell(0.0, 0.0, 0.0, errors)
    return Cell(
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        errors,
    )


def median(cells: list[Cell]) -> Cell:
    return sorted(cells, key=lambda c: c.per_s)[len(cells) // 2]


async def bench(url: str, seconds: float, customers: int, rounds: int) -> int:
    # The gateway's own pool setting: the caps count local days, as in production.
    pool = await dbmod.make_pool(
        url, min_size=2, max_size=max(WORKER_COUNTS) + 2, limits_tz=Settings().limits_timezone
    )
    service = LoanService(
        clock=SystemClock(),
        scorer=ApproveAll(),
        ledger=CoreLoanLedger(),
        customers=CoreCustomerDirectory(),
        notifier=OutboxNotifier(),
    )
    try:
        await setup(pool, customers, service)
        # The service lends each customer once (one open loan): a fresh number every apply.
        fresh = itertools.count(1)
        anyone = itertools.cycle(range(1, customers + 1))
        products: list[tuple[str, Op, Any]] = [
            ("ledger", ledger_op, anyone),
            ("service", service_op(service), fresh),
        ]
        for label, op, numbers in products:
            for workers in WORKER_COUNTS:
                floors, cores = [], []
                for _ in range(rounds):
                    floors.append(await run_cell(pool, floor_op, workers, seconds, anyone))
                    cores.append(await run_cell(pool, op, workers, seconds, numbers))
                floor, core = median(floors), median(cores)
                ratio = core.per_s / floor.per_s if floor.per_s else 0.0
                print(
                    f"{label:8} {workers:3} workers  floor (deposit) {floor.per_s:7.0f}/s "
                    f"(p50 {floor.p50_ms:5.2f} p99 {floor.p99_ms:6.2f} ms)  disbursements "
                    f"{core.per_s:7.0f}/s (p50 {core.p50_ms:5.2f} p99 {core.p99_ms:6.2f} ms)  "
                    f"ratio {ratio:4.2f}x  errors {floor.errors}/{core.errors}",
                    flush=True,
                )
        used = next(fresh) - 1
        if used > customers:
            print(f"note: the service cells needed {used} customers; raise --customers")
        report = await audit_ledger(pool)
        print("ledger check:", "ok" if report.ok else "BREACH")
        for line in report.lines():
            print("  " + line)
        return 0 if report.ok else 1
    finally:
        await pool.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations per cell")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    async with scratch_database("bench_loans", keep=args.keep) as url:
        return await bench(url, args.seconds, args.customers, args.rounds)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
