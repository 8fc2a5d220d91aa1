"""Geofences, assignments, device credentials, history and events on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import asyncpg
import pytest

from core import devices, geofences
from core.errors import AgentNotFound, NotFound, ValidationFailed
from core.tasks import stop_tasks
from gateway.agents import PgSink
from geofence.decision import Zone, decide
from tests.helpers import eventually
from tests.integration.agent_support import make_agent


def code() -> str:
    """An agent code that is no agent: fine for the history tables, which keep no foreign key."""
    return f"AG{secrets.token_hex(4).upper()}"


SQUARE = {
    "type": "Feature",
    "geometry": {
        "type": "Polygon",
        "coordinates": [[[36.80, -1.30], [36.82, -1.30], [36.82, -1.28], [36.80, -1.28],
                         [36.80, -1.30]]],
    },
    "properties": {"name": "Market", "colour": "red"},
}  # fmt: skip
CIRCLE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [36.9, -1.2]},
    "properties": {"radius_m": 150},
}


async def test_fence_create_update_and_catalog(pg_pool: asyncpg.Pool) -> None:
    async with pg_pool.acquire() as conn:
        square = await geofences.create_fence(conn, SQUARE)
        circle = await geofences.create_fence(conn, CIRCLE)
        feature = square.feature()
        assert feature["id"] == square.fence.id and feature["properties"]["version"] == 1
        assert feature["properties"]["name"] == "Market"
        assert feature["properties"]["colour"] == "red"
        assert circle.feature()["properties"]["radius_m"] == 150
        moved: dict[str, Any] = {**CIRCLE, "properties": {"radius_m": 300}}
        updated = await geofences.update_fence(conn, circle.fence.id, moved)
        assert updated.fence.version == 2
        agent = await make_agent(pg_pool)
        ids, schedule = await geofences.assign_fences(
            conn, agent, [square.fence.id, updated.fence.id, square.fence.id], None
        )
        assert ids == sorted([square.fence.id, updated.fence.id]) and schedule is None
        catalog = await geofences.load_catalog(conn)
    fences = catalog.fences_for(agent)
    assert [f.version for f in fences] == [1, 2]
    assert decide(fences, 36.81, -1.29, 10).zone is Zone.INSIDE
    assert decide(fences, 36.9, -1.2018, 10).zone is Zone.INSIDE  # 200 m: inside the new radius


async def test_assignment_refuses_unknown_fences_and_bad_input(pg_pool: asyncpg.Pool) -> None:
    agent = await make_agent(pg_pool)
    async with pg_pool.acquire() as conn:
        fence = await geofences.create_fence(conn, CIRCLE)
        await geofences.assign_fences(conn, agent, [fence.fence.id], None)
        with pytest.raises(NotFound) as err:
            await geofences.assign_fences(conn, agent, [fence.fence.id, 999_999_999], None)
        assert err.value.details["missing"] == [999_999_999]
        # Nothing changed by the refused call.
        assert await geofences.agent_fence_ids(conn, agent) == [fence.fence.id]
        with pytest.raises(ValidationFailed):
            await geofences.assign_fences(conn, "bad/code", [fence.fence.id], None)
        with pytest.raises(ValidationFailed, match="time zone"):
            await geofences.assign_fences(
                conn, agent, [], {"timezone": "Nowhere/Else", "windows": []}
            )
        with pytest.raises(ValidationFailed, match="valid polygon"):
            bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
            await geofences.create_fence(conn, {"type": "Feature", "geometry": bowtie})
        with pytest.raises(NotFound):
            await geofences.update_fence(conn, 999_999_999, CIRCLE)


async def test_schedule_is_stored_with_the_assignment(pg_pool: asyncpg.Pool) -> None:
    agent = await make_agent(pg_pool)
    raw = {"timezone": "UTC", "windows": [{"days": ["mon"], "start": "08:00", "end": "17:00"}]}
    async with pg_pool.acquire() as conn:
        fence = await geofences.create_fence(conn, CIRCLE)
        await geofences.assign_fences(conn, agent, [fence.fence.id], raw)
        catalog = await geofences.load_catalog(conn)
        schedule = catalog.schedule_for(agent)
        assert schedule is not None and schedule.to_json() == raw
        await geofences.assign_fences(conn, agent, [fence.fence.id], None)
        assert (await geofences.load_catalog(conn)).schedule_for(agent) is None


async def test_credentials_rotate_and_store_only_hashes(pg_pool: asyncpg.Pool) -> None:
    agent = await make_agent(pg_pool)
    async with pg_pool.acquire() as conn:
        first = await devices.issue_credentials(conn, agent)
        assert first.mqtt_username == agent and first.version == 1
        assert await devices.verify_device_token(conn, agent, first.device_token)
        stored = await devices.mqtt_password_hash(conn, agent)
        assert stored is not None and devices.mosquitto_verify(first.mqtt_password, stored)
        row = await conn.fetchrow("SELECT * FROM agent_devices WHERE agent_code = $1", agent)
        assert first.mqtt_password not in str(dict(row))
        assert first.device_token not in str(dict(row))
        assert first.mqtt_password not in repr(first)
        second = await devices.issue_credentials(conn, agent)
        assert second.version == 2
        assert not await devices.verify_device_token(conn, agent, first.device_token)
        assert await devices.verify_device_token(conn, agent, second.device_token)
        stored = await devices.mqtt_password_hash(conn, agent)
        assert stored is not None
        assert not devices.mosquitto_verify(first.mqtt_password, stored)
        assert devices.mosquitto_verify(second.mqtt_password, stored)
        assert not await devices.verify_device_token(conn, agent, "")
        assert not await devices.verify_device_token(conn, "nobody-here", second.device_token)


async def test_device_tables_name_real_agents(pg_pool: asyncpg.Pool) -> None:
    """Assignments, schedules and credentials need the core's agent (migration 0420)."""
    ghost = code()
    async with pg_pool.acquire() as conn:
        fence = await geofences.create_fence(conn, CIRCLE)
        with pytest.raises(AgentNotFound):
            await geofences.assign_fences(conn, ghost, [fence.fence.id], None)
        with pytest.raises(AgentNotFound):
            await geofences.assign_fences(conn, ghost, [], None)
        with pytest.raises(AgentNotFound):
            await devices.issue_credentials(conn, ghost)
        for sql in (
            "INSERT INTO agent_geofences (agent_code, geofence_id) VALUES ($1, $2)",
            "INSERT INTO agent_schedules (agent_code, schedule) VALUES ($1, '{}'::jsonb)",
            "INSERT INTO agent_devices (agent_code, mqtt_username, mqtt_password_hash, "
            "device_token_hash) VALUES ($1, $1, 'x', $1)",
        ):
            args = (ghost, fence.fence.id) if "geofence_id" in sql else (ghost,)
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await conn.execute(sql, *args)
        assert await geofences.agent_fence_ids(conn, ghost) == []
        # History keeps no foreign key (see the migration): fixes and events of any code.
        now = time.time()
        row = devices.LocationRow(ghost, now, now, -1.2, 36.9, None, False, "native", None, None)
        assert await devices.insert_locations(conn, [row]) == 1
        assert await devices.insert_events(conn, [devices.EventRow(ghost, "online", now)])


