"""The asyncio ESME over real sockets: against the smpp34 test SMSC (a separate process) for
binds, windows, pacing, throttling, timeouts and restarts, and against a hand-packed raw SMSC
for what a well-behaved SMSC never sends."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace

import pytest

from channels.sms.smpp import (
    BindState,
    LinkDown,
    ResponseTimeout,
    SmppSession,
    SmscRejected,
    Throttled,
)
from channels.sms.smpp.codec import DeliverSm
from tests.helpers import eventually
from tests.raw_smsc import deliver_sm_body, pdu, raw_smsc, tlv
from tests.sms_helpers import FAST, bind_for, peer_per_test  # noqa: F401 (the `peer` fixture)
from tests.smsc_peer import SmscPeer

SUBMIT = {"source_addr": "12345", "destination_addr": "254700000001", "short_message": b"hi"}


async def started(session: SmppSession) -> SmppSession:
    session.start()
    assert await session.wait_bound(10), session.status()
    return session


async def test_bind_submit_and_state(peer: SmscPeer, caplog: pytest.LogCaptureFixture) -> None:
    session = await started(SmppSession(bind_for(peer.port), name="a", tuning=FAST))
    try:
        status = session.status()
        assert (status.state, status.bind_type, status.window_size) == ("bound", "trx", 10)
        message_id = await session.submit(**SUBMIT)
        assert message_id == "00000001"
        submits = await peer.submits()
        assert [s["dest"] for s in submits] == ["254700000001"]
        assert bytes.fromhex(submits[0]["hex"]) == b"hi"
        assert session.status().submitted == 1
    finally:
        await session.stop()
    assert session.state is BindState.STOPPED
    await eventually(peer.bound, lambda n: n == 0)
    # The SMSC closing the link after our unbind is the end of it, not a fault to report.
    assert "ended with an error" not in caplog.text


async def test_window_limits_outstanding_requests(peer: SmscPeer) -> None:
    await peer.configure(hold=True)
    session = await started(SmppSession(bind_for(peer.port, window=3), name="w", tuning=FAST))
    try:
        sends = [asyncio.create_task(session.submit(**SUBMIT)) for _ in range(7)]
        await eventually(lambda: session.in_flight, lambda n: n == 3)
        assert session.status().window_in_use == 3
        await peer.release()
        ids = await asyncio.gather(*sends)
        assert len(set(ids)) == 7
        assert len(await peer.submits()) == 7
    finally:
        await session.stop()


async def test_tps_is_respected(peer: SmscPeer) -> None:
    session = await started(SmppSession(bind_for(peer.port, tps=40), name="t", tuning=FAST))
    try:
        start = time.monotonic()
        await asyncio.gather(*(session.submit(**SUBMIT) for _ in range(30)))
        elapsed = time.monotonic() - start
        assert elapsed >= 29 / 40 * 0.95, elapsed
        stamps = [s["at"] for s in await peer.submits()]
        assert stamps[-1] - stamps[0] >= 29 / 40 * 0.9
    finally:
        await session.stop()


async def test_tps_holds_when_the_window_opens_after_a_stall() -> None:
    """The pacer's slot was taken before the window's: while the SMSC sat on a full window,
    submits kept collecting slots, and when the responses came they all went at once (here
    10 submits in a few milliseconds at 20 TPS). Operators count TPS when submits arrive."""
    tps = 20.0
    async with raw_smsc(answer_submit=False) as smsc:
        bind = bind_for(smsc.port, tps=tps, window=5, response_timeout_s=10)
        session = await started(SmppSession(bind, name="st", tuning=FAST))
        try:
            sends = [asyncio.create_task(session.submit(**SUBMIT)) for _ in range(15)]
            await eventually(lambda: smsc.count(0x04), lambda n: n == 5)
            await asyncio.sleep(1.0)  # the SMSC's stall: the window stays full for a second
            smsc.answer_submit = True
            for frame in [f for f in smsc.frames if f.command_id == 0x04]:
                smsc.send(pdu(0x80000004, frame.seq, b"S\x00"))
            await asyncio.gather(*sends)
            stamps = [f.at for f in smsc.frames if f.command_id == 0x04]
            assert len(stamps) == 15
            # The ten after the stall are spaced by the pacer: 9 gaps of 1/20 s (0.45 s; a
            # late first one shortens the span, hence the margin). They came in a few ms.
            after = stamps[5:]
            assert after[-1] - after[0] >= 9 / tps * 0.66, [round(t - after[0], 3) for t in after]
        finally:
            await session.stop()


async def test_throttled_submit_slows_the_bind(peer: SmscPeer) -> None:
    await peer.configure(throttle_every=2)
    session = await started(SmppSession(bind_for(peer.port, tps=100), name="th", tuning=FAST))
    try:
        await session.submit(**SUBMIT)
        with pytest.raises(Throttled) as info:
            await session.submit(**SUBMIT)
        assert info.value.status == 0x58
        assert session.pacer.rate == 50
        assert session.status().throttled == 1
    finally:
        await session.stop()


async def test_a_full_window_throttled_at_once_halves_the_rate_once() -> None:
    """Every submit in a full window answered ESME_RTHROTTLED is one push-back from the SMSC,
    about submits sent at the same rate. Each answer used to halve the rate again: ten in
    flight took the bind from 500 TPS to its floor (50) in one go, and 50 accepted submits to
    climb back."""
    async with raw_smsc(answer_submit=False) as smsc:
        bind = bind_for(smsc.port, tps=500, window=10, response_timeout_s=10)
        session = await started(SmppSession(bind, name="fw", tuning=FAST))
        try:
            sends = [asyncio.create_task(session.submit(**SUBMIT)) for _ in range(10)]
            await eventually(lambda: smsc.count(0x04), lambda n: n == 10)
            for frame in [f for f in smsc.frames if f.command_id == 0x04]:
                smsc.send(pdu(0x80000004, frame.seq, status=0x58))
            results = await asyncio.gather(*sends, return_exceptions=True)
            assert all(isinstance(r, Throttled) for r in results), results
            assert session.status().throttled == 10
            assert session.pacer.rate == 250
        finally:
            await session.stop()


async def test_generic_nack_throttled_slows_the_bind() -> None:
    """An SMSC that says ESME_RTHROTTLED in a generic_nack (some do, for a submit over their
    rate) means the same as in a submit_sm_resp: the bind slows down and the part is retried,
    not failed as a refusal."""
    async with raw_smsc(answer_submit=False) as smsc:
        session = await started(SmppSession(bind_for(smsc.port, tps=100), name="gt", tuning=FAST))
        try:
            task = asyncio.create_task(session.submit(**SUBMIT))
            frame = await smsc.wait_for(0x04)
            smsc.send(pdu(0x80000000, frame.seq, status=0x58))
            with pytest.raises(Throttled):
                await task
            assert session.pacer.rate == 50
            assert session.status().throttled == 1
        finally:
            await session.stop()


async def test_message_queue_full_slows_the_bind_like_throttling(peer: SmscPeer) -> None:
    """ESME_RMSGQFUL (0x14): the SMSC's queue for this bind is full. Like ESME_RTHROTTLED it
    is temporary and halves the bind's rate, never a failed message."""
    await peer.configure(reject_dest="254799999914", reject_status=0x14)
    session = await started(SmppSession(bind_for(peer.port, tps=100), name="qf", tuning=FAST))
    try:
        with pytest.raises(Throttled) as info:
            await session.submit(**{**SUBMIT, "destination_addr": "254799999914"})
        assert info.value.status == 0x14
        assert session.pacer.rate == 50
        assert session.status().throttled == 1
        await session.submit(**SUBMIT)  # the bind still sends
    finally:
        await session.stop()


