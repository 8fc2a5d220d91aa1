"""What every channel shares: the outbound message shape a sender accepts, and the send failure
it raises.

The core's outbox dispatcher calls a channel's sender with an `OutboundMessage` and expects the
provider's message id back, or a `SendFailed(reason, temporary=...)` saying whether a retry can
help. `SendFailed` is `core.errors.SendFailed`, re-exported here: the dispatcher catches exactly
what channels raise (temporary -> retried with backoff, permanent -> dead letter).
"""

from __future__ import annotations

from typing import Protocol

from core.errors import SendFailed

__all__ = ["SENSITIVE_KINDS", "OutboundLike", "SendFailed"]

# Outbox kinds that carry a secret (one-time codes, PINs): SMS stores their body redacted, push
# refuses them (a notification shows its text on a locked screen).
SENSITIVE_KINDS = frozenset({"otp", "pin", "pin_reset", "temporary_pin"})


class OutboundLike(Protocol):
    """The fields of the core's `OutboundMessage` a channel sender reads."""

    @property
    def id(self) -> int | str: ...

    @property
    def recipient(self) -> str: ...

    @property
    def body(self) -> str: ...
