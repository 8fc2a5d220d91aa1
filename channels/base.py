"""What every channel shares: the outbound message shape a sender accepts, and the send failure
it raises.

The core's outbox dispatcher calls a channel's sender with an `OutboundMessage` and expects the
provider's message id back, or a `SendFailed` saying whether a retry can help. Until the core
defines `core.errors.SendFailed`, this module carries one with the same shape
(`SendFailed(reason, temporary=...)`); the lead unifies the two at merge.
"""

from __future__ import annotations

from typing import Protocol


class OutboundLike(Protocol):
    """The fields of the core's `OutboundMessage` a channel sender reads."""

    @property
    def id(self) -> int | str: ...

    @property
    def recipient(self) -> str: ...

    @property
    def body(self) -> str: ...


class SendFailed(Exception):
    """A message could not be handed to the provider.

    `temporary=True`: the provider or the link is busy or down; the same message may be sent
    again later (the outbox retries with backoff). `temporary=False`: the provider refused the
    message for good (bad number, message too long ...); retrying cannot help, `reason` says why.
    """

    def __init__(self, reason: str, *, temporary: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary

    def __repr__(self) -> str:
        kind = "temporary" if self.temporary else "permanent"
        return f"SendFailed({kind}: {self.reason})"