async def test_incorrect_bind_status_rebinds() -> None:
    """ESME_RINVBNDSTS to a submit: the SMSC no longer counts this session as bound (it
    restarted or failed over behind a link that stayed up). The bind stayed "bound" and every
    submit was refused the same way until something else dropped the link; now the link is
    dropped and re-bound, and the submit fails with LinkDown (the SMSC did not take it), so
    the channel sends it again on the new bind."""
    async with raw_smsc(answer_submit=False) as smsc:
        session = await started(SmppSession(bind_for(smsc.port), name="ib", tuning=FAST))
        try:
            task = asyncio.create_task(session.submit(**SUBMIT))
            frame = await smsc.wait_for(0x04)
            smsc.send(pdu(0x80000004, frame.seq, status=0x04))
            with pytest.raises(LinkDown):
                await task
            await eventually(lambda: smsc.binds, lambda n: n == 2)
            assert "0x00000004" in (session.status().last_error or "")
            assert await session.wait_bound(5)
            smsc.answer_submit = True
            assert await session.submit(**SUBMIT) == "RAW1"
        finally:
            await session.stop()


async def test_permanent_rejection_carries_the_status(peer: SmscPeer) -> None:
    await peer.configure(reject_dest="254799999999", reject_status=0x0B)
    session = await started(SmppSession(bind_for(peer.port), name="rj", tuning=FAST))
    try:
        with pytest.raises(SmscRejected) as info:
            await session.submit(**{**SUBMIT, "destination_addr": "254799999999"})
        assert info.value.status == 0x0B and not isinstance(info.value, Throttled)
        assert "Invalid Destination Address" in str(info.value)
    finally:
        await session.stop()


