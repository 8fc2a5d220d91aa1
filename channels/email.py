"""Email for the core outbox: one message per outbox row over SMTP (aiosmtplib), registered as
the outbox's `email` channel when `SMTP_URL` is set.

`smtp://user:pass@host:587` upgrades to TLS with STARTTLS when the server offers it;
`smtps://host:465` speaks TLS from the first byte. The sender address is `SMTP_FROM`.

Failures map to `SendFailed`: a 4xx reply (greylisting, mailbox busy, a full queue), a refused
or dropped connection or a timeout is temporary and the outbox retries it with backoff; a 5xx
reply (no such user, relaying denied, message refused) or a recipient that is not an address is
permanent and the outbox dead-letters it with the server's reason.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib

from channels.base import OutboundLike, SendFailed
from core import agent_messages

SMTP_TIMEOUT_S = 10.0
# Outbox kind -> the core.agent_messages text of its subject (in the message's language).
SUBJECTS = {
    "agent_breach": "breach_subject",
}
DEFAULT_SUBJECT = "Notification"


def _subject(kind: str, language: str = "en") -> str:
    name = SUBJECTS.get(kind)
    return DEFAULT_SUBJECT if name is None else agent_messages.render(name, language)


class EmailSender:
    """Sends one outbox message as one email; returns the Message-ID it was sent under."""

    def __init__(self, url: str, sender: str, *, timeout_s: float = SMTP_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender = sender
        self.timeout_s = timeout_s
        self._domain = sender.rsplit("@", 1)[-1]

    def build(self, message: OutboundLike, kind: str = "") -> EmailMessage:
        recipient = message.recipient.strip()
        _, address = email.utils.parseaddr(recipient)
        if "@" not in address or address != recipient or any(c in recipient for c in "\r\n"):
            raise SendFailed(f"not an email address: {recipient!r}", temporary=False)
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = address
        mail["Subject"] = _subject(kind, getattr(message, "language", "en"))
        mail["Date"] = email.utils.formatdate(localtime=False)
        # Stable per outbox row: a retry after a lost reply carries the same id, so the
        # receiving side can tell a duplicate.
        mail["Message-ID"] = f"<outbox-{message.id}@{self._domain}>"
        mail.set_content(message.body)
        return mail

    async def send(self, message: OutboundLike) -> str:
        mail = self.build(message, getattr(message, "kind", ""))
        try:
            await aiosmtplib.send(
                mail,
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.implicit_tls,
                start_tls=None if not self.implicit_tls else False,
                timeout=self.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            reason = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            raise SendFailed(reason, temporary=all(400 <= c < 500 for c in codes)) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise SendFailed(f"{exc.code} {exc.message}", temporary=exc.code < 500) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Refused, dropped or timed-out connections: the server may be back later.
            raise SendFailed(f"{type(exc).__name__}: {exc}", temporary=True) from None
        return str(mail["Message-ID"])
