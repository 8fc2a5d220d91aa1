"""Agent devices end to end over a real broker: fixes in, events and replies out; bad payloads;
the broker's ACL (Mosquitto with the generated files, and the embedded broker's plugin); the
broker restarted under a running gateway."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from channels.agents.broker_files import acl_file, password_file
from config.settings import Settings
from core import devices
from core.crypto import FieldCipher
from gateway.agents import AgentRuntime
from gateway.broker_auth import (
    GATEWAY_USER,
    embedded_broker_config,
    gateway_password,
    with_credentials,
)
from gateway.embedded import EmbeddedMqtt, free_port
from tests.conftest import TEST_SECRET
from tests.helpers import eventually, scrape
from tests.integration.agent_support import (
    AGENT_PIN,
    assign_circle,
    at,
    make_agent,
    make_customer,
    native,
    prepare_core,
)
from tests.integration.mqtt_support import (
    MOSQUITTO,
    Device,
    MosquittoProcess,
    gateway,
    private_broker,
)

BROKERS = ["amqtt"] + (["mosquitto"] if MOSQUITTO else [])


def code() -> str:
    return f"AG{secrets.token_hex(4)}"


def owntracks(metres: float, ts: float) -> dict[str, Any]:
    lon, lat = at(metres)
    return {"_type": "location", "lat": lat, "lon": lon, "tst": int(ts), "acc": 10, "batt": 90}


async def zone(runtime: AgentRuntime, pool: asyncpg.Pool, agent: str) -> int:
    """A circle around CENTRE as `agent`'s zone, known to the running runtime; its fence id."""
    fence_id = await assign_circle(pool, agent)
    await runtime.reload_catalog()
    return fence_id


@pytest.fixture
async def broker_url(tmp_path: Path) -> AsyncIterator[str]:
    async with private_broker(tmp_path) as url:
        yield url


def kind_is(kind: str) -> Any:
    return lambda topic, body: isinstance(body, dict) and body.get("kind") == kind


def reply_to(command_id: str | None) -> Any:
    return lambda topic, body: topic.endswith("/reply") and body.get("id") == command_id


async def test_fixes_events_commands_end_to_end(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool, broker_url: str
) -> None:
    await prepare_core(pg_pool)
    agent = await make_agent(pg_pool, 100_000)
    customer = await make_customer(pg_pool, FieldCipher(TEST_SECRET))
    async with gateway(settings, redis, pg_pool, broker_url, agent_max_fix_age_s=30) as runtime:
        fence_id = await zone(runtime, pg_pool, agent)
        device = Device(broker_url, will=(f"agents/{agent}/status", b"offline"))
        assert not (await device.connect()).is_failure
        for topic in ("reply", "events", "status"):
            await device.subscribe(f"agents/{agent}/{topic}")
        now = time.time()
        device.publish(f"owntracks/{agent}/phone", owntracks(50, now - 20))
        _, enter = await device.expect(kind_is("enter"))
        assert (enter["agent_code"], enter["fence_id"]) == (agent, fence_id)
        assert enter["decision"]["zone"] == "inside"
        await device.expect(lambda t, b: t.endswith("/status") and b == b"online")

        # Malformed input: an error reply, and the gateway carries on.
        device.publish(f"agents/{agent}/cmd", b"{this is not json")
        _, bad = await device.expect(reply_to(None))
        assert bad["ok"] is False and bad["error"]["code"] == "MALFORMED_COMMAND"
        device.publish(f"agents/{agent}/location", b"[1, 2")
        device.publish(f"agents/{agent}/location", {"lat": 95, "lon": 0, "ts": now})

        cmd = {"id": "k1", "op": "cash_in", "msisdn": customer, "amount_minor": 10_000,
               "pin": AGENT_PIN}  # fmt: skip
        device.publish(f"agents/{agent}/cmd", cmd)
        _, inside_reply = await device.expect(reply_to("k1"))
        assert inside_reply["ok"] is True, inside_reply  # the gate let it through

        # Out of the zone: one outside fix is not an exit, the second confirms it.
        device.publish(f"agents/{agent}/location", native(900, now - 10))
        device.publish(f"agents/{agent}/location", native(950, now - 5))
        _, exit_event = await device.expect(kind_is("exit"))
        assert exit_event["fence_id"] == fence_id
        device.publish(f"agents/{agent}/cmd", {**cmd, "id": "k2"})
        _, outside = await device.expect(reply_to("k2"))
        assert outside["error"]["code"] == "OUTSIDE_GEOFENCE"
        device.publish(f"agents/{agent}/cmd", {**cmd, "id": "k2"})  # same id: same reply
        _, again = await device.expect(reply_to("k2"))
        assert again == outside

        # A fix older than the accepted one (another instance delivered it late) is dropped.
        device.publish(f"agents/{agent}/location", native(10, now - 15))
        assert await eventually(lambda: runtime.channel.stats["out_of_order"] >= 1)
        state = await runtime.engine.state(agent)
        assert state["fix"]["ts"] == now - 5 and state["zone"]["zone"] == "outside"
        assert runtime.channel.stats["rejected:MALFORMED_FIX"] >= 1
        assert runtime.channel.stats["rejected:FIX_OUT_OF_RANGE"] >= 1

        # The will: the device vanishes, the broker says offline, the gateway records it.
        await device.drop()
        observer = Device(broker_url)
        await observer.connect()
        await observer.subscribe(f"agents/{agent}/events")
        await observer.expect(kind_is("offline"))
        await observer.stop()

    async with pg_pool.acquire() as conn:
        events = await devices.list_events(conn, agent_code=agent)
    kinds = [e["kind"] for e in reversed(events)]
    assert kinds == ["online", "enter", "exit", "offline"]
    assert events[0]["details"] == {"reason": "will"}


