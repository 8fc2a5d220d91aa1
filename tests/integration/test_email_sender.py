"""The outbox's email channel against a real SMTP server (aiosmtpd) on a local socket: breach
alerts delivered as mail, a 4xx reply retried, a 5xx reply dead-lettered, a server that is down
retried, a recipient that is no address dead-lettered without a connection."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from redis.asyncio import Redis

from channels.email import EmailSender
from config.settings import Settings
from core.outbox import Dispatcher, DispatchPolicy, OutboundMessage, enqueue
from gateway.embedded import free_port
from gateway.senders import build_senders
from tests.integration.agent_support import outbox_rows, walk_out, zoned_agent

FAST = DispatchPolicy(poll_interval_s=0.01, backoff_base_s=0.0, backoff_max_s=0.0, max_attempts=3)
SENDER = "alerts@bank.test"


@dataclass
class Mailbox:
    """An SMTP server's handler: replies chosen per recipient, accepted mail kept."""

    replies: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        reply = self.replies.get(address, "250 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"

    def mails(self) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for _, _, raw in self.received
        ]


@pytest.fixture
def smtp() -> Iterator[tuple[str, Mailbox]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield f"smtp://127.0.0.1:{port}", mailbox
    finally:
        controller.stop()


def email_dispatcher(pool: asyncpg.Pool, settings: Settings, url: str) -> Dispatcher:
    """The outbox dispatcher with the senders the app builds when SMTP_URL is `url`."""
    senders = build_senders(replace(settings, smtp_url=url, smtp_from=SENDER))
    return Dispatcher(pool, {"email": senders["email"]}, FAST)


async def status(pool: asyncpg.Pool, message_id: int) -> tuple[str, int, str | None]:
    row = await pool.fetchrow(
        "SELECT status, attempts, last_error FROM outbox WHERE id = $1", message_id
    )
    return row["status"], row["attempts"], row["last_error"]


async def queue(pool: asyncpg.Pool, recipient: str, body: str = "hello") -> int:
    return await enqueue(pool, channel="email", recipient=recipient, body=body, kind="test")


def test_email_sender_only_with_smtp_settings(settings: Settings) -> None:
    assert "email" not in build_senders(replace(settings, smtp_url=None))
    assert "email" in build_senders(replace(settings, smtp_url="smtp://127.0.0.1:2525"))


async def test_breach_alerts_delivered_by_email(
    settings: Settings, redis: Redis, pg_pool: asyncpg.Pool, smtp: tuple[str, Mailbox]
) -> None:
    url, mailbox = smtp
    runtime, agent, _ = await zoned_agent(
        settings,
        redis,
        pg_pool,
        agent_alert_channel="email",
        agent_alert_recipients=("ops@bank.test",),
    )
    assert [e.kind for e in await walk_out(runtime, agent)][-1] == "breach"
    [alert] = await outbox_rows(pg_pool, agent)

    dispatcher = email_dispatcher(pg_pool, settings, url)
    deadline = time.monotonic() + 10
    while (await status(pg_pool, alert["id"]))[0] != "sent":
        assert time.monotonic() < deadline, await status(pg_pool, alert["id"])
        await dispatcher.dispatch_once()
    [(mail_from, rcpt_tos, _)] = mailbox.received
    assert (mail_from, rcpt_tos) == (SENDER, ["ops@bank.test"])
    [mail] = mailbox.mails()
    assert (mail["From"], mail["To"], mail["Subject"]) == (
        SENDER, "ops@bank.test", "Agent outside its zone",
    )  # fmt: skip
    assert mail.get_content().strip() == alert["body"]
    provider_id = await pg_pool.fetchval(
        "SELECT provider_id FROM outbox WHERE id = $1", alert["id"]
    )
    assert provider_id == mail["Message-ID"] == f"<outbox-{alert['id']}@bank.test>"


async def test_temporary_reply_is_retried(
    settings: Settings, pg_pool: asyncpg.Pool, smtp: tuple[str, Mailbox]
) -> None:
    url, mailbox = smtp
    mailbox.replies["busy@bank.test"] = "451 4.2.1 Mailbox busy, try again later"
    message_id = await queue(pg_pool, "busy@bank.test", "second time lucky")
    dispatcher = email_dispatcher(pg_pool, settings, url)
    assert await dispatcher.dispatch_once() == 1
    assert await status(pg_pool, message_id) == (
        "pending", 1, "451 4.2.1 Mailbox busy, try again later",
    )  # fmt: skip
    assert mailbox.received == []
    del mailbox.replies["busy@bank.test"]
    assert await dispatcher.dispatch_once() == 1
    assert (await status(pg_pool, message_id))[:2] == ("sent", 2)
    assert [m.get_content().strip() for m in mailbox.mails()] == ["second time lucky"]


async def test_permanent_reply_is_dead_lettered(
    settings: Settings, pg_pool: asyncpg.Pool, smtp: tuple[str, Mailbox]
) -> None:
    url, mailbox = smtp
    mailbox.replies["nobody@bank.test"] = "550 5.1.1 No such user"
    message_id = await queue(pg_pool, "nobody@bank.test")
    dispatcher = email_dispatcher(pg_pool, settings, url)
    assert await dispatcher.dispatch_once() == 1
    assert await status(pg_pool, message_id) == ("dead", 1, "550 5.1.1 No such user")
    assert await dispatcher.dispatch_once() == 0  # never tried again
    assert mailbox.received == []


async def test_bad_recipient_is_dead_lettered_and_a_down_server_retried(
    settings: Settings, pg_pool: asyncpg.Pool
) -> None:
    down = f"smtp://127.0.0.1:{free_port()}"  # nothing listens there
    dispatcher = email_dispatcher(pg_pool, settings, down)
    not_an_address = await queue(pg_pool, "admins")
    injected = await queue(pg_pool, "a@bank.test\r\nBcc: all@bank.test")
    refused = await queue(pg_pool, "ops@bank.test")
    assert await dispatcher.dispatch_once() == 3
    assert await status(pg_pool, not_an_address) == (
        "dead", 1, "not an email address: 'admins'",
    )  # fmt: skip
    assert (await status(pg_pool, injected))[0] == "dead"
    state, attempts, error = await status(pg_pool, refused)
    assert (state, attempts) == ("pending", 1) and error is not None and "Connect" in error


@pytest.mark.parametrize(
    ("kind", "language", "subject"),
    [("agent_breach", "en", "Agent outside its zone"),
     ("agent_breach", "sw", "Wakala nje ya eneo lake"),
     ("agent_breach", "fr", "Agent hors de sa zone"),
     ("agent_breach", "xx", "Agent outside its zone"),
     ("test", "fr", "Notification")],
)  # fmt: skip
def test_the_subject_is_in_the_message_language(kind: str, language: str, subject: str) -> None:
    message = OutboundMessage(7, "email", "ops@bank.test", "body", kind, 0, language)
    mail = EmailSender("smtp://127.0.0.1:2525", SENDER).build(message, kind)
    assert mail["Subject"] == subject
