"""The outbox on a real database: receipts rendered in the customer's language, delivery,
retries with backoff, dead letters, several dispatchers at once (each message sent once), and
the app's own dispatcher delivering receipts through the logging sender."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace

import asyncpg
import pytest
from aiohttp import web

from core.crypto import FieldCipher
from core.errors import IdempotencyConflict, SendFailed, ValidationFailed
from core.outbox import Dispatcher, DispatchPolicy, OutboundMessage, backlog, enqueue
from core.receipts import TEMPLATES, render
from core.transfers import send_money
from gateway.keys import DISPATCHER, SENDERS
from tests.integration.core.conftest import make_customer, new_key
from tests.tcp_proxy import postgres_proxy

FAST = DispatchPolicy(poll_interval_s=0.01, backoff_base_s=0.0, backoff_max_s=0.0, max_attempts=3)


class Recorder:
    """A sender that records what it sends and fails as told."""

    def __init__(self, fail: list[SendFailed | None] | None = None) -> None:
        self.sent: list[OutboundMessage] = []
        self.fail = list(fail or [])

    async def send(self, message: OutboundMessage) -> str | None:
        if self.fail:
            error = self.fail.pop(0)
            if error is not None:
                raise error
        self.sent.append(message)
        await asyncio.sleep(0)
        return f"prov-{message.id}"


def channel() -> str:
    return "t" + secrets.token_hex(4)


async def row(db: asyncpg.Pool, message_id: int) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM outbox WHERE id = $1", message_id)


async def _enqueue(db: asyncpg.Pool, chan: str, body: str = "hello") -> int:
    # enqueue() refuses unknown channels; tests use private channel names so the app's own
    # dispatcher never claims their rows.
    return int(
        await db.fetchval(
            "INSERT INTO outbox (channel, recipient, kind, body) VALUES ($1, '+254700000999', "
            "'test', $2) RETURNING id",
            chan,
            body,
        )
    )


def test_every_receipt_renders_in_every_language() -> None:
    params = {
        "amount_minor": 1_234_00,
        "fee_minor": 13_00,
        "balance_minor": 5_00,
        "currency": "KES",
        "reference": "TABC",
        "sender": "+2547",
        "recipient": "+2548",
        "sender_name": "A B",
        "recipient_name": "C D",
        "agent_code": "AG1",
        "agent_name": "Duka",
        "original": "TOLD",
    }
    for template, texts in TEMPLATES.items():
        assert set(texts) == {"en", "sw", "fr"}, template
        for language in texts:
            text = render(template, language, params)
            assert "KES 1,234.00" in text and "{" not in text, (template, language)
    assert "Umepokea KES 1,234.00" in render("p2p_received", "sw", params)
    assert "KES 1,234.00 de A B +2547 crédité" in render("p2p_received", "fr", params)


async def test_delivery_retry_and_dead_letter(core_db: asyncpg.Pool) -> None:
    chan = channel()
    ok_id = await _enqueue(core_db, chan, "one")
    sender = Recorder([SendFailed("SMSC busy", temporary=True), None])
    dispatcher = Dispatcher(core_db, {chan: sender}, FAST)
    assert await dispatcher.dispatch_once() == 1
    first = await row(core_db, ok_id)
    assert (first["status"], first["attempts"], first["last_error"]) == ("pending", 1, "SMSC busy")
    assert await dispatcher.dispatch_once() == 1
    sent = await row(core_db, ok_id)
    assert (sent["status"], sent["provider_id"], sent["attempts"]) == ("sent", f"prov-{ok_id}", 2)
    assert [m.body for m in sender.sent] == ["one"]
    assert dispatcher.outcomes == {(chan, "retry"): 1, (chan, "sent"): 1}  # for /metrics

    dead_id = await _enqueue(core_db, chan, "two")
    permanent = Dispatcher(
        core_db, {chan: Recorder([SendFailed("bad number", temporary=False)])}, FAST
    )
    await permanent.dispatch_once()
    dead = await row(core_db, dead_id)
    assert (dead["status"], dead["last_error"]) == ("dead", "bad number")

    tired_id = await _enqueue(core_db, chan, "three")
    always = Recorder([SendFailed("down", temporary=True)] * 5)
    tired = Dispatcher(core_db, {chan: always}, FAST)
    for _ in range(3):
        await tired.dispatch_once()
    exhausted = await row(core_db, tired_id)
    assert (exhausted["status"], exhausted["attempts"]) == ("dead", 3)
    assert await tired.dispatch_once() == 0
    assert permanent.outcomes == {(chan, "dead"): 1}
    assert tired.outcomes == {(chan, "retry"): 2, (chan, "dead"): 1}


async def test_the_backlog_per_channel_and_how_late_it_is(core_db: asyncpg.Pool) -> None:
    chan, idle = channel(), channel()
    late = await _enqueue(core_db, chan, "late")
    await _enqueue(core_db, chan, "due now")
    waiting = await _enqueue(core_db, idle, "in backoff")
    await core_db.execute(
        "UPDATE outbox SET next_attempt_at = now() - interval '90 seconds' WHERE id = $1", late
    )
    await core_db.execute(
        "UPDATE outbox SET next_attempt_at = now() + interval '60 seconds' WHERE id = $1", waiting
    )
    rows = {b.channel: b for b in await backlog(core_db)}
    assert rows[chan].pending == 2 and 90 <= rows[chan].overdue_s < 120
    assert (rows[idle].pending, rows[idle].overdue_s) == (1, 0.0)  # not due yet: not late
    sent = Dispatcher(core_db, {chan: Recorder()}, FAST)
    while await sent.dispatch_once():
        pass
    assert chan not in {b.channel for b in await backlog(core_db)}


async def test_backoff_waits_before_the_next_attempt(core_db: asyncpg.Pool) -> None:
    chan = channel()
    message_id = await _enqueue(core_db, chan)
    slow = DispatchPolicy(backoff_base_s=60.0, backoff_max_s=60.0)
    dispatcher = Dispatcher(core_db, {chan: Recorder([SendFailed("busy")])}, slow)
    await dispatcher.dispatch_once()
    assert await dispatcher.dispatch_once() == 0  # not due yet
    due_in = await core_db.fetchval(
        "SELECT extract(epoch FROM next_attempt_at - now()) FROM outbox WHERE id = $1", message_id
    )
    assert 25 < due_in <= 60


async def test_sender_that_hangs_or_crashes_is_retried(core_db: asyncpg.Pool) -> None:
    class Broken:
        async def send(self, message: OutboundMessage) -> str | None:
            raise RuntimeError("boom")

    chan = channel()
    message_id = await _enqueue(core_db, chan)
    await Dispatcher(core_db, {chan: Broken()}, FAST).dispatch_once()
    got = await row(core_db, message_id)
    assert got["status"] == "pending" and "boom" in got["last_error"]


async def test_several_dispatchers_send_each_message_once(core_db: asyncpg.Pool) -> None:
    chan = channel()
    ids = [await _enqueue(core_db, chan, f"m{i}") for i in range(60)]
    senders = [Recorder() for _ in range(3)]
    policy = DispatchPolicy(batch_size=7, poll_interval_s=0.01)
    dispatchers = [Dispatcher(core_db, {chan: s}, policy) for s in senders]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = await core_db.fetchval(
            "SELECT count(*) FROM outbox WHERE id = ANY($1) AND status = 'sent'", ids
        )
        if done == len(ids):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*tasks)
    delivered = [m.id for s in senders for m in s.sent]
    assert sorted(delivered) == sorted(ids)  # every one, none twice
    assert sum(1 for s in senders if s.sent) >= 2  # the work really was shared


async def test_a_row_whose_turn_comes_too_late_for_its_lease_is_handed_back(
    core_db: asyncpg.Pool,
) -> None:
    """A batch's rows wait behind slow sends. One whose send could no longer finish inside its
    lease is not sent (once the lease runs out another instance may claim it, and both would
    send it): it is handed back, due at once with its attempt undone, unless another claim
    has taken it meanwhile."""
    chan = channel()
    first, second, third = [await _enqueue(core_db, chan, f"m{i}") for i in range(3)]
    clock = [1_000.0]

    class Slow:
        def __init__(self) -> None:
            self.sent: list[int] = []

        async def send(self, message: OutboundMessage) -> str | None:
            self.sent.append(message.id)
            if len(self.sent) == 1:
                clock[0] += 50.0  # 50 s of the 60 s lease: 10 s left, a send may take 15
                # Meanwhile another instance claimed the third row (its lease ran out there).
                await core_db.execute(
                    "UPDATE outbox SET attempts = attempts + 1 WHERE id = $1", third
                )
            return f"prov-{message.id}"

    sender = Slow()
    policy = DispatchPolicy(batch_size=10, concurrency=1, lease_s=60.0, send_timeout_s=15.0)
    dispatcher = Dispatcher(core_db, {chan: sender}, policy, clock=lambda: clock[0])
    assert await dispatcher.dispatch_once() == 3
    assert sender.sent == [first]
    handed_back = await row(core_db, second)
    assert handed_back["status"] == "pending" and handed_back["attempts"] == 0
    assert await core_db.fetchval(
        "SELECT next_attempt_at <= now() FROM outbox WHERE id = $1", second
    )
    taken = await row(core_db, third)
    assert taken["attempts"] == 2  # the other claim's row: left alone
    assert (await row(core_db, first))["status"] == "sent"

    await core_db.execute("UPDATE outbox SET next_attempt_at = now() WHERE id = $1", third)
    assert await dispatcher.dispatch_once() == 2
    assert sender.sent == [first, second, third]
    assert (await row(core_db, second))["attempts"] == 1


async def test_enqueue_refuses_bad_input(core_db: asyncpg.Pool) -> None:
    with pytest.raises(Exception, match="channel"):
        await enqueue(core_db, channel="fax", recipient="x", body="b", kind="k")
    with pytest.raises(Exception, match="body"):
        await enqueue(core_db, channel="sms", recipient="x", body="", kind="k")


async def test_enqueue_with_a_dedupe_key_queues_once(core_db: asyncpg.Pool) -> None:
    key = new_key("late-sms")
    recipient = "+254700000998"
    first = await enqueue(
        core_db, channel="push", recipient=recipient, body="Sent KES 5.00", kind="k", dedupe_key=key
    )
    again = await enqueue(
        core_db, channel="push", recipient=recipient, body="Sent KES 5.00", kind="k", dedupe_key=key
    )
    assert again == first
    # The key is per channel; no key means no deduplication.
    other = await enqueue(
        core_db, channel="log", recipient=recipient, body="Sent KES 5.00", kind="k", dedupe_key=key
    )
    plain = [
        await enqueue(core_db, channel="push", recipient=recipient, body="x", kind="k")
        for _ in range(2)
    ]
    assert len({first, other, *plain}) == 4
    assert await core_db.fetchval("SELECT count(*) FROM outbox WHERE dedupe_key = $1", key) == 2


async def test_dedupe_key_inside_a_rolled_back_transaction_leaves_it_free(
    core_db: asyncpg.Pool,
) -> None:
    key = new_key("late-sms")
    async with core_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await enqueue(
            conn, channel="push", recipient="+254700000998", body="b", kind="k", dedupe_key=key
        )
        await tx.rollback()
    queued = await enqueue(
        core_db, channel="push", recipient="+254700000998", body="b", kind="k", dedupe_key=key
    )
    assert await core_db.fetchval("SELECT id FROM outbox WHERE dedupe_key = $1", key) == queued


async def test_concurrent_enqueues_with_one_key_queue_one_row(core_db: asyncpg.Pool) -> None:
    key = new_key("late-sms")
    ids = await asyncio.gather(
        *(
            enqueue(
                core_db,
                channel="push",
                recipient="+254700000998",
                body="b",
                kind="k",
                dedupe_key=key,
            )
            for _ in range(20)
        )
    )
    assert len(set(ids)) == 1
    assert await core_db.fetchval("SELECT count(*) FROM outbox WHERE dedupe_key = $1", key) == 1


async def test_dedupe_key_reused_for_another_message_is_refused(core_db: asyncpg.Pool) -> None:
    key = new_key("late-sms")
    await enqueue(
        core_db, channel="push", recipient="+254700000998", body="one", kind="k", dedupe_key=key
    )
    before = await core_db.fetchval("SELECT count(*) FROM outbox")
    with pytest.raises(IdempotencyConflict):
        await enqueue(
            core_db, channel="push", recipient="+254700000998", body="two", kind="k", dedupe_key=key
        )
    with pytest.raises(IdempotencyConflict):
        await enqueue(
            core_db, channel="push", recipient="+254700000997", body="one", kind="k", dedupe_key=key
        )
    for bad in ("", "k" * 201):
        with pytest.raises(ValidationFailed) as info:
            await enqueue(
                core_db, channel="push", recipient="+2547", body="b", kind="k", dedupe_key=bad
            )
        assert info.value.details["field"] == "dedupe_key"
    assert await core_db.fetchval("SELECT count(*) FROM outbox") == before


async def test_app_dispatcher_sends_receipts_in_the_customers_language(
    app: web.Application, core_db: asyncpg.Pool, cipher: FieldCipher
) -> None:
    assert set(app[SENDERS]) >= {"sms", "log"}
    alice = await make_customer(core_db, cipher, 1_000_00, language="fr")
    bob = await make_customer(core_db, cipher, language="sw")
    sent = await send_money(
        core_db,
        sender=alice,
        recipient=bob,
        amount_minor=200_00,
        idempotency_key=new_key(),
        channel="ussd",
    )
    app[DISPATCHER].wake()
    deadline = time.monotonic() + 10
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        rows = await core_db.fetch(
            "SELECT o.recipient, o.status, o.body FROM outbox o JOIN transfers t "
            "ON t.id = o.transfer_id WHERE t.id = ledger_reference_id($1) ORDER BY o.id",
            sent.reference,
        )
        if rows and all(r["status"] == "sent" for r in rows):
            break
        await asyncio.sleep(0.05)
    assert [r["status"] for r in rows] == ["sent", "sent"]
    assert rows[0]["body"].startswith(f"{sent.reference} Confirmé. KES 200.00 envoyé")
    assert "Frais KES 7.00" in rows[0]["body"]
    assert rows[1]["body"].startswith(f"{sent.reference} Imethibitishwa. Umepokea KES 200.00")


async def test_dispatcher_backs_off_while_the_database_is_down(database_url: str) -> None:
    from gateway import db as dbmod

    pool = await dbmod.make_pool(database_url, min_size=1, max_size=1)
    await pool.close()  # a real pool that can no longer reach the database

    class Counting(Dispatcher):
        calls = 0

        async def dispatch_once(self) -> int:
            Counting.calls += 1
            return await super().dispatch_once()

    dispatcher = Counting(pool, {"x": Recorder()}, DispatchPolicy(poll_interval_s=0.01))
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.6, stop.set)
    await asyncio.wait_for(dispatcher.run(stop), timeout=10)
    # 0.01 s polls would make ~60 tries; doubling pauses (0.02, 0.04 ... s) make about 6.
    assert 2 <= Counting.calls <= 8


async def test_ussd_late_result_sms_retried_is_queued_once(core_db: asyncpg.Pool) -> None:
    from menus.bindings import OutboxNotifier

    notifier = OutboxNotifier(core_db)
    recipient = "+254700000996"
    step_key = new_key("ussd:step")
    for _ in range(2):  # the engine retries the notify after a crash, with the step's key
        await notifier.notify(
            msisdn=recipient,
            text="Sent KES 5.00",
            kind="ussd.late_result",
            idempotency_key=step_key,
        )
    long_key = "ussd:" + "x" * 300  # over the column's length: stored as a digest, still once
    for _ in range(2):
        await notifier.notify(
            msisdn=recipient, text="Paid", kind="ussd.late_result", idempotency_key=long_key
        )
    rows = await core_db.fetch(
        "SELECT body FROM outbox WHERE recipient = $1 AND kind = 'ussd.late_result' ORDER BY id",
        recipient,
    )
    assert [r["body"] for r in rows][-2:] == ["Sent KES 5.00", "Paid"]
    assert sum(1 for r in rows if r["body"] == "Sent KES 5.00") == 1


async def test_a_sent_mark_that_meets_a_dropped_connection_is_written_when_it_returns(
    database_url: str, core_db: asyncpg.Pool
) -> None:
    """The message is out; then the dispatcher's connection drops and the database refuses the
    next two: the "sent" mark is written when it is back, so nothing is sent again."""
    proxy, via = postgres_proxy(database_url)
    # No connection floor: every connection the pool makes is one the dispatcher asked for.
    pool = await asyncpg.create_pool(via(await proxy.start()), min_size=0, max_size=2)

    class CutAfterSend(Recorder):
        async def send(self, message: OutboundMessage) -> str | None:
            provider_id = await super().send(message)
            proxy.cut(refuse=2)
            return provider_id

    chan = channel()
    sender = CutAfterSend()
    try:
        dispatcher = Dispatcher(
            pool, {chan: sender}, replace(FAST, lease_s=1.0, send_timeout_s=0.5)
        )
        message_id = await _enqueue(core_db, chan)
        assert await dispatcher.dispatch_once() == 1
        assert proxy.refused == 2
        sent = await row(core_db, message_id)
        assert (sent["status"], sent["provider_id"]) == ("sent", f"prov-{message_id}")
        assert await dispatcher.dispatch_once() == 0  # nothing left to claim, now or later
    finally:
        await pool.close()
        await proxy.close()
    assert [m.id for m in sender.sent] == [message_id]
