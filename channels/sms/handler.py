"""What the SMS channel hands to whoever executes commands, and the wave-1 stand-in for it.

The channel stores every MO before acknowledging it, then calls `MoHandler.handle(sms)` at
least once per stored MO (a crash or a `RetryLater` means another call later, possibly from
another instance). Handlers therefore make their side effects idempotent, keyed by `sms.id`:
money moves with `idempotency_key=f"sms:{sms.id}"`, and replies go through
`SmsChannel.send_text(..., ref=f"mo:{sms.id}")`, which sends a reference only once.

The app runs `channels.sms.executor.SmsBanking`. `GrammarReplyHandler` needs no core: it answers
HELP with the command list, malformed or unknown text with the grammar's one-line hint, and a
well-formed banking command with a "not available" line (channel tests use it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from . import commands


@dataclass(frozen=True, slots=True)
class InboundSms:
    """One mobile-originated message, reassembled and decoded. `text` is the raw text (PIN
    included): never log it; `commands.mask_secrets(text)` is the loggable form."""

    id: int  # the message store's id: the idempotency anchor for anything this MO causes
    msisdn: str  # E.164 when the SMSC gave a phone number
    short_code: str
    text: str = field(repr=False)  # the PIN: never in a repr, a log line, an error message
    smsc: str
    received_at: datetime
    parts: int
    complete: bool  # False when a concatenated MO timed out with parts missing
    attempt: int


class MoHandler(Protocol):
    async def handle(self, sms: InboundSms) -> None:
        """Process one MO. Raise `RetryLater` (or `SendFailed(temporary=True)`) for a failure
        that may pass; any other exception marks the MO failed."""


class RetryLater(Exception):
    """A temporary failure while handling an MO (the core or Redis is down): try again later."""


class ReplySender(Protocol):
    async def send_text(
        self,
        recipient: str,
        text: str,
        *,
        ref: str | None = None,
        sensitive: bool = False,
        first_attempt: bool = False,
        stored_as: str | None = None,
    ) -> str: ...


NOT_AVAILABLE = "SMS banking is not available yet. Please use *384# for now."
INCOMPLETE = "Part of your message did not arrive. Please send it again."


class GrammarReplyHandler:
    """Wave 1: parse, and reply with help, a hint, or "not available yet"."""

    def __init__(self, sender: ReplySender) -> None:
        self._sender = sender

    async def handle(self, sms: InboundSms) -> None:
        if not sms.complete:
            reply = INCOMPLETE
        else:
            result = commands.parse(sms.text)
            if isinstance(result, commands.Help):
                reply = commands.HELP_TEXT
            elif isinstance(result, commands.Malformed | commands.Unknown):
                reply = commands.hint(result)
            else:
                reply = NOT_AVAILABLE
        # On the first attempt nothing can have been sent for this MO yet: skip the look-up.
        await self._sender.send_text(
            sms.msisdn, reply, ref=f"mo:{sms.id}", first_attempt=sms.attempt == 1
        )
