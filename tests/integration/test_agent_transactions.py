"""Agent commands against the real banking core (PostgreSQL, Redis): the agent's PIN, the
geofence gate in core's path, the customer's PIN, money moved once under the command id, the
gate's evidence stored with the transaction, every refusal with its code and nothing moved.
The ledger invariants are checked after every test. (Over MQTT: test_agents_e2e.py.)"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from config.settings import Settings
from core import agent_transactions, customers, transfers
from core.agents import DEVICE_CHANNEL, agent_balances
from core.crypto import FieldCipher
from core.errors import ValidationFailed, WalletLocked, WrongPin
from core.fees import quote
from core.pins import verify_pin
from gateway.agents import AgentRuntime, build_runtime
from geofence.fix import Fix
from menus.device import FixInput
from tests.conftest import TEST_SECRET
from tests.helpers import new_msisdn, shows_pin
from tests.integration.agent_support import (
    AGENT_PIN,
    CUSTOMER_PIN,
    RADIUS_M,
    assert_ledger_ok,
    assign_circle,
    at,
    make_agent,
    make_customer,
    new_national_id,
    prepare_core,
)

CIPHER = FieldCipher(TEST_SECRET)  # the app's own key in tests


@pytest.fixture
async def runtime(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool
) -> AsyncIterator[AgentRuntime]:
    """The agent runtime with the core's executor (no broker: commands go straight in)."""
    await prepare_core(pg_pool)
    assert settings.secret_key is not None
    yield build_runtime(settings, redis, pg_pool, FieldCipher(settings.secret_key))
    await assert_ledger_ok(pg_pool)


class Counter:
    """One agent at its counter: fixes in, commands out, balances read back."""

    def __init__(self, runtime: AgentRuntime, agent: str) -> None:
        self.runtime = runtime
        self.agent = agent
        self.pool = runtime.pool

    async def fix(self, metres: float, age_s: float = 5, acc: float | None = 8, **kw: Any) -> None:
        lon, lat = at(metres)
        now = time.time()
        fix = Fix(lat=lat, lon=lon, ts=now - age_s, accuracy_m=acc, **kw)
        result = await self.runtime.channel.ingest([FixInput(self.agent, fix, now)])
        assert result.accepted == 1

    async def send(self, op: str, command_id: str, **fields: Any) -> dict[str, Any]:
        body = {"id": command_id, "op": op, "pin": AGENT_PIN, **fields}
        reply = await self.runtime.dispatcher.handle(self.agent, body)
        assert reply is not None
        return reply

    async def float_minor(self) -> int:
        return (await agent_balances(self.pool, self.agent)).float_minor

    async def decisions(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT * FROM agent_decisions WHERE agent_code = $1 ORDER BY id", self.agent
        )
        return [{**dict(r), "evidence": json.loads(r["evidence"])} for r in rows]


async def counter(runtime: AgentRuntime, float_minor: int, zone: bool = True) -> Counter:
    agent = await make_agent(runtime.pool, float_minor)
    if zone:
        await assign_circle(runtime.pool, agent)
    await runtime.reload_catalog()
    return Counter(runtime, agent)


