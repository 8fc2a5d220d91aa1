"""Zones pushed to OwnTracks phones: the whole app on a Mosquitto broker of the test's own, a
phone client reporting on `owntracks/{code}/{device}` and listening on its `/cmd` topic. An
assignment, a fence edit and the admin route each send `setWaypoints` with the zones' centres and
radii (a polygon as its enclosing circle); the command is not retained; bad requests answer in
the project's error format."""

from __future__ import annotations

import collections
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from channels.agents.owntracks_devices import MAX_DEVICES, REFRESH_S, TTL_S, OwnTracksDevices
from config.settings import Settings
from core import geofences
from gateway.agents import AgentRuntime
from gateway.keys import AGENTS
from geofence.fences import GEOD
from geofence.waypoints import TST_BASE
from tests.helpers import assert_error, auth, direct_token, eventually
from tests.integration.agent_support import SQUARE, make_agent
from tests.integration.mqtt_support import (
    MOSQUITTO,
    Device,
    MosquittoProcess,
    gateway_app,
    private_broker,
)

CIRCLE = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [36.9, -1.2]},
    "properties": {"radius_m": 250, "name": "Duka  Letu"},
}


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
    async with private_broker(tmp_path) as url, gateway_app(settings, url) as (app, client):
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
    # What each device was sent: recorded, read back, junk skipped, trimmed with its device.
    await registry.record_sent(agent, {"d20": frozenset({3, 1}), "d19": frozenset()})
    await redis.hset(registry.sent_key(agent), "odd", "1,x")
    assert (await registry.sent_of([agent]))[agent] == {
        "d20": frozenset({1, 3}), "d19": frozenset(),
    }  # fmt: skip
    assert 0 < await redis.ttl(registry.sent_key(agent)) <= TTL_S
    await registry.seen([(agent, f"e{n}") for n in range(MAX_DEVICES)], now + 5 * REFRESH_S)
    assert (await registry.sent_of([agent]))[agent] == {}


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


def pushes_by_topic(device: Device) -> collections.Counter[str]:
    return collections.Counter(t for t, b in device.unclaimed if is_set_waypoints(t, b))


async def quiet(rig: Rig, observer: Device) -> None:
    """The queued pushes finished (every PUBACK in) and the observer has received all the
    broker took before: a marker it publishes after them comes back after them."""
    await eventually(lambda: not rig.runtime.push_tasks)
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    observer.publish(f"owntracks/MARK/{marker}/cmd", {"_type": "cmd", "action": marker})
    await observer.expect(lambda t, b: isinstance(b, dict) and b.get("action") == marker)


async def holders_with_devices(
    rig: Rig, count: int, fence_id: int, two_devices_every: int
) -> dict[str, list[str]]:
    """`count` agents holding the fence, their phones known to the registry (as after their
    first reports, without the greeting), every `two_devices_every`-th with a tablet too."""
    agents: dict[str, list[str]] = {}
    async with rig.runtime.pool.acquire() as conn:
        for n in range(count):
            agent = await make_agent(rig.runtime.pool)
            await geofences.assign_fences(conn, agent, [fence_id], None)
            agents[agent] = ["phone", "tablet"] if n % two_devices_every == 0 else ["phone"]
    await rig.runtime.fences_changed()
    await rig.runtime.owntracks.seen([(a, d) for a, ds in agents.items() for d in ds])
    return agents


async def test_a_fence_edit_reaches_every_phone_of_many_agents_once(rig: Rig) -> None:
    shared = await fence(rig, CIRCLE)
    agents = await holders_with_devices(rig, 150, shared, two_devices_every=6)
    expected = {f"owntracks/{a}/{d}/cmd" for a, ds in agents.items() for d in ds}
    observer = Device(rig.url)
    await observer.connect()
    await observer.subscribe("owntracks/+/+/cmd")

    bigger = {**CIRCLE, "properties": {"radius_m": 420, "name": "Duka Letu"}}
    resp = await rig.client.put(f"/api/v1/geofences/{shared}", json=bigger, headers=rig.admin)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["waypoint_push"] == {"agents": 150, "devices": len(expected)}
    assert body["type"] == "Feature" and body["properties"]["radius_m"] == 420

    await quiet(rig, observer)
    counts = pushes_by_topic(observer)
    assert set(counts) == expected
    assert set(counts.values()) == {1}  # each device once, none twice
    for _, command in observer.unclaimed:
        [zone] = command["waypoints"]["waypoints"]
        assert (zone["rid"], zone["rad"]) == (f"fence-{shared}", 420)
    # Every device is still known: nothing failed, nothing is waiting for a next sighting.
    for agent, devices in agents.items():
        assert sorted(await rig.runtime.owntracks.devices(agent)) == sorted(devices)
    await observer.stop()


