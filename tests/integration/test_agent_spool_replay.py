"""The agent event spool's unreadable entries read back (gateway.event_spool.replay_unreadable,
`gateway agents spool [--replay-unreadable]`): the events this release reads are stored once
each (by their UUID) and leave the unreadable stream; the others stay there as they were.

The unreadable stream is filled as an earlier release's writer filled it (EventSpool.set_aside:
the entry's own fields, its spool id and the reason), with real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from config.settings import Settings
from core.devices import BreachAlerts, EventRow, insert_events
from gateway import event_spool
from gateway.agents import spool_key
from gateway.app import make_redis
from gateway.cli import main
from gateway.event_spool import GROUP, EventSpool, encode
from tests.conftest import unique
from tests.helpers import assert_error, auth
from tests.integration.agent_support import new_code, outbox_rows
from tests.integration.test_agents_api import token_for
from tests.tcp_proxy import redis_proxy, relayed_pool

Fields = dict[bytes, bytes]
OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`


def aside(fields: Fields, problem: str) -> Fields:
    """An entry as set aside: its fields, where it was in the spool and why."""
    return {
        **fields,
        b"spool_id": f"{time.time_ns() // 1000}-0".encode(),
        b"problem": problem.encode(),
    }


async def fill(redis: Redis, key: str, entries: Sequence[Fields]) -> list[bytes]:
    return [await redis.xadd(f"{key}:unreadable", e) for e in entries]  # type: ignore[arg-type]


async def unreadable(redis: Redis, key: str) -> list[tuple[bytes, Fields]]:
    return list(await redis.xrange(f"{key}:unreadable"))


async def rows_of(pg_pool: asyncpg.Pool, events: Sequence[EventRow]) -> list[int]:
    """How many rows each event has in agent_events."""
    rows = await pg_pool.fetch(
        "SELECT event_id, count(*) AS n FROM agent_events WHERE event_id = ANY($1::uuid[]) "
        "GROUP BY event_id",
        [e.event_id for e in events],
    )
    counts = {r["event_id"]: r["n"] for r in rows}
    return [counts.get(e.event_id, 0) for e in events]


class Case:
    """Unreadable entries of every kind, about one agent."""

    def __init__(self) -> None:
        self.agent = new_code()
        now = time.time() - 600
        self.new = [
            EventRow(self.agent, "enter", now, fence_id=7, fence_version=1),
            EventRow(self.agent, "breach", now + 1, fence_id=7, fence_version=1),
            EventRow(self.agent, "offline", now + 2),
        ]
        self.stored = EventRow(self.agent, "online", now - 1)  # stored before the replay
        self.refused = EventRow("X" * 40, "online", now)  # past the column's 32 characters
        self.garbage = aside({b"v": b"1", b"d": b"\xc1 garbage"}, "not msgpack (ExtraData)")
        self.later = aside({b"v": b"9", b"d": b"\x90"}, "format version b'9' unknown")
        self.entries = [
            aside(encode(self.new[0]), "kind"),
            self.garbage,
            aside(encode(self.new[1]), "kind"),
            aside(encode(self.stored), "kind"),
            aside(encode(self.refused), "kind"),
            self.later,
            aside(encode(self.new[1]), "kind"),  # the same breach set aside twice
            aside(encode(self.new[2]), "details"),
        ]


@pytest.fixture
def key(redis_prefix: str) -> str:
    return spool_key(f"{redis_prefix}{unique('replay')}:")


async def test_replay_stores_what_this_release_reads_once_and_keeps_the_rest(
    redis: Redis, key: str, pg_pool: asyncpg.Pool
) -> None:
    """Three new events (a breach among them, set aside twice), one stored before (a replay
    that died between its COMMIT and its XDEL), one PostgreSQL refuses, garbage and a later
    format. One page of two entries at a time: a page that PostgreSQL refuses goes in entry by
    entry. The breach is alerted once. A second replay changes nothing."""
    case = Case()
    async with pg_pool.acquire() as conn:
        await insert_events(conn, [case.stored])
    ids = await fill(redis, key, case.entries)
    spool = EventSpool(redis, key, consumer="test")
    alerts = BreachAlerts("log", ("ops",))
    seen: list[tuple[int, int]] = []

    done = await event_spool.replay_unreadable(
        spool, pg_pool, alerts, lambda d: seen.append((d.read, d.total)), page_size=2
    )

    assert (done.read, done.written, done.already, done.kept) == (8, 3, 2, 3)
    assert seen == [(2, 8), (4, 8), (6, 8), (8, 8)]
    assert await rows_of(pg_pool, [*case.new, case.stored, case.refused]) == [1, 1, 1, 1, 0]
    assert len(await outbox_rows(pg_pool, case.agent)) == 1
    left = await unreadable(redis, key)
    assert [i for i, _ in left] == [ids[1], ids[4], ids[5]]  # where they were, as they were
    assert [f for _, f in left] == [case.garbage, case.entries[4], case.later]
    problems = done.problems
    assert problems.pop("format version b'9' is later than this release's") == 1
    assert problems.pop("not msgpack (FormatError)") == 1  # today's reason
    [(refusal, n)] = problems.items()
    assert n == 1
    assert refusal.startswith("PostgreSQL refused it: value too long")

    again = await event_spool.replay_unreadable(spool, pg_pool, alerts)
    assert (again.read, again.written, again.already, again.kept) == (3, 0, 0, 3)
    assert await unreadable(redis, key) == left
    assert await rows_of(pg_pool, [*case.new, case.stored]) == [1, 1, 1, 1]
    assert len(await outbox_rows(pg_pool, case.agent)) == 1


async def test_counts_group_the_reasons(redis: Redis, key: str) -> None:
    empty = await event_spool.counts(EventSpool(redis, key, consumer="test"))
    assert (empty.spool, empty.pending, empty.unreadable, empty.problems) == (0, 0, 0, {})

    case = Case()
    await fill(redis, key, case.entries)
    for event in case.new:
        await redis.xadd(key, encode(event))  # type: ignore[arg-type]
    await redis.xgroup_create(key, GROUP, id="0")
    await redis.xreadgroup(GROUP, "somebody", {key: ">"}, count=2)
    counts = await event_spool.counts(EventSpool(redis, key, consumer="test"))
    assert (counts.spool, counts.pending, counts.unreadable) == (3, 2, 8)
    assert counts.readable_now == 6  # the later format and the garbage are not
    assert counts.problems == {
        "kind": 5,
        "details": 1,
        "format version b'9' unknown": 1,
        "not msgpack (ExtraData)": 1,
    }


async def test_an_outage_mid_replay_stops_it_and_a_replay_again_stores_each_event_once(
    redis: Redis, redis_url: str, key: str, database_url: str, pg_pool: asyncpg.Pool
) -> None:
    """Six events, two a page. PostgreSQL cut after the first page: the replay stops (Away),
    the second page's entries stay. Then Redis cut as the second page's XDEL goes out, after
    its COMMIT: those entries stay too, their events stored. A replay after each stores the
    rest, the events already stored counted so, each event once in the table."""
    agent = new_code()
    events = [EventRow(agent, "enter", time.time() - 60 + n) for n in range(6)]
    await fill(redis, key, [aside(encode(e), "kind") for e in events])
    proxy, via = redis_proxy(redis_url)
    relayed = make_redis(via(await proxy.start()))
    try:
        async with relayed_pool(database_url, max_size=2) as relay:
            spool = EventSpool(relayed, key, consumer="test")

            def cut_postgres(done: event_spool.Replayed) -> None:
                if done.read == 2:
                    relay.proxy.cut(refuse=OUTAGE)

            with pytest.raises(event_spool.Away) as away:
                await event_spool.replay_unreadable(spool, relay.pool, None, cut_postgres, 2)
            assert away.value.service == "PostgreSQL"
            assert await rows_of(pg_pool, events) == [1, 1, 0, 0, 0, 0]
            assert len(await unreadable(redis, key)) == 4
            relay.proxy.restore()

            proxy.cut_on(b"XDEL", refuse=OUTAGE)
            with pytest.raises(event_spool.Away) as away:
                await event_spool.replay_unreadable(spool, relay.pool, None, None, 2)
            assert away.value.service == "Redis"
            assert await rows_of(pg_pool, events) == [1, 1, 1, 1, 0, 0]
            assert len(await unreadable(redis, key)) == 4  # its XDEL never arrived
            proxy.restore()

            done = await event_spool.replay_unreadable(spool, relay.pool, None, None, 2)
    finally:
        await relayed.aclose()
        await proxy.close()
    assert (done.read, done.written, done.already, done.kept) == (4, 2, 2, 0)
    assert await rows_of(pg_pool, events) == [1] * 6
    assert await unreadable(redis, key) == []


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def cli_key(monkeypatch: pytest.MonkeyPatch, settings: Settings, data_dir: Path) -> str:
    """The environment `gateway` reads, with a Redis prefix (so a spool) of the test's own."""
    assert settings.database_url is not None and settings.redis_url is not None
    prefix = f"{settings.redis_prefix}{unique('cli')}:"
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": prefix,
        "GATEWAY_DATA_DIR": str(data_dir),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AGENT_ALERT_CHANNEL", raising=False)
    return spool_key(prefix)


