"""The append-only audit log (table from migration 0001, a trigger refuses UPDATE and DELETE):
who (an admin, a channel, a customer's MSISDN, an agent) changed what. Money movements are
their own record (transfers carry channel and initiator); this log covers everything else."""

from __future__ import annotations

import json
from typing import Any

from core.pg import Db

ACTOR_TYPES = ("admin", "channel", "system", "customer", "agent")


async def record(
    db: Db,
    *,
    actor_type: str,
    actor: str,
    action: str,
    target: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    assert actor_type in ACTOR_TYPES, actor_type
    await db.execute(
        "INSERT INTO audit_log (actor_type, actor, action, target, details) "
        "VALUES ($1, $2, $3, $4, $5::jsonb)",
        actor_type,
        actor[:128],
        action,
        target[:256],
        json.dumps(details or {}),
    )


def actor_of(channel: str, actor: str | None) -> tuple[str, str]:
    """(actor_type, actor): an admin's username when one acts, else the channel."""
    return ("admin", actor) if actor else ("channel", channel)
