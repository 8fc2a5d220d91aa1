"""The outbox's senders by channel name, from the settings.

Channel senders raise `core.errors.SendFailed` (re-exported as `channels.base.SendFailed`), the
one failure the core's dispatcher catches, so they plug in as they are.
"""

from __future__ import annotations

from channels.email import EmailSender
from config.settings import Settings
from core.outbox import LogSender, Sender


def build_senders(settings: Settings) -> dict[str, Sender]:
    """`log` always (and `sms` until the SMS channel takes over); `email` when SMTP_URL is set."""
    log_sender = LogSender()
    senders: dict[str, Sender] = {"log": log_sender, "sms": log_sender}
    if settings.smtp_url is not None:
        senders["email"] = EmailSender(settings.smtp_url, settings.smtp_from)
    return senders
