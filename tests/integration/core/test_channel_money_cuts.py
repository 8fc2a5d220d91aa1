"""The channels' money actions (menus.bindings: USSD and SMS banking run the same ones) with
their PostgreSQL connection cut at the network while PostgreSQL stays up. A lost connection
under the money call is settled inside the action (asked again under its idempotency key:
core.pg.settle), so the customer gets the receipt, not "try again later"; an outage that
outlasts those tries is Unavailable, and the same step again (a USSD hop sent again, a retried
SMS) answers the first result. Money, receipts and the agent's SMS once, no PIN counted twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from core import errors as E
from core.crypto import FieldCipher
from core.transfers import balance
from menus.actions import ActionContext, ActionFn, MenuBindings
from menus.bindings import bind
from menus.catalogue import CATALOGUE
from tests.integration.core.conftest import PIN, make_agent, make_customer, new_key
from tests.tcp_proxy import Relay, relayed_pool

OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`


@pytest.fixture
async def relay(database_url: str) -> AsyncIterator[Relay]:
    async with relayed_pool(database_url, max_size=2) as relay:
        yield relay


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
    relay.proxy.cut_on(b"COMMIT\x00", from_server=True, refuse=OUTAGE)
    with pytest.raises(E.Unavailable):
        await withdraw(ctx)
    assert relay.proxy.tripped == 1
    relay.proxy.restore()
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


# Where the connection is lost inside a money action: the money call never reaching the
# server, the agent's SMS in the withdrawal's transaction, the COMMIT's answer.
MOMENTS = {
    "statement_lost": b"SELECT * FROM ledger_",
    "sms_lost": b"INSERT INTO outbox",
    "commit_answer_lost": b"COMMIT\x00",
}


@pytest.mark.parametrize("moment", sorted(MOMENTS))
async def test_a_withdrawal_cut_once_is_settled_within_the_step(
    relay: Relay, core_db: asyncpg.Pool, cipher: FieldCipher, moment: str
) -> None:
    """One lost connection inside the withdrawal: the step itself answers the withdrawal
    (before: "temporarily unavailable" even when the money had moved), paid once."""
    agent = await make_agent(core_db)
    customer = await make_customer(core_db, cipher, 2_000_00)
    withdraw = bound(relay.pool, cipher, Gate())["withdraw"]
    key = new_key("ussd")
    ctx = step("withdraw", customer, key, agent=agent, amount_minor=500_00)
    relay.proxy.cut_on(MOMENTS[moment], from_server=moment == "commit_answer_lost")
    result = await withdraw(ctx)
    assert relay.proxy.tripped == 1
    assert result.vars["amount"] == "KES 500.00"
    fee = await core_db.fetchval("SELECT fee FROM transfers WHERE idempotency_key = $1", key)
    assert await balance(core_db, customer) == 2_000_00 - 500_00 - fee
    assert (await agent_sms(core_db, agent), await receipts(core_db, key)) == (1, 1)
    assert await withdraw(ctx) == result  # the step again: the same answer


@pytest.mark.parametrize("moment", ["statement_lost", "commit_answer_lost"])
async def test_a_transfer_cut_once_is_settled_within_the_step(
    relay: Relay, core_db: asyncpg.Pool, cipher: FieldCipher, moment: str
) -> None:
    sender = await make_customer(core_db, cipher, 2_000_00)
    recipient = await make_customer(core_db, cipher)
    send = bound(relay.pool, cipher, Gate())["send_money"]
    key = new_key("ussd")
    ctx = step("send_money", sender, key, recipient=recipient, amount_minor=300_00)
    marker = b"p2p" if moment == "commit_answer_lost" else MOMENTS[moment]
    relay.proxy.cut_on(marker, from_server=moment == "commit_answer_lost")
    result = await send(ctx)
    assert relay.proxy.tripped == 1
    assert result.vars["amount"] == "KES 300.00"
    assert await balance(core_db, recipient) == 300_00
    assert await receipts(core_db, key) == 2  # the sender's and the recipient's, once each
    pin_failures = await core_db.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", sender
    )
    assert pin_failures == 0
    assert await send(ctx) == result
