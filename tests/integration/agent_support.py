"""Test support for agents against the real banking core: agents and customers in PostgreSQL,
a circular zone assigned to an agent (or permitted at all hours, on an agent runtime), fixes at a
distance from its centre, and the ledger invariants checked after tests that move money."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import Any

import asyncpg
from redis.asyncio import Redis

from config.settings import Settings
from core import geofences
from core.agents import register_agent
from core.crypto import FieldCipher
from core.customers import register_customer
from core.devices import EventRow
from core.fees import seed_demo_tariffs
from core.ledger import check_ledger, ensure_system_accounts
from core.transfers import deposit, float_topup
from gateway import event_spool
from gateway.agents import AgentRuntime, PgSink, build_runtime
from geofence.fences import GEOD
from geofence.fix import Fix
from menus.device import FixInput
from tests.helpers import new_msisdn

CENTRE = (36.82, -1.28)  # lon, lat: central Nairobi
# A polygon fence as the admin API takes it: a square around Gikomba market.
SQUARE: dict[str, Any] = {
    "type": "Feature",
    "geometry": {
        "type": "Polygon",
        "coordinates": [[[36.80, -1.30], [36.82, -1.30], [36.82, -1.28], [36.80, -1.28],
                         [36.80, -1.30]]],
    },
    "properties": {"name": "Gikomba market"},
}  # fmt: skip
RADIUS_M = 300
AGENT_PIN = "4826"
CUSTOMER_PIN = "2580"

ALWAYS = {
    "timezone": "UTC",
    "windows": [
        {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00",
         "end": "12:00"},
        {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "12:00",
         "end": "00:00"},
    ],
}  # fmt: skip


def new_code() -> str:
    return "AG" + secrets.token_hex(4).upper()


def new_national_id() -> str:
    return "ID" + secrets.token_hex(5).upper()


def at(metres: float) -> tuple[float, float]:
    """(lon, lat) `metres` north-east of the centre."""
    lon, lat, _ = GEOD.fwd(CENTRE[0], CENTRE[1], 45, metres)
    return lon, lat


def native(metres: float, ts: float, acc: float = 8, **extra: Any) -> dict[str, Any]:
    lon, lat = at(metres)
    return {"lat": lat, "lon": lon, "ts": ts, "acc": acc, **extra}


async def prepare_core(pool: asyncpg.Pool) -> None:
    """KES system accounts and the demo tariff bands (idempotent)."""
    await ensure_system_accounts(pool, "KES")
    await seed_demo_tariffs(pool, "KES")


async def make_agent(pool: asyncpg.Pool, float_minor: int = 0) -> str:
    code = new_code()
    await register_agent(
        pool, code=code, msisdn=new_msisdn(), name="Test Agent", pin=AGENT_PIN, pin_rounds=4,
        actor="test",
    )  # fmt: skip
    if float_minor:
        await float_topup(
            pool, agent_code=code, amount_minor=float_minor,
            idempotency_key=f"float-{secrets.token_hex(8)}", channel="test",
        )  # fmt: skip
    return code


async def make_customer(pool: asyncpg.Pool, cipher: FieldCipher, balance_minor: int = 0) -> str:
    msisdn = new_msisdn()
    await register_customer(
        pool, cipher, msisdn=msisdn, first_name="Test", last_name="Customer",
        national_id=new_national_id(), pin=CUSTOMER_PIN, channel="test", pin_rounds=4,
    )  # fmt: skip
    if balance_minor:
        await deposit(
            pool, msisdn=msisdn, amount_minor=balance_minor,
            idempotency_key=f"seed-{secrets.token_hex(8)}", channel="test",
        )  # fmt: skip
    return msisdn


async def assign_circle(pool: asyncpg.Pool, agent: str, radius_m: float = RADIUS_M) -> int:
    """A circle around CENTRE, assigned to `agent`; the fence id."""
    async with pool.acquire() as conn:
        stored = await geofences.create_fence(
            conn,
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(CENTRE)},
             "properties": {"radius_m": radius_m}},
        )  # fmt: skip
        await geofences.assign_fences(conn, agent, [stored.fence.id], None)
    return stored.fence.id


async def assert_ledger_ok(pool: asyncpg.Pool) -> None:
    report = await check_ledger(pool)
    assert report.ok, "\n".join(report.lines())


async def outbox_rows(pool: asyncpg.Pool, agent: str) -> list[dict[str, Any]]:
    """The breach alerts queued about `agent` (in any language: the code is in each)."""
    rows = await pool.fetch(
        "SELECT id, channel, recipient, kind, body, status, language FROM outbox "
        "WHERE kind = 'agent_breach' AND body LIKE $1 ORDER BY id",
        f"% {agent} %",
    )
    return [dict(r) for r in rows]


async def zoned_agent(
    settings: Settings, redis: Redis, pool: asyncpg.Pool, **overrides: Any
) -> tuple[AgentRuntime, str, int]:
    """An agent runtime on `settings` with `overrides` (not connected to a broker: fixes go in
    through its channel) and a new agent whose circle around CENTRE is its zone at all hours;
    the runtime's catalogue already knows the fence. Returns the runtime, agent and fence id."""
    assert settings.secret_key is not None
    runtime = build_runtime(
        replace(settings, **overrides), redis, pool, FieldCipher(settings.secret_key)
    )
    agent = await make_agent(pool)
    fence_id = await assign_circle(pool, agent)
    async with pool.acquire() as conn:
        await geofences.assign_fences(conn, agent, [fence_id], ALWAYS)
    await runtime.reload_catalog()
    return runtime, agent, fence_id


async def walk_out(runtime: AgentRuntime, agent: str) -> list[EventRow]:
    """Inside, then outside long enough for an exit and a breach; the events recorded."""
    now = time.time()
    events: list[EventRow] = []
    for n, metres in enumerate([20, 800, 850, 900]):
        lon, lat = at(metres)
        fix = Fix(lat=lat, lon=lon, ts=now - 40 + n, accuracy_m=10)
        events += (await runtime.channel.ingest([FixInput(agent, fix, now)])).events
    return events


async def spooled(redis: Redis, sink: PgSink) -> list[EventRow]:
    """The events in the sink's spool, oldest first (every instance's)."""
    assert sink.spool is not None
    entries = await redis.xrange(sink.spool.key)
    return [event_spool.decode(fields) for _, fields in entries]
