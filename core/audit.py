"""The append-only audit log (table from migration 0001, a trigger refuses UPDATE and DELETE):
who (an admin, a channel, a customer's MSISDN, an agent) changed what. Money movements are
their own record (transfers carry channel and initiator); this log covers everything else."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from core.pg import Db, connection

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


MAX_PAGE = 100

# Newest first by id (the log is append-only: ids follow time). Each filter is optional; an
# action (with or without a target) reads the index on (action, target, at) (migration 0790).
_SEARCH = """
SELECT id, at, actor_type, actor, action, target, details
FROM audit_log
WHERE ($1::text IS NULL OR actor = $1)
  AND ($2::text IS NULL OR action = $2)
  AND ($3::text IS NULL OR target = $3)
  AND ($4::timestamptz IS NULL OR at >= $4)
  AND ($5::timestamptz IS NULL OR at < $5)
  AND ($6::bigint IS NULL OR id < $6)
ORDER BY id DESC
LIMIT $7
"""


async def search(
    db: Db,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Audit rows, newest first; page with `before_id` (the last id of the previous page)."""
    assert 1 <= limit <= MAX_PAGE
    async with connection(db) as conn:
        rows = await conn.fetch(_SEARCH, actor, action, target, since, until, before_id, limit)
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]
