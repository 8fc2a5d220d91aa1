"""The USSD channel when its Redis connections are cut at the network while Redis stays up.

The gateway's Redis URL points at a `CuttableProxy` in front of the run's Redis, so both the
session store's pipelined link and redis-py (the menu listener) go through it. Cuts happen at
well-defined points: between two hops, from inside the bound send-money action (the real core
still moves the money), or at the moment Redis answers a given session write (it ran; the
gateway never hears so). Every hop must get an answer in Africa's Talking's idiom within the
USSD deadline, money must move at most once, and the link must come back without a restart.
The ledger check runs after every test.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest

from config.settings import Settings
from gateway.keys import MENU_BINDINGS, USSD_SERVICE
from menus.actions import ActionContext, ActionResult
from menus.redis_link import RedisLink
from tests.tcp_proxy import CuttableProxy, redis_proxy
from tests.ussd_support import PIN, AtSession, UssdEnv, moved_once, ready_to_send, start_env

DEADLINE_S = 2.0  # the USSD deadline of this module's gateway (a hop must answer within it)
OUTAGE = 1_000_000  # refusals: an outage that lasts until `restore()`
DOWN = "END The service is temporarily unavailable. Please try again later."
CLAIM = b'"f":{"hop"'  # in the session write that claims a hop with side effects
CLOSING = b'"e":true'  # in the session write that stores a step's END screen


class Cut:
    def __init__(self, env: UssdEnv, proxy: CuttableProxy) -> None:
        self.env, self.proxy = env, proxy

    @property
    def link(self) -> RedisLink:
        return self.env.app[USSD_SERVICE].store.link  # type: ignore[no-any-return]

    async def timed(self, s: AtSession, text: str | None = None) -> str:
        """One hop (None: the dial, "": the same hop again), answered within the deadline."""
        started = time.monotonic()
        if text is None:
            body = await s.dial()
        elif text == "":
            body = await s.post(s.form())
        else:
            body = await s.send(text)
        assert time.monotonic() - started < DEADLINE_S, body
        return body

    @contextmanager
    def cut_inside(self, action: str, *, refuse: int) -> Iterator[None]:
        """The action's call cuts every Redis connection, then runs the real core function."""
        functions = self.env.app[MENU_BINDINGS].functions
        real = functions[action]

        async def cut_then_run(ctx: ActionContext) -> ActionResult:
            self.proxy.cut(refuse=refuse)
            return await real(ctx)

        functions[action] = cut_then_run
        try:
            yield
        finally:
            functions[action] = real


@pytest.fixture(scope="module")
async def cut(settings: Settings) -> AsyncIterator[Cut]:
    assert settings.redis_url is not None
    proxy, via = redis_proxy(settings.redis_url)
    port = await proxy.start()
    try:
        async for env in start_env(settings, redis_url=via(port), ussd_deadline_s=DEADLINE_S):
            yield Cut(env, proxy)
    finally:
        await proxy.close()


@pytest.fixture(autouse=True)
async def ledger_ok(cut: Cut) -> AsyncIterator[None]:
    yield
    cut.proxy.restore()
    await cut.env.bank.check_ledger()


# --- navigation -------------------------------------------------------------------------------


async def test_cut_between_hops_the_next_hop_reconnects(cut: Cut) -> None:
    msisdn = await cut.env.bank.open(balance_minor=5_00)
    s = cut.env.session(msisdn)
    assert "Hello Amina" in await cut.timed(s)
    connects = cut.link.connects
    cut.proxy.cut(refuse=0)
    assert await cut.timed(s, "2") == "CON Enter your PIN:"
    assert cut.link.connects == connects + 1
    assert await cut.timed(s, PIN) == "END Your balance is KES 5.00."


async def test_outage_of_one_hop_then_the_hop_again_goes_on(cut: Cut) -> None:
    msisdn = await cut.env.bank.open(balance_minor=5_00)
    s = cut.env.session(msisdn)
    assert "Hello Amina" in await cut.timed(s)
    cut.proxy.cut(refuse=OUTAGE)
    assert await cut.timed(s, "2") == DOWN
    cut.proxy.restore()
    # The provider sends the hop again: nothing of it was stored, so it runs now.
    assert await cut.timed(s, "") == "CON Enter your PIN:"
    assert await cut.timed(s, PIN) == "END Your balance is KES 5.00."


async def test_reply_to_a_navigation_write_lost(cut: Cut) -> None:
    """A hop's session write lands and its answer is lost: the link sends it again, which
    finds it stored; the hop answers its screen and the next hop follows from there."""
    msisdn = await cut.env.bank.open(balance_minor=5_00)
    s = cut.env.session(msisdn)
    assert "Hello Amina" in await cut.timed(s)
    dropped = cut.proxy.replies_dropped
    cut.proxy.cut_at_reply(b'"s":"bal_pin"')
    assert await cut.timed(s, "2") == "CON Enter your PIN:"
    assert cut.proxy.replies_dropped == dropped + 1
    assert await cut.timed(s, PIN) == "END Your balance is KES 5.00."


# --- money ------------------------------------------------------------------------------------