async def test_in_flight_requests_fail_when_the_smsc_dies(peer: SmscPeer) -> None:
    await peer.configure(hold=True)
    bind = bind_for(peer.port, response_timeout_s=30)
    session = await started(SmppSession(bind, name="k", tuning=FAST))
    try:
        sends = [asyncio.create_task(session.submit(**SUBMIT)) for _ in range(3)]
        await eventually(lambda: session.in_flight, lambda n: n == 3)
        start = time.monotonic()
        peer.kill()
        results = await asyncio.gather(*sends, return_exceptions=True)
        assert all(isinstance(r, LinkDown) for r in results), results
        assert time.monotonic() - start < 5  # failed at once, not after the 30 s timeout
        await eventually(lambda: session.state, lambda s: s is not BindState.BOUND)
        await eventually(lambda: session.status().last_error, lambda e: e is not None)
        await peer.start()
        assert await session.wait_bound(10)
        assert session.status().connects == 2
        assert await session.submit(**SUBMIT)
    finally:
        await session.stop()


async def test_response_timeouts_drop_the_link(peer: SmscPeer) -> None:
    await peer.configure(hold=True)
    bind = bind_for(peer.port, response_timeout_s=0.2)
    session = await started(SmppSession(bind, name="to", tuning=FAST))
    try:
        for _ in range(FAST.max_timeouts_in_row):
            with pytest.raises(ResponseTimeout):
                await session.submit(**SUBMIT)
        await eventually(lambda: session.status().connects, lambda n: n >= 2)
        assert "timed out" in (session.status().last_error or "")
    finally:
        await session.stop()


async def test_mo_is_handed_over_and_acknowledged(peer: SmscPeer) -> None:
    seen: list[DeliverSm] = []

    async def on_deliver(session: SmppSession, pdu: DeliverSm) -> int:
        seen.append(pdu)
        return 0

    session = await started(
        SmppSession(bind_for(peer.port), name="mo", on_deliver=on_deliver, tuning=FAST)
    )
    try:
        await eventually(peer.bound, lambda n: n == 1)
        assert await peer.mo(source="254711000111", text="BAL 1234") == [0]
        assert [(p.source_addr, p.short_message) for p in seen] == [("254711000111", b"BAL 1234")]
    finally:
        await session.stop()


