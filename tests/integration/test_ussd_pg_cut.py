"""USSD send money with the gateway's PostgreSQL connections cut at the network (PostgreSQL
stays up): the money call lost on its way, or its COMMIT's answer lost. The hop answers the
transfer (tried again under its key within the hop), and so does the provider's retry of the
hop; the money moved once, no wrong PIN was counted. An outage that outlasts the hop's tries
answers "temporarily unavailable" with nothing moved. The ledger check runs after every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from config.settings import Settings
from tests.tcp_proxy import CuttableProxy, postgres_proxy
from tests.ussd_support import PIN, AtSession, UssdEnv, start_env

DOWN = "END The service is temporarily unavailable. Please try again later."
OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`

CUTS: dict[str, Callable[[CuttableProxy], None]] = {
    "statement_lost": lambda proxy: proxy.cut_on(b"ledger_p2p"),
    "answer_lost": lambda proxy: proxy.cut_on(b"p2p", from_server=True),
}


@dataclass
class Cut:
    env: UssdEnv
    proxy: CuttableProxy


@pytest.fixture(scope="module")
async def cut(settings: Settings, database_url: str) -> AsyncIterator[Cut]:
    proxy, via = postgres_proxy(database_url)
    port = await proxy.start()
    try:
        async for env in start_env(settings, database_url=via(port)):
            yield Cut(env, proxy)
    finally:
        await proxy.close()


@pytest.fixture(autouse=True)
async def ledger_ok(cut: Cut) -> AsyncIterator[None]:
    yield
    cut.proxy.restore()
    await cut.env.bank.check_ledger()


async def ready_to_send(cut: Cut) -> tuple[AtSession, str, str]:
    sender = await cut.env.bank.open(balance_minor=100_000)
    recipient = await cut.env.bank.open(first_name="Neema", last_name="Achieng")
    s = cut.env.session(sender)
    await s.walk("1", recipient, "100", "1")
    return s, sender, recipient


@pytest.mark.parametrize("moment", sorted(CUTS))
async def test_a_cut_send_answers_the_hop_and_its_retry_the_transfer(
    cut: Cut, pg_pool: asyncpg.Pool, moment: str
) -> None:
    s, sender, recipient = await ready_to_send(cut)
    tripped = cut.proxy.tripped
    CUTS[moment](cut.proxy)
    receipt = await s.send(PIN)
    assert cut.proxy.tripped == tripped + 1
    # Before: "temporarily unavailable, please try again later", stored as the session's
    # END, also for the money that had moved: the customer sent it again from a new session.
    assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
    assert await s.post(s.form()) == receipt  # the provider sends the hop again
    bank = cut.env.bank
    assert await bank.balance(recipient) == 10_000
    assert await bank.transfers(recipient) == 1
    failures = await pg_pool.fetchval(
        "SELECT pin_failures FROM customers WHERE msisdn = $1", sender
    )
    assert failures == 0


async def test_an_outage_past_the_hops_tries_is_unavailable_with_nothing_moved(
    cut: Cut, pg_pool: asyncpg.Pool
) -> None:
    s, _, recipient = await ready_to_send(cut)
    cut.proxy.cut_on(b"ledger_p2p", refuse=OUTAGE)
    assert await s.send(PIN) == DOWN
    assert await s.post(s.form()) == DOWN
    cut.proxy.restore()
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM transfers WHERE credit_party = $1", recipient)
        == 0
    )
