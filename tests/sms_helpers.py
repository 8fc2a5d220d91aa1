"""Shared helpers for the SMS tests: a test SMSC per test or per module, binds to it, SMS
channels on it, an MO handler that records what it got, and the MO rows of a number (polling:
`tests.helpers.eventually`)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from channels.sms.channel import ChannelTuning, SmsChannel
from channels.sms.handler import InboundSms, MoHandler
from channels.sms.smpp import SessionTuning
from config.settings import SmppBind
from core.sms_messages import SmsMessageStore
from tests.helpers import eventually
from tests.smsc_peer import SmscPeer, running_peer

FAST = SessionTuning(
    connect_timeout_s=2.0,
    reconnect_min_s=0.05,
    reconnect_max_s=0.3,
    throttle_pause_s=0.05,
    unbind_timeout_s=1.0,
    window_wait_s=5.0,
)
DEDUPE_SECRET = b"k" * 32


def bind_for(smsc: int | SmscPeer, **overrides: object) -> SmppBind:
    """A bind to a test SMSC. Given the peer, the system_id is the peer's own account: each
    test SMSC counts message ids from 1, and receipts are matched per account, so tests that
    share the database must not share an account."""
    port = smsc if isinstance(smsc, int) else smsc.port
    fields: dict[str, object] = {
        "system_id": f"gw{port}" if isinstance(smsc, int) else smsc.account,
        "password": "secret",
        "host": "127.0.0.1",
        "port": port,
        "source_addr": "12345",
        "tps": 500.0,
        "window": 10,
        "enquire_link_s": 30.0,
        "response_timeout_s": 5.0,
    }
    fields.update(overrides)
    return SmppBind(**fields)  # type: ignore[arg-type]


@pytest.fixture(name="peer")
async def peer_per_test(tmp_path: Path) -> AsyncIterator[SmscPeer]:
    """A test SMSC of the test's own (its counters and configuration start fresh). A module
    takes it as its `peer` by importing it."""
    async with running_peer(tmp_path) as smsc:
        yield smsc


@pytest.fixture(name="peer", scope="module")
async def peer_per_module(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SmscPeer]:
    """One test SMSC for a whole module (its tests tell their messages apart by number). A
    module takes it as its `peer` by importing it."""
    async with running_peer(Path(tmp_path_factory.mktemp("smsc"))) as smsc:
        yield smsc


def new_msisdn() -> str:
    """A random Kenyan mobile number as the SMSC writes it: digits only, no "+"."""
    return "2547" + "".join(secrets.choice("0123456789") for _ in range(8))


class Recorder:
    """An MO handler that records what it got and can fail on demand (`fail_with`, in order)."""

    def __init__(self) -> None:
        self.seen: list[InboundSms] = []
        self.fail_with: list[BaseException] = []

    async def handle(self, sms: InboundSms) -> None:
        self.seen.append(sms)
        if self.fail_with:
            raise self.fail_with.pop(0)


def new_channel(
    binds: list[SmppBind],
    store: SmsMessageStore,
    *,
    tuning: ChannelTuning,
    handler: MoHandler | None = None,
) -> SmsChannel:
    """An SMS channel with the tests' fast session tuning, not started."""
    return SmsChannel(
        binds,
        store,
        dedupe_secret=DEDUPE_SECRET,
        handler=handler,
        session_tuning=FAST,
        tuning=tuning,
    )


ChannelFactory = Callable[..., Awaitable[SmsChannel]]


@contextlib.asynccontextmanager
async def channel_factory(
    peer: SmscPeer, store: SmsMessageStore, tuning: ChannelTuning
) -> AsyncIterator[ChannelFactory]:
    """`make(handler=None, tuning=tuning, **bind)`: a started channel with one bind to `peer`,
    returned once the SMSC counts it bound. Every channel it made is stopped on the way out."""
    channels: list[SmsChannel] = []

    async def make(
        handler: MoHandler | None = None, tuning: ChannelTuning = tuning, **bind: Any
    ) -> SmsChannel:
        channel = new_channel([bind_for(peer, **bind)], store, tuning=tuning, handler=handler)
        await channel.start()
        channels.append(channel)
        assert await channel.sessions[0].wait_bound(10)
        await eventually(peer.bound, lambda n: n >= 1)
        return channel

    try:
        yield make
    finally:
        for channel in channels:
            await channel.stop()


async def mo_rows(pool: asyncpg.Pool, msisdn: str) -> list[asyncpg.Record]:
    """The stored MOs from `msisdn` (digits, as the SMSC sends them), oldest first."""
    return list(
        await pool.fetch(
            "SELECT * FROM sms_messages WHERE direction = 'mo' AND msisdn = $1 ORDER BY id",
            "+" + msisdn,
        )
    )