async def test_handler_failure_answers_temporary_error(peer: SmscPeer) -> None:
    async def broken(session: SmppSession, pdu: DeliverSm) -> int:
        raise RuntimeError("store down")

    session = await started(
        SmppSession(bind_for(peer.port), name="mo2", on_deliver=broken, tuning=FAST)
    )
    try:
        await eventually(peer.bound, lambda n: n == 1)
        assert await peer.mo(text="BAL 1234") == [0x64]  # ESME_RX_T_APPN: the SMSC retries
    finally:
        await session.stop()


async def test_smsc_unbind_is_answered_and_the_bind_returns(
    peer: SmscPeer, caplog: pytest.LogCaptureFixture
) -> None:
    session = await started(SmppSession(bind_for(peer.port), name="u", tuning=FAST))
    try:
        await eventually(peer.bound, lambda n: n == 1)
        await peer.unbind_all()
        await eventually(lambda: session.status().connects, lambda n: n >= 2)
        assert session.state is BindState.BOUND
        assert session.status().last_error == "the SMSC unbound"
    finally:
        await session.stop()
    assert "ended with an error" not in caplog.text


async def test_answers_after_the_smscs_unbind_still_count() -> None:
    """The SMSC unbinds with two submits in flight, answers one after its unbind and then
    closes. The answered one succeeded (the SMSC has it: failing it made the channel send it
    again); the unanswered one fails with LinkDown when the link closes and may be retried.
    Before, both failed the moment the unbind was read and the late answer was lost."""
    async with raw_smsc(answer_submit=False) as smsc:
        bind = bind_for(smsc.port, response_timeout_s=10)
        tuning = replace(FAST, unbind_timeout_s=5.0)  # how long the late answers may take
        session = await started(SmppSession(bind, name="ul", tuning=tuning))
        try:
            first = asyncio.create_task(session.submit(**SUBMIT))
            second = asyncio.create_task(session.submit(**SUBMIT))
            await eventually(lambda: smsc.count(0x04), lambda n: n == 2)
            frames = [f for f in smsc.frames if f.command_id == 0x04]
            smsc.send(pdu(0x00000006, 600))  # the SMSC unbinds
            assert (await smsc.wait_for(0x80000006, seq=600)).status == 0
            assert not session.is_up  # no new requests once the SMSC said goodbye
            smsc.send(pdu(0x80000004, frames[0].seq, b"LATE1\x00"))
            assert await first == "LATE1"
            smsc.drop()
            with pytest.raises(LinkDown):
                await second
            await eventually(lambda: smsc.binds, lambda n: n == 2)
            assert session.status().last_error == "the SMSC unbound"
            assert smsc.count(0x04) == 2
        finally:
            await session.stop()


async def test_bind_refused_backs_off_with_growing_delays() -> None:
    async with raw_smsc(bind_status=0x0E) as smsc:  # ESME_RINVPASWD
        session = SmppSession(bind_for(smsc.port), name="r", tuning=FAST)
        session.start()
        try:
            await eventually(lambda: smsc.binds, lambda n: n >= 3)
            status = session.status()
            assert status.state in ("backing_off", "connecting")
            assert "Invalid Password" in (status.last_error or "")
            assert status.connects == 0
        finally:
            await session.stop()
        assert session.state is BindState.STOPPED


async def test_a_long_outage_never_stops_the_bind() -> None:
    """The backoff ceiling was `min * 2 ** (failures - 1)`: at the 1,025th failed attempt in a
    row the power no longer converts to a float, OverflowError left the run loop and the bind
    stopped for good (with default timers, after some 13 hours of an SMSC down or refusing the
    password). Attempts here are a connection refused and a backoff of at most 0.1 ms."""
    tuning = replace(FAST, reconnect_min_s=0.00005, reconnect_max_s=0.0001)
    attempts = 0
    gave_up = asyncio.Event()

    def on_state(session: SmppSession, state: BindState) -> None:
        nonlocal attempts
        attempts += state is BindState.CONNECTING
        if state is BindState.STOPPED or attempts > 1_100:
            gave_up.set()

    session = SmppSession(bind_for(1), name="o", on_state=on_state, tuning=tuning)
    session.start()
    try:
        async with asyncio.timeout(60):
            await gave_up.wait()
        assert session.state is not BindState.STOPPED, session.status().last_error
        assert attempts > 1_100
    finally:
        await session.stop()