async def test_an_assignment_queues_its_push_and_counts_it(rig: Rig) -> None:
    agent = await make_agent(rig.runtime.pool)
    client = await phone(rig, agent)
    circle = await fence(rig, CIRCLE)
    resp = await rig.client.put(
        f"/api/v1/agents/{agent}/geofences", json={"geofence_ids": [circle]}, headers=rig.admin
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["waypoint_push"] == {"agents": 1, "devices": 1}
    await client.expect(is_set_waypoints)
    lone = await make_agent(rig.runtime.pool)  # no device: nothing queued
    resp = await rig.client.put(
        f"/api/v1/agents/{lone}/geofences", json={"geofence_ids": [circle]}, headers=rig.admin
    )
    assert (await resp.json())["waypoint_push"] == {"agents": 0, "devices": 0}
    await client.stop()


@dataclass
class AclBroker:
    broker: MosquittoProcess
    acl: Path

    def deny(self, topics_: list[str]) -> None:
        rules = "".join(f"topic deny {t}\n" for t in topics_)
        self.acl.write_text(f"topic readwrite #\n{rules}")
        self.broker.reload()


@pytest.fixture
async def acl_rig(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Rig, AclBroker]]:
    """The app on a Mosquitto of its own whose ACL (for anonymous clients, the gateway
    included) the test can change: a publish it denies is refused in the MQTT 5 PUBACK."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n")
    broker = MosquittoProcess(tmp_path, f"allow_anonymous true\nacl_file {acl}\n")
    await broker.start()
    try:
        async with gateway_app(settings, broker.url) as (app, client):
            assert app[AGENTS].mqtt is not None and app[AGENTS].mqtt.mqtt5
            rig = Rig(app, client, broker.url, auth(await direct_token(app)))
            yield rig, AclBroker(broker, acl)
    finally:
        await broker.stop()


async def refused(url: str, topic: str) -> bool:
    """Whether the broker now refuses a publish on `topic` (its ACL reloaded)."""
    probe = Device(url, mqtt5=True)
    await probe.connect()
    mid = probe.publish(topic, {"_type": "cmd", "action": "probe"})
    code = await eventually(lambda: probe.pub_results.get(mid))
    await probe.stop()
    return bool(code.is_failure)


async def _a_refused_push_spares_the_others_and_is_retried_at_the_next_report(
    acl_rig: tuple[Rig, AclBroker],
) -> None:
    rig, broker = acl_rig
    shared = await fence(rig, CIRCLE)
    agents = await holders_with_devices(rig, 40, shared, two_devices_every=4)
    blocked = next(a for a, ds in agents.items() if len(ds) == 2)
    broker.deny([f"owntracks/{blocked}/+/cmd"])
    assert await eventually(lambda: refused(broker.broker.url, f"owntracks/{blocked}/x/cmd"))
    observer = Device(rig.url)
    await observer.connect()
    await observer.subscribe("owntracks/+/+/cmd")

    bigger = {**CIRCLE, "properties": {"radius_m": 380, "name": "Duka Letu"}}
    resp = await rig.client.put(f"/api/v1/geofences/{shared}", json=bigger, headers=rig.admin)
    assert resp.status == 200, await resp.text()
    await quiet(rig, observer)
    counts = pushes_by_topic(observer)
    reached = {f"owntracks/{a}/{d}/cmd" for a, ds in agents.items() if a != blocked for d in ds}
    assert set(counts) == reached and set(counts.values()) == {1}
    # The refused devices are forgotten, so their next report counts as a first sighting.
    assert await rig.runtime.owntracks.devices(blocked) == []
    for agent in agents.keys() - {blocked}:
        assert await rig.runtime.owntracks.devices(agent)

    # The on-demand push reports what the broker refused for a device.
    await rig.runtime.owntracks.seen([(blocked, "phone")], time.time() + 1)
    resp = await rig.client.post(f"/api/v1/agents/{blocked}/waypoints/push", headers=rig.admin)
    got = await resp.json()
    assert resp.status == 200, got
    assert got["devices"] == [] and got["topics"] == []
    assert got["failed"] == [{"device": "phone", "reason": "refused by the broker "
                              "(reason code 0x87)"}]  # fmt: skip
    assert await rig.runtime.owntracks.devices(blocked) == []

    # The broker allows it again; the phone's next report brings it the zones.
    broker.deny([])
    allowed = await eventually(
        lambda: refused(broker.broker.url, f"owntracks/{blocked}/x/cmd"), until=lambda r: not r
    )
    assert allowed is False
    client = await phone(rig, blocked)
    _, body = await client.expect(is_set_waypoints)
    assert [(w["rid"], w["rad"]) for w in body["waypoints"]["waypoints"]] == [
        (f"fence-{shared}", 380)
    ]
    await client.stop()
    await observer.stop()


async def _pushes_cut_short_by_a_stop_are_retried_at_the_next_report(
    acl_rig: tuple[Rig, AclBroker],
) -> None:
    rig, broker = acl_rig
    shared = await fence(rig, CIRCLE)
    agents = await holders_with_devices(rig, 5, shared, two_devices_every=2)
    await broker.broker.stop()  # no PUBACK will come: the pushes wait in flight
    queued = await rig.runtime.queue_waypoint_pushes(list(agents))
    assert queued.agents == 5 and len(rig.runtime.push_tasks) == 1
    await rig.runtime.stop_pushes()
    assert not rig.runtime.push_tasks
    for agent in agents:
        assert await rig.runtime.owntracks.devices(agent) == []


# The refusal is reported in MQTT 5's PUBACK, which the embedded amqtt (3.1.1) does not speak;
# Mosquitto is on every machine of this project's kind (as for the ACL tests).
if MOSQUITTO is not None:
    test_a_refused_push_spares_the_others_and_is_retried_at_the_next_report = (
        _a_refused_push_spares_the_others_and_is_retried_at_the_next_report
    )
    test_pushes_cut_short_by_a_stop_are_retried_at_the_next_report = (
        _pushes_cut_short_by_a_stop_are_retried_at_the_next_report
    )


async def next_command(device: Device) -> dict[str, Any]:
    """The device's next command, in arrival order."""
    _, body = await device.expect(lambda t, b: isinstance(b, dict) and b.get("_type") == "cmd")
    assert isinstance(body, dict)
    return body