def test_mosquitto_hash_format() -> None:
    hashed = devices.mosquitto_hash("s3cret", salt=b"\x00" * 12)
    assert hashed.startswith("$7$101$AAAAAAAAAAAAAAAA$")
    assert devices.mosquitto_verify("s3cret", hashed)
    assert not devices.mosquitto_verify("s3cret!", hashed)
    for broken in ("", "$6$x$y", "$7$abc$AAAA$BBBB", "$7$101$!!$??"):
        assert not devices.mosquitto_verify("s3cret", broken)


async def test_history_events_and_latest(pg_pool: asyncpg.Pool) -> None:
    agent = code()
    now = time.time()
    rows = [
        devices.LocationRow(agent, now - 20 + i, now, -1.29, 36.8 + i / 1000, 10.0, False,
                            "native", "inside", None)
        for i in range(5)
    ]  # fmt: skip
    async with pg_pool.acquire() as conn:
        assert await devices.insert_locations(conn, rows) == 5
        latest = await devices.latest_positions(conn, [agent])
        assert len(latest) == 1 and latest[0]["lon"] == pytest.approx(36.804)
        ids = await devices.insert_events(
            conn,
            [devices.EventRow(agent, kind, now + n, details={"n": n})
             for n, kind in enumerate(["online", "enter", "exit", "breach", "offline"])],
        )  # fmt: skip
        assert len(ids) == 5
        page = await devices.list_events(conn, agent_code=agent, limit=2)
        assert [e["kind"] for e in page] == ["offline", "breach"]
        older = await devices.list_events(conn, agent_code=agent, before_id=page[-1]["id"])
        assert [e["kind"] for e in older] == ["exit", "enter", "online"]
        assert older[0]["details"] == {"n": 2}
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO agent_events (agent_code, kind) VALUES ($1, 'teleport')", agent
            )