def error(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


async def test_cash_in_inside_moves_money_once_with_its_evidence(runtime: AgentRuntime) -> None:
    desk = await counter(runtime, 1_000_000)
    customer = await make_customer(desk.pool, CIPHER)
    await desk.fix(20)
    reply = await desk.send("cash_in", "ci-1", msisdn=customer, amount_minor=150_000)
    assert reply["ok"] is True, reply
    result = reply["result"]
    commission = (await quote(desk.pool, "cash_in", 150_000)).commission_minor
    assert (result["type"], result["msisdn"], result["amount_minor"]) == (
        "cash_in", customer, 150_000,
    )  # fmt: skip
    assert result["commission_minor"] == commission
    assert "balance_after_minor" not in result  # the agent never sees the customer's balance
    assert await transfers.balance(desk.pool, customer) == 150_000
    assert await desk.float_minor() == 1_000_000 - 150_000

    row = await desk.pool.fetchrow(
        "SELECT channel, note, idempotency_key FROM transfers WHERE ledger_reference(id) = $1",
        result["reference"],
    )
    assert row["channel"] == DEVICE_CHANNEL
    assert row["idempotency_key"] == f"agent:{desk.agent}:ci-1"
    evidence = json.loads(row["note"])
    assert evidence["gate"] == "allowed" and evidence["command_id"] == "ci-1"
    assert evidence["decision"]["zone"] == "inside"
    fence_ids = desk.runtime.engine.catalog.assignments[desk.agent]
    assert (evidence["decision"]["fence_id"], evidence["decision"]["fence_version"]) == (
        fence_ids[0], 1,
    )  # fmt: skip
    assert evidence["fix"]["lat"] == pytest.approx(at(20)[1])
    [decision] = await desk.decisions()
    assert (decision["outcome"], decision["allowed"], decision["reference"]) == (
        "ok", True, result["reference"],
    )  # fmt: skip

    # The same id again: the same reply, nothing moves.
    assert await desk.send("cash_in", "ci-1", msisdn=customer, amount_minor=150_000) == reply
    # The reply lost (Redis flushed, the gateway died before storing it) and the agent has
    # since walked out of its zone: the retry still finds the money it moved, not a refusal.
    await desk.runtime.redis.delete(desk.runtime.dispatcher.key(desk.agent, "ci-1"))
    await desk.fix(900, age_s=2)
    again = await desk.send("cash_in", "ci-1", msisdn=customer, amount_minor=150_000)
    assert again["ok"] is True and again["result"]["reference"] == result["reference"]
    assert await transfers.balance(desk.pool, customer) == 150_000
    assert await desk.float_minor() == 1_000_000 - 150_000
    # ... but another request under that id is no replay.
    await desk.runtime.redis.delete(desk.runtime.dispatcher.key(desk.agent, "ci-1"))
    other = await desk.send("cash_in", "ci-1", msisdn=customer, amount_minor=150_001)
    assert error(other) == "IDEMPOTENCY_CONFLICT"


REFUSALS = [
    # (label, fix or None, agent has a zone, expected code)
    ("no fix yet", None, True, "NO_LOCATION"),
    ("stale", {"metres": 20, "age_s": 500}, True, "STALE_LOCATION"),
    ("inaccurate", {"metres": 20, "acc": 80}, True, "INACCURATE_LOCATION"),
    ("unknown accuracy counts as 30 m, near the edge", {"metres": RADIUS_M - 10, "acc": None},
     True, "LOCATION_UNCERTAIN"),
    ("mock location", {"metres": 20, "mock": True}, True, "MOCK_LOCATION"),
    ("outside", {"metres": 900}, True, "OUTSIDE_GEOFENCE"),
    ("no zone assigned", {"metres": 20}, False, "NO_GEOFENCE"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fix", "zone", "code"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
async def test_gate_refusals_move_nothing(
    runtime: AgentRuntime, fix: dict[str, Any] | None, zone: bool, code: str
) -> None:
    desk = await counter(runtime, 500_000, zone)
    customer = await make_customer(desk.pool, CIPHER, 200_000)
    if fix is not None:
        await desk.fix(**fix)
    newcomer = {"msisdn": new_msisdn(), "first_name": "Neema", "last_name": "Achieng",
                "national_id": new_national_id(), "customer_pin": "3917"}  # fmt: skip
    attempts = [
        ("cash_in", {"msisdn": customer, "amount_minor": 10_000}),
        ("cash_out", {"msisdn": customer, "amount_minor": 10_000, "customer_pin": "0000"}),
        ("register_customer", newcomer),
    ]
    for n, (op, extra) in enumerate(attempts):
        reply = await desk.send(op, f"r{n}", **extra)
        assert error(reply) == code, (op, reply)
        assert "evidence" not in json.dumps(reply)
    assert await desk.float_minor() == 500_000
    assert await transfers.balance(desk.pool, customer) == 200_000
    # The customer's PIN was never tried: the wrong one above counted nothing.
    failures = await desk.pool.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", customer
    )
    assert failures == 0
    rows = await desk.decisions()
    assert [(r["op"], r["allowed"], r["reason"], r["outcome"]) for r in rows] == [
        (op, False, code, code) for op in ("cash_in", "cash_out", "register_customer")
    ]
    if fix is not None:
        assert rows[0]["evidence"]["fix"]["lat"] == pytest.approx(at(fix["metres"])[1])
    # A refusal binds no id: inside and fresh, the same command (a new id) goes through.
    if code != "NO_GEOFENCE":
        await desk.fix(15, age_s=1)
        ok = await desk.send("cash_in", "r-after", msisdn=customer, amount_minor=10_000)
        assert ok["ok"] is True, ok


async def test_agent_pin_comes_first_and_locks_after_three(runtime: AgentRuntime) -> None:
    desk = await counter(runtime, 100_000)
    await desk.fix(900)  # outside: the PIN is still checked first
    customer = new_msisdn()
    wrong = {"msisdn": customer, "amount_minor": 10_000, "pin": "1397"}
    first = await desk.send("cash_in", "p1", **wrong)
    assert first["error"] == {
        "code": "WRONG_PIN", "message": "Wrong PIN", "details": {"attempts_left": 2},
    }  # fmt: skip
    assert error(await desk.send("balance", "p2", pin="1397")) == "WRONG_PIN"
    assert error(await desk.send("cash_in", "p3", **wrong)) == "WALLET_LOCKED"
    locked = await desk.send("balance", "p4")  # the right PIN now: still locked
    assert error(locked) == "WALLET_LOCKED"
    assert await desk.decisions() == []  # no decision without an authorised agent
    unknown = await desk.runtime.dispatcher.handle(
        "NOSUCHAGENT1", {"id": "u1", "op": "balance", "pin": AGENT_PIN}
    )
    assert unknown is not None and error(unknown) == "AGENT_NOT_FOUND"


async def test_cash_out_with_the_customers_pin(runtime: AgentRuntime) -> None:
    cipher = CIPHER
    desk = await counter(runtime, 0)
    customer = await make_customer(desk.pool, cipher, 1_000_000)
    await desk.fix(30)
    out = {"msisdn": customer, "amount_minor": 200_000}
    # One wrong PIN on USSD, one on the agent's device: the same counter.
    with pytest.raises(WrongPin):
        await verify_pin(desk.pool, customer, "9753")
    wrong = await desk.send("cash_out", "o1", **out, customer_pin="9753")
    assert wrong["error"]["code"] == "WRONG_PIN"
    assert wrong["error"]["details"] == {"attempts_left": 1}
    good = await desk.send("cash_out", "o2", **out, customer_pin=CUSTOMER_PIN)
    assert good["ok"] is True, good
    fee = (await quote(desk.pool, "cash_out", 200_000)).fee_minor
    assert good["result"]["fee_minor"] == fee and good["result"]["msisdn"] == customer
    assert await transfers.balance(desk.pool, customer) == 1_000_000 - 200_000 - fee
    assert await desk.float_minor() == 200_000
    balance = await desk.send("balance", "o3")
    assert balance["result"]["float_minor"] == 200_000
    assert balance["result"]["commission_minor"] == good["result"]["commission_minor"]
    # Not enough float for a cash-in: refused by the ledger, recorded, nothing moves.
    poor = await desk.send("cash_in", "o4", msisdn=customer, amount_minor=200_001)
    assert error(poor) == "INSUFFICIENT_FUNDS"
    assert await desk.float_minor() == 200_000
    # Three wrong in a row lock the wallet everywhere.
    for n in range(3):
        last = await desk.send("cash_out", f"o-bad{n}", **out, customer_pin="9753")
    assert last["error"]["code"] == "WALLET_LOCKED"
    with pytest.raises(WalletLocked):
        await verify_pin(desk.pool, customer, CUSTOMER_PIN)
    outcomes = [(r["op"], r["outcome"]) for r in await desk.decisions()]
    assert outcomes == [
        ("cash_out", "WRONG_PIN"), ("cash_out", "ok"), ("cash_in", "INSUFFICIENT_FUNDS"),
        ("cash_out", "WRONG_PIN"), ("cash_out", "WRONG_PIN"), ("cash_out", "WALLET_LOCKED"),
    ]  # fmt: skip


async def test_register_customer_at_the_counter(runtime: AgentRuntime) -> None:
    desk = await counter(runtime, 0)
    await desk.fix(10)
    msisdn, nid = new_msisdn(), new_national_id()
    fields = {"msisdn": msisdn, "first_name": "Neema", "last_name": "Achieng",
              "national_id": nid, "customer_pin": "3917"}  # fmt: skip
    reply = await desk.send("register_customer", "g1", **fields)
    assert reply == {
        "id": "g1",
        "ok": True,
        "result": {"msisdn": msisdn, "first_name": "Neema", "last_name": "Achieng",
                   "tier": "Basic", "status": "active"},
    }  # fmt: skip
    await verify_pin(desk.pool, msisdn, "3917")  # the customer's own PIN works
    assert await transfers.balance(desk.pool, msisdn) == 0
    audit = await desk.pool.fetchrow(
        "SELECT actor_type, actor, details FROM audit_log "
        "WHERE action = 'agent.customer_registered' AND target = $1",
        msisdn,
    )
    assert (audit["actor_type"], audit["actor"]) == ("agent", desk.agent)
    evidence = json.loads(audit["details"])
    assert evidence["decision"]["zone"] == "inside" and evidence["command_id"] == "g1"
    # A retry after the reply was lost returns the same customer, not "already exists".
    await desk.runtime.redis.delete(desk.runtime.dispatcher.key(desk.agent, "g1"))
    assert await desk.send("register_customer", "g1", **fields) == reply
    taken = await desk.send("register_customer", "g2", **fields)
    assert error(taken) == "ALREADY_EXISTS"
    weak_pin = {**fields, "msisdn": new_msisdn(), "customer_pin": "1234"}
    weak = await desk.send("register_customer", "g3", **weak_pin)
    assert error(weak) == "WEAK_PIN"
    # Outside: refused, and no customer comes into being.
    await desk.fix(1200, age_s=1)
    elsewhere = new_msisdn()
    away = {**fields, "msisdn": elsewhere, "national_id": new_national_id()}
    outside = await desk.send("register_customer", "g4", **away)
    assert error(outside) == "OUTSIDE_GEOFENCE"
    assert await customers.find_customer(desk.pool, elsewhere) is None


async def test_the_device_channel_is_closed_to_the_public_functions(
    runtime: AgentRuntime,
) -> None:
    """Only core.agent_transactions posts on the device channel, after the gate."""
    agent = await make_agent(runtime.pool, 100_000)
    customer = await make_customer(runtime.pool, CIPHER, 100_000)
    money = {"agent_code": agent, "msisdn": customer, "amount_minor": 10_000,
             "idempotency_key": "bypass-1", "channel": DEVICE_CHANNEL}  # fmt: skip
    with pytest.raises(ValidationFailed):
        await transfers.cash_in(runtime.pool, **money)
    with pytest.raises(ValidationFailed):
        await transfers.cash_out(runtime.pool, **money)
    with pytest.raises(ValidationFailed):
        await customers.register_customer(
            runtime.pool, CIPHER, msisdn=new_msisdn(), first_name="A",
            last_name="B", national_id=new_national_id(), pin="3917", channel=DEVICE_CHANNEL,
            pin_rounds=4,
        )  # fmt: skip
    assert await transfers.posted_under(runtime.pool, "bypass-1") is None
    assert await transfers.balance(runtime.pool, customer) == 100_000
    assert agent_transactions.idempotency_key(agent, "x") == f"agent:{agent}:x"


async def test_pins_never_reach_logs_replies_or_storage(
    runtime: AgentRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    desk = await counter(runtime, 500_000)
    customer = await make_customer(desk.pool, CIPHER, 300_000)
    await desk.fix(10)
    caplog.set_level(logging.DEBUG)
    replies = [
        await desk.send("cash_out", "s1", msisdn=customer, amount_minor=10_000,
                        customer_pin=CUSTOMER_PIN),
        await desk.send("cash_out", "s2", msisdn=customer, amount_minor=10_000,
                        customer_pin="9753"),
        await desk.send("register_customer", "s3", msisdn=new_msisdn(), first_name="Neema",
                        last_name="Achieng", national_id=new_national_id(),
                        customer_pin="3917"),
        await desk.send("cash_in", "s4", msisdn=customer, amount_minor=10_000, pin="1397"),
    ]  # fmt: skip
    assert [r["ok"] for r in replies] == [True, False, True, False]
    stored = [
        await desk.runtime.redis.get(desk.runtime.dispatcher.key(desk.agent, f"s{n}"))
        for n in range(1, 5)
    ]
    notes = await desk.pool.fetch(
        "SELECT note FROM transfers WHERE idempotency_key LIKE $1", f"agent:{desk.agent}:%"
    )
    texts = [
        caplog.text,
        json.dumps([r.__dict__ for r in caplog.records], default=str),
        json.dumps(replies),
        b"".join(s or b"" for s in stored).decode(),
        json.dumps(await desk.decisions(), default=str),
        " ".join(r["note"] for r in notes),
    ]
    for pin in (AGENT_PIN, CUSTOMER_PIN, "9753", "3917", "1397"):
        for text in texts:
            assert not shows_pin(pin, text), pin