async def assign(rig: Rig, agent: str, fence_ids: list[int]) -> None:
    """Assign through the admin API and wait for the queued push to finish (its record of
    what the phone holds written)."""
    resp = await rig.client.put(
        f"/api/v1/agents/{agent}/geofences", json={"geofence_ids": fence_ids}, headers=rig.admin
    )
    assert resp.status == 200, await resp.text()
    await eventually(lambda: not rig.runtime.push_tasks)


def rids(command: dict[str, Any]) -> list[tuple[str, bool]]:
    """(rid, still a zone) for each waypoint of a setWaypoints command."""
    return [(w["rid"], -90 <= w["lat"] <= 90) for w in command["waypoints"]["waypoints"]]


async def test_a_phone_loses_the_zones_its_agent_lost(rig: Rig) -> None:
    agent = await make_agent(rig.runtime.pool)
    client = await phone(rig, agent)
    a, b = await fence(rig, CIRCLE), await fence(rig, SQUARE)

    await assign(rig, agent, [a, b])
    first = await next_command(client)
    assert first["action"] == "setWaypoints"  # nothing known to remove: no clear
    assert rids(first) == [(f"fence-{a}", True), (f"fence-{b}", True)]

    # Zone a taken away: a clear, then the full set with a tombstone for a, in that order.
    await assign(rig, agent, [b])
    clear, full = await next_command(client), await next_command(client)
    assert clear == {"_type": "cmd", "action": "clearWaypoints"}
    assert full["action"] == "setWaypoints"
    assert rids(full) == [(f"fence-{b}", True), (f"fence-{a}", False)]
    [tomb] = [w for w in full["waypoints"]["waypoints"] if w["rid"] == f"fence-{a}"]
    assert tomb["tst"] == TST_BASE + a and tomb["lat"] == tomb["lon"] == -1_000_000

    # Pushed again with nothing lost since: the set alone.
    resp = await rig.client.post(f"/api/v1/agents/{agent}/waypoints/push", headers=rig.admin)
    got = await resp.json()
    assert resp.status == 200 and got["removed"] == [] and got["devices"] == ["phone"], got
    again = await next_command(client)
    assert again["action"] == "setWaypoints" and rids(again) == [(f"fence-{b}", True)]

    # Every zone gone: the phone is still told, with tombstones only.
    await assign(rig, agent, [])
    clear, full = await next_command(client), await next_command(client)
    assert clear["action"] == "clearWaypoints"
    assert rids(full) == [(f"fence-{b}", False)]
    # Nothing held and nothing left to remove: the on-demand push refuses.
    resp = await rig.client.post(f"/api/v1/agents/{agent}/waypoints/push", headers=rig.admin)
    await assert_error(resp, 409, "NO_GEOFENCE")
    assert [b for _, b in client.unclaimed if isinstance(b, dict) and b.get("_type") == "cmd"] == []
    await client.stop()


async def test_the_on_demand_push_names_what_it_removed(rig: Rig) -> None:
    agent = await make_agent(rig.runtime.pool)
    a, b = await fence(rig, CIRCLE), await fence(rig, SQUARE)
    await assign(rig, agent, [a, b])
    client = await phone(rig, agent)  # greeted with both
    assert rids(await next_command(client)) == [(f"fence-{a}", True), (f"fence-{b}", True)]

    async def recorded() -> dict[str, frozenset[int]]:  # once the greeting's PUBACK is in
        return (await rig.runtime.owntracks.sent_of([agent]))[agent]

    assert await eventually(recorded) == {"phone": frozenset({a, b})}
    async with rig.runtime.pool.acquire() as conn:  # changed without the admin API: no push
        await geofences.assign_fences(conn, agent, [a], None)
    resp = await rig.client.post(f"/api/v1/agents/{agent}/waypoints/push", headers=rig.admin)
    got = await resp.json()
    assert resp.status == 200, got
    assert got["removed"] == [f"fence-{b}"] and [w["rid"] for w in got["waypoints"]] == [
        f"fence-{a}"
    ]
    assert (await next_command(client))["action"] == "clearWaypoints"
    assert rids(await next_command(client)) == [(f"fence-{a}", True), (f"fence-{b}", False)]
    await client.stop()
