"""The admin event lists in the order events happened (`at`, ties by id), paged by an opaque
cursor on (at, id) that stays right while late events are written: events deferred while
PostgreSQL was away (the spool) are stored after later ones, with higher ids.

Events are stored as the spool's writer stores them (core.devices.insert_events), and once by
the writer itself; each test's times are a window of its own, far in the past, so the global
list can be walked over it."""

from __future__ import annotations

import base64
import random
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from core import devices
from core.devices import EventRow
from gateway.admin.geofences import event_cursor
from gateway.agents import PgSink, spool_key
from gateway.event_spool import EventSpool, encode
from tests.conftest import unique
from tests.helpers import assert_error, auth, eventually
from tests.integration.test_agent_event_spool import writing
from tests.integration.test_agents_api import agent, token_for

BIG_ID = 2**62


@pytest.fixture(scope="module")
async def admin(app_client: TestClient) -> dict[str, str]:
    return auth(await token_for(app_client))


def window() -> float:
    """A start time no other test's events share: a random second of the 1990s."""
    return 631_152_000.0 + random.randrange(300_000_000)


async def store(pg_pool: asyncpg.Pool, events: Sequence[EventRow]) -> dict[str, int]:
    """Store `events` as the writer does; each one's row id by its `details["n"]` label."""
    async with pg_pool.acquire() as conn:
        await devices.insert_events(conn, events)
        rows = await conn.fetch(
            "SELECT id, details->>'n' AS n FROM agent_events WHERE event_id = ANY($1::uuid[])",
            [e.event_id for e in events],
        )
    return {r["n"]: r["id"] for r in rows}


def ev(agent: str, at: float, label: str) -> EventRow:
    return EventRow(agent, "enter", at, details={"n": label})


async def page(
    client: TestClient, headers: dict[str, str], url: str, **query: str
) -> dict[str, Any]:
    resp = await client.get(url, params=query, headers=headers)
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    assert set(body) == {"events", "next_cursor", "next_before_id"}
    return body


def labels(body: dict[str, Any]) -> list[str]:
    return [e["details"]["n"] for e in body["events"]]


async def test_pages_follow_event_time_while_late_events_arrive(
    app_client: TestClient,
    admin: dict[str, str],
    pg_pool: asyncpg.Pool,
) -> None:
    """A walk two events a page. After its first page, late events arrive (higher ids): one
    between the pages read and the rest, one tying with an event not read yet, one older than
    all, one in the part already read. The walk goes on with each of them in its place by
    time, ties by id, each event once, nothing skipped; the one already passed is not shown
    again (a walk from the top has it). `before_id` pages the same way."""
    code = await agent(app_client)
    base = window()
    ids = await store(
        pg_pool,
        [ev(code, base + t, label) for t, label in
         ((0, "t0"), (1, "t1"), (2, "t2"), (3, "t3a"), (3, "t3b"), (4, "t4"), (5, "t5"))],
    )  # fmt: skip
    assert ids["t3a"] < ids["t3b"]  # the tie goes by id: t3b first, newest first
    url = f"/api/v1/agents/{code}/events"
    first = await page(app_client, admin, url, limit="2")
    assert labels(first) == ["t5", "t4"]
    assert first["next_before_id"] == ids["t4"] and first["next_cursor"]

    late = await store(
        pg_pool,
        [ev(code, base + 3.5, "late3.5"), ev(code, base + 4.5, "late4.5"),
         ev(code, base - 1, "late-1"), ev(code, base + 3, "late3")],
    )  # fmt: skip
    assert min(late.values()) > max(ids.values())  # written after: ids say nothing of time

    expected = ["late3.5", "late3", "t3b", "t3a", "t2", "t1", "t0", "late-1"]
    for param, value in (("cursor", first["next_cursor"]), ("before_id", first["next_before_id"])):
        walked: list[str] = []
        body = await page(app_client, admin, url, limit="2", **{param: str(value)})
        while True:
            walked += labels(body)
            nxt = body["next_cursor" if param == "cursor" else "next_before_id"]
            if nxt is None:
                break
            assert len(body["events"]) == 2  # only a full page has a next one
            body = await page(app_client, admin, url, limit="2", **{param: str(nxt)})
        assert walked == expected, param

    top = await page(app_client, admin, url, limit="20")
    assert labels(top) == ["t5", "late4.5", "t4", *expected]
    assert top["next_cursor"] is None and top["next_before_id"] is None
    at = [datetime.fromisoformat(e["at"]) for e in top["events"]]
    assert at == sorted(at, reverse=True)


async def test_the_global_list_is_in_event_order_across_agents(
    app_client: TestClient,
    admin: dict[str, str],
    pg_pool: asyncpg.Pool,
) -> None:
    """Two agents' events interleaved by time, the later ones written first: the global list
    walked from a position just after the window gives them by time, then id, over pages."""
    one, two = await agent(app_client), await agent(app_client)
    base = window()
    await store(pg_pool, [ev(two, base + 2, "b2"), ev(one, base + 3, "a3")])
    await store(pg_pool, [ev(one, base + 1, "a1"), ev(two, base + 1, "b1"), ev(one, base, "a0")])
    start = devices.EventPosition(datetime.fromtimestamp(base + 10, UTC), BIG_ID)
    walked: list[str] = []
    cursor: str | None = event_cursor(start)
    while cursor is not None and len(walked) < 5:
        body = await page(app_client, admin, "/api/v1/agent-events", limit="2", cursor=cursor)
        walked += labels(body)
        cursor = body["next_cursor"]
    # a1 and b1 tie: b1 was written after a1, so it comes first.
    assert walked[:5] == ["a3", "b2", "b1", "a1", "a0"]


