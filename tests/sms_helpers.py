"""Shared helpers for the SMS tests: binds for a test SMSC (polling: `tests.helpers.eventually`)."""

from __future__ import annotations

from channels.sms.smpp import SessionTuning
from config.settings import SmppBind
from tests.smsc_peer import SmscPeer

FAST = SessionTuning(
    connect_timeout_s=2.0,
    reconnect_min_s=0.05,
    reconnect_max_s=0.3,
    throttle_pause_s=0.05,
    unbind_timeout_s=1.0,
    window_wait_s=5.0,
)


def bind_for(smsc: int | SmscPeer, **overrides: object) -> SmppBind:
    """A bind to a test SMSC. Given the peer, the system_id is the peer's own account: each
    test SMSC counts message ids from 1, and receipts are matched per account, so tests that
    share the database must not share an account."""
    port = smsc if isinstance(smsc, int) else smsc.port
    fields: dict[str, object] = {
        "system_id": f"gw{port}" if isinstance(smsc, int) else smsc.account,
        "password": "secret",
        "host": "127.0.0.1",
        "port": port,
        "source_addr": "12345",
        "tps": 500.0,
        "window": 10,
        "enquire_link_s": 30.0,
        "response_timeout_s": 5.0,
    }
    fields.update(overrides)
    return SmppBind(**fields)  # type: ignore[arg-type]