async def test_stale_location_is_refused(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool, broker_url: str
) -> None:
    await prepare_core(pg_pool)
    agent = await make_agent(pg_pool)
    async with gateway(settings, redis, pg_pool, broker_url, agent_max_fix_age_s=30) as runtime:
        await zone(runtime, pg_pool, agent)
        device = Device(broker_url)
        await device.connect()
        await device.subscribe(f"agents/{agent}/reply")
        device.publish(f"agents/{agent}/location", native(20, time.time() - 45))
        await eventually(lambda: runtime.engine.latest_fix(agent))
        device.publish(
            f"agents/{agent}/cmd",
            {"id": "s1", "op": "cash_out", "msisdn": "254700000002", "amount_minor": 5,
             "pin": AGENT_PIN, "customer_pin": "2222"},
        )  # fmt: skip
        _, reply = await device.expect(reply_to("s1"))
        assert reply["error"]["code"] == "STALE_LOCATION"
        await device.stop()


# --- device identity at the broker ----------------------------------------------------------


async def _issue(pool: asyncpg.Pool, *codes: str) -> dict[str, devices.Credentials]:
    async with pool.acquire() as conn:
        return {c: await devices.issue_credentials(conn, c) for c in codes}


async def _acl_checks(url: str, runtime: AgentRuntime, creds: dict[str, devices.Credentials],
                      a: str, b: str) -> None:  # fmt: skip
    wrong = Device(url, username=a, password="not-the-password")
    assert (await wrong.connect()).is_failure
    await wrong.stop()
    anonymous = Device(url)
    assert (await anonymous.connect()).is_failure
    await anonymous.stop()

    device = Device(url, username=a, password=creds[a].mqtt_password)
    assert not (await device.connect()).is_failure
    # Reading another agent's replies is refused: amqtt refuses the subscription, Mosquitto's
    # ACL file grants it and then delivers nothing. Either way nothing of B's arrives.
    await device.subscribe(f"agents/{b}/reply")
    assert not (await device.subscribe(f"agents/{a}/reply"))[0].is_failure
    assert runtime.mqtt is not None
    runtime.mqtt.publish(f"agents/{b}/reply", b'{"id": "for-b"}')
    runtime.mqtt.publish(f"agents/{a}/reply", b'{"id": "for-a"}')
    await device.expect(reply_to("for-a"))
    assert not any(topic.startswith(f"agents/{b}/") for topic, _ in device.unclaimed)
    denied = await device.subscribe("agents/+/reply")
    assert denied[0].is_failure or not any(b in t for t, _ in device.unclaimed)
    now = time.time()
    device.publish(f"agents/{b}/location", native(10, now - 2))  # forged: dropped by the broker
    device.publish(f"owntracks/{b}/phone", owntracks(10, now - 2))
    device.publish(f"agents/{a}/location", native(10, now - 1))  # its own: accepted
    assert await eventually(lambda: runtime.engine.latest_fix(a))
    assert await runtime.engine.latest_fix(b) is None
    device.publish(f"agents/{a}/cmd", b"not json")
    _, reply = await device.expect(reply_to(None))
    assert reply["error"]["code"] == "MALFORMED_COMMAND"
    await device.stop()


