"""The core's outbox reaches phones over SMPP: the SMPP sender is the dispatcher's "sms" sender
when SMPP_URL is set, one failure type is shared by channels and the dispatcher, and a retried
outbox row is sent once."""

from __future__ import annotations

from channels.base import SendFailed as ChannelSendFailed
from channels.sms.channel import SmppSender
from core.errors import SendFailed
from core.outbox import OutboundMessage, enqueue
from gateway.keys import DISPATCHER, SENDERS, SMS_SENDER
from tests.helpers import eventually
from tests.sms_banking_support import SmsEnv, sms_env_fixtures
from tests.sms_helpers import peer_per_module  # noqa: F401 (the `peer` fixture)
from tests.ussd_support import PIN

env, ledger_ok = sms_env_fixtures()


def test_one_send_failure_type() -> None:
    assert ChannelSendFailed is SendFailed
    failure = SendFailed("no SMPP bind is up", temporary=False)
    assert failure.reason == failure.message == "no SMPP bind is up"
    assert not failure.temporary and failure.error_code == "SEND_FAILED"


async def test_smpp_sender_is_the_outbox_sms_sender(env: SmsEnv) -> None:
    assert isinstance(env.app[SENDERS]["sms"], SmppSender)
    assert env.app[SENDERS]["sms"] is env.app[SMS_SENDER]


async def test_ussd_transfer_receipts_arrive_by_sms(env: SmsEnv) -> None:
    sender = await env.bank.open(balance_minor=100_000)
    recipient = await env.bank.open(language="sw", first_name="Baraka")
    body = await env.session(sender).walk("1", recipient, "250", "1", PIN)
    assert body.startswith("END KES 250.00 sent"), body
    env.app[DISPATCHER].wake()
    # The sender also gets a receipt for the seed deposit (in either order).
    texts = await env.wait_texts(sender, 2)
    (to_sender,) = [t for t in texts if "250.00" in t]
    (to_recipient,) = await env.wait_texts(recipient, 1)
    assert "250.00" in to_recipient
    assert to_sender != to_recipient
    await eventually(
        lambda: env.bank.outbox(recipient), lambda rows: [r["status"] for r in rows] == ["sent"]
    )


async def test_a_retried_outbox_row_is_sent_once(env: SmsEnv) -> None:
    recipient = await env.bank.open()
    row_id = await enqueue(
        env.bank.pool, channel="sms", recipient=recipient, body="Your loan is due", kind="notice"
    )
    env.app[DISPATCHER].wake()
    await env.wait_texts(recipient, 1)

    async def status() -> str:
        return str(await env.bank.pool.fetchval("SELECT status FROM outbox WHERE id=$1", row_id))

    async def recorded() -> str | None:
        return await env.bank.pool.fetchval(  # type: ignore[no-any-return]
            "SELECT status FROM sms_messages WHERE direction = 'mt' AND ref = $1",
            f"outbox:{row_id}",
        )

    assert await eventually(status, lambda s: s == "sent") == "sent"
    assert await eventually(recorded, lambda s: s is not None) == "submitted"
    # The row went out; a second delivery of the same row (a lease that expired while the
    # SMSC was slow, another instance) is recognised by its ref and not sent again.
    message = OutboundMessage(
        id=row_id,
        channel="sms",
        recipient=recipient,
        body="Your loan is due",
        kind="notice",
        attempts=2,
    )
    first_id = await env.bank.pool.fetchval("SELECT provider_id FROM outbox WHERE id=$1", row_id)
    assert await env.app[SMS_SENDER].send(message) == first_id
    assert await env.texts(recipient) == ["Your loan is due"]
