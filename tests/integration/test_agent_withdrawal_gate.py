"""A withdrawal the customer starts on USSD at an agent with fences passes the same geofence gate
as the agent's own device commands: refused (nothing moved, the agent not told) with no fix, a
stale one or one outside the zone; allowed inside, with the gate's evidence in the transfer's
note. Agents without fences keep working; AGENT_WITHDRAWAL_GATE=always refuses them (no fix,
or no fence), off never gates."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from config.settings import Settings
from gateway.keys import AGENTS
from geofence.fix import Fix
from menus.device import FixInput
from tests.integration.agent_support import assign_circle, at
from tests.ussd_support import PIN, UssdEnv, start_env, ussd  # noqa: F401 (fixture)


async def fix_at(env: UssdEnv, agent: str, metres: float, age_s: float = 5) -> None:
    """The agent's device reports a fix `metres` from its zone's centre, `age_s` old."""
    runtime = env.app[AGENTS]
    now = time.time()
    lon, lat = at(metres)
    await runtime.channel.ingest([FixInput(agent, Fix(lat=lat, lon=lon, ts=now - age_s,
                                                      accuracy_m=8), now)])  # fmt: skip


async def fenced_agent(env: UssdEnv) -> tuple[str, str, int]:
    code, agent_msisdn = await env.bank.agent(float_minor=1_000_00)
    fence_id = await assign_circle(env.bank.pool, code)
    await env.app[AGENTS].reload_catalog()
    return code, agent_msisdn, fence_id


async def withdraw(env: UssdEnv, msisdn: str, code: str, amount: str = "50") -> str:
    return await env.session(msisdn).walk("3", code, amount, PIN)


async def cash_out_notes(env: UssdEnv, msisdn: str) -> list[dict[str, Any]]:
    rows = await env.bank.pool.fetch(
        "SELECT note FROM transfers WHERE type = 'cash_out' AND debit_party = $1", msisdn
    )
    return [json.loads(r["note"]) for r in rows]


@pytest.fixture(autouse=True)
async def ledger_ok(ussd: UssdEnv) -> AsyncIterator[None]:  # noqa: F811
    yield
    await ussd.bank.check_ledger()


async def test_fenced_agent_must_be_inside(ussd: UssdEnv) -> None:  # noqa: F811
    msisdn = await ussd.bank.open(balance_minor=100_000)
    code, agent_msisdn, fence_id = await fenced_agent(ussd)

    refusals = []
    refusals.append(await withdraw(ussd, msisdn, code))  # no fix at all
    await fix_at(ussd, code, 20, age_s=ussd.settings.agent_max_fix_age_s + 60)
    refusals.append(await withdraw(ussd, msisdn, code))  # stale
    for body in refusals:
        assert body.startswith(f"END Agent {code}'s location could not be confirmed"), body
        assert "Nothing was withdrawn" in body
    assert await ussd.bank.balance(msisdn) == 100_000
    assert await ussd.bank.outbox(agent_msisdn, "agent_cash_out") == []

    await fix_at(ussd, code, 20)
    body = await withdraw(ussd, msisdn, code)
    assert body.startswith("END Withdrawn KES 50.00"), body
    [note] = await cash_out_notes(ussd, msisdn)
    assert note["initiated_by"] == "customer" and note["gate"] == "allowed"
    assert note["decision"]["zone"] == "inside" and note["decision"]["fence_id"] == fence_id
    assert note["fix"]["acc"] == 8.0 and note["fix"]["mock"] is False
    paid = await ussd.bank.balance(msisdn)

    # Out of the zone (two fixes confirm the exit): refused again, nothing moves.
    await fix_at(ussd, code, 900, age_s=3)
    await fix_at(ussd, code, 950, age_s=1)
    body = await withdraw(ussd, msisdn, code, "60")
    assert body.startswith(f"END Agent {code} is outside their service area"), body
    assert await ussd.bank.balance(msisdn) == paid
    assert len(await cash_out_notes(ussd, msisdn)) == 1

    # Every refusal is in the agent's decision history, like a refused device command.
    rows = await ussd.bank.pool.fetch(
        "SELECT op, allowed, reason, outcome, target, command_id, evidence FROM agent_decisions "
        "WHERE agent_code = $1 ORDER BY id",
        code,
    )
    assert [(r["op"], r["allowed"], r["reason"], r["outcome"], r["target"]) for r in rows] == [
        ("cash_out", False, "NO_LOCATION", "refused", msisdn),
        ("cash_out", False, "STALE_LOCATION", "refused", msisdn),
        ("cash_out", False, "OUTSIDE_GEOFENCE", "refused", msisdn),
    ]
    assert all(r["command_id"].startswith("ussd:") for r in rows)
    assert all(json.loads(r["evidence"])["initiated_by"] == "customer" for r in rows)


async def test_gate_answers_with_the_device_reasons(ussd: UssdEnv) -> None:  # noqa: F811
    """The refusal the menu gets is the device command's: LocationRefused with the gate's
    reason as its code."""
    from core import errors as E
    from core.agent_transactions import DeviceGate, gate_customer_withdrawal
    from gateway.agents import gate_policy

    code, _, _ = await fenced_agent(ussd)
    gate = DeviceGate(ussd.app[AGENTS].engine, gate_policy(ussd.settings))
    with pytest.raises(E.LocationRefused) as caught:
        await gate_customer_withdrawal(gate, code, time.time())
    assert caught.value.error_code == "NO_LOCATION"
    await fix_at(ussd, code, 900, age_s=2)
    with pytest.raises(E.LocationRefused) as caught:
        await gate_customer_withdrawal(gate, code, time.time())
    assert caught.value.error_code == "OUTSIDE_GEOFENCE"
    assert (await gate_customer_withdrawal(gate, code, time.time(), "off")) == {}
    plain, _ = await ussd.bank.agent()
    assert await gate_customer_withdrawal(gate, plain, time.time()) == {"gate": "not_fenced"}
    with pytest.raises(E.LocationRefused) as caught:
        await gate_customer_withdrawal(gate, plain, time.time(), "always")
    assert caught.value.error_code == "NO_LOCATION"  # the gate asks for a fix first
    with pytest.raises(ValueError, match="unknown withdrawal gate mode"):
        await gate_customer_withdrawal(gate, plain, time.time(), "sometimes")


async def test_unfenced_agents_keep_working(ussd: UssdEnv) -> None:  # noqa: F811
    msisdn = await ussd.bank.open(balance_minor=100_000)
    code, _ = await ussd.bank.agent(float_minor=1_000_00)
    assert (await withdraw(ussd, msisdn, code)).startswith("END Withdrawn KES 50.00")
    [note] = await cash_out_notes(ussd, msisdn)
    assert note["gate"] == "not_fenced"


@pytest.mark.parametrize(("mode", "served"), [("always", False), ("off", True)])
async def test_gate_modes(settings: Settings, mode: str, served: bool) -> None:
    async for env in start_env(settings, agent_withdrawal_gate=mode):
        msisdn = await env.bank.open(balance_minor=100_000)
        plain, _ = await env.bank.agent(float_minor=1_000_00)
        fenced, _, _ = await fenced_agent(env)
        await fix_at(env, fenced, 900, age_s=2)  # outside its zone
        for code in (plain, fenced):
            body = await withdraw(env, msisdn, code)
            assert body.startswith("END Withdrawn") == served, (code, body)
        await env.bank.check_ledger()
