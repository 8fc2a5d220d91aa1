"""End to end over MQTT with the real banking core: the whole app (create_app, a broker of the
test's own, PostgreSQL, Redis) and a device client. An agent inside its zone does a cash-in,
walks out (an exit after confirmation) and is refused with no money moved; a stale fix is
refused; a repeated command id gets the same reply and one transfer; cash-out with the
customer's PIN (a wrong one refused, counted with USSD's); registration inside the zone; the
float balance; a device without MQTT reporting over OsmAnd, then commanding. The ledger
invariants are checked after each test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from config.settings import Settings
from core import devices, transfers
from core.agents import agent_balances
from core.crypto import FieldCipher
from core.errors import WrongPin
from core.pins import verify_pin
from gateway.agents import AgentRuntime
from gateway.keys import AGENTS
from tests.conftest import TEST_SECRET
from tests.helpers import assert_error, auth, eventually, new_msisdn, token_for
from tests.integration.agent_support import (
    AGENT_PIN,
    CUSTOMER_PIN,
    assert_ledger_ok,
    assign_circle,
    at,
    make_agent,
    make_customer,
    native,
    new_national_id,
    outbox_rows,
)
from tests.integration.mqtt_support import Device, gateway_app, private_broker

CIPHER = FieldCipher(TEST_SECRET)


@dataclass
class Rig:
    app: web.Application
    client: TestClient
    url: str

    @property
    def runtime(self) -> AgentRuntime:
        return self.app[AGENTS]

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool


@pytest.fixture
async def rig(settings: Settings, tmp_path: Path) -> AsyncIterator[Rig]:
    async with (
        private_broker(tmp_path) as url,
        gateway_app(settings, url, agent_max_fix_age_s=60) as (app, client),
    ):
        yield Rig(app, client, url)
        await assert_ledger_ok(app[AGENTS].pool)


async def zone(rig: Rig, agent: str) -> int:
    """A 300 m circle assigned to the agent, announced to the running gateway."""
    fence_id = await assign_circle(rig.pool, agent)
    await rig.runtime.fences_changed()
    return fence_id


async def phone(rig: Rig, agent: str) -> Device:
    device = Device(rig.url)
    assert not (await device.connect()).is_failure
    for topic in ("reply", "events"):
        await device.subscribe(f"agents/{agent}/{topic}")
    return device


def kind_is(kind: str) -> Any:
    return lambda topic, body: isinstance(body, dict) and body.get("kind") == kind


async def command(device: Device, agent: str, body: dict[str, Any]) -> dict[str, Any]:
    device.publish(f"agents/{agent}/cmd", {"pin": AGENT_PIN, **body})
    _, reply = await device.expect(
        lambda topic, got: topic.endswith("/reply") and got.get("id") == body["id"]
    )
    return dict(reply)


async def test_agent_day_over_mqtt(rig: Rig) -> None:
    agent = await make_agent(rig.pool, 1_000_000)
    customer = await make_customer(rig.pool, CIPHER, 500_000)
    fence_id = await zone(rig, agent)
    device = await phone(rig, agent)
    now = time.time()
    lon, lat = at(40)
    device.publish(
        f"owntracks/{agent}/phone",
        {"_type": "location", "lat": lat, "lon": lon, "tst": int(now) - 20, "acc": 10},
    )
    _, enter = await device.expect(kind_is("enter"))
    assert enter["fence_id"] == fence_id

    # Cash-in inside: the customer is credited, the float debited, once.
    cash_in = {"id": "d1", "op": "cash_in", "msisdn": customer, "amount_minor": 120_000}
    first = await command(device, agent, cash_in)
    assert first["ok"] is True, first
    assert await transfers.balance(rig.pool, customer) == 620_000
    assert (await agent_balances(rig.pool, agent)).float_minor == 880_000
    assert await command(device, agent, cash_in) == first  # the same id: the same reply
    posted = await rig.pool.fetchval(
        "SELECT count(*) FROM transfers WHERE idempotency_key = $1", f"agent:{agent}:d1"
    )
    assert posted == 1 and await transfers.balance(rig.pool, customer) == 620_000

    # Cash-out with the customer's PIN typed on the agent's phone; a wrong one counts with
    # the wrong PINs of every other channel.
    out = {"op": "cash_out", "msisdn": customer, "amount_minor": 20_000}
    wrong = await command(device, agent, {"id": "d2", **out, "customer_pin": "9753"})
    assert wrong["error"] == {
        "code": "WRONG_PIN", "message": "Wrong PIN", "details": {"attempts_left": 2},
    }  # fmt: skip
    with pytest.raises(WrongPin) as ussd:
        await verify_pin(rig.pool, customer, "9753")  # the same customer on USSD
    assert ussd.value.details == {"attempts_left": 1}
    paid = await command(device, agent, {"id": "d3", **out, "customer_pin": CUSTOMER_PIN})
    assert paid["ok"] is True, paid
    fee = paid["result"]["fee_minor"]
    assert await transfers.balance(rig.pool, customer) == 620_000 - 20_000 - fee
    assert (await agent_balances(rig.pool, agent)).float_minor == 900_000

    # Registration inside the zone; the float balance.
    newcomer = new_msisdn()
    registered = await command(
        device, agent,
        {"id": "d4", "op": "register_customer", "msisdn": newcomer, "first_name": "Neema",
         "last_name": "Achieng", "national_id": new_national_id(), "customer_pin": "3917"},
    )  # fmt: skip
    assert registered["ok"] is True and registered["result"]["msisdn"] == newcomer
    await verify_pin(rig.pool, newcomer, "3917")
    balance = await command(device, agent, {"id": "d5", "op": "balance"})
    assert balance["result"]["float_minor"] == 900_000

    # Out of the zone: one fix is not an exit, the second confirms it; cash-in refused.
    device.publish(f"agents/{agent}/location", native(900, now - 10))
    device.publish(f"agents/{agent}/location", native(950, now - 5))
    _, exit_event = await device.expect(kind_is("exit"))
    assert exit_event["fence_id"] == fence_id
    refused = await command(device, agent, {**cash_in, "id": "d6"})
    assert refused["error"]["code"] == "OUTSIDE_GEOFENCE", refused
    assert await transfers.balance(rig.pool, customer) == 620_000 - 20_000 - fee
    assert (await agent_balances(rig.pool, agent)).float_minor == 900_000

    # Malformed JSON: an error reply, and the gateway carries on.
    device.publish(f"agents/{agent}/cmd", b"{not json")
    _, bad = await device.expect(lambda t, b: t.endswith("/reply") and b.get("id") is None)
    assert bad["error"]["code"] == "MALFORMED_COMMAND"
    assert (await command(device, agent, {"id": "d7", "op": "balance"}))["ok"] is True
    await device.stop()


async def test_stale_fix_is_refused(rig: Rig) -> None:
    agent = await make_agent(rig.pool, 100_000)
    customer = await make_customer(rig.pool, CIPHER)
    await zone(rig, agent)
    device = await phone(rig, agent)
    device.publish(f"agents/{agent}/location", native(20, time.time() - 300))  # inside, old
    assert await eventually(lambda: rig.runtime.engine.latest_fix(agent))
    cmd = {"id": "s1", "op": "cash_in", "msisdn": customer, "amount_minor": 10_000}
    reply = await command(device, agent, cmd)
    assert reply["error"]["code"] == "STALE_LOCATION"
    assert await transfers.balance(rig.pool, customer) == 0
    await device.stop()


async def test_osmand_fixes_feed_the_gate(rig: Rig) -> None:
    """A phone running Traccar Client reports over HTTP; its commands still come over MQTT."""
    agent = await make_agent(rig.pool, 300_000)
    customer = await make_customer(rig.pool, CIPHER)
    await zone(rig, agent)
    async with rig.pool.acquire() as conn:
        token = (await devices.issue_credentials(conn, agent)).device_token

    async def report(metres: float, age_s: float) -> None:
        lon, lat = at(metres)
        fix = {"id": agent, "lat": str(lat), "lon": str(lon), "accuracy": "6",
               "timestamp": str(int(time.time() - age_s)), "token": token}  # fmt: skip
        resp = await rig.client.get("/agents/osmand", params=fix)
        assert resp.status == 200 and await resp.json() == {"accepted": True}

    await report(25, 10)
    device = await phone(rig, agent)
    cash_in = {"op": "cash_in", "msisdn": customer, "amount_minor": 50_000}
    ok = await command(device, agent, {"id": "h1", **cash_in})
    assert ok["ok"] is True, ok
    note = await rig.pool.fetchval(
        "SELECT note FROM transfers WHERE ledger_reference(id) = $1", ok["result"]["reference"]
    )
    assert '"src":"osmand"' in note
    await report(800, 6)
    await report(850, 3)
    refused = await command(device, agent, {"id": "h2", **cash_in})
    assert refused["error"]["code"] == "OUTSIDE_GEOFENCE"
    assert await transfers.balance(rig.pool, customer) == 50_000
    assert await outbox_rows(rig.pool, agent) == []  # no schedule: an exit, not a breach
    await device.stop()

    # Admins read the gate's decisions, newest first, with their evidence.
    viewer = auth(await token_for(rig.client, "viewer"))
    url = f"/api/v1/agents/{agent.lower()}/decisions"
    page = await (await rig.client.get(f"{url}?limit=1", headers=viewer)).json()
    [latest] = page["decisions"]
    assert (latest["command_id"], latest["allowed"], latest["outcome"]) == (
        "h2", False, "OUTSIDE_GEOFENCE",
    )  # fmt: skip
    assert latest["evidence"]["fix"]["src"] == "osmand" and latest["target"] == customer
    rest = await rig.client.get(f"{url}?before_id={page['next_before_id']}", headers=viewer)
    [first] = (await rest.json())["decisions"]
    assert (first["command_id"], first["outcome"]) == ("h1", "ok")
    assert first["reference"] == ok["result"]["reference"]
    await assert_error(await rig.client.get(f"{url}?limit=0", headers=viewer), 422)
    await assert_error(await rig.client.get(url), 401)
