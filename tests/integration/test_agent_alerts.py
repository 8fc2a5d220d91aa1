"""Breach alerts reach the admins through the core's outbox: queued with the breach event (one
message per recipient), delivered by the outbox dispatcher, and not at all when turned off."""

from __future__ import annotations

import time

import asyncpg
import pytest
from redis.asyncio import Redis

from config.settings import Settings
from core.devices import BreachAlerts, EventRow, breach_text, insert_events
from core.outbox import Dispatcher, OutboundMessage
from menus.gsm import is_gsm7
from tests.integration.agent_support import make_agent, outbox_rows, walk_out, zoned_agent


class Capture:
    def __init__(self) -> None:
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> str | None:
        self.sent.append(message)
        return f"cap-{message.id}"


async def test_breach_alerts_go_to_each_admin_through_the_outbox(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    runtime, agent, fence_id = await zoned_agent(
        settings,
        redis,
        pg_pool,
        agent_alert_channel="email",
        agent_alert_recipients=("ops@bank.test", "risk"),
    )
    events = await walk_out(runtime, agent)
    assert [e.kind for e in events] == ["online", "enter", "exit", "breach"]
    rows = await outbox_rows(pg_pool, agent)
    assert [(r["channel"], r["recipient"], r["status"]) for r in rows] == [
        ("email", "ops@bank.test", "pending"), ("email", "risk", "pending"),
    ]  # fmt: skip
    body = rows[0]["body"]
    assert f"geofence {fence_id} (version 1)" in body and "outside its permitted zone" in body
    stored = await pg_pool.fetchval(
        "SELECT count(*) FROM agent_events WHERE agent_code = $1 AND kind = 'breach'", agent
    )
    assert stored == 1

    # The dispatcher delivers them like any other outbox message.
    capture = Capture()
    dispatcher = Dispatcher(pg_pool, {"email": capture})
    deadline = time.monotonic() + 10
    while len([m for m in capture.sent if m.kind == "agent_breach" and agent in m.body]) < 2:
        assert time.monotonic() < deadline, capture.sent
        await dispatcher.dispatch_once()
    assert {r["status"] for r in await outbox_rows(pg_pool, agent)} == {"sent"}


async def test_no_alerts_when_turned_off(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> None:
    runtime, agent, _ = await zoned_agent(settings, redis, pg_pool, agent_alert_channel=None)
    assert [e.kind for e in await walk_out(runtime, agent)][-1] == "breach"
    assert await outbox_rows(pg_pool, agent) == []


async def test_only_breaches_alert_and_the_text_reads_well(pg_pool: asyncpg.Pool) -> None:
    agent = await make_agent(pg_pool)
    now = time.time()
    quiet = [EventRow(agent, "online", now), EventRow(agent, "exit", now, now, None, None)]
    async with pg_pool.acquire() as conn:
        assert len(await insert_events(conn, quiet, BreachAlerts("log", ("admins",)))) == 2
    assert await outbox_rows(pg_pool, agent) == []
    breach = EventRow(
        agent, "breach", now, 1_767_225_600.0, 7, 3,
        {"fix": {"lat": -1.28, "lon": 36.82, "acc": None}, "decision": {"distance_m": 412.4}},
    )  # fmt: skip
    assert breach_text(breach) == (
        f"Agent {agent} is outside its permitted zone during its working hours (breach at "
        "2026-01-01 00:00:00 UTC); last fix -1.28000,36.82000 (accuracy unknown), 412 m from "
        "geofence 7 (version 3)."
    )


async def test_events_stored_again_are_stored_once_and_alert_once(pg_pool: asyncpg.Pool) -> None:
    """A write tried again (its COMMIT's answer lost, or from the sink's backlog) carries the
    same event ids: nothing is stored twice and the breach's alert is queued once; a new event
    in the same batch is stored and alerts as ever."""
    agent = await make_agent(pg_pool)
    now = time.time()
    alerts = BreachAlerts("log", ("admins", "ops"))
    first = [EventRow(agent, "exit", now, now), EventRow(agent, "breach", now, now, 7, 1)]
    later = EventRow(agent, "breach", now + 60, now + 60, 7, 1)
    async with pg_pool.acquire() as conn:
        assert len(await insert_events(conn, first, alerts)) == 2
        assert await insert_events(conn, first, alerts) == []
        assert len(await insert_events(conn, [*first, later], alerts)) == 1
    stored = await pg_pool.fetch(
        "SELECT kind, event_id FROM agent_events WHERE agent_code = $1 ORDER BY id", agent
    )
    assert [(r["kind"], r["event_id"]) for r in stored] == [
        ("exit", first[0].event_id), ("breach", first[1].event_id), ("breach", later.event_id),
    ]  # fmt: skip
    assert len(await outbox_rows(pg_pool, agent)) == 4  # two breaches, two recipients each


WORDING = {
    "sw": ("Wakala", "kutoka eneo {} (toleo 1)"),
    "fr": ("L'agent", "de la zone {} (version 1)"),
}


@pytest.mark.parametrize("language", sorted(WORDING))
async def test_breach_alerts_in_the_deployment_language(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool, language: str
) -> None:
    opening, fence_words = WORDING[language]
    runtime, agent, fence_id = await zoned_agent(
        settings,
        redis,
        pg_pool,
        agent_alert_channel="sms",
        agent_alert_recipients=("+254700000009",),
        agent_alert_language=language,
    )
    assert [e.kind for e in await walk_out(runtime, agent)][-1] == "breach"
    [row] = await outbox_rows(pg_pool, agent)
    assert (row["channel"], row["language"]) == ("sms", language)
    assert row["body"].startswith(f"{opening} {agent} ")
    assert fence_words.format(fence_id) in row["body"]
    assert is_gsm7(row["body"])  # one SMS alphabet, no UCS-2