async def _mosquitto_acl_from_generated_files(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    a, b = await make_agent(pg_pool), await make_agent(pg_pool)
    creds = await _issue(pg_pool, a, b)
    gw_password = secrets.token_urlsafe(16)

    def write_files() -> None:
        async_users = [(GATEWAY_USER, devices.mosquitto_hash(gw_password))]
        (tmp_path / "passwd").write_text(password_file(async_users + users))
        (tmp_path / "acl").write_text(acl_file(GATEWAY_USER, [a, b]))

    users: list[tuple[str, str]] = []
    async with pg_pool.acquire() as conn:
        users = [(u, h) for c, u, h in await devices.all_mqtt_users(conn) if c in (a, b)]
    write_files()
    broker = MosquittoProcess(
        tmp_path,
        f"allow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
        f"acl_file {tmp_path / 'acl'}\n",
    )
    await broker.start()
    try:
        url = with_credentials(broker.url, GATEWAY_USER, gw_password)
        async with gateway(settings, redis, pg_pool, url) as runtime:
            assert runtime.mqtt is not None and runtime.mqtt.mqtt5  # shared subscriptions
            await _acl_checks(broker.url, runtime, creds, a, b)
            # Rotation: new files, a reload, and the old password stops working.
            rotated = await _issue(pg_pool, a)
            async with pg_pool.acquire() as conn:
                users = [(u, h) for c, u, h in await devices.all_mqtt_users(conn) if c in (a, b)]
            write_files()
            broker.reload()

            async def old_refused() -> bool:
                old = Device(broker.url, username=a, password=creds[a].mqtt_password)
                refused = bool((await old.connect()).is_failure)
                await old.stop()
                return refused

            assert await eventually(old_refused)
            fresh = Device(broker.url, username=a, password=rotated[a].mqtt_password)
            assert not (await fresh.connect()).is_failure
            await fresh.stop()
    finally:
        await broker.stop()


# Where the mosquitto binary exists (every machine of this project's kind) the test is defined;
# elsewhere the embedded broker's variant below covers the same rules.
if MOSQUITTO is not None:
    test_mosquitto_acl_from_generated_files = _mosquitto_acl_from_generated_files


async def test_embedded_broker_enforces_the_same_rules(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    a, b = await make_agent(pg_pool), await make_agent(pg_pool)
    creds = await _issue(pg_pool, a, b)
    secret = "s" * 40
    broker = EmbeddedMqtt(tmp_path, 0)
    plain_url = await broker.start(embedded_broker_config(secret, database_url))
    try:
        url = with_credentials(plain_url, GATEWAY_USER, gateway_password(secret))
        async with gateway(settings, redis, pg_pool, url) as runtime:
            assert runtime.mqtt is not None and not runtime.mqtt.mqtt5  # amqtt: 3.1.1 only
            await _acl_checks(plain_url, runtime, creds, a, b)
            rotated = await _issue(pg_pool, a)
            old = Device(plain_url, username=a, password=creds[a].mqtt_password)
            assert (await old.connect()).is_failure  # checked against the database at once
            await old.stop()
            fresh = Device(plain_url, username=a, password=rotated[a].mqtt_password)
            assert not (await fresh.connect()).is_failure
            await fresh.stop()
    finally:
        await broker.stop()


# --- the broker restarts under a running gateway --------------------------------------------


@pytest.mark.parametrize("durable", [False, True], ids=["clean", "session"])
@pytest.mark.parametrize("kind", BROKERS)
async def test_broker_restart(
    kind: str,
    durable: bool,
    *,
    settings: Settings,
    redis: Redis,
    pg_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    """With a session (MQTT_CLIENT_ID) as without: the restarted broker has forgotten it (and
    the subscriptions), the gateway subscribes again and acknowledges what it handles."""
    agent = code()
    client_id = f"gw-restart-{uuid.uuid4().hex[:8]}" if durable else None
    mosquitto = MosquittoProcess(tmp_path) if kind == "mosquitto" else None
    embedded = EmbeddedMqtt(tmp_path, 0) if kind == "amqtt" else None
    if mosquitto is not None:
        await mosquitto.start()
        url = mosquitto.url
    else:
        assert embedded is not None
        url = await embedded.start()
    port = int(url.rsplit(":", 1)[1])
    try:
        async with gateway(settings, redis, pg_pool, url, mqtt_client_id=client_id) as runtime:
            assert runtime.mqtt is not None
            assert (runtime.mqtt.client_id == client_id) is durable
            device = Device(url)
            await device.connect()
            now = time.time()
            device.publish(f"agents/{agent}/location", native(10, now - 10))
            assert await eventually(lambda: runtime.engine.latest_fix(agent))
            if mosquitto is not None:
                await mosquitto.stop()
                await mosquitto.start()
            else:
                assert embedded is not None
                async with asyncio.timeout(15):  # stop() has a deadline of its own (5 s)
                    await embedded.stop()
                    embedded = EmbeddedMqtt(tmp_path, port)
                    assert await embedded.start() == url
            service = runtime.mqtt
            await eventually(lambda: service.connections >= 2, timeout_s=20)  # a reconnect
            await service.wait_subscribed(20)  # raises TimeoutError: no SUBACK after it
            assert await eventually(device.client.is_connected, timeout_s=20), (
                "the device did not return"
            )
            device.publish(f"agents/{agent}/location", native(10, now - 1))

            async def moved_on() -> bool:
                fix = await runtime.engine.latest_fix(agent)
                return fix is not None and fix.ts == now - 1

            assert await eventually(moved_on, timeout_s=20), (
                "the fix after the restart was not handled"
            )
            # With a session each handled fix was acknowledged after handling (both fixes,
            # or the second only if the first's acknowledgement met the broker going down).
            assert runtime.mqtt.acked >= 1 if durable else runtime.mqtt.acked == 0
            await device.stop()
    finally:
        if mosquitto is not None:
            await mosquitto.stop()
        if embedded is not None:
            await embedded.stop()


async def test_app_wires_the_embedded_broker_with_device_auth(
    settings: Settings, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """No MQTT_URL: the app starts amqtt with the device plugin and logs in to it itself."""
    from gateway.app import create_app
    from gateway.keys import AGENTS, ENDPOINTS
    from tests.conftest import running_app

    bare = replace(settings, mqtt_url=None, data_dir=tmp_path, embedded_mqtt_port=free_port())
    app = create_app(bare, run_migrations=False, start_channels=True)
    async with running_app(app) as client:
        runtime = app[AGENTS]
        assert runtime.mqtt is not None
        await runtime.mqtt.wait_subscribed(10)
        plain = app[ENDPOINTS].mqtt_url
        assert plain is not None and "gateway:" in plain
        broker_url = f"mqtt://127.0.0.1:{bare.embedded_mqtt_port}"
        agent = await make_agent(pg_pool)
        creds = await _issue(pg_pool, agent)
        anonymous = Device(broker_url)
        assert (await anonymous.connect()).is_failure
        await anonymous.stop()
        device = Device(broker_url, username=agent, password=creds[agent].mqtt_password)
        assert not (await device.connect()).is_failure
        device.publish(f"agents/{agent}/location", native(10, time.time() - 1))
        assert await eventually(lambda: runtime.engine.latest_fix(agent))
        device.publish(f"agents/{agent}/location", b"[1, 2")
        await eventually(lambda: runtime.channel.stats["rejected:MALFORMED_FIX"] == 1)
        await device.stop()
        metrics = await scrape(client)
        assert metrics[("gateway_agent_fixes_accepted_total", ())] == 1
        assert metrics[("gateway_agent_messages_rejected_total", (("code", "MALFORMED_FIX"),))] == 1
        assert metrics[("gateway_mqtt_connected", ())] == 1
        assert metrics[("gateway_mqtt_connections_total", ())] == 1
        assert metrics[("gateway_mqtt_messages_total", ())] >= 2
        assert metrics[("gateway_mqtt_inbox", ())] == 0


async def test_readyz_reports_the_broker(
    settings: Settings, pg_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """With the channel configured, /readyz names the broker: ok, down while it is gone,
    ok again once the gateway has reconnected and subscribed."""
    from gateway.app import create_app
    from gateway.keys import AGENTS
    from tests.conftest import running_app

    broker = EmbeddedMqtt(tmp_path, 0)
    url = await broker.start()
    port = int(url.rsplit(":", 1)[1])
    app = create_app(replace(settings, mqtt_url=url), run_migrations=False, start_channels=True)
    try:
        async with running_app(app) as client:
            service = app[AGENTS].mqtt
            assert service is not None
            await service.wait_subscribed(10)

            async def ready() -> tuple[int, dict[str, str]]:
                resp = await client.get("/readyz")
                return resp.status, (await resp.json())["checks"]

            assert await ready() == (200, {"postgresql": "ok", "redis": "ok", "mqtt": "ok"})
            await broker.stop()

            async def down() -> bool:
                status, checks = await ready()
                return status == 503 and checks["mqtt"].startswith("down")

            assert await eventually(down)
            broker = EmbeddedMqtt(tmp_path, port)
            assert await broker.start() == url

            async def up() -> bool:
                return (await ready())[0] == 200

            assert await eventually(up, timeout_s=20)
    finally:
        await broker.stop()