async def gateway(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the `gateway` command (in a thread: it runs its own event loop)."""
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(main, list(argv))
    except SystemExit as exc:  # argparse's refusals
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


async def test_the_command_counts_and_replays(
    redis: Redis, cli_key: str, pg_pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    case = Case()
    await fill(redis, cli_key, case.entries)
    async with pg_pool.acquire() as conn:
        await insert_events(conn, [case.stored])

    code, out, err = await gateway(capsys, "agents", "spool")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "spool: 0 entries, 0 claimed by a writer",
        "unreadable: 8 entries, 6 readable by this release",
        "      5  kind",
        "      1  details",
        "      1  format version b'9' unknown",
        "      1  not msgpack (ExtraData)",
    ]

    code, out, err = await gateway(capsys, "agents", "spool", "--replay-unreadable")
    assert code == 0, err
    assert err == "replay: 8/8 read: 3 written, 2 already stored, 3 still unreadable\n"
    lines = out.splitlines()
    assert lines.pop(0) == (
        "replayed 8 unreadable entries: 3 written, 2 already stored, 3 still unreadable"
    )
    refusal = lines.pop(0)  # the reasons now, most first, then by name
    assert refusal.startswith("      1  PostgreSQL refused it: value too long")
    assert lines == [
        "      1  format version b'9' is later than this release's",
        "      1  not msgpack (FormatError)",
        "spool: 0 entries, 0 claimed by a writer",
        "unreadable: 3 entries, 1 readable by this release",  # the one PostgreSQL refuses
        "      1  format version b'9' unknown",
        "      1  kind",
        "      1  not msgpack (ExtraData)",
    ]
    assert await rows_of(pg_pool, [*case.new, case.stored, case.refused]) == [1, 1, 1, 1, 0]

    code, out, err = await gateway(capsys, "agents", "spool", "--replay-unreadable")
    assert code == 0
    assert err == "replay: 3/3 read: 0 written, 0 already stored, 3 still unreadable\n"
    assert await rows_of(pg_pool, [*case.new, case.stored]) == [1, 1, 1, 1]
    assert len(await unreadable(redis, cli_key)) == 3


def _one_line(err: str) -> bool:
    return err.startswith("gateway") and err.count("\n") == 1 and len(err) < 300


@pytest.mark.parametrize(
    "argv",
    [
        ("agents", "spool", "--replay"),  # argparse would take it for --replay-unreadable
        ("agents", "spool", "--replay-unreadable=yes"),
        ("agents", "spool", "now"),
        ("agents", "spool", "--replay-unreadable", "--replay-unreadable", "-x"),
        ("agents",),
    ],
    ids=["unknown flag", "flag with a value", "stray argument", "and a stray flag", "no verb"],
)
async def test_bad_flags_are_one_line_and_change_nothing(
    redis: Redis, cli_key: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    case = Case()
    await fill(redis, cli_key, case.entries)
    before = await unreadable(redis, cli_key)
    code, out, err = await gateway(capsys, *argv)
    assert (code, out) == (2, "") and _one_line(err), err
    assert "--help" in err
    assert await unreadable(redis, cli_key) == before


async def test_redis_or_postgresql_away_is_one_line_and_changes_nothing(
    redis: Redis,
    cli_key: str,
    pg_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nobody listening at the address (a port taken and closed again, so refused)."""
    case = Case()
    await fill(redis, cli_key, case.entries)
    before = await unreadable(redis, cli_key)
    closed = await _closed_port()

    database_url = os.environ["DATABASE_URL"]  # the test's (cli_key)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{closed}/nowhere")
    # PostgreSQL away: the counts still come (from Redis alone); a replay refuses at once.
    code, out, err = await gateway(capsys, "agents", "spool")
    assert (code, err) == (0, "") and "unreadable: 8 entries" in out
    code, out, err = await gateway(capsys, "agents", "spool", "--replay-unreadable")
    assert (code, out) == (3, "") and _one_line(err), err
    assert err.startswith(f"gateway: cannot reach PostgreSQL at 127.0.0.1:{closed} (DATABASE_URL)")

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed}/0")
    for argv in (("agents", "spool"), ("agents", "spool", "--replay-unreadable")):
        code, out, err = await gateway(capsys, *argv)
        assert (code, out) == (3, "") and _one_line(err), (argv, err)
        assert err.startswith(f"gateway: cannot reach Redis at 127.0.0.1:{closed} (REDIS_URL)")

    assert await unreadable(redis, cli_key) == before
    assert await rows_of(pg_pool, case.new) == [0, 0, 0]


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


