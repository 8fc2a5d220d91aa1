"""The channels' money actions (menus.bindings: USSD and SMS banking run the same ones) with
their PostgreSQL connection cut at the network while PostgreSQL stays up: the caller hears
Unavailable while the outcome is unknown, and the same step again (same idempotency key, as a
USSD hop sent again or a retried SMS does) answers the first result, with the money, the
receipts and the agent's SMS once and no PIN counted twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from core import errors as E
from core.crypto import FieldCipher
from core.transfers import balance
from gateway import db as dbmod
from menus.actions import ActionContext, ActionFn, MenuBindings
from menus.bindings import bind
from menus.catalogue import CATALOGUE
from tests.integration.core.conftest import PIN, make_agent, make_customer, new_key
from tests.tcp_proxy import CuttableProxy, postgres_proxy


@dataclass
class Relay:
    proxy: CuttableProxy
    pool: asyncpg.Pool


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[Relay]:
    proxy, via = postgres_proxy(database_url)
    pool = await dbmod.make_pool(via(await proxy.start()), min_size=0, max_size=2)
    try:
        yield Relay(proxy, pool)
    finally:
        await pool.close()
        await proxy.close()


class Gate:
    """The agent's geofence gate as the USSD wiring calls it, told when the agent leaves its
    zone (the gate itself is tested with real fixes elsewhere; here only its answer matters)."""

    def __init__(self) -> None:
        self.inside = True
        self.asked = 0

    async def __call__(self, agent: str, msisdn: str, key: str) -> dict[str, Any]:
        self.asked += 1
        if not self.inside:
            raise E.LocationRefused("The agent is outside their area", code="OUTSIDE_GEOFENCE")
        return {"gate": "allowed"}


def bound(pool: asyncpg.Pool, cipher: FieldCipher, gate: Gate) -> dict[str, ActionFn]:
    """The actions as the channels call them: bound, so a lost connection is Unavailable."""
    bindings = MenuBindings(CATALOGUE)
    bind(bindings, pool=pool, cipher=cipher, currency="KES", country_code="254", pin_rounds=4,
         withdrawal_gate=gate)  # fmt: skip
    names = ("withdraw", "send_money")
    return {name: fn for name in names if (fn := bindings.function(name)) is not None}


def step(action: str, msisdn: str, key: str, *, again: bool = False, **vars: Any) -> ActionContext:
    return ActionContext(
        action=action,
        msisdn=msisdn,
        language="en",
        vars=vars,
        secrets={"pin": PIN},
        customer={"first_name": "Test", "last_name": "Customer", "tier": "Basic"},
        params={},
        idempotency_key=key,
        channel="ussd",
        session_id="s-" + key,
        currency="KES",
        again=again,
    )


async def agent_sms(db: asyncpg.Pool, agent: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM outbox o JOIN agents a ON a.msisdn = o.recipient "
            "WHERE a.code = $1 AND o.kind = 'agent_cash_out'",
            agent,
        )
    )


async def receipts(db: asyncpg.Pool, key: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM outbox o JOIN transfers t ON t.id = o.transfer_id "
            "WHERE t.idempotency_key = $1",
            key,
        )
    )


@pytest.mark.parametrize("again", [False, True], ids=["ussd_hop_again", "sms_retry"])
async def test_a_withdrawal_whose_commit_answer_is_lost_answers_it_though_the_agent_left(
    relay: Relay, core_db: asyncpg.Pool, cipher: FieldCipher, again: bool
) -> None:
    """The customer's withdrawal commits (money out, the agent told to hand over the cash) but
    the COMMIT's answer is lost; by the retry the agent has stepped out of its zone. The
    retry must answer the withdrawal that happened, not "the agent is outside their area,
    nothing was withdrawn" while the wallet was debited and the agent paid out."""
    agent = await make_agent(core_db)
    customer = await make_customer(core_db, cipher, 2_000_00)
    gate = Gate()
    withdraw = bound(relay.pool, cipher, gate)["withdraw"]
    key = new_key("ussd")
    ctx = step("withdraw", customer, key, again=again, agent=agent, amount_minor=500_00)
    relay.proxy.cut_on(b"COMMIT\x00", from_server=True)
    with pytest.raises(E.Unavailable):
        await withdraw(ctx)
    assert relay.proxy.tripped == 1
    paid = await balance(core_db, customer)
    assert paid < 2_000_00  # it committed

    gate.inside = False
    result = await withdraw(ctx)
    assert result.vars["amount"] == "KES 500.00"
    reference = await core_db.fetchval(
        "SELECT ledger_reference(id) FROM transfers WHERE idempotency_key = $1", key
    )
    assert result.vars["reference"] == reference
    assert await balance(core_db, customer) == paid
    assert await agent_sms(core_db, agent) == 1
    assert await receipts(core_db, key) == 1
    # A new withdrawal while the agent is away is still refused.
    with pytest.raises(E.LocationRefused):
        await withdraw(step("withdraw", customer, new_key("ussd"), agent=agent,
                                    amount_minor=100_00))  # fmt: skip
    assert await balance(core_db, customer) == paid


@pytest.mark.parametrize(
    "marker", [b"ledger_cash_out", b"INSERT INTO outbox"], ids=["at_the_money", "at_the_sms"]
)
async def test_a_withdrawal_cut_inside_its_transaction_moves_nothing_then_once(
    relay: Relay, core_db: asyncpg.Pool, cipher: FieldCipher, marker: bytes
) -> None:
    """Cut inside the withdrawal's transaction (the money or the agent's SMS never reaching the
    server): Unavailable, nothing moved and nothing queued; the step again moves it once."""
    agent = await make_agent(core_db)
    customer = await make_customer(core_db, cipher, 2_000_00)
    withdraw = bound(relay.pool, cipher, Gate())["withdraw"]
    key = new_key("ussd")
    ctx = step("withdraw", customer, key, agent=agent, amount_minor=500_00)
    relay.proxy.cut_on(marker)
    with pytest.raises(E.Unavailable):
        await withdraw(ctx)
    assert relay.proxy.tripped == 1
    assert await balance(core_db, customer) == 2_000_00
    assert (await agent_sms(core_db, agent), await receipts(core_db, key)) == (0, 0)
    result = await withdraw(ctx)
    assert await balance(core_db, customer) < 2_000_00
    assert result.vars["amount"] == "KES 500.00"
    assert (await agent_sms(core_db, agent), await receipts(core_db, key)) == (1, 1)
