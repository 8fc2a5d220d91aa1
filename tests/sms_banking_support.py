"""Test support for SMS banking: a running gateway with the real banking core, the USSD menus and
the SMS channel bound to a test SMSC (tests/smsc_peer.py), and helpers that send MOs as a phone
would and read back the texts the SMSC received for a number (multi-part texts joined)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from channels.sms.channel import ChannelTuning
from channels.sms.encoding import decode_payload, parse_udh
from channels.sms.executor import SmsBanking, stored_reply
from channels.sms.handler import InboundSms
from config.settings import Settings
from core.fees import seed_demo_tariffs
from gateway.app import create_app
from gateway.keys import CIPHER, MENU_BINDINGS, PG_POOL, SENDERS, SMS_CHANNEL
from gateway.sms import sms_channel
from tests.conftest import running_app
from tests.helpers import eventually
from tests.sms_helpers import bind_for
from tests.smsc_peer import SmscPeer
from tests.ussd_support import Bank, CallCounter, UssdEnv


def digits(msisdn: str) -> str:
    return msisdn.lstrip("+")


def texts_from(submits: list[dict[str, Any]]) -> list[str]:
    """The accepted texts in arrival order, concatenated parts joined by their UDH reference."""
    out: list[str] = []
    pending: dict[int, dict[int, str]] = {}
    for record in submits:
        if record["status"] != 0:
            continue
        payload, concat = bytes.fromhex(record["hex"]), None
        if record["esm_class"] & 0x40:
            payload, concat = parse_udh(payload)
        text, _ = decode_payload(payload, record["data_coding"])
        if concat is None:
            out.append(text)
            continue
        parts = pending.setdefault(concat.ref, {})
        parts[concat.seq] = text
        if len(parts) == concat.total:
            out.append("".join(parts[i] for i in sorted(parts)))
            del pending[concat.ref]
    return out


@dataclass
class SmsEnv(UssdEnv):
    peer: SmscPeer = None  # type: ignore[assignment]

    async def texts(self, msisdn: str) -> list[str]:
        return texts_from([s for s in await self.peer.submits() if s["dest"] == digits(msisdn)])

    async def wait_texts(self, msisdn: str, count: int, timeout_s: float = 15.0) -> list[str]:
        async def probe() -> list[str]:
            return await self.texts(msisdn)

        return await eventually(probe, lambda t: len(t) >= count, timeout_s)

    async def mo(self, msisdn: str, text: str) -> None:
        """One MO from `msisdn`: ASCII as is, anything else as UCS-2 (data_coding 8), as a phone
        sends text outside GSM-7."""
        if text.isascii():
            await self.peer.mo(source=digits(msisdn), text=text)
        else:
            hex_text = text.encode("utf-16-be").hex()
            await self.peer.mo(source=digits(msisdn), hex=hex_text, data_coding=8)

    async def ask(self, msisdn: str, text: str, timeout_s: float = 15.0) -> str:
        """Send one MO and return the reply to it (the MT sent with ref "mo:{MO id}"), once the
        SMSC has it. Receipts from the outbox may come in between; they are not the reply."""
        pool = self.bank.pool
        last = await pool.fetchval(
            "SELECT coalesce(max(id), 0) FROM sms_messages WHERE direction = 'mo' AND msisdn = $1",
            msisdn,
        )
        await self.mo(msisdn, text)

        async def reply() -> Any:
            return await pool.fetchrow(
                "SELECT t.body, t.status FROM sms_messages m JOIN sms_messages t "
                "ON t.direction = 'mt' AND t.ref = 'mo:' || m.id "
                "WHERE m.direction = 'mo' AND m.msisdn = $1 AND m.id > $2 ORDER BY m.id LIMIT 1",
                msisdn,
                last,
            )

        row = await eventually(reply, lambda r: r is not None, timeout_s)
        assert row["status"] != "failed", row
        body = str(row["body"])  # as stored: a confirmation code masked

        def arrived(texts: list[str]) -> str | None:
            return next((t for t in texts if stored_reply(t) == body), None)

        texts = await eventually(lambda: self.texts(msisdn), arrived, timeout_s)
        found = arrived(texts)
        assert found is not None
        return found


async def start_sms_env(
    settings: Settings,
    peer: SmscPeer,
    *,
    others: tuple[web.Application, ...] = (),
    **overrides: Any,
) -> AsyncIterator[SmsEnv]:
    """The gateway with SMS banking on `peer`. `others`: apps of the same run (the session's
    admin app) whose outbox dispatchers would race this one for "sms" rows and send them to the
    log; their "sms" sender is set aside while this env runs."""
    set_aside = [(other, other[SENDERS].pop("sms", None)) for other in others]
    try:
        async for env in _sms_env(settings, peer, **overrides):
            yield env
    finally:
        for other, sender in set_aside:
            if sender is not None:
                other[SENDERS]["sms"] = sender


async def _sms_env(settings: Settings, peer: SmscPeer, **overrides: Any) -> AsyncIterator[SmsEnv]:
    overrides.setdefault("login_rate_per_minute", 100_000)
    configured = replace(settings, smpp_binds=(bind_for(peer, tps=200),), **overrides)
    app = create_app(configured, run_migrations=False, start_channels=False)
    app.cleanup_ctx.append(sms_channel)
    async with running_app(app) as client:
        assert await app[SMS_CHANNEL].sessions[0].wait_bound(10)
        pool = app[PG_POOL]
        if not await pool.fetchval("SELECT EXISTS (SELECT 1 FROM tariffs WHERE currency = 'KES')"):
            await seed_demo_tariffs(pool, "KES")
        counter = CallCounter()
        counter.wrap(app[MENU_BINDINGS])
        yield SmsEnv(client, Bank(pool, app[CIPHER]), counter, configured, peer)


def code() -> str:
    return secrets.token_hex(3)


def sms_env_fixtures() -> tuple[Any, Any]:
    """A test module's `env` (module scope: SMS banking on the module's `peer`, beside the
    session's admin `app`) and its autouse `ledger_ok` (the ledger check after every test).
    Bind them at module level: `env, ledger_ok = sms_env_fixtures()`."""

    @pytest.fixture(scope="module")
    async def env(
        settings: Settings, peer: SmscPeer, app: web.Application
    ) -> AsyncIterator[SmsEnv]:
        async for e in start_sms_env(settings, peer, others=(app,)):
            yield e

    @pytest.fixture(autouse=True)
    async def ledger_ok(env: SmsEnv) -> AsyncIterator[None]:
        yield
        await env.bank.check_ledger()

    return env, ledger_ok


def banking(env: SmsEnv) -> SmsBanking:
    """The app's MO handler: the SMS banking executor."""
    handler = env.app[SMS_CHANNEL].handler
    assert isinstance(handler, SmsBanking)
    return handler