# --- the admin API's read-only view -------------------------------------------------------------


async def test_the_admin_api_shows_the_unreadable_entries(
    app_client: TestClient, redis: Redis, settings: Settings
) -> None:
    """The app's own spool (shared by the session's tests, so only this test's entries are
    looked at, and removed after)."""
    key = spool_key(settings.redis_prefix)
    case = Case()
    mine = f"not msgpack ({unique('reason')})"  # a reason no other test's entry has
    garbage = {**case.garbage, b"problem": mine.encode()}
    ids = await fill(redis, key, [case.entries[0], garbage, case.later])
    headers = auth(await token_for(app_client, "viewer"))
    try:
        resp = await app_client.get("/api/v1/agent-event-spool", headers=headers)
        counts = await resp.json()
        assert resp.status == 200, counts
        assert counts["unreadable"] >= 3 and counts["readable_now"] >= 1
        assert {"problem": mine, "entries": 1} in counts["problems"]

        seen: dict[str, dict[str, Any]] = {}
        params = {"limit": "2"}
        while True:
            resp = await app_client.get(
                "/api/v1/agent-event-spool/unreadable", params=params, headers=headers
            )
            body = await resp.json()
            assert resp.status == 200, body
            seen |= {e["id"]: e for e in body["entries"]}
            if body["next_cursor"] is None:
                break
            params = {"limit": "2", "cursor": body["next_cursor"]}
        ours = [seen[i.decode()] for i in ids]
        assert [e["problem"] for e in ours] == [
            "kind", mine, "format version b'9' unknown",
        ]  # fmt: skip
        assert [e["problem_now"] for e in ours] == [
            None, "not msgpack (FormatError)", "format version b'9' is later than this release's",
        ]  # fmt: skip
        event = ours[0]["event"]
        assert (event["event_id"], event["agent_code"], event["kind"]) == (
            str(case.new[0].event_id), case.agent, "enter",
        )  # fmt: skip
        assert ours[1]["event"] is None and ours[1]["spool_id"]

        url = "/api/v1/agent-event-spool/unreadable"
        for bad in ("x", "1-2-3", "-1-0", "99999999999999999999-0", "1\u0661-0", "1" * 5000):
            resp = await app_client.get(url, params={"cursor": bad}, headers=headers)
            await assert_error(resp, 400, "INVALID_CURSOR")
        for bad in ("0", "201", "x"):
            resp = await app_client.get(url, params={"limit": bad}, headers=headers)
            await assert_error(resp, 422, "VALIDATION_ERROR")
        await assert_error(await app_client.get(url), 401)
        assert len(await redis.xrange(f"{key}:unreadable", ids[0], ids[-1])) == 3  # read only
    finally:
        await redis.xdel(f"{key}:unreadable", *ids)