def _cursor(version: int, at_us: int, row_id: int) -> str:
    raw = struct.pack(">Bqq", version, at_us, row_id)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


GOOD = _cursor(1, 1_000_000, 5)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The last character's two low bits are beyond the packed bytes: the same position spelt
# another way.
RESPELT = GOOD[:-1] + B64URL[B64URL.index(GOOD[-1]) ^ 1]
MALFORMED_CURSORS = [
    ("not base64", "!" * len(GOOD)),
    ("too short", GOOD[:-1]),
    ("too long", GOOD + "A"),
    ("huge", "A" * 5000),
    ("padded", GOOD + "="),
    ("not ascii", GOOD[:-1] + "\u00e9"),
    ("another version", _cursor(2, 1_000_000, 5)),
    ("row id zero", _cursor(1, 1_000_000, 0)),
    ("row id negative", _cursor(1, 1_000_000, -3)),
    ("time past year 9999", _cursor(1, 2**62, 5)),
    ("not the one spelling", RESPELT),
    ("standard alphabet", base64.b64encode(struct.pack(">Bqq", 1, -1, 2**62)).decode()[:-1]),
]


@pytest.mark.parametrize(
    ("label", "cursor"), MALFORMED_CURSORS, ids=[c[0] for c in MALFORMED_CURSORS]
)
async def test_a_malformed_cursor_is_a_400(
    app_client: TestClient,
    admin: dict[str, str],
    label: str,
    cursor: str,
) -> None:
    for url in ("/api/v1/agent-events", "/api/v1/agents/AG1/events"):
        resp = await app_client.get(url, params={"cursor": cursor}, headers=admin)
        body = await assert_error(resp, 400, "INVALID_CURSOR")
        assert body["details"] == {"field": "cursor"}, label


async def test_cursor_and_before_id_errors(
    app_client: TestClient,
    admin: dict[str, str],
    pg_pool: asyncpg.Pool,
) -> None:
    code = await agent(app_client)
    ids = await store(pg_pool, [ev(code, window(), "only")])
    url = f"/api/v1/agents/{code}/events"
    both = {"cursor": GOOD, "before_id": str(ids["only"])}
    await assert_error(await app_client.get(url, params=both, headers=admin), 422)
    missing = await pg_pool.fetchval("SELECT max(id) + 1000 FROM agent_events")
    body = await assert_error(
        await app_client.get(url, params={"before_id": str(missing)}, headers=admin), 422
    )
    assert body["details"]["errors"][0]["field"] == "before_id"
    # A well-formed cursor of any position reads: it is the position, not a row.
    assert labels(await page(app_client, admin, url, cursor=GOOD)) == []
    assert labels(await page(app_client, admin, url, cursor="")) == ["only"]
    await assert_error(await app_client.get(url, params={"cursor": GOOD}), 401)


@pytest.mark.parametrize(
    ("agent_code", "index"), [("AG1", "agent_events_agent_at"), (None, "agent_events_at")]
)
async def test_the_order_is_read_from_an_index(
    pg_pool: asyncpg.Pool, agent_code: str | None, index: str
) -> None:
    """Each list's page is an index scan in its order (no sort of the agent's or the whole
    table's events): the plan PostgreSQL takes with sorting and sequential scans priced out."""
    where = "agent_code = $1 AND" if agent_code else "$1::text IS NULL AND"
    query = (
        f"SELECT * FROM agent_events WHERE {where} (at, id) < ($2, $3) "
        "ORDER BY at DESC, id DESC LIMIT 100"
    )
    async with pg_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        await conn.execute("SET LOCAL enable_sort = off")
        await conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(f"EXPLAIN {query}", agent_code, datetime.now(UTC), BIG_ID)
        )
    assert f"Index Scan Backward using {index}" in plan, plan
    assert "Sort" not in plan, plan


async def test_events_the_spool_writer_stores_late_are_listed_in_their_place(
    app_client: TestClient,
    admin: dict[str, str],
    redis: Redis,
    redis_prefix: str,
    pg_pool: asyncpg.Pool,
) -> None:
    """Events a dead instance left in the spool (times 1 and 3) are written by a writer after
    events that happened later were stored directly (0, 2, 4): their ids are the highest, and
    the list walked two a page still gives them by time."""
    code = await agent(app_client)
    base = window()
    key = spool_key(f"{redis_prefix}{unique('order')}:")
    for event in (ev(code, base + 1, "s1"), ev(code, base + 3, "s3")):
        await redis.xadd(key, encode(event))  # type: ignore[arg-type]
    direct = await store(pg_pool, [ev(code, base + t, f"d{t}") for t in (0, 2, 4)])
    sink = PgSink(pg_pool, None, EventSpool(redis, key))
    async with writing(sink):
        await eventually(lambda: redis.xlen(key), lambda n: n == 0)
    ids = await pg_pool.fetch(
        "SELECT id, details->>'n' AS n FROM agent_events WHERE agent_code = $1", code
    )
    assert min(r["id"] for r in ids if r["n"].startswith("s")) > max(direct.values())

    walked: list[str] = []
    query = {"limit": "2"}
    while True:
        body = await page(app_client, admin, f"/api/v1/agents/{code}/events", **query)
        walked += labels(body)
        if body["next_cursor"] is None:
            break
        query = {"limit": "2", "cursor": body["next_cursor"]}
    assert walked == ["d4", "s3", "d2", "s1", "d0"]
