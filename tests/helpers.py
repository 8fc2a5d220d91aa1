"""Test helpers: polling with a deadline, fresh phone numbers, admins with TOTP, logins, and
assertions on the error format."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pyotp
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp.web import Application
from prometheus_client.parser import text_string_to_metric_families

from core.identity import create_admin
from gateway.keys import CIPHER, SESSIONMAKER

PASSWORD = "Corr3ct-horse-battery"
T = TypeVar("T")
POLL_INTERVAL_S = 0.02


async def eventually(
    probe: Callable[[], Awaitable[T] | T],
    until: Callable[[T], object] = bool,
    timeout_s: float = 10.0,
) -> T:
    """Poll `probe()` (a coroutine function or a plain one) until `until(value)` holds (by
    default: the value is truthy) and return that value; AssertionError with the last value at
    the deadline. The one way tests wait for something (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        result = cast(T, value)
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s}s; last value: {result!r}")
        await asyncio.sleep(POLL_INTERVAL_S)


def new_msisdn() -> str:
    """A random Kenyan mobile number in E.164 ("+2547" and 8 digits): tests share the database,
    so each makes customers of its own."""
    return "+2547" + "".join(secrets.choice("0123456789") for _ in range(8))


@dataclass
class Admin:
    username: str
    password: str
    totp: pyotp.TOTP
    next_step: int = 0

    def otp(self) -> str:
        """A code not used before: this step, then the next (one step of drift is allowed)."""
        step = max(int(time.time()) // 30, self.next_step)
        self.next_step = step + 1
        return self.totp.generate_otp(step)


async def make_admin(app: Application, role: str = "admin") -> Admin:
    username = f"adm{secrets.token_hex(5)}"
    async with app[SESSIONMAKER].begin() as db:
        created = await create_admin(
            db, app[CIPHER], username=username, password=PASSWORD, role=role, password_rounds=4
        )
    totp = pyotp.parse_uri(created.provisioning_uri)
    assert isinstance(totp, pyotp.TOTP)
    return Admin(username, PASSWORD, totp)


async def login(client: TestClient, admin: Admin) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/auth/login",
        json={"username": admin.username, "password": admin.password, "otp": admin.otp()},
    )
    body = await resp.json()
    assert resp.status == 200, body
    return body  # type: ignore[no-any-return]


async def token_for(client: TestClient, role: str = "admin") -> str:
    app = client.server.app
    assert app is not None
    admin = await make_admin(app, role)
    return str((await login(client, admin))["access_token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def assert_error(
    resp: ClientResponse, status: int, code: str | None = None
) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert set(body) == ERROR_KEYS, body
    assert body["status_code"] == status
    if code is not None:
        assert body["error_code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body  # type: ignore[no-any-return]


ERROR_KEYS = {"status_code", "error_code", "message", "details"}
RAW_READ_DEADLINE_S = 10.0


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_exchange(host: str, port: int, data: bytes) -> RawAnswer:
    """Write `data` on a new connection and read one answer: for requests aiohttp's client will
    not send. The answer ends at its Content-Length, or where the server closes the connection
    (it may keep it open a while after answering: aiohttp lingers to drain the rest of an
    unfinished body); a deadline bounds the read."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(RAW_READ_DEADLINE_S):
            head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length")
            body = await (reader.readexactly(int(length)) if length else reader.read(-1))
    finally:
        writer.close()
    return RawAnswer(int(status_line.split(" ")[1]), headers, body)


async def direct_token(app: Application, role: str = "admin") -> str:
    """An access token for a new admin without the login round trip (and its rate limit);
    tests of the login itself use `login`."""
    from core.identity import load_principal
    from gateway.keys import TOKENS

    admin = await make_admin(app, role)
    async with app[SESSIONMAKER].begin() as db:
        from sqlalchemy import select

        from core.models import AdminUser

        user_id = (
            await db.execute(select(AdminUser.id).where(AdminUser.username == admin.username))
        ).scalar_one()
        principal = await load_principal(db, user_id)
    return app[TOKENS].issue(principal).access_token


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: TestClient) -> Samples:
    """`/metrics` as {(sample name, sorted labels): value}."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await resp.text())
        for sample in family.samples
    }


# A stored digest (a hash, a Redis key) is a run of hex: "...675a2580a55f..." holds 2580 between
# letters once in a few thousand runs. It is no PIN: `shows_pin` leaves such runs out.
_DIGEST = re.compile(r"[0-9a-f]{32,}")


def shows_pin(pin: str, text: str) -> bool:
    """Whether `text` shows `pin` as a number of its own: not inside a longer number (an MSISDN,
    a timestamp, an amount, a reference) and not inside a digest, where four given digits turn
    up by chance."""
    return re.search(rf"(?<!\d){re.escape(pin)}(?!\d)", _DIGEST.sub("<digest>", text)) is not None
