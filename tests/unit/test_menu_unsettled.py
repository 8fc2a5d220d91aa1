"""The engine with a money action whose outcome is unknown (`core.errors.Unsettled`: its
connection lost past core.pg.settle's tries): the step ends "the result will come by SMS", the
action is asked again in the background under the same key (`ctx.again`), and the result SMS
is queued once, or not at all when the core queued the customer's receipt. The action here is
a script of answers (the database paths are in tests/integration/test_ussd_pg_cut.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from core import errors as E
from core.crypto import FieldCipher
from menus import engine as engine_module
from menus.actions import ActionContext, ActionResult, MenuBindings
from menus.catalogue import CATALOGUE
from menus.compiled import CompiledMenu
from menus.engine import Engine, Step
from menus.loader import load_file
from menus.seed import DEFAULT_MENU_FILE
from menus.session import Session
from menus.validate import check
from tests.helpers import eventually

CIPHER = FieldCipher("unit-test-secret-" + "u" * 32)
PENDING = {
    "en": "We are still processing your request. The result will come by SMS.",
    "sw": "Bado tunashughulikia ombi lako. Utapokea jibu kwa SMS.",
    "fr": "Votre demande est en cours. Le résultat vous sera envoyé par SMS.",
}
SENT = ActionResult(
    vars={
        "reference": "TX9",
        "amount": "KES 500.00",
        "fee": "KES 5.00",
        "balance": "KES 10.00",
        "recipient_name": "Neema",
    },
    receipted=True,
)
UNSETTLED = E.Unsettled(reason="ConnectionResetError")
Answer = ActionResult | BaseException


@dataclass
class Script:
    """send_money answering from a list, one answer per ask; each ask's context is kept."""

    answers: list[Answer]
    asks: list[ActionContext] = field(default_factory=list)
    gate: asyncio.Event | None = None  # the first ask waits for it (an action past the deadline)

    async def __call__(self, ctx: ActionContext) -> ActionResult:
        self.asks.append(ctx)
        if self.gate is not None and len(self.asks) == 1:
            await self.gate.wait()
        answer = self.answers[min(len(self.asks), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@dataclass
class Sms:
    sent: list[dict[str, str]] = field(default_factory=list)

    async def notify(self, *, msisdn: str, text: str, kind: str, idempotency_key: str) -> None:
        self.sent.append({"msisdn": msisdn, "text": text, "kind": kind, "key": idempotency_key})


@dataclass
class Rig:
    engine: Engine
    menu: CompiledMenu
    script: Script
    sms: Sms

    async def send(self, language: str = "en", *, within_s: float = 5.0) -> tuple[str, bool]:
        """The PIN typed on the send-money PIN screen; the reply (text, ends)."""
        session = Session(
            key="unit:pending",
            msisdn="+254700000009",
            menu=self.menu.name,
            version=self.menu.version,
            language=language,
            state="send_pin",
            history=["main", "send_recipient", "send_amount", "send_confirm"],
            vars={"recipient": "+254712345678", "amount_minor": 50_000},
            customer={"registered": True, "first_name": "Juma"},
        )
        step = Step(self.menu, session, deadline=time.monotonic() + within_s)
        await self.engine.run(step, "1234")
        reply = self.engine.reply(step)
        return reply.text, reply.end

    async def settled(self) -> None:
        await eventually(lambda: not self.engine._late, timeout_s=5.0)


def rig(*answers: Answer, gate: asyncio.Event | None = None) -> Rig:
    bindings = MenuBindings(CATALOGUE)
    script = Script(list(answers), gate=gate)
    bindings.bind("send_money", script)
    sms = Sms()
    bindings.notifier = sms
    engine = Engine(bindings, CIPHER, currency="KES", country_code="254")
    data, _ = load_file(DEFAULT_MENU_FILE)
    menu, problems = check(data, CATALOGUE, version=3)
    assert menu is not None, problems
    return Rig(engine, engine.attach(menu), script, sms)


@pytest.fixture(autouse=True)
def quick_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backoff between asks, shortened: what is tested is its order, not its length."""
    monkeypatch.setattr(engine_module, "UNSETTLED_FIRST_PAUSE_S", 0.01)
    monkeypatch.setattr(engine_module, "UNSETTLED_MAX_PAUSE_S", 0.02)


@pytest.mark.parametrize("language", sorted(PENDING))
async def test_unknown_outcome_answers_by_sms_and_the_receipt_is_the_result(
    language: str,
) -> None:
    r = rig(UNSETTLED, UNSETTLED, SENT)
    assert await r.send(language) == (PENDING[language], True)
    await r.settled()
    assert len(r.script.asks) == 3
    assert {ctx.idempotency_key for ctx in r.script.asks} == {r.script.asks[0].idempotency_key}
    assert [ctx.again for ctx in r.script.asks] == [False, True, True]
    assert r.sms.sent == []  # the core queued the receipt with the movement


async def test_a_result_without_the_core_receipt_is_sent_once() -> None:
    r = rig(UNSETTLED, ActionResult(vars=SENT.vars))
    await r.send()
    await r.settled()
    [sms] = r.sms.sent
    assert sms["text"] == "KES 500.00 sent to Neema. Fee KES 5.00. Ref TX9. Balance KES 10.00."
    assert sms["kind"] == "ussd.late_result"
    assert sms["key"] == r.script.asks[0].idempotency_key + ":sms"


@pytest.mark.parametrize(
    ("refusal", "text"),
    [
        (E.InsufficientFunds(), "You have insufficient funds for this."),
        (E.LimitExceeded(limit="daily"), "This is over your transaction limit."),
    ],
    ids=["insufficient", "limit"],
)
async def test_a_refusal_on_a_later_ask_is_sent_by_sms(refusal: E.CoreError, text: str) -> None:
    r = rig(UNSETTLED, refusal)
    await r.send()
    await r.settled()
    [sms] = r.sms.sent
    assert sms["text"] == text


async def test_the_outage_met_again_by_a_later_ask_keeps_it_unknown() -> None:
    """A later ask whose PIN check or look-up meets the outage is Unavailable, not Unsettled:
    the outcome is still unknown, so it asks again rather than text "unavailable"."""
    r = rig(UNSETTLED, E.Unavailable(reason="OSError"), E.Unavailable(reason="OSError"), SENT)
    await r.send()
    await r.settled()
    assert len(r.script.asks) == 4
    assert r.sms.sent == []


async def test_unavailable_on_the_first_ask_is_still_the_unavailable_screen() -> None:
    """Not money with an unknown outcome (a dependency down before anything moved): the
    system's "temporarily unavailable", nothing runs in the background."""
    r = rig(E.Unavailable(reason="OSError"), SENT)
    text, ended = await r.send()
    assert text == "The service is temporarily unavailable. Please try again later."
    assert ended and not r.engine._late and len(r.script.asks) == 1


async def test_past_the_deadline_then_unknown_keeps_settling() -> None:
    """An action already late (past the USSD deadline) that then ends Unsettled is asked again
    like one unknown within the deadline."""
    gate = asyncio.Event()
    r = rig(UNSETTLED, E.InsufficientFunds(), gate=gate)
    assert await r.send(within_s=0.05) == (PENDING["en"], True)
    gate.set()
    await r.settled()
    assert len(r.script.asks) == 2
    [sms] = r.sms.sent
    assert sms["text"] == "You have insufficient funds for this."


class SettlesSendMoney:
    """A settler that takes send money (the bindings' PromiseSettler is in the integration
    tests); it is never asked to settle here."""

    def settles(self, action: str) -> bool:
        return action == "send_money"

    def changes(self, action: str) -> bool:
        return action == "send_money"

    async def settle_or_abandon(self, pending: object) -> bool:
        raise AssertionError("not at the limit in this test")


async def test_a_late_movement_ending_unavailable_is_asked_again_not_told_unavailable() -> None:
    """Past the deadline a movement's Unavailable is mostly the client's statement timeout,
    and a statement timed out may still commit: told "unavailable", the customer would send
    again under a new key (found in review). It is asked again under its key instead, and the
    core's receipt is the result."""
    gate = asyncio.Event()
    r = rig(E.Unavailable(reason="TimeoutError"), SENT, gate=gate)
    r.engine.bindings.settler = SettlesSendMoney()
    assert await r.send(within_s=0.05) == (PENDING["en"], True)
    gate.set()
    await r.settled()
    assert [ctx.again for ctx in r.script.asks] == [False, True]
    assert {ctx.idempotency_key for ctx in r.script.asks} == {r.script.asks[0].idempotency_key}
    assert r.sms.sent == []


async def test_the_late_limit_ends_the_asks_with_nothing_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = rig(UNSETTLED)
    r.engine.late_limit_s = 0.2
    await r.send()
    await r.settled()
    assert len(r.script.asks) >= 2 and r.sms.sent == []
    assert [x.getMessage() for x in caplog.records if x.levelname == "ERROR"] == [
        "money outcome unknown at the late limit; left to the ledger"
    ]


async def test_a_stop_waits_then_cancels_an_ask_still_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = rig(UNSETTLED)
    await r.send()
    await r.engine.drain(timeout_s=0.1)
    assert not r.engine._late and r.sms.sent == []
    assert [x.getMessage() for x in caplog.records if x.levelname == "ERROR"] == [
        "stopped with a money outcome unknown; left to the ledger"
    ]


async def test_a_stop_waits_for_an_ask_that_settles() -> None:
    r = rig(UNSETTLED, UNSETTLED, E.InsufficientFunds())
    await r.send()
    await r.engine.drain(timeout_s=5.0)
    assert not r.engine._late
    assert [s["text"] for s in r.sms.sent] == ["You have insufficient funds for this."]


async def test_a_stop_cancels_a_late_action_still_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A late action (past the deadline, outcome not known to be lost) still running when the
    stop's wait ends is cancelled and said so; no result SMS."""
    r = rig(SENT, gate=asyncio.Event())
    assert await r.send(within_s=0.05) == (PENDING["en"], True)
    await r.engine.drain(timeout_s=0.1)
    assert not r.engine._late and r.sms.sent == [] and len(r.script.asks) == 1
    assert [x.getMessage() for x in caplog.records if x.name == "menus.engine"] == [
        "stopped before a late action finished; no result SMS"
    ]