async def test_a_generic_nack_to_the_bind_is_never_a_bind() -> None:
    """A generic_nack answers a bind the SMSC could not read. One whose status was 0 (some
    SMSCs leave it unset) passed for a successful bind: the session counted itself bound
    and sent submits to an SMSC that had not bound it."""
    async with raw_smsc(bind_nack=True) as smsc:
        session = SmppSession(bind_for(smsc.port), name="bn", tuning=FAST)
        session.start()
        try:
            await eventually(lambda: smsc.binds, lambda n: n >= 2)
            status = session.status()
            assert status.connects == 0 and status.state != "bound", status
            assert "generic_nack" in (status.last_error or ""), status.last_error
        finally:
            await session.stop()


async def test_binds_that_drop_at_once_back_off_like_refused_ones() -> None:
    """An SMSC that accepts every bind and drops it at once (a duplicate-bind policy, a
    licence limit) was re-bound after the shortest backoff for ever, about once a second with
    the default timers: a successful bind reset the backoff however short the bind lived.
    Only a bind that stayed up `stable_bind_s` resets it now."""
    async with raw_smsc(unbind_after_bind=True) as smsc:
        session = SmppSession(bind_for(smsc.port), name="d", tuning=FAST)
        session.start()
        try:
            await eventually(lambda: smsc.binds, lambda n: n >= 6)
            stamps = [f.at for f in smsc.frames if f.command_id == 0x09]
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            # From the 4th drop on the ceiling is reconnect_max_s: each delay is at least half.
            assert min(gaps[3:]) >= FAST.reconnect_max_s / 2, gaps
            assert session.status().last_error == "the SMSC unbound"
        finally:
            await session.stop()


async def test_unknown_command_gets_generic_nack() -> None:
    async with raw_smsc() as smsc:
        session = await started(SmppSession(bind_for(smsc.port), name="n", tuning=FAST))
        try:
            smsc.send(pdu(0x00000099, 777, b"junk"))  # no such command
            smsc.send(pdu(0x00000103, 778))  # data_sm: not supported here
            nack = await smsc.wait_for(0x80000000, seq=777)
            assert nack.status == 0x03  # ESME_RINVCMDID
            assert (await smsc.wait_for(0x80000000, seq=778)).status == 0x03
            assert session.state is BindState.BOUND
            assert await session.submit(**SUBMIT) == "RAW1"  # the link still works
            assert session.status().nacks_sent == 2
        finally:
            await session.stop()


ODD_TLVS = [
    # Known TLVs the gateway never reads, with a length their definition does not have:
    # smpplib reads an integer TLV by its defined size whatever its length says, lost its
    # place in the rest, and the MO was refused with a generic_nack (redelivered or lost).
    ("source_port len 1", tlv(0x020A, b"\x01"), {}),
    ("language_indicator len 2", tlv(0x020D, b"\x00\x01"), {}),
    ("payload_type len 0", tlv(0x0019, b""), {}),
    # TLVs it reads, sent wider or narrower than defined: read as the integer they hold.
    ("message_state len 4", tlv(0x0427, b"\x00\x00\x00\x02"), {"message_state": 2}),
    ("sar_msg_ref_num len 1", tlv(0x020C, b"\x07"), {"sar_msg_ref_num": 7}),
    (
        "user_message_reference len 4",
        tlv(0x0204, b"\x00\x00\x01\x02"),
        {"user_message_reference": 258},
    ),
    # An unknown standard-range tag and a vendor tag, skipped.
    ("unknown tag", tlv(0x0777, b"xyz"), {}),
    ("vendor tag", tlv(0x1501, b"id-1"), {"vendor_tlvs": ((0x1501, b"id-1"),)}),
]


