"""MO de-duplication: an SMSC redelivery is processed once, a customer's repeat is answered.

The store's expiry times come from its clock, so these tests move a ManualClock past the short
window instead of waiting. Against the smpp34 test SMSC in its own process and the real
PostgreSQL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from channels.sms.channel import ChannelTuning, SmsChannel, assemble_mo
from channels.sms.handler import InboundSms, RetryLater
from core.clock import ManualClock
from core.sms_messages import InboundRecord, SmsMessageStore
from gateway.keys import CIPHER
from tests.helpers import eventually
from tests.sms_helpers import (
    ChannelFactory,
    Recorder,
    channel_factory,
    mo_rows,
    new_msisdn,
    peer_per_test,  # noqa: F401 (the `peer` fixture)
)
from tests.smsc_peer import SmscPeer

SHORT_S, LONG_S = 45, 600
TLV_USER_MESSAGE_REFERENCE = 0x0204
VENDOR_MO_ID = 0x1501
TUNING = ChannelTuning(workers=2, recovery_interval_s=0.1, retry_delay_s=0.05)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC))


@pytest.fixture
def store(app: web.Application, pg_pool: asyncpg.Pool, clock: ManualClock) -> SmsMessageStore:
    return SmsMessageStore(
        pg_pool,
        app[CIPHER],
        assemble=assemble_mo,
        dedupe_window_s=LONG_S,
        short_dedupe_window_s=SHORT_S,
        clock=clock,
    )


@pytest.fixture
async def make_channel(peer: SmscPeer, store: SmsMessageStore) -> AsyncIterator[ChannelFactory]:
    async with channel_factory(peer, store, TUNING) as make:
        yield make


async def all_processed(pool: asyncpg.Pool, msisdn: str, count: int) -> None:
    await eventually(
        lambda: mo_rows(pool, msisdn),
        lambda rows: len(rows) == count and all(r["status"] == "processed" for r in rows),
    )


# --- the channel, end to end ---------------------------------------------------------------


async def test_redelivery_once_and_a_repeat_after_the_short_window_answered(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool, clock: ManualClock
) -> None:
    recorder = Recorder()
    await make_channel(recorder)
    msisdn = new_msisdn()
    # The SMSC delivers the same MO three times (no acknowledgement reached it, say).
    assert await peer.mo(source=msisdn, text="BAL 1234", repeat=3) == [0, 0, 0]
    await all_processed(pg_pool, msisdn, 1)
    clock.advance(seconds=SHORT_S - 1)
    assert await peer.mo(source=msisdn, text="BAL 1234") == [0]  # a late redelivery
    # The customer asks again a minute later: a new question, answered.
    clock.advance(seconds=61 - (SHORT_S - 1))
    assert await peer.mo(source=msisdn, text="BAL 1234") == [0]
    await all_processed(pg_pool, msisdn, 2)
    await eventually(lambda: len(recorder.seen), lambda n: n == 2)
    assert [s.text for s in recorder.seen] == ["BAL 1234", "BAL 1234"]
    assert recorder.seen[0].id != recorder.seen[1].id  # two MOs, two idempotency anchors


async def test_identified_mo_is_one_message_for_the_long_window_and_two_when_ids_differ(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool, clock: ManualClock
) -> None:
    recorder = Recorder()
    await make_channel(recorder, mo_id_tlv=VENDOR_MO_ID)
    msisdn = new_msisdn()
    ref_7 = [[TLV_USER_MESSAGE_REFERENCE, "0007"]]
    assert await peer.mo(source=msisdn, text="MINI 1234", tlvs=ref_7, repeat=2) == [0, 0]
    await all_processed(pg_pool, msisdn, 1)
    clock.advance(seconds=LONG_S - 10)  # long after the short window: still the same MO
    assert await peer.mo(source=msisdn, text="MINI 1234", tlvs=ref_7) == [0]
    # The handset numbers each new message: the same text with the next reference is a new
    # MO, even seconds later.
    ref_8 = [[TLV_USER_MESSAGE_REFERENCE, "0008"]]
    assert await peer.mo(source=msisdn, text="MINI 1234", tlvs=ref_8) == [0]
    await all_processed(pg_pool, msisdn, 2)
    # The SMSC's own MO id (configured per bind) works the same way.
    other = new_msisdn()
    smsc_id = [[VENDOR_MO_ID, b"MO-42".hex()]]
    assert await peer.mo(source=other, text="BAL 1234", tlvs=smsc_id, repeat=2) == [0, 0]
    assert await peer.mo(source=other, text="BAL 1234", tlvs=[[VENDOR_MO_ID, b"MO-43".hex()]])
    await all_processed(pg_pool, other, 2)
    await eventually(lambda: len(recorder.seen), lambda n: n == 4)
    texts = [s.text for s in recorder.seen]
    assert texts == ["MINI 1234", "MINI 1234", "BAL 1234", "BAL 1234"]


async def test_acks_just_before_a_link_drop_are_remembered_for_the_long_window(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool, clock: ManualClock
) -> None:
    recorder = Recorder()
    session = (await make_channel(recorder)).sessions[0]
    # "Just before" is 5 s by default; a loaded test run can take longer than that to process
    # the MO and read its row, and then the ack is rightly no longer unsure (seen once).
    session.tuning = replace(session.tuning, ack_grace_s=300.0)
    msisdn = new_msisdn()
    assert await peer.mo(source=msisdn, text="BAL 1234") == [0]
    await all_processed(pg_pool, msisdn, 1)
    (row,) = await mo_rows(pg_pool, msisdn)
    expiry = "SELECT expires_at FROM sms_mo_seen WHERE dedupe_key = $1"
    short = await pg_pool.fetchval(expiry, row["dedupe_key"])
    assert (short - clock.now()).total_seconds() == pytest.approx(SHORT_S, abs=1)
    # The link drops right after the acknowledgement: the SMSC may not have got it, and may
    # deliver again after a reconnect and its retry timer, beyond the short window.
    await peer.unbind_all()
    await eventually(
        lambda: pg_pool.fetchval(expiry, row["dedupe_key"]),
        lambda at: (at - clock.now()).total_seconds() > LONG_S - 5,
    )
    await eventually(peer.bound, lambda n: n >= 1)
    clock.advance(seconds=SHORT_S * 3)
    # The SMSC may still list the dropped session alone for a moment (its unbind event not
    # read yet): a delivery no session took ([]) is made again, as the SMSC itself would.
    assert await eventually(lambda: peer.mo(source=msisdn, text="BAL 1234"), bool) == [0]
    assert await peer.mo(source=msisdn, text="help") == [0]  # a marker that comes after it
    await all_processed(pg_pool, msisdn, 2)
    assert [s.text for s in recorder.seen] == ["BAL 1234", "help"]


# --- the store ---------------------------------------------------------------------------


def record(msisdn: str, key: str, *, identified: bool = False, received: float = 0.0) -> Any:
    return InboundRecord(
        "acct@host", msisdn, "12345", "BAL 1234", "BAL ****", "gsm7", key, identified, received
    )


async def test_store_windows_extension_and_slow_acknowledgements(
    store: SmsMessageStore, clock: ManualClock
) -> None:
    plain, known, extended, slow = (secrets.token_hex(16) for _ in range(4))
    msisdn = "+" + new_msisdn()
    assert await store.record_mo(record(msisdn, plain)) is not None
    assert await store.record_mo(record(msisdn, known, identified=True)) is not None
    assert await store.record_mo(record(msisdn, extended)) is not None
    await store.extend_dedupe([extended, secrets.token_hex(16)])  # an unknown key: ignored
    # Stored 10 s after it arrived: the SMSC may have given up waiting for the answer.
    assert await store.record_mo(record(msisdn, slow, received=time.monotonic() - 10)) is not None
    for key in (plain, known, extended, slow):
        assert await store.record_mo(record(msisdn, key)) is None
    clock.advance(seconds=SHORT_S)
    assert await store.record_mo(record(msisdn, plain)) is not None  # a new MO after the window
    for key in (known, extended, slow):
        assert await store.record_mo(record(msisdn, key)) is None
    clock.advance(seconds=LONG_S)
    for key in (known, extended, slow):
        assert await store.record_mo(record(msisdn, key)) is not None
    # The purge forgets expired keys only.
    clock.advance(seconds=SHORT_S + 1)
    fresh = secrets.token_hex(16)
    assert await store.record_mo(record(msisdn, fresh)) is not None
    await store.purge()
    left = await store._pool.fetch(
        "SELECT dedupe_key FROM sms_mo_seen WHERE dedupe_key = ANY($1::text[])",
        [plain, known, extended, slow, fresh],
    )
    assert [r["dedupe_key"] for r in left] == [fresh]


# --- replies are recorded with the MO's outcome ----------------------------------------------


class ReplyThenFail:
    """Replies, then fails after the reply went out (the core timed out, say): the retry must
    find the reply on record and not send it again."""

    def __init__(self, channel: SmsChannel, failures: int) -> None:
        self.channel = channel
        self.failures = failures
        self.attempts: list[int] = []

    async def handle(self, sms: InboundSms) -> None:
        self.attempts.append(sms.attempt)
        await self.channel.send_text(
            sms.msisdn, "Your balance is 5.00", ref=f"mo:{sms.id}", first_attempt=sms.attempt == 1
        )
        if self.failures:
            self.failures -= 1
            raise RetryLater("the core did not answer")


async def test_reply_is_on_record_with_the_outcome_and_not_sent_again_on_retry(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    channel = await make_channel(None)
    handler = ReplyThenFail(channel, failures=1)
    channel.handler = handler
    msisdn = new_msisdn()
    assert await peer.mo(source=msisdn, text="BAL 1234") == [0]
    await all_processed(pg_pool, msisdn, 1)
    # The retry ran. Processing is at least once: one clean-clone CI run under load saw the
    # second attempt handled twice ([1, 2, 2]), not reproduced in 40 runs alone (noted for
    # investigation); what the customer sees must hold either way: one reply.
    assert handler.attempts[:2] == [1, 2] and set(handler.attempts[2:]) <= {2}
    (mo,) = await mo_rows(pg_pool, msisdn)
    mt = await pg_pool.fetchrow(
        "SELECT status, parts FROM sms_messages WHERE direction = 'mt' AND ref = $1",
        f"mo:{mo['id']}",
    )
    assert mt is not None and (mt["status"], mt["parts"]) == ("submitted", 1)
    sent = [s for s in await peer.submits() if s["dest"] == msisdn and s["status"] == 0]
    assert len(sent) == 1  # the retry found the reply on record


async def test_a_successful_mo_and_its_reply_commit_together(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    channel = await make_channel(None)
    channel.handler = ReplyThenFail(channel, failures=0)
    msisdns = [new_msisdn() for _ in range(5)]
    for msisdn in msisdns:
        assert await peer.mo(source=msisdn, text="BAL 1234") == [0]
    for msisdn in msisdns:
        await all_processed(pg_pool, msisdn, 1)
    # Every processed MO has its reply on record (written in the same statement).
    missing = await pg_pool.fetchval(
        """SELECT count(*) FROM sms_messages mo
           WHERE mo.direction = 'mo' AND mo.status = 'processed' AND mo.msisdn = ANY($1)
             AND NOT EXISTS (SELECT 1 FROM sms_messages mt
                             WHERE mt.direction = 'mt' AND mt.ref = 'mo:' || mo.id)""",
        ["+" + m for m in msisdns],
    )
    assert missing == 0
