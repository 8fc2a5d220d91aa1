"""Per-step analytics: screen, latency and outcome of every USSD step, in PostgreSQL.

A step never waits for the database: `record` puts a row on a bounded queue and a background
task writes the queue in batches with COPY (one round trip per batch). When the queue is full
the row is dropped and counted (the Prometheus counters still see it), because a slow analytics
table must never slow a USSD answer. Inputs typed on secret screens are stored as `****`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from core.tasks import stop_tasks

log = logging.getLogger("menus.analytics")

QUEUE_ROWS = 20_000
# asyncpg encodes a COPY's rows on the event loop, in one go: 1,000 rows held every USSD
# answer of this process for ~15 ms, twice a second at 3,000 steps/s, which showed in the p99.
# 200 rows every 0.1 s keeps each hold to a few ms (bench/ussd.py: the gateway's p99 at half
# the floor's rate 12 ms median against 51 ms) for a few more COPYs per second.
BATCH_ROWS = 200
FLUSH_INTERVAL_S = 0.1
WRITE_TIMEOUT_S = 10.0
MASK = "****"
MAX_INPUT_CHARS = 64

COLUMNS = (
    "at",
    "provider",
    "session_id",
    "msisdn",
    "menu",
    "menu_version",
    "step",
    "screen",
    "outcome",
    "latency_ms",
    "input",
    "language",
)


# Read-only by convention, not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (4x the cost), and several of these are built on every USSD request.
@dataclass(slots=True)
class StepRecord:
    provider: str
    session_id: str
    msisdn: str
    menu: str
    menu_version: int
    step: int
    screen: str
    outcome: str
    latency_ms: float
    input: str | None
    language: str
    at: datetime

    def row(self) -> tuple[object, ...]:
        return (
            self.at,
            self.provider[:32],
            self.session_id[:160],
            self.msisdn[:16],
            self.menu[:64],
            self.menu_version,
            self.step,
            self.screen[:64],
            self.outcome[:48],
            self.latency_ms,
            None if self.input is None else self.input[:MAX_INPUT_CHARS],
            self.language[:3],
        )


def masked(value: str | None, secret: bool) -> str | None:
    if value is None:
        return None
    return MASK if secret else value[:MAX_INPUT_CHARS]


def now() -> datetime:
    return datetime.now(UTC)


class StepLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queue: asyncio.Queue[StepRecord] = asyncio.Queue(maxsize=QUEUE_ROWS)
        self.dropped = 0
        self.written = 0
        self._task: asyncio.Task[None] | None = None
        self._held: list[StepRecord] = []  # taken off the queue, not yet written

    def record(self, record: StepRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ussd-analytics")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task], "ussd analytics writer")
        await self.flush()

    async def _run(self) -> None:
        while True:
            self._held = [await self.queue.get()]
            await asyncio.sleep(FLUSH_INTERVAL_S)  # gather a batch: one COPY for many steps
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued (in batches), starting with what a stopped writer held:
        a row taken off the queue stays held until its COPY is done."""
        while True:
            while len(self._held) < BATCH_ROWS and not self.queue.empty():
                self._held.append(self.queue.get_nowait())
            if not self._held:
                return
            await self._write(self._held)
            self._held = []

    async def _write(self, batch: list[StepRecord]) -> None:
        try:
            async with self.pool.acquire(timeout=WRITE_TIMEOUT_S) as conn:
                await conn.copy_records_to_table(
                    "ussd_steps",
                    records=[r.row() for r in batch],
                    columns=COLUMNS,
                    timeout=WRITE_TIMEOUT_S,
                )
            self.written += len(batch)
        except (
            OSError,
            asyncpg.PostgresError,
            TimeoutError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ):
            self.dropped += len(batch)
            log.warning("analytics batch dropped", extra={"rows": len(batch)})
