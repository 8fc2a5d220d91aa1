"""The outbox's senders by channel name, from the settings.

Channel senders raise `channels.base.SendFailed`; the core's dispatcher catches
`core.errors.SendFailed`. Until the two are one class, `ChannelSender` translates, keeping
`temporary`, so a permanent refusal is dead-lettered at once instead of retried as an unknown
error.
"""

from __future__ import annotations

from channels import base
from channels.email import EmailSender
from config.settings import Settings
from core import errors
from core.outbox import LogSender, OutboundMessage, Sender


class ChannelSender:
    """A channel's sender seen by the core's outbox."""

    def __init__(self, channel: EmailSender) -> None:
        self.channel = channel

    async def send(self, message: OutboundMessage) -> str | None:
        try:
            return await self.channel.send(message)
        except base.SendFailed as exc:
            raise errors.SendFailed(exc.reason, temporary=exc.temporary) from None


def build_senders(settings: Settings) -> dict[str, Sender]:
    """`log` always (and `sms` until the SMS channel takes over); `email` when SMTP_URL is set."""
    log_sender = LogSender()
    senders: dict[str, Sender] = {"log": log_sender, "sms": log_sender}
    if settings.smtp_url is not None:
        senders["email"] = ChannelSender(EmailSender(settings.smtp_url, settings.smtp_from))
    return senders
