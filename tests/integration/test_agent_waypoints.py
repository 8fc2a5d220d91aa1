"""Zones pushed to OwnTracks phones: the whole app on a Mosquitto broker of the test's own, a
phone client reporting on `owntracks/{code}/{device}` and listening on its `/cmd` topic. An
assignment, a fence edit and the admin route each send `setWaypoints` with the zones' centres and
radii (a polygon as its enclosing circle); the command is not retained; bad requests answer in
the project's error format."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from channels.agents.owntracks_devices import MAX_DEVICES, REFRESH_S, TTL_S, OwnTracksDevices
from config.settings import Settings
from gateway.agents import AgentRuntime
from gateway.app import create_app
from gateway.keys import AGENTS
from geofence.fences import GEOD
from geofence.waypoints import TST_BASE
from tests.conftest import running_app
from tests.helpers import assert_error, auth, direct_token, eventually
from tests.integration.agent_support import make_agent, prepare_core
from tests.integration.mqtt_support import Device, private_broker

CIRCLE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [36.9, -1.2]},
    "properties": {"radius_m": 250, "name": "Duka  Letu"},
}
SQUARE = {
    "type": "Feature",
    "geometry": {
        "type": "Polygon",
        "coordinates": [[[36.80, -1.30], [36.82, -1.30], [36.82, -1.28], [36.80, -1.28],
                         [36.80, -1.30]]],
    },
    "properties": {"name": "Gikomba market"},
}  # fmt: skip


@dataclass
class Rig:
    app: web.Application
    client: TestClient
    url: str
    admin: dict[str, str]

    @property
    def runtime(self) -> AgentRuntime:
        return self.app[AGENTS]


@pytest.fixture
async def rig(settings: Settings, tmp_path: Path) -> AsyncIterator[Rig]:
    async with private_broker(tmp_path) as url:
        tuned = replace(settings, mqtt_url=url, mqtt_share_group=f"w{uuid.uuid4().hex[:10]}")
        app = create_app(tuned, run_migrations=False, start_channels=True)
        async with running_app(app) as client:
            runtime = app[AGENTS]
            assert runtime.mqtt is not None
            await runtime.mqtt.wait_subscribed(10)
            await prepare_core(runtime.pool)
            yield Rig(app, client, url, auth(await direct_token(app)))


def is_set_waypoints(topic: str, body: Any) -> bool:
    return isinstance(body, dict) and body.get("action") == "setWaypoints"


async def phone(rig: Rig, agent: str, device: str = "phone") -> Device:
    """An OwnTracks app with remote commands on: listens on its cmd topic, reports one fix, and
    is known to the gateway once that fix is in."""
    client = Device(rig.url)
    assert not (await client.connect()).is_failure
    await client.subscribe(f"owntracks/{agent}/{device}/cmd")
    fix = {"_type": "location", "lat": -1.2, "lon": 36.9, "tst": int(time.time()), "acc": 10}
    client.publish(f"owntracks/{agent}/{device}", fix)

    async def known() -> bool:
        return device in await rig.runtime.owntracks.devices(agent)

    assert await eventually(known)
    return client


async def fence(rig: Rig, feature: dict[str, Any]) -> int:
    resp = await rig.client.post("/api/v1/geofences", json=feature, headers=rig.admin)
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


async def test_assignment_edit_and_push_reach_the_phone(rig: Rig) -> None:
    agent = await make_agent(rig.runtime.pool)
    client = await phone(rig, agent)
    circle, square = await fence(rig, CIRCLE), await fence(rig, SQUARE)

    resp = await rig.client.put(
        f"/api/v1/agents/{agent.lower()}/geofences",
        json={"geofence_ids": [square, circle]},
        headers=rig.admin,
    )
    assert resp.status == 200, await resp.text()
    topic, body = await client.expect(is_set_waypoints)
    assert topic == f"owntracks/{agent}/phone/cmd"
    assert body["_type"] == "cmd" and body["waypoints"]["_type"] == "waypoints"
    by_rid = {w["rid"]: w for w in body["waypoints"]["waypoints"]}
    assert set(by_rid) == {f"fence-{circle}", f"fence-{square}"}
    c = by_rid[f"fence-{circle}"]
    assert c == {
        "_type": "waypoint", "desc": "Duka Letu", "lat": -1.2, "lon": 36.9, "rad": 250,
        "tst": TST_BASE + circle, "rid": f"fence-{circle}",
    }  # fmt: skip
    s = by_rid[f"fence-{square}"]
    assert (s["lat"], s["lon"], s["desc"]) == (-1.29, 36.81, "Gikomba market")
    # The enclosing circle holds every corner, and is not much larger than the farthest one.
    corners = [(36.80, -1.30), (36.82, -1.30), (36.82, -1.28), (36.80, -1.28)]
    farthest = max(GEOD.inv(s["lon"], s["lat"], lon, lat)[2] for lon, lat in corners)
    assert farthest <= s["rad"] <= math.ceil(farthest) + 2

    # A fence edited: its holders' phones get the new shape, under the same tst (replaced).
    bigger = {**CIRCLE, "properties": {"radius_m": 400, "name": "Duka Letu"}}
    resp = await rig.client.put(f"/api/v1/geofences/{circle}", json=bigger, headers=rig.admin)
    assert resp.status == 200, await resp.text()
    _, body = await client.expect(is_set_waypoints)
    [edited] = [w for w in body["waypoints"]["waypoints"] if w["rid"] == f"fence-{circle}"]
    assert (edited["rad"], edited["tst"]) == (400, TST_BASE + circle)

    # On demand, to every device of the agent.
    second = await phone(rig, agent, "tablet")
    resp = await rig.client.post(f"/api/v1/agents/{agent}/waypoints/push", headers=rig.admin)
    got = await resp.json()
    assert resp.status == 200, got
    assert sorted(got["devices"]) == ["phone", "tablet"]
    assert sorted(got["topics"]) == [
        f"owntracks/{agent}/phone/cmd",
        f"owntracks/{agent}/tablet/cmd",
    ]
    assert {w["rid"]: w["rad"] for w in got["waypoints"]}[f"fence-{circle}"] == 400
    for device in (client, second):
        _, pushed = await device.expect(is_set_waypoints)
        assert len(pushed["waypoints"]["waypoints"]) == 2

    # Not retained: a client subscribing afterwards gets nothing before a marker sent after it.
    late = Device(rig.url)
    await late.connect()
    await late.subscribe(f"owntracks/{agent}/phone/cmd")
    late.publish(f"owntracks/{agent}/phone/cmd", {"_type": "cmd", "action": "marker"})
    await late.expect(lambda t, b: isinstance(b, dict) and b.get("action") == "marker")
    assert late.unclaimed == []
    for device in (client, second, late):
        await device.stop()


async def test_push_refusals(rig: Rig) -> None:
    url = "/api/v1/agents/{}/waypoints/push"
    unknown = await rig.client.post(url.format("NOSUCH9"), headers=rig.admin)
    await assert_error(unknown, 404, "AGENT_NOT_FOUND")
    await assert_error(await rig.client.post(url.format("x"), headers=rig.admin), 422)
    agent = await make_agent(rig.runtime.pool)
    bare = await rig.client.post(url.format(agent), headers=rig.admin)
    await assert_error(bare, 409, "NO_GEOFENCE")
    circle = await fence(rig, CIRCLE)
    resp = await rig.client.put(
        f"/api/v1/agents/{agent}/geofences", json={"geofence_ids": [circle]}, headers=rig.admin
    )
    assert resp.status == 200  # no phone yet: the assignment still succeeds
    no_phone = await rig.client.post(url.format(agent), headers=rig.admin)
    await assert_error(no_phone, 409, "NO_OWNTRACKS_DEVICE")
    await assert_error(await rig.client.post(url.format(agent)), 401)
    viewer = auth(await direct_token(rig.app, "viewer"))
    await assert_error(await rig.client.post(url.format(agent), headers=viewer), 403)


async def test_only_devices_that_sent_a_valid_message_are_known(rig: Rig) -> None:
    agent = await make_agent(rig.runtime.pool)
    client = Device(rig.url)
    await client.connect()
    client.publish(f"owntracks/{agent}/ghost", b"{not json")
    client.publish(f"owntracks/{agent}/ghost2", {"_type": "location", "lat": 95, "lon": 0})
    fix = {"_type": "location", "lat": -1.2, "lon": 36.9, "tst": int(time.time()), "acc": 10}
    client.publish(f"owntracks/{agent}/real", fix)  # after the bad ones: one client, in order

    async def known() -> list[str]:
        return await rig.runtime.owntracks.devices(agent)

    assert await eventually(known) == ["real"]
    await client.stop()


async def test_the_device_registry_is_bounded_and_written_once_per_refresh(
    redis: Redis, redis_prefix: str
) -> None:
    registry = OwnTracksDevices(redis, redis_prefix)
    agent = f"AG{uuid.uuid4().hex[:6].upper()}"
    now = 1_800_000_000.0
    await registry.seen([(agent, "phone")], now)
    assert await registry.devices(agent) == ["phone"]
    ttl = await redis.ttl(registry.key(agent))
    assert 0 < ttl <= TTL_S
    # Seen again within the refresh: no write (the stored time stays).
    await registry.seen([(agent, "phone")], now + REFRESH_S - 1)
    assert await redis.hget(registry.key(agent), "phone") == str(int(now)).encode()
    await registry.seen([(agent, "phone")], now + REFRESH_S)
    assert await redis.hget(registry.key(agent), "phone") == str(int(now + REFRESH_S)).encode()
    # A flood of device names (hostile or buggy) keeps only the most recent MAX_DEVICES.
    for n in range(MAX_DEVICES + 5):
        await registry.seen([(agent, f"d{n:02d}"), (agent, "bad+name")], now + 2 * REFRESH_S + n)
    known = await registry.devices(agent, limit=None)
    assert len(known) == MAX_DEVICES and "bad+name" not in known
    assert known[0] == f"d{MAX_DEVICES + 4:02d}" and "phone" not in known
    # Junk in the hash (written by hand) is skipped, not fatal.
    await redis.hset(registry.key(agent), "weird", "not-a-time")
    assert "weird" not in await registry.devices(agent)


async def test_a_new_phone_gets_the_zones_it_missed(rig: Rig) -> None:
    agent = await make_agent(rig.runtime.pool)
    circle = await fence(rig, CIRCLE)
    resp = await rig.client.put(
        f"/api/v1/agents/{agent}/geofences", json={"geofence_ids": [circle]}, headers=rig.admin
    )
    assert resp.status == 200  # no phone known yet: nothing sent
    client = await phone(rig, agent, "newphone")
    topic, body = await client.expect(is_set_waypoints)
    assert topic == f"owntracks/{agent}/newphone/cmd"
    assert [w["rid"] for w in body["waypoints"]["waypoints"]] == [f"fence-{circle}"]
    await client.stop()
