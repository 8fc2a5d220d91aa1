"""Ledger benchmark: transfers/s of the banking core's money path next to a floor measured in
the same run on the same database.

    .venv/bin/python bench/ledger.py [--seconds 3] [--rounds 3] [--accounts 2000] [--keep]

Floor: raw asyncpg doing BEGIN, two conditional UPDATEs (in id order), one INSERT, COMMIT on a
bare accounts/transfers pair (five round trips). Product: core.transfers (one round trip into
the PL/pgSQL money path: idempotency key, limits, fee, entries, receipts in the outbox).
Cells: 1, 8 and 32 workers; "uniform" (random sender and recipient among --accounts wallets)
and "hot" (every transfer credits one destination: the floor's account 1, and for the product
one agent's float via cash-out, the hot-account case the sharding is for). Floor and product
alternate within each cell (--rounds times; the median round of each is reported). The
ledger check must pass at the end. With the server on this machine, each cell also prints the
CPU per transfer of the PostgreSQL backends (from /proc) and of this process: steadier than
transfers/s when other work shares the machine.

Uses DATABASE_URL's server when set (a fresh database on it, dropped afterwards), else an
embedded PostgreSQL under ./var/bench.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch import audit_ledger, scratch_database
from config.settings import Settings
from core.agents import register_agent
from core.fees import seed_demo_tariffs
from core.ledger import ensure_system_accounts
from core.transfers import cash_out, deposit, float_topup, send_money
from gateway import db as dbmod

AMOUNT_MINOR = 200_00  # KES 200: a P2P fee of 7 and a cash-out fee of 29 in the demo tariff
START_BALANCE_MINOR = 1_000_000_00
AGENT = "BENCH01"
WORKER_COUNTS = (1, 8, 32)

FLOOR_SCHEMA = """
CREATE TABLE bench_floor_accounts (id bigint PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE bench_floor_transfers (id bigserial PRIMARY KEY, src bigint NOT NULL
    REFERENCES bench_floor_accounts, dst bigint NOT NULL REFERENCES bench_floor_accounts,
    amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""
DEBIT = "UPDATE bench_floor_accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2"
CREDIT = "UPDATE bench_floor_accounts SET balance = balance + $2 WHERE id = $1"
INSERT = "INSERT INTO bench_floor_transfers (src, dst, amount) VALUES ($1, $2, $3)"


@dataclass
class Cell:
    tps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_us: float | None = None  # PostgreSQL backends' CPU per transfer (local server only)
    client_us: float = 0.0  # this process's CPU per transfer


def backend_cpu_s(pid: int) -> float | None:
    """A local backend's CPU time so far (ns resolution, /proc/PID/schedstat), or None when the
    server is elsewhere or not readable. CPU per transfer is steadier than transfers/s on a
    machine shared with other work, whose load moves throughput by tens of percent."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def msisdn(i: int) -> str:
    return f"+2547{i:08d}"


async def setup(pool: asyncpg.Pool, accounts: int) -> None:
    print(f"setup: {accounts} wallets, floor tables, an agent with float", flush=True)
    await ensure_system_accounts(pool, "KES")
    await seed_demo_tariffs(pool, "KES")
    await pool.execute(
        "INSERT INTO customers (msisdn, first_name, last_name, national_id_enc, national_id_hash,"
        " tier, pin_hash) SELECT '+2547' || lpad(i::text, 8, '0'), 'Bench', 'User', 'x', "
        "'bench' || i, 'Business', 'x' FROM generate_series(1, $1) AS i",
        accounts,
    )
    await pool.execute(
        "INSERT INTO accounts (kind, currency, customer_id) SELECT 'wallet', 'KES', id "
        "FROM customers"
    )
    sem = asyncio.Semaphore(16)

    async def fund(i: int) -> None:
        async with sem:
            await deposit(
                pool,
                msisdn=msisdn(i),
                amount_minor=START_BALANCE_MINOR,
                idempotency_key=f"bench-fund-{i}",
                channel="bench",
            )

    await asyncio.gather(*(fund(i) for i in range(1, accounts + 1)))
    await register_agent(
        pool,
        code=AGENT,
        msisdn="+254799999999",
        name="Bench agent",
        pin="4826",
        pin_rounds=4,
        actor="bench",
    )
    await float_topup(
        pool,
        agent_code=AGENT,
        amount_minor=START_BALANCE_MINOR,
        idempotency_key="bench-float",
        channel="bench",
    )
    await pool.execute(FLOOR_SCHEMA)
    await pool.execute(
        "INSERT INTO bench_floor_accounts SELECT i, 1000000000 FROM generate_series(1, $1) i",
        accounts,
    )
    await pool.execute("VACUUM ANALYZE")


def pick(accounts: int, hot: bool) -> tuple[int, int]:
    src = random.randint(2, accounts)
    dst = 1 if hot else random.randint(2, accounts)
    while dst == src:
        dst = random.randint(2, accounts)
    return src, dst


Op = Callable[[asyncpg.Connection, int, int], Awaitable[object]]


async def floor_op(conn: asyncpg.Connection, src: int, dst: int) -> None:
    async with conn.transaction():
        if src < dst:
            await conn.execute(DEBIT, src, 1)
            await conn.execute(CREDIT, dst, 1)
        else:
            await conn.execute(CREDIT, dst, 1)
            await conn.execute(DEBIT, src, 1)
        await conn.execute(INSERT, src, dst, 1)


async def p2p_op(conn: asyncpg.Connection, src: int, dst: int) -> None:
    await send_money(
        conn,
        sender=msisdn(src),
        recipient=msisdn(dst),
        amount_minor=AMOUNT_MINOR,
        idempotency_key=uuid.uuid4().hex,
        channel="bench",
    )


async def cash_out_op(conn: asyncpg.Connection, src: int, dst: int) -> None:
    await cash_out(
        conn,
        agent_code=AGENT,
        msisdn=msisdn(src),
        amount_minor=AMOUNT_MINOR,
        idempotency_key=uuid.uuid4().hex,
        channel="bench",
    )


async def run_cell(
    pool: asyncpg.Pool, op: Op, *, workers: int, hot: bool, seconds: float, accounts: int
) -> Cell:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    pids: list[int] = []

    async def worker() -> None:
        nonlocal errors
        async with pool.acquire() as conn:
            pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
            if len(pids) == workers:
                all_connected.set()
            await started_all.wait()
            while time.perf_counter() < stop_at:
                src, dst = pick(accounts, hot)
                started = time.perf_counter()
                try:
                    await op(conn, src, dst)
                except Exception as exc:  # counted and shown: a benchmark must not hide them
                    errors += 1
                    if errors <= 3:
                        print(f"  error: {exc!r}", flush=True)
                    continue
                latencies.append(time.perf_counter() - started)

    all_connected, started_all = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await all_connected.wait()  # CPU is counted from here, connection set-up excluded
    cpu_before = [backend_cpu_s(p) for p in pids]
    client_before = time.process_time()
    began = time.perf_counter()
    stop_at = began + seconds
    started_all.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    client = time.process_time() - client_before
    cpu_after = [backend_cpu_s(p) for p in pids]
    latencies.sort()
    if not latencies:
        return Cell(0.0, 0.0, 0.0, errors)
    n = len(latencies)
    server = None
    if None not in cpu_before and None not in cpu_after:
        server = sum(a - b for a, b in zip(cpu_after, cpu_before, strict=True)) / n * 1e6  # type: ignore[operator]
    return Cell(
        n / elapsed,
        statistics.median(latencies) * 1000,
        latencies[min(n - 1, int(n * 0.99))] * 1000,
        errors,
        server,
        client / n * 1e6,
    )


async def measure(
    pool: asyncpg.Pool,
    product: Op,
    *,
    workers: int,
    hot: bool,
    seconds: float,
    accounts: int,
    rounds: int,
) -> tuple[Cell, Cell]:
    """Floor and product alternated `rounds` times (a burst of load elsewhere on a shared
    machine then hits both); each side's median round."""
    shape = {"workers": workers, "hot": hot, "accounts": accounts}
    await run_cell(pool, floor_op, seconds=1.0, **shape)  # warm-up
    await run_cell(pool, product, seconds=1.0, **shape)
    floors, cores = [], []
    for _ in range(rounds):
        floors.append(await run_cell(pool, floor_op, seconds=seconds, **shape))
        cores.append(await run_cell(pool, product, seconds=seconds, **shape))

    def median(cells: list[Cell]) -> Cell:
        return sorted(cells, key=lambda c: c.tps)[len(cells) // 2]

    return median(floors), median(cores)


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


async def bench(url: str, seconds: float, accounts: int, rounds: int) -> int:
    # The gateway's own pool setting: the caps count local days, as in production.
    pool = await dbmod.make_pool(
        url, min_size=2, max_size=max(WORKER_COUNTS), limits_tz=Settings().limits_timezone
    )
    try:
        await setup(pool, accounts)
        rows = []
        for dist in ("uniform", "hot"):
            product = p2p_op if dist == "uniform" else cash_out_op
            for workers in WORKER_COUNTS:
                floor, core = await measure(
                    pool,
                    product,
                    workers=workers,
                    hot=dist == "hot",
                    seconds=seconds,
                    accounts=accounts,
                    rounds=rounds,
                )
                ratio = core.tps / floor.tps if floor.tps else 0.0
                rows.append((dist, workers, floor, core, ratio))
                print(
                    f"{dist:8} {workers:3} workers  floor {floor.tps:7.0f}/s "
                    f"(p50 {floor.p50_ms:5.2f} p99 {floor.p99_ms:6.2f} ms)  core "
                    f"{core.tps:7.0f}/s (p50 {core.p50_ms:5.2f} p99 {core.p99_ms:6.2f} ms)  "
                    f"ratio {ratio:4.2f}x  errors {floor.errors}/{core.errors}",
                    flush=True,
                )
                print(
                    f"{'':21}CPU per transfer, server/client: floor {_us(floor.server_us)}/"
                    f"{floor.client_us:.0f} us, core {_us(core.server_us)}/{core.client_us:.0f} us",
                    flush=True,
                )
        hot = {w: c.tps for d, w, _, c, _ in rows if d == "hot"}
        uniform8 = next(r for d, w, _, _, r in rows if d == "uniform" and w == 8)
        print(f"uniform, 8 workers: core/floor = {uniform8:.2f}x (target >= 1.0x)")
        print(
            f"hot destination: core 32 workers / 8 workers = {hot[32] / hot[8]:.2f}x "
            "(target >= 1.0x)"
        )
        report = await audit_ledger(pool)
        print("ledger check:", "ok" if report.ok else "BREACH")
        for line in report.lines():
            print("  " + line)
        return 0 if report.ok else 1
    finally:
        await pool.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations per cell")
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    async with scratch_database("bench_ledger", keep=args.keep) as url:
        return await bench(url, args.seconds, args.accounts, args.rounds)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