@pytest.mark.parametrize(("label", "tlvs", "fields"), ODD_TLVS, ids=[c[0] for c in ODD_TLVS])
async def test_odd_tlvs_do_not_cost_the_mo(
    label: str, tlvs: bytes, fields: dict[str, object]
) -> None:
    seen: list[DeliverSm] = []

    async def on_deliver(session: SmppSession, pdu_: DeliverSm) -> int:
        seen.append(pdu_)
        return 0

    async with raw_smsc() as smsc:
        session = await started(
            SmppSession(bind_for(smsc.port), name="tv", on_deliver=on_deliver, tuning=FAST)
        )
        try:
            body = deliver_sm_body("254711000111", "12345", b"BAL 1234", tlvs=tlvs)
            smsc.send(pdu(0x00000005, 56, body))
            resp = await smsc.wait_for(0x80000005, seq=56, timeout_s=5)
            assert resp.status == 0
            assert [p.short_message for p in seen] == [b"BAL 1234"]
            for name, value in fields.items():
                assert getattr(seen[0], name) == value, name
        finally:
            await session.stop()


MALFORMED_DELIVER = [
    ("empty body", b""),
    ("unterminated source", b"\x00\x01\x01" + b"2" * 40),
    (
        "sm_length past end",
        b"\x00\x01\x01254\x00\x00\x00123\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x50ab",
    ),
    (
        "tlv past end",
        b"\x00\x01\x01254\x00\x00\x00123\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02ab\x00\x1e\x00\x09x",
    ),
    (
        "truncated tlv header",
        b"\x00\x01\x01254\x00\x00\x00123\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02ab\x00",
    ),
]


@pytest.mark.parametrize(
    ("label", "body"), MALFORMED_DELIVER, ids=[c[0] for c in MALFORMED_DELIVER]
)
async def test_malformed_deliver_sm_gets_generic_nack(label: str, body: bytes) -> None:
    seen: list[DeliverSm] = []

    async def on_deliver(session: SmppSession, pdu_: DeliverSm) -> int:
        seen.append(pdu_)
        return 0

    async with raw_smsc() as smsc:
        session = await started(
            SmppSession(bind_for(smsc.port), name="m", on_deliver=on_deliver, tuning=FAST)
        )
        try:
            smsc.send(pdu(0x00000005, 55, body))
            nack = await smsc.wait_for(0x80000000, seq=55)
            assert nack.status == 0x02  # ESME_RINVCMDLEN
            assert seen == []
            assert smsc.count(0x80000005) == 0
            assert session.state is BindState.BOUND
        finally:
            await session.stop()


@pytest.mark.parametrize("length", [8, 15, 10_000_000], ids=["tiny", "header-1", "huge"])
async def test_impossible_length_nacks_and_reconnects(length: int) -> None:
    async with raw_smsc() as smsc:
        session = await started(SmppSession(bind_for(smsc.port), name="l", tuning=FAST))
        try:
            smsc.send(
                length.to_bytes(4, "big")
                + (5).to_bytes(4, "big")
                + bytes(4)
                + (91).to_bytes(4, "big")
            )
            assert (await smsc.wait_for(0x80000000, seq=91)).status == 0x02
            await eventually(lambda: smsc.binds, lambda n: n == 2)
            assert "out of range" in (session.status().last_error or "")
        finally:
            await session.stop()