async def reprocess(env: SmsEnv, msisdn: str, text: str) -> int:
    """The latest MO of `msisdn` handled again by the app's handler (a crash before its reply was
    recorded, a lease taken over), as `text`; the count of its replies (by their ref)."""
    mo = await env.bank.pool.fetchrow(
        "SELECT * FROM sms_messages WHERE direction = 'mo' AND msisdn = $1 ORDER BY id DESC "
        "LIMIT 1",
        msisdn,
    )
    await banking(env).handle(inbound(msisdn, text, int(mo["id"]), attempt=2))
    return int(
        await env.bank.pool.fetchval(
            "SELECT count(*) FROM sms_messages WHERE direction = 'mt' AND ref = $1",
            f"mo:{mo['id']}",
        )
    )


class Replies:
    """A ReplySender that keeps what it was asked to send, for tests that call the SMS banking
    handler directly (the SMPP path has its own tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []

    async def send_text(
        self,
        recipient: str,
        text: str,
        *,
        ref: str | None = None,
        sensitive: bool = False,
        first_attempt: bool = False,
        stored_as: str | None = None,
    ) -> str:
        self.sent.append((recipient, text, ref))
        return f"id{len(self.sent)}"


def inbound(msisdn: str, text: str, mo_id: int, attempt: int = 1) -> InboundSms:
    """One complete single-part MO as the channel hands it to the handler."""
    return InboundSms(
        id=mo_id,
        msisdn=msisdn,
        short_code="12345",
        text=text,
        smsc="test",
        received_at=datetime.now(UTC),
        parts=1,
        complete=True,
        attempt=attempt,
    )


def retry_horizon_s() -> float:
    """How long after its first attempt the channel may still run an MO again (default tuning):
    the delays between attempts (30, 60, 90, 120 s) and each attempt's handler timeout."""
    tuning = ChannelTuning()
    delays = sum(tuning.retry_delay_s * n for n in range(1, tuning.max_attempts))
    return delays + tuning.handler_timeout_s * tuning.max_attempts


def fresh_mo_id() -> int:
    return 10**12 + secrets.randbelow(10**9)  # an id no stored MO has
