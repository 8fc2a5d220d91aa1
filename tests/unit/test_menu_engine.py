"""Engine tables over the default menu: (screen, history, input) -> (next screen, screen
contains). Actions are plain test functions; sessions live in memory."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest

from core.crypto import FieldCipher
from core.errors import CoreError
from menus import machine as machine_module
from menus.actions import ActionContext, ActionResult, MenuBindings
from menus.catalogue import CATALOGUE
from menus.compiled import CompiledMenu
from menus.engine import Engine, Step, UssdRequest, idempotency_key
from menus.loader import load_file
from menus.machine import apply_plain, plain_moves
from menus.registry import MenuSet
from menus.seed import DEFAULT_MENU_FILE
from menus.service import UssdService
from menus.session import MemorySessionStore, Session
from menus.validate import check

CIPHER = FieldCipher("unit-test-secret-" + "k" * 32)
STATEMENT = [f"0{i}/02 Paid KES {i},000.00 to +2547000000{i:02d}" for i in range(1, 9)]


@dataclass
class Actions:
    products: list[dict[str, str]] = field(default_factory=lambda: [{"code": "q", "name": "Quick"}])
    loan: bool = False

    async def lookup(self, ctx: ActionContext) -> ActionResult:
        return ActionResult(customer={"registered": True, "first_name": "Juma", "language": "en"})

    async def pin_checked(self, ctx: ActionContext) -> ActionResult:
        if ctx.secrets.get("pin") != "1234":
            raise CoreError("wrong", code="WRONG_PIN", attempts_left=2)
        return ActionResult(
            vars={
                "balance": "KES 10.00",
                "statement": STATEMENT,
                "reference": "TX1",
                "amount": "KES 500.00",
                "fee": "KES 5.00",
                "recipient_name": "Neema",
            }
        )

    async def quote(self, ctx: ActionContext) -> ActionResult:
        amount = int(ctx.vars["amount_minor"])
        return ActionResult(
            vars={
                "amount": f"KES {amount // 100}.00",
                "fee": "KES 5.00",
                "total": "KES 505.00",
                "recipient_name": "Neema",
            }
        )

    async def language(self, ctx: ActionContext) -> ActionResult:
        return ActionResult(language=str(ctx.params["language"]))

    async def loan_products(self, ctx: ActionContext) -> ActionResult:
        first = self.products[0] if self.products else {}
        return ActionResult(
            vars={
                "loan_products": self.products,
                "loan_products_count": len(self.products),
                "loan_product": first.get("code"),
                "loan_product_name": first.get("name"),
            }
        )

    async def loan_status(self, ctx: ActionContext) -> ActionResult:
        return ActionResult(
            vars={"has_loan": self.loan, "amount_due": "KES 1,050.00", "due_date": "01/03/2027"}
        )

    def bind(self, bindings: MenuBindings) -> None:
        bindings.bind("customer.lookup", self.lookup)
        for name in ("balance", "statement", "send_money"):
            bindings.bind(name, self.pin_checked)
        bindings.bind("send_money.quote", self.quote)
        bindings.bind("language.set", self.language)
        bindings.bind("loans.products", self.loan_products)
        bindings.bind("loans.status", self.loan_status)


def build(actions: Actions | None = None) -> tuple[Engine, CompiledMenu]:
    bindings = MenuBindings(CATALOGUE)
    (actions or Actions()).bind(bindings)
    engine = Engine(bindings, CIPHER, currency="KES", country_code="254")
    data, _ = load_file(DEFAULT_MENU_FILE)
    menu, problems = check(data, CATALOGUE, version=3)
    assert menu is not None, problems
    return engine, engine.attach(menu)


ENGINE, MENU = build()
CUSTOMER = {"registered": True, "first_name": "Juma"}
SENDING = {
    "recipient": "+254712345678",
    "amount_minor": 50_000,
    "amount": "KES 500.00",
    "fee": "KES 5.00",
    "recipient_name": "Neema",
}


class Row(NamedTuple):
    """(screen, history, variables, page, input) -> (next screen, the reply contains, ends)"""

    label: str
    screen: str
    history: list[str]
    variables: dict[str, Any]
    page: int
    text: str
    after: str
    contains: str
    end: bool


TABLE: list[Row] = [
    Row(*r)
    for r in [
        ("menu choice", "main", [], {}, 0, "2", "bal_pin", "Enter your PIN:", False),
        ("invalid choice", "main", [], {}, 0, "9", "main", "Invalid choice.\nHello Juma", False),
        ("letters are no choice", "main", [], {}, 0, "two", "main", "Invalid choice.", False),
        ("home", "bal_pin", ["main"], {}, 0, "00", "main", "Hello Juma", False),
        ("back", "send_phone", ["main"], {}, 0, "0", "main", "1. Send money", False),
        ("back with nowhere to go", "main", [], {}, 0, "0", "main", "Hello Juma", False),
        (
            "msisdn in local form",
            "send_phone",
            ["main"],
            {},
            0,
            "0712345678",
            "send_amount",
            "Enter the amount:",
            False,
        ),
        (
            "a short number",
            "send_phone",
            ["main"],
            {},
            0,
            "07123",
            "send_phone",
            "Invalid entry, try again.",
            False,
        ),
        (
            "three decimals",
            "send_amount",
            ["main", "send_phone"],
            {"recipient": "+254712345678"},
            0,
            "12.345",
            "send_amount",
            "Invalid entry",
            False,
        ),
        (
            "zero",
            "send_amount",
            ["main", "send_phone"],
            {"recipient": "+254712345678"},
            0,
            "0.00",
            "send_amount",
            "Invalid entry",
            False,
        ),
        (
            "amount, then the quote",
            "send_amount",
            ["main", "send_phone"],
            {"recipient": "+254712345678"},
            0,
            "500",
            "send_confirm",
            "Send KES 500.00 to Neema +254712345678? Fee KES 5.00.\n1. Confirm\n2. Cancel",
            False,
        ),
        ("cancel", "send_confirm", ["main"], SENDING, 0, "2", "cancelled", "Cancelled.", True),
        (
            "confirm",
            "send_confirm",
            ["main"],
            SENDING,
            0,
            "1",
            "send_pin",
            "Enter your PIN:",
            False,
        ),
        (
            "confirm, not 3",
            "send_confirm",
            ["main"],
            SENDING,
            0,
            "3",
            "send_confirm",
            "Invalid choice.",
            False,
        ),
        (
            "a PIN too short",
            "send_pin",
            ["main"],
            SENDING,
            0,
            "12",
            "send_pin",
            "The PIN is 4 digits.",
            False,
        ),
        (
            "the right PIN",
            "send_pin",
            ["main"],
            SENDING,
            0,
            "1234",
            "send_done",
            "KES 500.00 sent to Neema. Fee KES 5.00. Ref TX1.",
            True,
        ),
        (
            "a wrong PIN",
            "send_pin",
            ["main"],
            SENDING,
            0,
            "0000",
            "send_pin_retry",
            "Wrong PIN, 2 tries left.",
            False,
        ),
        (
            "statement page 1",
            "bal_pin",
            ["main"],
            {},
            0,
            "1234",
            "bal_done",
            "Your balance is KES 10.00.",
            True,
        ),
        (
            "statement next page",
            "st_done",
            ["main", "st_pin"],
            {"statement": STATEMENT, "balance": "KES 1.00"},
            0,
            "98",
            "st_done",
            "0. Back",
            False,
        ),
        (
            "statement previous page",
            "st_done",
            ["main", "st_pin"],
            {"statement": STATEMENT, "balance": "KES 1.00"},
            1,
            "0",
            "st_done",
            "Statement. Balance KES 1.00",
            False,
        ),
        (
            "98 on a one-page screen is just input",
            "main",
            [],
            {},
            0,
            "98",
            "main",
            "Invalid choice.",
            False,
        ),
        (
            "language",
            "lang_menu",
            ["main", "account"],
            {},
            0,
            "2",
            "lang_done",
            "Lugha yako sasa ni Kiswahili.",
            True,
        ),
        (
            "loans: one product goes straight to the amount",
            "loans",
            ["main"],
            {},
            0,
            "1",
            "ln_amount",
            "Enter the loan amount:",
            False,
        ),
        (
            "loans: no open loan",
            "loans",
            ["main"],
            {},
            0,
            "3",
            "ln_no_loan",
            "You have no open loan.",
            True,
        ),
    ]
]


async def step(
    row: Row, *, menu: CompiledMenu = MENU, engine: Engine = ENGINE
) -> tuple[Step, str, bool]:
    session = Session(
        key="unit:1",
        msisdn="+254700000001",
        menu=menu.name,
        version=menu.version,
        language="en",
        state=row.screen,
        page=row.page,
        history=list(row.history),
        vars=dict(row.variables),
        customer=dict(CUSTOMER),
    )
    s = Step(menu, session, deadline=time.monotonic() + 5)
    await engine.run(s, row.text)
    reply = engine.reply(s)
    return s, reply.text, reply.end


def row(screen: str, history: list[str], variables: dict[str, Any], text: str) -> Row:
    return Row("", screen, history, variables, 0, text, "", "", False)


@pytest.mark.parametrize("row", TABLE, ids=[r.label for r in TABLE])
async def test_engine_table(row: Row) -> None:
    s, reply, ended = await step(row)
    assert s.state == row.after and s.session.state == row.after
    assert row.contains in reply, reply
    assert ended is row.end


async def test_loans_with_several_products_offer_them_by_name() -> None:
    engine, menu = build(
        Actions(
            products=[{"code": "a", "name": "Salary advance"}, {"code": "b", "name": "School fees"}]
        )
    )
    s, reply, _ = await step(row("loans", ["main"], {}, "1"), menu=menu, engine=engine)
    assert s.state == "ln_pick" and "1. Salary advance\n2. School fees" in reply
    s2, reply, _ = await step(
        row("ln_pick", ["main", "loans"], dict(s.session.vars), "2"), menu=menu, engine=engine
    )
    assert s2.state == "ln_amount" and s2.session.vars["loan_product"] == "b"
    assert s2.session.vars["loan_product_label"] == "School fees"


async def test_pin_confirmation_is_compared_without_storing_the_pin() -> None:
    s, _, _ = await step(row("reg_pin", ["welcome"], {}, "4821"))
    assert s.state == "reg_pin_again"
    stored = s.session.secrets["pin"]
    assert "4821" not in stored and CIPHER.decrypt(stored) == "4821"
    assert "pin" not in s.session.vars
    session = s.session
    again = Step(MENU, session, deadline=time.monotonic() + 5)
    await ENGINE.run(again, "4822")
    assert again.state == "reg_pin_again"
    assert "The PINs differ" in ENGINE.reply(again).text


async def test_one_machine_per_version_never_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    original = machine_module.LeanAsyncMachine.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(machine_module.LeanAsyncMachine, "__init__", counting)
    machine = MENU.machine
    menus = MenuSet("*384#")
    menus.add(MENU)
    service = UssdService(menus, ENGINE, MemorySessionStore(), cipher=CIPHER, deadline_s=5)
    inputs: list[str] = []
    for text in [None, "4", "1234", "98", "98", "00", "2", "1234"]:
        if text is not None:
            inputs.append(text)
        await service.handle(
            UssdRequest(
                "unit",
                "m1",
                "+254700000009",
                "*384#",
                "start" if text is None else "continue",
                text,
                tuple(inputs),
                str(len(inputs)),
            ),
            60,
        )
    assert built == [] and MENU.machine is machine


def test_idempotency_key_is_stable_per_session_and_step() -> None:
    a = idempotency_key("africastalking:AT1", 4, "send_do")
    assert a == idempotency_key("africastalking:AT1", 4, "send_do")
    assert a != idempotency_key("africastalking:AT1", 5, "send_do")
    assert a != idempotency_key("africastalking:AT2", 4, "send_do")
    assert len(a) < 80 and "AT1" not in a


async def test_concurrent_steps_on_the_shared_machine_do_not_interfere() -> None:
    async def walk(n: int) -> str:
        _, reply, _ = await step(row("main", [], {}, str(1 + n % 6)))
        return reply

    replies = await asyncio.gather(*(walk(n) for n in range(60)))
    for n, reply in enumerate(replies):
        expected = [
            "recipient's phone",
            "Enter your PIN",
            "agent number",
            "Enter your PIN",
            "Loans",
            "My account",
        ][n % 6]
        assert expected in reply


def _model(source: str, back_to: str | None, registered: bool) -> Step:
    session = Session("k", "+254700000009", MENU.name, MENU.version, "en")
    session.customer = {"registered": registered, "first_name": "Juma"}
    session.vars = {"loan_products_count": 1, "loan_status": "approved", "cleared": True}
    model = Step(MENU, session, deadline=0)
    model.state, model.back_to = source, back_to
    return model


async def test_plain_moves_are_the_machines_own_transitions() -> None:
    """The engine's fast path lands where the shared machine's trigger lands, for every
    (trigger, source) it covers, with the guards (back, routers) both ways."""
    plain = plain_moves(MENU.machine)
    assert ("option_1", "main") in plain and ("submit", "send_phone") in plain
    assert ("back", "bal_pin") in plain and ("route", "home") in plain
    for (trigger, source), candidates in plain.items():
        assert all(MENU.nodes[d].type != "action" for _, d in candidates if d in MENU.nodes)
        for back_to in {None, *(d for _, d in candidates)}:
            for registered in (True, False):
                fast, slow = (
                    _model(source, back_to, registered),
                    _model(source, back_to, registered),
                )
                moved = apply_plain(plain, fast, trigger)
                assert moved == await MENU.machine.events[trigger].trigger(slow), (trigger, source)
                assert fast.state == slow.state, (trigger, source, back_to)
    # Entering an action screen runs its action: never a look-up.
    assert ("option_1", "lang_menu") not in plain and ("confirm", "send_confirm") in plain
    assert ("submit", "send_pin") not in plain
    assert apply_plain(plain, _model("send_pin", None, True), "submit") is None