async def test_enquire_link_both_ways() -> None:
    async with raw_smsc() as smsc:
        bind = bind_for(smsc.port, enquire_link_s=0.1)
        session = await started(SmppSession(bind, name="e", tuning=FAST))
        try:
            smsc.send(pdu(0x00000015, 4242))
            assert (await smsc.wait_for(0x80000015, seq=4242)).status == 0
            await eventually(lambda: smsc.count(0x15), lambda n: n >= 3)
            assert session.status().connects == 1
        finally:
            await session.stop()
        assert smsc.count(0x06) == 1  # a polite unbind on stop


async def test_smscs_enquire_link_is_answered_while_the_window_is_full() -> None:
    async with raw_smsc(answer_submit=False) as smsc:
        bind = bind_for(smsc.port, window=2, response_timeout_s=10)
        session = await started(SmppSession(bind, name="ef", tuning=FAST))
        try:
            sends = [asyncio.create_task(session.submit(**SUBMIT)) for _ in range(3)]
            await eventually(lambda: smsc.count(0x04), lambda n: n == 2)
            assert session.in_flight == 2
            smsc.send(pdu(0x00000015, 4343))
            assert (await smsc.wait_for(0x80000015, seq=4343)).status == 0
            smsc.answer_submit = True
            for frame in [f for f in smsc.frames if f.command_id == 0x04]:
                smsc.send(pdu(0x80000004, frame.seq, b"W\x00"))
            assert len(await asyncio.gather(*sends)) == 3
        finally:
            await session.stop()


async def test_sequence_numbers_wrap_from_0x7fffffff_to_1() -> None:
    async with raw_smsc() as smsc:
        session = await started(SmppSession(bind_for(smsc.port), name="sq", tuning=FAST))
        try:
            session._seq = 0x7FFFFFFE  # as if 2**31 - 2 requests had gone before
            for _ in range(3):
                assert await session.submit(**SUBMIT) == "RAW1"
            assert [f.seq for f in smsc.frames if f.command_id == 0x04] == [0x7FFFFFFF, 1, 2]
        finally:
            await session.stop()


async def test_silent_smsc_is_detected_by_enquire_link(caplog: pytest.LogCaptureFixture) -> None:
    async with raw_smsc(answer_enquire_link=False) as smsc:
        bind = bind_for(smsc.port, enquire_link_s=0.1, response_timeout_s=0.2)
        session = await started(SmppSession(bind, name="s", tuning=FAST))
        try:
            await eventually(lambda: smsc.binds, lambda n: n >= 2)
            assert "ResponseTimeout" in (session.status().last_error or "")
        finally:
            await session.stop()
    # An unanswered enquire_link is the link ending (the bind's last error says so), not a
    # fault in our code: it was logged with a traceback as a link task that "ended with an
    # error".
    assert "ended with an error" not in caplog.text


async def test_generic_nack_to_a_request_fails_it() -> None:
    async with raw_smsc(answer_submit=False) as smsc:
        session = await started(SmppSession(bind_for(smsc.port), name="g", tuning=FAST))
        try:
            task = asyncio.create_task(session.submit(**SUBMIT))
            frame = await smsc.wait_for(0x04)
            smsc.send(pdu(0x80000000, frame.seq, status=0x08))
            with pytest.raises(SmscRejected) as info:
                await task
            assert info.value.status == 0x08
            assert session.in_flight == 0
            # A response nobody waits for (a stray sequence) is dropped without harm.
            smsc.send(pdu(0x80000004, 999_999, b"X\x00"))
            smsc.send(pdu(0x00000015, 31))
            assert (await smsc.wait_for(0x80000015, seq=31)).status == 0
        finally:
            await session.stop()


async def test_stop_while_connecting_is_prompt() -> None:
    session = SmppSession(bind_for(1), name="x", tuning=FAST)  # nothing listens on port 1
    session.start()
    await eventually(lambda: session.status().last_error, lambda e: e is not None)
    start = time.monotonic()
    await session.stop()
    assert time.monotonic() - start < 2
    assert session.state is BindState.STOPPED
    with pytest.raises(LinkDown):
        await session.submit(**SUBMIT)