async def test_catalog_reload_reuses_unchanged_fences(pg_pool: asyncpg.Pool) -> None:
    async with pg_pool.acquire() as conn:
        kept = await geofences.create_fence(conn, CIRCLE)
        changed = await geofences.create_fence(conn, SQUARE)
        first = await geofences.load_catalog(conn)
        await geofences.update_fence(conn, changed.fence.id, SQUARE)
        second = await geofences.load_catalog(conn, first)
    assert second.fences[kept.fence.id] is first.fences[kept.fence.id]
    assert second.fences[changed.fence.id].version == 2
    assert second.fences[changed.fence.id] is not first.fences[changed.fence.id]
    assert set(second.fences) == set(first.fences)


@pytest.mark.parametrize("queued", [5, 600])  # a trickle (the writer waits) and a backlog
async def test_history_rows_the_writer_held_at_a_stop_are_written(
    pg_pool: asyncpg.Pool, queued: int
) -> None:
    """The history writer is stopped between taking rows off its queue and their COPY: the
    stop path's flush writes them with the rest, none lost."""
    sink = PgSink(pg_pool)
    agent, now = code(), time.time()
    await sink.record_locations(
        [
            devices.LocationRow(
                agent, now - i, now, -1.29, 36.81, 10.0, False, "native", None, None
            )
            for i in range(queued)
        ]
    )
    writer = asyncio.create_task(sink.run())
    await eventually(sink.queue.qsize, lambda n: n < queued)  # the writer holds some
    await stop_tasks([writer], "history writer")
    await sink.flush()
    fixes = await pg_pool.fetchval(
        "SELECT count(DISTINCT fix_ts) FROM agent_locations WHERE agent_code = $1", agent
    )
    assert fixes == queued


async def test_a_history_row_the_table_refuses_is_dropped_not_retried_for_ever(
    pg_pool: asyncpg.Pool,
) -> None:
    """One row PostgreSQL refuses as data (here a source longer than its column) failed its
    whole COPY, which the writer retried for ever: every agent's history stalled behind it.
    The batch now goes in row by row and only the refused row is dropped."""
    sink = PgSink(pg_pool)
    agent, now = code(), time.time()

    def row(i: int, source: str = "native") -> devices.LocationRow:
        return devices.LocationRow(
            agent, now - i, now, -1.29, 36.81, 10.0, False, source, None, None
        )

    await sink.record_locations([row(1), row(2, source="x" * 40), row(3)])
    writer = asyncio.create_task(sink.run())
    try:
        await eventually(lambda: sink.written, lambda n: n == 2)
        await sink.record_locations([row(4)])  # and the writer goes on
        await eventually(lambda: sink.written, lambda n: n == 3)
    finally:
        await stop_tasks([writer], "history writer")
    assert sink.refused == 1
    kept = await pg_pool.fetch(
        "SELECT extract(epoch FROM fix_ts) AS ts FROM agent_locations WHERE agent_code = $1"
        " ORDER BY fix_ts DESC",
        agent,
    )
    assert [round(float(r["ts"])) for r in kept] == [round(now - i) for i in (1, 3, 4)]
