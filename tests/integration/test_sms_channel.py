"""The SMS channel end to end over real sockets: the smpp34 test SMSC in its own process, the
gateway's ESME, the message store on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from channels.base import SendFailed
from channels.sms.channel import ChannelTuning, SmppSender, assemble_mo
from channels.sms.encoding import udh_concat
from channels.sms.handler import GrammarReplyHandler, InboundSms, RetryLater
from core.sms_messages import MtRecord, SmsMessageStore, SubmittedPart, get_message
from gateway.keys import CIPHER
from tests.helpers import eventually
from tests.raw_smsc import deliver_sm_body, pdu, raw_smsc, tlv
from tests.sms_helpers import (
    ChannelFactory,
    Recorder,
    bind_for,
    channel_factory,
    mo_rows,
    new_channel,
    new_msisdn,
    peer_per_test,  # noqa: F401 (the `peer` fixture)
)
from tests.smsc_peer import SmscPeer
from tests.tcp_proxy import postgres_proxy

TUNING = ChannelTuning(
    workers=4,
    recovery_interval_s=0.1,
    bind_wait_s=10.0,
    send_deadline_s=20.0,
    retry_delay_s=0.05,
    concat_timeout_s=300.0,
)
TLV_SAR_REF, TLV_SAR_TOTAL, TLV_SAR_SEQ = 0x020C, 0x020E, 0x020F


@pytest.fixture
def store(app: web.Application, pg_pool: asyncpg.Pool) -> SmsMessageStore:
    return SmsMessageStore(pg_pool, app[CIPHER], assemble=assemble_mo, dedupe_window_s=600)


@pytest.fixture
async def make_channel(peer: SmscPeer, store: SmsMessageStore) -> AsyncIterator[ChannelFactory]:
    async with channel_factory(peer, store, TUNING) as make:
        yield make


async def submits_to(peer: SmscPeer, dest: str) -> list[dict[str, Any]]:
    return [s for s in await peer.submits() if s["dest"] == dest]


async def accepted_to(peer: SmscPeer, dest: str) -> list[dict[str, Any]]:
    return [s for s in await submits_to(peer, dest) if s["status"] == 0]


async def row(pool: asyncpg.Pool, **where: Any) -> asyncpg.Record | None:
    ((column, value),) = where.items()
    return await pool.fetchrow(
        f"SELECT * FROM sms_messages WHERE {column} = $1 ORDER BY id DESC LIMIT 1", value
    )


# --- MT ---------------------------------------------------------------------------------------


async def test_400_character_reply_arrives_as_numbered_parts(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    channel = await make_channel()
    msisdn = new_msisdn()
    text = " ".join(f"word{i}" for i in range(80))[:400]
    assert len(text) == 400
    first_id = await channel.send_text("+" + msisdn, text, ref=f"t400:{msisdn}")
    parts = await accepted_to(peer, msisdn)
    assert len(parts) == 3
    payloads = [bytes.fromhex(p["hex"]) for p in parts]
    refs = {p[3] for p in payloads}
    assert len(refs) == 1
    assert [p[:3] for p in payloads] == [b"\x05\x00\x03"] * 3
    assert [(p[4], p[5]) for p in payloads] == [(3, 1), (3, 2), (3, 3)]
    assert all(p["esm_class"] == 0x40 and p["data_coding"] == 0 for p in parts)
    assert b"".join(p[6:] for p in payloads).decode("ascii") == text
    assert first_id == parts[0]["message_id"]
    record = await row(pg_pool, ref=f"t400:{msisdn}")
    assert record is not None
    assert (record["status"], record["parts"], record["encoding"]) == ("submitted", 3, "gsm7")
    assert record["msisdn"] == "+" + msisdn


async def test_cyrillic_and_emoji_arrive_as_ucs2_parts(
    make_channel: ChannelFactory, peer: SmscPeer
) -> None:
    channel = await make_channel()
    msisdn = new_msisdn()
    text = "Ваш баланс: KES 1 234,00. Спасибо, что пользуетесь нашей службой! 😀 " * 2
    await channel.send_text("0" + msisdn[3:], text)  # the local form, default country 254
    parts = await accepted_to(peer, msisdn)
    assert len(parts) == 3
    assert all(p["data_coding"] == 8 and p["esm_class"] == 0x40 for p in parts)
    payloads = [bytes.fromhex(p["hex"]) for p in parts]
    assert all(len(p) <= 140 for p in payloads)
    assert b"".join(p[6:] for p in payloads).decode("utf-16-be") == text


async def test_curly_apostrophe_stays_gsm7(make_channel: ChannelFactory, peer: SmscPeer) -> None:
    channel = await make_channel()
    msisdn = new_msisdn()
    await channel.send_text(msisdn, "It’s done – thanks")
    (part,) = await accepted_to(peer, msisdn)
    assert part["data_coding"] == 0 and part["esm_class"] == 0
    assert bytes.fromhex(part["hex"]) == b"It's done - thanks"


async def test_permanent_refusal_marks_the_message_failed(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    channel = await make_channel()
    msisdn = new_msisdn()
    await peer.configure(reject_dest=msisdn, reject_status=0x0B)
    with pytest.raises(SendFailed) as info:
        await channel.send_text(msisdn, "hello", ref=f"rej:{msisdn}")
    assert not info.value.temporary
    record = await row(pg_pool, ref=f"rej:{msisdn}")
    assert record is not None and record["status"] == "failed"
    assert "Invalid Destination Address" in record["error"]


@pytest.mark.parametrize("recipient", ["", "hello", "+12", "0712 34x", "1" * 20])
async def test_bad_recipient_is_a_permanent_failure(
    make_channel: ChannelFactory, peer: SmscPeer, recipient: str
) -> None:
    channel = await make_channel()
    with pytest.raises(SendFailed) as info:
        await channel.send_text(recipient, "hello")
    assert not info.value.temporary
    assert await peer.submits() == []


async def test_too_long_text_is_a_permanent_failure(
    make_channel: ChannelFactory, peer: SmscPeer
) -> None:
    channel = await make_channel()
    with pytest.raises(SendFailed) as info:
        await channel.send_text(new_msisdn(), "x" * 5000)
    assert not info.value.temporary and "parts" in info.value.reason
    assert await peer.submits() == []


async def test_throttling_every_fifth_submit_delivers_each_once(
    make_channel: ChannelFactory, peer: SmscPeer
) -> None:
    await peer.configure(throttle_every=5)
    channel = await make_channel(tps=200)
    msisdn = new_msisdn()
    texts = [f"message {i} " + ("long " * 40 if i % 3 == 0 else "") for i in range(24)]
    results = await asyncio.gather(
        *(channel.send_text(msisdn, t, ref=f"thr:{msisdn}:{i}") for i, t in enumerate(texts))
    )
    assert len(set(results)) == len(texts)
    submits = await submits_to(peer, msisdn)
    accepted = [bytes.fromhex(s["hex"]) for s in submits if s["status"] == 0]
    throttled = [s for s in submits if s["status"] == 0x58]
    assert throttled, "the SMSC never throttled"
    assert len(accepted) == len(set(accepted)), "a part was delivered twice"
    expected_parts = sum(2 if i % 3 == 0 else 1 for i in range(len(texts)))
    assert len(accepted) == expected_parts
    delivered_texts = set()
    for payload in accepted:
        if payload[:3] == b"\x05\x00\x03" and payload[5] != 1:
            continue  # a second part: its text starts in the middle
        text = payload[6:] if payload[:3] == b"\x05\x00\x03" else payload
        delivered_texts.add(text.decode().split(" ")[1])
    assert delivered_texts == {str(i) for i in range(len(texts))}
    assert channel.bind_statuses()[0].throttled == len(throttled)


async def test_smsc_killed_and_restarted_sends_what_was_queued(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    channel = await make_channel()
    msisdn = new_msisdn()
    peer.kill()
    await eventually(lambda: channel.bind_statuses()[0].state, lambda s: s != "bound", timeout_s=10)
    sends = [
        asyncio.create_task(channel.send_text(msisdn, f"queued {i}", ref=f"kill:{msisdn}:{i}"))
        for i in range(5)
    ]
    await asyncio.sleep(0)  # let the sends start waiting for a bind
    await peer.start()
    ids = await asyncio.gather(*sends)
    assert len(set(ids)) == 5
    accepted = await accepted_to(peer, msisdn)
    assert sorted(bytes.fromhex(s["hex"]).decode() for s in accepted) == [
        f"queued {i}" for i in range(5)
    ]
    status = channel.bind_statuses()[0]
    assert status.state == "bound" and status.connects == 2
    assert status.last_error is not None


async def test_no_bind_is_a_temporary_failure(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    channel = await make_channel(tuning=replace(TUNING, bind_wait_s=0.3))
    peer.kill()
    await eventually(lambda: channel.bind_statuses()[0].state, lambda s: s != "bound", timeout_s=10)
    msisdn = new_msisdn()
    with pytest.raises(SendFailed) as info:
        await channel.send_text(msisdn, "later", ref=f"nobind:{msisdn}")
    assert info.value.temporary and "no SMPP bind" in info.value.reason
    record = await row(pg_pool, ref=f"nobind:{msisdn}")
    assert record is not None and record["status"] == "queued"


async def test_retry_after_partial_send_skips_accepted_parts(
    make_channel: ChannelFactory, peer: SmscPeer, store: SmsMessageStore
) -> None:
    strict = replace(TUNING, max_throttle_retries=0)
    channel = await make_channel(tuning=strict)
    msisdn = new_msisdn()
    ref = f"partial:{msisdn}"
    text = "p" * 153 + "q" * 153 + "r" * 10
    await peer.configure(throttle_every=2)  # part 1 accepted, part 2 throttled
    with pytest.raises(SendFailed) as info:
        await channel.send_text(msisdn, text, ref=ref)
    assert info.value.temporary
    await peer.configure(throttle_every=0)
    # A different process (a restart) picks the message up from the store's record.
    other = await make_channel()
    await other.send_text(msisdn, text, ref=ref)
    await other.stop()
    accepted = [bytes.fromhex(s["hex"]) for s in await accepted_to(peer, msisdn)]
    assert [(p[5], p[6:7]) for p in accepted] == [(1, b"p"), (2, b"q"), (3, b"r")]
    assert len({p[3] for p in accepted}) == 1  # one concatenation reference throughout
    sent = await store.find_mt(ref)
    assert sent is not None and sent.status == "submitted" and len(sent.parts) == 3
    # Sending the same reference again sends nothing.
    assert await channel.send_text(msisdn, text, ref=ref) == sent.parts[0].message_id
    assert len(await accepted_to(peer, msisdn)) == 3


async def test_a_wrong_response_mid_message_is_temporary_and_keeps_accepted_parts(
    store: SmsMessageStore,
) -> None:
    """The SMSC answers part 2's submit_sm with an enquire_link_resp (its sequence number,
    the wrong command). That SmppFailure escaped `send_text` as itself, not as SendFailed:
    the accepted part 1 was never recorded, so the retry sent it again, and an MO's reply
    failed its MO for good as a handler bug."""
    async with raw_smsc(answer_submit=False, submit_id=secrets.token_hex(4).encode()) as smsc:
        channel = new_channel([bind_for(smsc.port)], store, tuning=TUNING)
        await channel.start()
        try:
            assert await channel.sessions[0].wait_bound(10)
            msisdn = new_msisdn()
            ref = f"wrongresp:{msisdn}"
            text = "p" * 153 + "q" * 10
            sending = asyncio.create_task(channel.send_text(msisdn, text, ref=ref))
            first = await smsc.wait_for(0x04)
            smsc.send(pdu(0x80000004, first.seq, b"P1\x00"))
            second = await eventually(
                lambda: [f for f in smsc.frames if f.command_id == 0x04], lambda f: len(f) == 2
            )
            smsc.send(pdu(0x80000015, second[1].seq))  # enquire_link_resp for a submit_sm
            with pytest.raises(SendFailed) as info:
                await sending
            assert info.value.temporary
            smsc.answer_submit = True
            await channel.send_text(msisdn, text, ref=ref)  # the retry: part 2 only
            parts = [f.body for f in smsc.frames if f.command_id == 0x04]
            assert len(parts) == 3, parts
            sent = await store.find_mt(ref)
            assert sent is not None and sent.status == "submitted"
            assert len(sent.parts) == 2 and sent.parts[0].message_id == "P1"
        finally:
            await channel.stop()


async def test_sender_implements_the_outbox_protocol(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    @dataclass
    class Outbound:
        id: int
        recipient: str
        body: str
        kind: str

    sender = SmppSender(await make_channel())
    msisdn = new_msisdn()
    outbox_id = secrets.randbelow(10**9)
    message_id = await sender.send(Outbound(outbox_id, "+" + msisdn, "Your code is 482913", "otp"))
    assert message_id == (await accepted_to(peer, msisdn))[0]["message_id"]
    record = await row(pg_pool, ref=f"outbox:{outbox_id}")
    assert record is not None and record["body"] == "[redacted]"
    assert await sender.send(Outbound(outbox_id, "+" + msisdn, "Your code is 482913", "otp"))
    assert len(await accepted_to(peer, msisdn)) == 1  # the same outbox id is not sent twice


async def test_transmitter_and_receiver_pair(
    peer: SmscPeer, store: SmsMessageStore, pg_pool: asyncpg.Pool
) -> None:
    await peer.configure(dlr="tlv")
    recorder = Recorder()
    channel = new_channel(
        [bind_for(peer, bind="tx"), bind_for(peer, bind="rx")],
        store,
        tuning=TUNING,
        handler=recorder,
    )
    await channel.start()
    try:
        tx, rx = channel.sessions
        assert await tx.wait_bound(10) and await rx.wait_bound(10)
        await eventually(peer.bound, lambda n: n == 2)
        msisdn = new_msisdn()
        ref = f"pair:{msisdn}"
        await channel.send_text(msisdn, "over the transmitter", ref=ref)
        assert (tx.status().submitted, rx.status().submitted) == (1, 0)
        # The receipt comes back over the receiver and still matches (one SMSC account).
        await eventually(lambda: row(pg_pool, ref=ref), lambda r: r and r["status"] == "delivered")
        await peer.mo(source=msisdn, text="HELP", nowait=True)  # see nowait in smsc_peer
        await eventually(lambda: len(recorder.seen), lambda n: n == 1)
        assert recorder.seen[0].text == "HELP"
        assert rx.status().received == 2 and tx.status().received == 0
        assert [b.bind_type for b in channel.bind_statuses()] == ["tx", "rx"]
    finally:
        await channel.stop()


# --- receipts ---------------------------------------------------------------------------------


RECEIPT_CASES = [
    ("tlv", "DELIVRD", {}, "delivered"),
    ("text", "DELIVRD", {}, "delivered"),
    ("text_decimal", "DELIVRD", {"dlr_id_base": 10}, "delivered"),
    ("tlv", "UNDELIV", {}, "failed"),
    ("text", "EXPIRED", {}, "expired"),
]


@pytest.mark.parametrize("case", RECEIPT_CASES, ids=[f"{c[0]}-{c[1]}" for c in RECEIPT_CASES])
async def test_receipts_update_status(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool, case: tuple[Any, ...]
) -> None:
    mode, stat, bind, expected = case
    await peer.configure(dlr=mode, dlr_stat=stat)
    channel = await make_channel(**bind)
    msisdn = new_msisdn()
    ref = f"dlr:{msisdn}"
    await channel.send_text(msisdn, "x" * 200, ref=ref)  # two parts, two receipts

    async def status() -> str | None:
        record = await row(pg_pool, ref=ref)
        return None if record is None else str(record["status"])

    async def part_statuses() -> list[str]:
        rows = await pg_pool.fetch(
            "SELECT p.status FROM sms_mt_parts p JOIN sms_messages m ON m.id = p.mt_id "
            "WHERE m.ref = $1 ORDER BY p.part_no",
            ref,
        )
        return [r["status"] for r in rows]

    # Both receipts applied (a failed part fails the message before the other receipt lands).
    await eventually(part_statuses, lambda s: s == [expected, expected])
    # The message's own status follows its parts in a later write of the receipt batch.
    await eventually(status, lambda s: s == expected)


@pytest.mark.parametrize(
    "text",
    [
        b"id:AB\x0012 sub:001 dlvrd:001 stat:DELIVRD err:000",  # a NUL inside the id
        b"id:ABCD12 sub:001 dlvrd:001 stat:UNDELIV err:0\x0012",  # and inside the error
    ],
    ids=["id", "err"],
)
async def test_a_receipt_with_a_nul_is_acknowledged(
    make_channel: ChannelFactory, peer: SmscPeer, text: bytes
) -> None:
    """PostgreSQL's text refuses U+0000: a receipt carrying one in its id or error made the
    store's write raise under the deliver_sm, and the SMSC was answered with a system error
    (it redelivers such a receipt, again and again)."""
    await make_channel()
    msisdn = new_msisdn()
    assert await peer.mo(source=msisdn, hex=text.hex(), esm_class=0x04) == [0]


async def test_receipt_before_the_record_is_matched(
    store: SmsMessageStore, pg_pool: asyncpg.Pool
) -> None:

    msisdn = "+" + new_msisdn()
    key = f"s:early-{secrets.token_hex(4)}"
    assert not await store.apply_receipt("acct@smsc", key, key[2:], "delivered", None)
    await store.record_mt(mt_record(msisdn, key))
    mt_id = await pg_pool.fetchval(
        "SELECT mt_id FROM sms_mt_parts WHERE smsc = 'acct@smsc' AND message_key = $1", key
    )
    message = await get_message(pg_pool, mt_id)
    assert message is not None and message["status"] == "delivered"
    assert message["submitted_parts"] == [
        {"part_no": 1, "message_id": key[2:], "status": "delivered", "error": None}
    ]


async def test_receipt_id_tlv_without_its_nul_still_matches(
    store: SmsMessageStore, pg_pool: asyncpg.Pool
) -> None:
    """receipted_message_id is a C-string, but SMSCs send it without the NUL too (the TLV's
    length says where it ends). smpplib drops the last byte of every C-string TLV, so
    `0A1B2C3D` was read as `0A1B2C3`: the receipt went unmatched, or matched another message
    (7 of a message's 8 hex digits are another id)."""
    message_id = secrets.token_hex(4).upper().encode()
    async with raw_smsc(submit_id=message_id) as smsc:
        channel = new_channel([bind_for(smsc.port)], store, tuning=TUNING)
        await channel.start()
        try:
            assert await channel.sessions[0].wait_bound(10)
            msisdn = new_msisdn()
            ref = f"dlr-nonul:{msisdn}"
            await channel.send_text(msisdn, "hello", ref=ref)
            text = b"id:" + message_id + b" sub:001 dlvrd:001 stat:DELIVRD err:000 text:hello"
            tlvs = tlv(0x001E, message_id) + tlv(0x0427, b"\x02")  # no NUL; DELIVERED
            body = deliver_sm_body(msisdn, "12345", text, esm_class=0x04, tlvs=tlvs)
            smsc.send(pdu(0x00000005, 77, body))
            assert (await smsc.wait_for(0x80000005, seq=77)).status == 0
            assert channel.counters["receipts_unmatched"] == 0

            async def status() -> str | None:
                record = await row(pg_pool, ref=ref)
                return None if record is None else str(record["status"])

            await eventually(status, lambda s: s == "delivered")
        finally:
            await channel.stop()


def mt_record(msisdn: str, key: str, smsc: str = "acct@smsc") -> MtRecord:
    return MtRecord(
        ref=None,
        smsc=smsc,
        msisdn=msisdn,
        short_code="12345",
        body="hi",
        encoding="gsm7",
        parts=1,
        concat_ref=None,
        status="submitted",
        error=None,
        submitted=[SubmittedPart(1, key[2:], key, smsc)],
    )


async def test_a_reused_message_id_starts_clean(
    store: SmsMessageStore, pg_pool: asyncpg.Pool
) -> None:
    key = f"s:reused-{secrets.token_hex(4)}"
    await store.record_mt(mt_record("+254700000001", key))
    assert await store.apply_receipt("acct@smsc", key, key[2:], "expired", None)
    await store.record_mt(mt_record("+254700000002", key))  # the SMSC issued the id again
    row = await pg_pool.fetchrow(
        "SELECT p.status, m.msisdn, m.status AS message_status FROM sms_mt_parts p "
        "JOIN sms_messages m ON m.id = p.mt_id WHERE p.smsc = 'acct@smsc' AND p.message_key = $1",
        key,
    )
    assert dict(row) == {
        "status": "submitted",
        "msisdn": "+254700000002",
        "message_status": "submitted",
    }


async def test_one_reference_twice_in_a_batch(store: SmsMessageStore) -> None:
    ref = f"twice:{secrets.token_hex(4)}"
    key1, key2 = f"s:{ref}-1", f"s:{ref}-2"
    first = replace(mt_record("+254700000003", key1), ref=ref, parts=2, status="queued")
    second = replace(
        first,
        status="submitted",
        submitted=[*first.submitted, SubmittedPart(2, key2[2:], key2, "acct@smsc")],
    )
    await store._record_mts([first, second])  # one flush holding both: applied in order
    sent = await store.find_mt(ref)
    assert sent is not None and sent.status == "submitted"
    assert [p.part_no for p in sent.parts] == [1, 2]


async def test_an_smsc_giving_one_id_or_none_loses_no_part_and_no_batch(
    store: SmsMessageStore, pg_pool: asyncpg.Pool
) -> None:
    """An SMSC that answers every part of a long message with one id, or with an empty id:
    the parts were upserted on (smsc, id) in one statement, which PostgreSQL refuses ("cannot
    affect row a second time"), and the whole outcome batch failed with them (other MOs'
    replies and processed marks too: their replies went again after the lease)."""
    tag = secrets.token_hex(4)
    same = f"s:same-{tag}"
    one_id = replace(
        mt_record("+254700000004", same),
        ref=f"one-id:{tag}",
        parts=3,
        submitted=[SubmittedPart(n, same[2:], same, "acct@smsc") for n in (1, 2, 3)],
    )
    no_id = replace(
        mt_record("+254700000005", "s:"),
        ref=f"no-id:{tag}",
        parts=2,
        submitted=[SubmittedPart(n, "", "s:", "acct@smsc") for n in (1, 2)],
    )
    other = replace(mt_record("+254700000006", f"s:other-{tag}"), ref=f"other:{tag}")
    await store._record_mts([one_id, no_id, other])  # one statement, as one flush writes them
    for rec in (one_id, no_id, other):
        sent = await store.find_mt(rec.ref or "")
        assert sent is not None and sent.status == "submitted", rec.ref
        assert [p.part_no for p in sent.parts] == list(range(1, rec.parts + 1)), rec.ref
    # A receipt for the shared id still finds its message.
    assert await store.apply_receipt("acct@smsc", same, same[2:], "delivered", None)
    count = await pg_pool.fetchval(
        "SELECT count(*) FROM sms_mt_parts WHERE smsc = 'acct@smsc' AND message_key = 's:'"
    )
    assert count == 0  # an empty id is nothing a receipt can name


# --- MO ---------------------------------------------------------------------------------------


CODING_CASES = [
    ("gsm7", b"BAL \x00 \x1b\x65", 0, "BAL @ €"),
    ("latin1", "Café".encode("latin-1"), 3, "Café"),
    ("ucs2", "Привет 😀".encode("utf-16-be"), 8, "Привет 😀"),
    # U+0000 means nothing in a text and PostgreSQL refuses it: it was answered with a
    # temporary error, so the SMSC redelivered the MO for ever. Dropped now.
    ("latin1-nul", b"Caf\xe9\x00 \x00ok", 3, "Café ok"),
    ("ucs2-nul-padding", "Привет".encode("utf-16-be") + b"\x00\x00", 8, "Привет"),
    # The GSM 03.38 codings SMSCs pass through: a message class (0x10-0x13 / 0xF0-0xF3
    # GSM-7, 0x18-0x1B UCS-2) and the message-waiting groups (0xC0-0xDF GSM-7, 0xE0-0xEF
    # UCS-2), which were read as Latin-1 bytes: a UCS-2 text came out as mojibake.
    ("class1-gsm7", b"BAL \x1b\x65", 0x11, "BAL €"),
    ("class0-gsm7", b"MINI", 0xF0, "MINI"),
    ("class2-ucs2", "Баланс".encode("utf-16-be"), 0x1A, "Баланс"),
    ("mwi-gsm7", b"BAL \x1b\x65", 0xC8, "BAL €"),
    ("mwi-store-gsm7", b"BAL 1", 0xD0, "BAL 1"),
    ("mwi-ucs2", "Привет".encode("utf-16-be"), 0xE0, "Привет"),
]


@pytest.mark.parametrize("case", CODING_CASES, ids=[c[0] for c in CODING_CASES])
async def test_mo_data_codings(
    make_channel: ChannelFactory, peer: SmscPeer, case: tuple[str, bytes, int, str]
) -> None:
    _, data, coding, text = case
    recorder = Recorder()
    await make_channel(recorder)
    msisdn = new_msisdn()
    assert await peer.mo(source=msisdn, hex=data.hex(), data_coding=coding) == [0]
    await eventually(lambda: len(recorder.seen), lambda n: n == 1)
    sms = recorder.seen[0]
    assert (sms.text, sms.msisdn, sms.short_code, sms.complete) == (
        text,
        "+" + msisdn,
        "12345",
        True,
    )


def _udh16(ref: int, total: int, seq: int) -> bytes:
    return bytes([6, 8, 4, ref >> 8, ref & 0xFF, total, seq])


@pytest.mark.parametrize("kind", ["udh8", "udh16", "sar"])
async def test_concatenated_mo_is_reassembled(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool, kind: str
) -> None:
    recorder = Recorder()
    await make_channel(recorder)
    msisdn = new_msisdn()
    chunks = [b"SEND 0712345678 ", b"500 ", b"4321"]
    order = [2, 0, 1]  # out of order on purpose
    for i in order:
        fields: dict[str, Any] = {"source": msisdn}
        if kind == "udh8":
            fields.update(hex=(udh_concat(0x7A, 3, i + 1) + chunks[i]).hex(), esm_class=0x40)
        elif kind == "udh16":
            fields.update(hex=(_udh16(0x1234, 3, i + 1) + chunks[i]).hex(), esm_class=0x40)
        else:
            fields.update(
                hex=chunks[i].hex(),
                tlvs=[[TLV_SAR_REF, "0099"], [TLV_SAR_TOTAL, "03"], [TLV_SAR_SEQ, f"{i + 1:02x}"]],
            )
        assert await peer.mo(**fields) == [0]
    await eventually(lambda: len(recorder.seen), lambda n: n == 1)
    sms = recorder.seen[0]
    assert (sms.text, sms.parts, sms.complete) == ("SEND 0712345678 500 4321", 3, True)
    await eventually(lambda: mo_rows(pg_pool, msisdn), lambda r: r[0]["status"] == "processed")
    rows = await mo_rows(pg_pool, msisdn)
    assert len(rows) == 1
    assert rows[0]["body"] == "SEND 0712345678 500 ****"
    leftovers = await pg_pool.fetchval(
        "SELECT count(*) FROM sms_mo_parts WHERE msisdn = $1", "+" + msisdn
    )
    assert leftovers == 0


async def test_incomplete_concatenated_mo_times_out(
    make_channel: ChannelFactory, peer: SmscPeer
) -> None:
    recorder = Recorder()
    await make_channel(recorder, tuning=replace(TUNING, concat_timeout_s=0.5))
    msisdn = new_msisdn()
    for seq in (1, 3):
        payload = udh_concat(9, 3, seq) + b"part%d " % seq
        assert await peer.mo(source=msisdn, hex=payload.hex(), esm_class=0x40) == [0]
    await eventually(lambda: len(recorder.seen), lambda n: n == 1)
    sms = recorder.seen[0]
    assert (sms.text, sms.complete, sms.parts) == ("part1 part3 ", False, 3)


async def test_redelivered_mo_is_processed_once(
    make_channel: ChannelFactory, peer: SmscPeer, store: SmsMessageStore, pg_pool: asyncpg.Pool
) -> None:
    recorder = Recorder()
    channel = await make_channel(recorder)
    msisdn = new_msisdn()
    assert await peer.mo(source=msisdn, text="BAL 1234", repeat=3) == [0, 0, 0]
    await eventually(
        lambda: mo_rows(pg_pool, msisdn), lambda r: r and r[0]["status"] == "processed"
    )
    # The de-duplication is durable: a new channel (a restart) still drops the copy.
    await channel.stop()
    again = Recorder()
    await make_channel(again)
    assert await peer.mo(source=msisdn, text="BAL 1234") == [0]
    udh = udh_concat(3, 2, 1) + b"BAL "
    assert await peer.mo(source=msisdn, hex=udh.hex(), esm_class=0x40, repeat=2) == [0, 0]
    assert await peer.mo(
        source=msisdn, hex=(udh_concat(3, 2, 2) + b"1234").hex(), esm_class=0x40
    ) == [0]
    await eventually(lambda: len(again.seen), lambda n: n == 1)
    assert [s.text for s in recorder.seen] == ["BAL 1234"]
    assert [s.text for s in again.seen] == ["BAL 1234"]  # the concatenated one, once
    assert len(await mo_rows(pg_pool, msisdn)) == 2


async def test_sme_acknowledgements_are_not_commands(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    """A deliver_sm whose esm_class message type is an SME delivery or manual/user
    acknowledgement (0x08, 0x10) or a conversation abort (0x18) is no message from the
    customer. Each was stored and run as a command (answered with a hint SMS)."""
    recorder = Recorder()
    await make_channel(recorder)
    msisdn = new_msisdn()
    for esm_class in (0x08, 0x10, 0x18):
        assert await peer.mo(source=msisdn, text="ack", esm_class=esm_class) == [0]
    assert await peer.mo(source=msisdn, text="BAL 1234") == [0]
    # Each deliver_sm_resp comes after its MO is stored: every row is there by now.
    assert [r["body"] for r in await mo_rows(pg_pool, msisdn)] == ["BAL ****"]
    await eventually(lambda: len(recorder.seen), lambda n: n == 1)
    assert [s.text for s in recorder.seen] == ["BAL 1234"]


async def test_malformed_udh_is_refused_for_good(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    recorder = Recorder()
    await make_channel(recorder)
    msisdn = new_msisdn()
    assert await peer.mo(source=msisdn, hex="0900030102", esm_class=0x40) == [0x65]
    assert await mo_rows(pg_pool, msisdn) == []
    assert recorder.seen == []


async def test_handler_retry_then_success(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    recorder = Recorder()
    recorder.fail_with = [
        RetryLater("core down"),
        SendFailed("link", temporary=True),
        # A connection lost under the handler (the chaos test below met one in the reply's
        # look-up of its earlier attempt): tried again, never failed for good.
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ]
    await make_channel(recorder)
    msisdn = new_msisdn()
    await peer.mo(source=msisdn, text="MINI 1234")
    await eventually(
        lambda: mo_rows(pg_pool, msisdn), lambda r: r and r[0]["status"] == "processed"
    )
    assert [s.attempt for s in recorder.seen] == [1, 2, 3, 4]
    (record,) = await mo_rows(pg_pool, msisdn)
    assert record["body_enc"] is None and record["attempts"] == 4


async def test_a_stop_writes_the_outcome_a_worker_left_in_the_store(
    make_channel: ChannelFactory,
    peer: SmscPeer,
    pg_pool: asyncpg.Pool,
    store: SmsMessageStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The outcome write (the MO's `processed` mark) waits in the store's batch; a stop that
    cancels the worker meanwhile still sees it written before it returns (the pool may close
    right after)."""
    writing, release = asyncio.Event(), asyncio.Event()
    original = store._write_outcomes

    async def slow_outcomes(items: Any) -> Any:
        writing.set()
        await release.wait()  # a database taking its time, until the workers are stopped
        return await original(items)

    monkeypatch.setattr(store._write_batch, "_flush", slow_outcomes)
    recorder = Recorder()
    channel = await make_channel(recorder)
    msisdn = new_msisdn()
    await peer.mo(source=msisdn, text="BAL 1234")
    async with asyncio.timeout(10):
        await writing.wait()
    stopping = asyncio.create_task(channel.stop())
    await eventually(lambda: channel._tasks, lambda tasks: tasks == [])  # workers are gone
    assert not stopping.done()  # the stop waits for the write
    release.set()
    async with asyncio.timeout(10):
        await stopping
    (record,) = await mo_rows(pg_pool, msisdn)
    assert record["status"] == "processed"


async def test_handler_bug_marks_the_mo_failed(
    make_channel: ChannelFactory, peer: SmscPeer, pg_pool: asyncpg.Pool
) -> None:
    recorder = Recorder()
    recorder.fail_with = [ZeroDivisionError("boom")]
    await make_channel(recorder)
    msisdn = new_msisdn()
    await peer.mo(source=msisdn, text="BAL 1234")
    await eventually(lambda: mo_rows(pg_pool, msisdn), lambda r: r and r[0]["status"] == "failed")
    (record,) = await mo_rows(pg_pool, msisdn)
    assert "ZeroDivisionError" in record["error"] and record["body_enc"] is None
    assert len(recorder.seen) == 1


async def test_mo_left_by_a_dead_instance_is_processed(
    peer: SmscPeer, store: SmsMessageStore, pg_pool: asyncpg.Pool
) -> None:
    blocked = asyncio.Event()

    class Hang:
        async def handle(self, sms: InboundSms) -> None:
            blocked.set()
            await asyncio.Event().wait()

    short_lease = SmsMessageStore(store._pool, store._cipher, assemble=assemble_mo, lease_s=0.2)
    async with channel_factory(peer, short_lease, TUNING) as make:
        # The first must not re-claim its own MO.
        first = await make(Hang(), tuning=replace(TUNING, recovery_interval_s=3600))
        msisdn = new_msisdn()
        await peer.mo(source=msisdn, text="BAL 1234")
        async with asyncio.timeout(10):
            await blocked.wait()
        await first.stop()  # the "crash": the handler never finished
        recorder = Recorder()
        await make(recorder)
        await eventually(lambda: len(recorder.seen), lambda n: n == 1)
        assert recorder.seen[0].text == "BAL 1234" and recorder.seen[0].attempt == 2
        await eventually(lambda: mo_rows(pg_pool, msisdn), lambda r: r[0]["status"] == "processed")


async def test_grammar_replies_and_no_pin_is_stored_or_logged(
    make_channel: ChannelFactory,
    peer: SmscPeer,
    pg_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    channel = await make_channel()
    channel.handler = GrammarReplyHandler(channel)
    msisdn = new_msisdn()
    for i, text in enumerate(("help", "BAL 9731", "SEND 0712345678 500 97", "hello 9731")):
        await peer.mo(source=msisdn, text=text)
        await eventually(lambda: accepted_to(peer, msisdn), lambda s, n=i + 1: len(s) == n)
    await eventually(
        lambda: mo_rows(pg_pool, msisdn),
        lambda r: len(r) == 4 and all(x["status"] == "processed" for x in r),
    )
    replies = [bytes.fromhex(s["hex"]) for s in await accepted_to(peer, msisdn)]
    assert len(replies) == 4
    assert replies[0].startswith(b"BAL pin; SEND")
    assert b"not available yet" in replies[1]
    assert replies[2].startswith(b"The PIN must be 4 digits")
    assert replies[3].startswith(b"Sorry, we did not understand")
    bodies = [r["body"] for r in await mo_rows(pg_pool, msisdn)]
    assert bodies == ["help", "BAL ****", "SEND 0712345678 **** ****", "hello ****"]
    stored = await pg_pool.fetch(
        "SELECT body, body_enc FROM sms_messages WHERE msisdn = $1", "+" + msisdn
    )
    assert all("9731" not in (r["body"] or "") and r["body_enc"] is None for r in stored)
    assert "9731" not in caplog.text


# --- the store's connections die mid-way --------------------------------------------------------


class EchoKiller:
    """Answers each MO with one "PONG" (the reply's ref is the MO's, as SMS banking's is), and
    before every third reply of its first `KILLING_CALLS` terminates every connection of the
    store's pool: the reply's record and the MO's "processed" mark, and the MO inserts racing
    them, meet dead connections. The chaos stops after that many calls (retries included) so
    the run ends: with no end every retry could meet the next kill, and one CI run under load
    was still retrying after 30 s."""

    KILLING_CALLS = 60

    def __init__(self, pool: asyncpg.Pool, killer: asyncpg.Pool, app_name: str) -> None:
        self.pool, self.killer, self.app_name = pool, killer, app_name
        self.channel: Any = None
        self.calls = 0
        self.kills = 0

    async def handle(self, sms: InboundSms) -> None:
        self.calls += 1
        if self.calls % 3 == 0 and self.calls <= self.KILLING_CALLS:
            self.kills += await self.killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                self.app_name,
            )
        await self.channel.send_text(
            sms.msisdn, f"PONG {sms.text}", ref=f"mo:{sms.id}", first_attempt=sms.attempt == 1
        )


async def test_store_connections_killed_mid_way_lose_nothing_and_send_nothing_twice(
    peer: SmscPeer, database_url: str, app: web.Application, pg_pool: asyncpg.Pool
) -> None:
    app_name = f"sms-chaos-{secrets.token_hex(4)}"
    pool = await asyncpg.create_pool(
        database_url, min_size=2, max_size=4, server_settings={"application_name": app_name}
    )
    store = SmsMessageStore(
        pool, app[CIPHER], assemble=assemble_mo, dedupe_window_s=600, lease_s=2.0
    )
    handler = EchoKiller(pool, pg_pool, app_name)
    senders = [new_msisdn() for _ in range(30)]
    try:
        async with channel_factory(peer, store, TUNING) as make:
            handler.channel = await make(handler)

            async def deliver(msisdn: str) -> None:
                # The SMSC delivers again until the MO is acknowledged (a store that failed
                # answers a temporary error).
                async with asyncio.timeout(30):
                    while await peer.mo(source=msisdn, text=f"PING {msisdn[-4:]}") != [0]:
                        pass

            for start in range(0, len(senders), 10):
                await asyncio.gather(*(deliver(m) for m in senders[start : start + 10]))

            async def all_processed() -> bool:
                rows = await pg_pool.fetch(
                    "SELECT status FROM sms_messages WHERE direction = 'mo' "
                    "AND msisdn = ANY($1::text[])",
                    ["+" + m for m in senders],
                )
                return len(rows) == len(senders) and all(r["status"] == "processed" for r in rows)

            # 30 MOs whose first 60 handler calls (retries included) kill every third time:
            # then the retries (lease 2 s) finish what the kills interrupted.
            await eventually(all_processed, timeout_s=60)
    finally:
        await pool.close()
    assert handler.kills > 0, "no connection was killed"
    submits = await peer.submits()
    for msisdn in senders:
        accepted = [s for s in submits if s["dest"] == msisdn and s["status"] == 0]
        assert [bytes.fromhex(s["hex"]).decode() for s in accepted] == [
            f"PONG PING {msisdn[-4:]}"
        ], msisdn
    mts = await pg_pool.fetch(
        "SELECT msisdn, status FROM sms_messages WHERE direction = 'mt' "
        "AND msisdn = ANY($1::text[])",
        ["+" + m for m in senders],
    )
    assert sorted(r["msisdn"] for r in mts) == sorted("+" + m for m in senders)
    assert {r["status"] for r in mts} == {"submitted"}


async def test_an_outage_while_the_outcome_is_written_sends_no_reply_twice(
    peer: SmscPeer, database_url: str, app: web.Application, pg_pool: asyncpg.Pool
) -> None:
    """The reply is out; then the store's connection drops and the database refuses two
    connections in a row. The outcome (the reply's record, the MO's mark) is written when it
    comes back: without it, the MO would be processed again after its lease and, its reply
    not on record, the customer would get the reply twice."""
    proxy, via = postgres_proxy(database_url)
    # No floor to restore: every connection the pool makes is one the store asked for.
    pool = await asyncpg.create_pool(via(await proxy.start()), min_size=0, max_size=2)
    store = SmsMessageStore(
        pool, app[CIPHER], assemble=assemble_mo, dedupe_window_s=600, lease_s=1.0
    )
    victim = new_msisdn()

    class EchoThenCut:
        channel: Any = None

        async def handle(self, sms: InboundSms) -> None:
            await self.channel.send_text(
                sms.msisdn, f"PONG {sms.attempt}", ref=f"mo:{sms.id}",
                first_attempt=sms.attempt == 1,
            )  # fmt: skip
            if sms.msisdn == "+" + victim and sms.attempt == 1:
                proxy.cut(refuse=2)

    handler = EchoThenCut()
    try:
        async with channel_factory(peer, store, TUNING) as make:
            handler.channel = await make(handler)
            assert await peer.mo(source=victim, text="PING") == [0]

            async def processed() -> bool:
                rows = await mo_rows(pg_pool, victim)
                return bool(rows) and rows[0]["status"] == "processed"

            await eventually(processed, timeout_s=15)
            # Past the lease: an MO left unprocessed would have been claimed again by now.
            after_lease = await mo_rows(pg_pool, victim)
            assert after_lease[0]["attempts"] == 1
            assert proxy.refused == 2
            other = new_msisdn()  # and the store works on
            assert await peer.mo(source=other, text="PING") == [0]
            await eventually(lambda: accepted_to(peer, other), bool)
    finally:
        await pool.close()
        await proxy.close()
    replies = [bytes.fromhex(s["hex"]).decode() for s in await accepted_to(peer, victim)]
    assert replies == ["PONG 1"]
    mt = await row(pg_pool, msisdn="+" + victim)
    assert mt is not None and mt["direction"] == "mt" and mt["status"] == "submitted"