async def test_cut_inside_send_money_the_link_reconnects(cut: Cut) -> None:
    s, sender, recipient = await ready_to_send(cut.env)
    before = cut.env.calls["send_money"]
    with cut.cut_inside("send_money", refuse=0):
        receipt = await cut.timed(s, PIN)
    assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
    assert await cut.timed(s, "") == receipt  # the provider retries: the stored answer
    assert cut.env.calls["send_money"] == before + 1
    await moved_once(cut.env, sender, recipient)


async def _receipt_once_back(
    cut: Cut, s: AtSession, sender: str, recipient: str, *, calls: int
) -> None:
    """Redis back: the hop sent again gets the receipt, a retry the same one; `send_money` was
    called `calls` times in all and the money moved once."""
    cut.proxy.restore()
    receipt = await cut.timed(s, "")
    assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
    assert await cut.timed(s, "") == receipt
    assert cut.env.calls["send_money"] == calls
    await moved_once(cut.env, sender, recipient)


async def test_outage_from_inside_send_money(cut: Cut) -> None:
    """Redis is out of reach from the moment the money moves until after the answer: the
    session record still says the hop is in flight. The customer still gets the receipt (the
    END screen is all there is left to show: told "unavailable", they would send the money
    again from a new session). Once Redis is back, the provider's retry of the hop stores the
    held write first (`menus.final_writes`) and gets the receipt at once: nothing runs again."""
    s, sender, recipient = await ready_to_send(cut.env)
    before = cut.env.calls["send_money"]
    with cut.cut_inside("send_money", refuse=OUTAGE):
        first = await cut.timed(s, PIN)
    assert first.startswith("END KES 100.00 sent to Neema Achieng"), first
    await moved_once(cut.env, sender, recipient)
    await _receipt_once_back(cut, s, sender, recipient, calls=before + 1)


async def test_reply_to_the_claim_lost(cut: Cut) -> None:
    """Redis stores the claim of the send-money hop, and the connection drops before its
    answer: the link sends the claim again on a new connection. The step must go on (the
    claim found is its own), not wait for itself and answer "still processing"."""
    s, sender, recipient = await ready_to_send(cut.env)
    before = cut.env.calls["send_money"]
    dropped = cut.proxy.replies_dropped
    cut.proxy.cut_at_reply(CLAIM)
    receipt = await cut.timed(s, PIN)
    assert cut.proxy.replies_dropped == dropped + 1
    assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
    assert cut.env.calls["send_money"] == before + 1
    assert await cut.timed(s, "") == receipt
    await moved_once(cut.env, sender, recipient)


async def test_claim_stored_then_an_outage(cut: Cut) -> None:
    """The claim lands, its answer is lost and Redis stays out of reach: the hop answers
    "unavailable" before any money moves. Once Redis is back, the hop sent again runs (the
    claim left behind is dead) and moves the money once."""
    s, sender, recipient = await ready_to_send(cut.env)
    before = cut.env.calls["send_money"]
    cut.proxy.cut_at_reply(CLAIM, refuse=OUTAGE)
    assert await cut.timed(s, PIN) == DOWN
    assert cut.env.calls["send_money"] == before
    assert await cut.env.bank.transfers(recipient) == 0
    await _receipt_once_back(cut, s, sender, recipient, calls=before + 1)


async def test_reply_to_the_final_write_lost(cut: Cut) -> None:
    """The step's last write (its receipt) lands, its answer is lost: the link sends it again,
    which finds it stored. The customer gets the receipt, a retry too, money moved once."""
    s, sender, recipient = await ready_to_send(cut.env)
    before = cut.env.calls["send_money"]
    dropped = cut.proxy.replies_dropped
    cut.proxy.cut_at_reply(CLOSING)
    receipt = await cut.timed(s, PIN)
    assert cut.proxy.replies_dropped == dropped + 1
    assert receipt.startswith("END KES 100.00 sent to Neema Achieng"), receipt
    assert await cut.timed(s, "") == receipt
    assert cut.env.calls["send_money"] == before + 1
    await moved_once(cut.env, sender, recipient)


# --- an outage over several hops --------------------------------------------------------------


async def test_outage_over_several_hops_then_the_link_comes_back(cut: Cut) -> None:
    msisdn = await cut.env.bank.open(balance_minor=5_00)
    s = cut.env.session(msisdn)
    assert "Hello Amina" in await cut.timed(s)
    cut.proxy.cut(refuse=OUTAGE)
    refused = cut.proxy.refused
    assert await cut.timed(s, "2") == DOWN
    assert await cut.timed(s, "") == DOWN  # the provider retries
    for _ in range(3):  # the customer dials again, and again
        assert await cut.timed(cut.env.session(msisdn)) == DOWN
    assert cut.proxy.refused >= refused + 5  # every hop tried to connect, none hung
    connects = cut.link.connects
    cut.proxy.restore()
    assert "Hello Amina" in await cut.timed(cut.env.session(msisdn))
    assert cut.link.connects == connects + 1
    assert await cut.timed(s, "") == "CON Enter your PIN:"
    assert await cut.timed(s, PIN) == "END Your balance is KES 5.00."
