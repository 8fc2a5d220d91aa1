"""The outbox's senders by channel name, from the settings.

Channel senders raise `core.errors.SendFailed` (re-exported as `channels.base.SendFailed`), the
one failure the core's dispatcher catches, so they plug in as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import asyncpg

from channels.email import EmailSender
from channels.push import PushSender
from config.settings import Settings
from core import push_devices
from core.outbox import LogSender, Sender


def build_senders(settings: Settings, pool: asyncpg.Pool | None = None) -> dict[str, Sender]:
    """`log` always (and `sms` until the SMS channel takes over); `email` when SMTP_URL is set;
    `push` (FCM) when FIREBASE_CREDENTIALS is set, disabling the admins' phones whose tokens
    FCM reports gone when given the `pool`."""
    log_sender = LogSender()
    senders: dict[str, Sender] = {"log": log_sender, "sms": log_sender}
    if settings.smtp_url is not None:
        senders["email"] = EmailSender(settings.smtp_url, settings.smtp_from)
    if settings.firebase_credentials is not None:
        push = PushSender(
            settings.firebase_credentials,
            project_id=settings.firebase_project_id,
            endpoint=settings.fcm_endpoint,
        )
        if pool is not None:
            push.on_token_gone = functools.partial(push_devices.disable_token, pool)
        senders["push"] = push
    return senders


async def close_senders(senders: Mapping[str, Sender]) -> None:
    """Release what senders hold (the push sender's Firebase app and threads), once each."""
    for sender in {id(s): s for s in senders.values()}.values():
        if isinstance(sender, PushSender):
            await sender.aclose()
