"""An asyncio SMPP 3.4 ESME: smpplib encodes and decodes PDUs (`codec`), the session, its
window, pacing, keepalive and reconnects are ours (`session`, `pacer`)."""

from .codec import CodecError, DeliverSm
from .pacer import Pacer
from .session import (
    BindState,
    BindStatus,
    LinkDown,
    ResponseTimeout,
    SessionTuning,
    SmppFailure,
    SmppSession,
    SmscRejected,
    Throttled,
)

__all__ = [
    "BindState",
    "BindStatus",
    "CodecError",
    "DeliverSm",
    "LinkDown",
    "Pacer",
    "ResponseTimeout",
    "SessionTuning",
    "SmppFailure",
    "SmppSession",
    "SmscRejected",
    "Throttled",
]
