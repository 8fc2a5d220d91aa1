"""The notification outbox: rows written in the same transaction as the change they announce
(the ledger functions write receipts), sent later by a dispatcher through pluggable senders.

Dispatch is safe with many gateway instances: a batch is claimed with FOR UPDATE SKIP LOCKED
and leased (next_attempt_at pushed `lease_s` ahead) in one statement, so no transaction stays
open while a message is on the wire and a crashed instance's rows come back after the lease.
A claimed row whose turn in the batch comes too late to finish its send inside the lease
(senders slower than usual: a whole batch waits behind `concurrency` sends of up to
`send_timeout_s` each) is handed back, not sent: once its lease runs out another instance may
claim it, and two instances would send it. Delivery is at least once. A temporary failure
(`SendFailed(temporary=True)`, a timeout, any unexpected error) retries with exponential
backoff and jitter; a permanent one, or `max_attempts`, moves the row to the dead-letter state
with the reason. A dispatcher only claims rows for channels it has a sender for, so rows wait
for their sender to be configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.audit import record
from core.errors import Conflict, IdempotencyConflict, NotFound, SendFailed, ValidationFailed
from core.pg import Db, connection, record_retrying
from core.receipts import render
from core.tasks import raise_if_cancelled

log = logging.getLogger("core.outbox")

CHANNELS = ("sms", "email", "push", "log")
MAX_BODY_CHARS = 4000
MAX_RECIPIENT_CHARS = 256
MAX_DEDUPE_KEY_CHARS = 200
RUN_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    id: int
    channel: str
    recipient: str
    body: str
    kind: str
    attempts: int
    language: str = "en"
    transfer_id: int | None = None


class Sender(Protocol):
    async def send(self, message: OutboundMessage) -> str | None:
        """Deliver; return the provider's message id. Raise SendFailed(temporary=...)."""
        ...


class LogSender:
    """Until a real channel is configured: logs what would be sent (receipts hold no secrets)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log

    async def send(self, message: OutboundMessage) -> str | None:
        self.log.info(
            "outbound message",
            extra={
                "channel": message.channel,
                "recipient": message.recipient,
                "kind": message.kind,
                "body": message.body,
            },
        )
        return f"log-{message.id}"


async def enqueue(
    db: Db,
    *,
    channel: str,
    recipient: str,
    body: str,
    kind: str,
    language: str = "en",
    dedupe_key: str | None = None,
) -> int:
    """Queue one message; pass the caller's connection to make it part of its transaction.

    With `dedupe_key` (1 to 200 characters, unique per channel), a retried enqueue queues the
    message once and returns the first row's id; the same key with another recipient or body
    raises IdempotencyConflict. Two concurrent enqueues with one key queue one row (the second
    waits for the first to commit or roll back)."""
    if channel not in CHANNELS:
        raise ValidationFailed(f"channel is one of {', '.join(CHANNELS)}", field="channel")
    if not body or len(body) > MAX_BODY_CHARS:
        raise ValidationFailed("A message body is 1 to 4000 characters", field="body")
    if not recipient or len(recipient) > MAX_RECIPIENT_CHARS:
        raise ValidationFailed("A recipient is 1 to 256 characters", field="recipient")
    if dedupe_key is not None and (
        not isinstance(dedupe_key, str) or not 1 <= len(dedupe_key) <= MAX_DEDUPE_KEY_CHARS
    ):
        raise ValidationFailed("A dedupe key is 1 to 200 characters", field="dedupe_key")
    row = await db.fetchrow(_ENQUEUE_SQL, channel, recipient, kind[:64], body, language, dedupe_key)
    if row is None:  # a concurrent enqueue committed it after this statement's snapshot
        row = await db.fetchrow(_QUEUED_SQL, channel, dedupe_key)
    if row["inserted"]:
        return int(row["id"])
    if (row["recipient"], row["body"]) != (recipient, body):
        raise IdempotencyConflict(
            "This dedupe key was already used for another message",
            channel=channel,
            dedupe_key=dedupe_key,
        )
    return int(row["id"])


# Insert, or (same channel and key) return the row already queued. The CTE's insert is not
# visible to the second part of the statement, which reads the row an earlier enqueue committed
# (one committed after this statement began is read by _QUEUED_SQL).
_ENQUEUE_SQL = """
WITH ins AS (
    INSERT INTO outbox (channel, recipient, kind, body, language, dedupe_key)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (channel, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING id, recipient, body
)
SELECT id, recipient, body, true AS inserted FROM ins
UNION ALL
SELECT id, recipient, body, false FROM outbox
WHERE channel = $1 AND dedupe_key = $6 AND NOT EXISTS (SELECT 1 FROM ins)
LIMIT 1
"""
_QUEUED_SQL = """
SELECT id, recipient, body, false AS inserted FROM outbox WHERE channel = $1 AND dedupe_key = $2
"""


_CLAIM_SQL = """
UPDATE outbox o SET attempts = o.attempts + 1,
    next_attempt_at = now() + make_interval(secs => $3)
FROM (
    SELECT id FROM outbox
    WHERE status = 'pending' AND channel = ANY ($1::text[]) AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
) c
WHERE o.id = c.id
RETURNING o.id, o.channel, o.recipient, o.kind, o.body, o.template, o.language, o.params,
          o.attempts, o.transfer_id, o.balance_minor
"""
# What a receipt says about its transfer, read at send time (the money path only writes the
# transfer id and the recipient's balance into the outbox row).
_TRANSFERS_SQL = """
SELECT t.id, ledger_reference(t.id) AS reference, t.currency, t.amount AS amount_minor,
       t.fee AS fee_minor, t.debit_party AS sender, t.credit_party AS recipient,
       d.first_name || ' ' || d.last_name AS sender_name,
       c.first_name || ' ' || c.last_name AS recipient_name,
       g.code AS agent_code, g.name AS agent_name,
       CASE WHEN t.reversal_of IS NOT NULL THEN ledger_reference(t.reversal_of) END AS original
FROM transfers t
LEFT JOIN customers d ON d.msisdn = t.debit_party
LEFT JOIN customers c ON c.msisdn = t.credit_party
LEFT JOIN agents g ON g.code IN (t.debit_party, t.credit_party)
WHERE t.id = ANY ($1::bigint[])
"""
# Each outcome only applies to the attempt that claimed the row (a lease taken over by another
# instance after expiry has a higher attempt count).
_SENT_SQL = """
UPDATE outbox SET status = 'sent', sent_at = now(), provider_id = $3, body = $4,
    last_error = NULL
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""
# A claimed row handed back unsent: due again at once, its claim's attempt undone. Only while
# the row is still this claim's (a later claim by another instance counted another attempt).
_RELEASE_SQL = """
UPDATE outbox SET attempts = attempts - 1, next_attempt_at = now()
WHERE id = $1 AND status = 'pending' AND attempts = $2
"""
_RETRY_SQL = """
UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $3), last_error = $4
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""
_DEAD_SQL = """
UPDATE outbox SET status = 'dead', last_error = $3
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    batch_size: int = 50
    concurrency: int = 8
    poll_interval_s: float = 0.5
    lease_s: float = 60.0
    send_timeout_s: float = 15.0
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 900.0

    def backoff_s(self, attempts: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1))
        return float(ceiling * (0.5 + random.random() / 2))  # noqa: S311 (jitter, not crypto)


# What the dispatcher did with a claimed row (the `outcome` label of its counts).
OUTCOMES = ("sent", "retry", "dead", "released")


class Dispatcher:
    """Claims due rows for the channels in `senders` (read at every claim, so senders added
    later are picked up) and records each outcome; `outcomes` counts them by (channel,
    outcome) in this process, for /metrics."""

    def __init__(
        self,
        db: Db,
        senders: Mapping[str, Sender],
        policy: DispatchPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.senders = senders
        self.policy = policy or DispatchPolicy()
        self._clock = clock
        self._wake = asyncio.Event()
        self.outcomes: dict[tuple[str, str], int] = {}

    def _count(self, channel: str, outcome: str) -> None:
        key = (channel, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def wake(self) -> None:
        self._wake.set()

    async def dispatch_once(self) -> int:
        """Claim one batch and send it; the number of rows claimed."""
        channels = list(self.senders)
        if not channels:
            return 0
        rows = await self.db.fetch(
            _CLAIM_SQL, channels, self.policy.batch_size, self.policy.lease_s, timeout=15.0
        )
        # Measured from after the claim returned: the lease began before, so this errs early.
        last_start = self._clock() + self.policy.lease_s - self.policy.send_timeout_s
        transfer_ids = sorted({r["transfer_id"] for r in rows if r["transfer_id"] is not None})
        transfers: dict[int, dict[str, Any]] = {}
        if transfer_ids:
            found = await self.db.fetch(_TRANSFERS_SQL, transfer_ids, timeout=15.0)
            transfers = {t["id"]: {k: v for k, v in t.items() if v is not None} for t in found}
        gate = asyncio.Semaphore(self.policy.concurrency)

        async def one(row: Any) -> None:
            async with gate:
                if self._clock() > last_start:
                    await self.db.execute(_RELEASE_SQL, row["id"], row["attempts"])
                    self._count(row["channel"], "released")
                    return
                await self._deliver(row, transfers.get(row["transfer_id"], {}))

        await asyncio.gather(*(one(r) for r in rows))
        return len(rows)

    async def _deliver(self, row: Any, transfer: dict[str, Any]) -> None:
        attempts = int(row["attempts"])
        try:
            params = dict(transfer) | json.loads(row["params"] or "{}")
            if row["balance_minor"] is not None:
                params["balance_minor"] = row["balance_minor"]
            body = row["body"] or render(row["template"], row["language"], params)
        except (KeyError, ValueError) as exc:
            await self.db.execute(_DEAD_SQL, row["id"], attempts, f"cannot render: {exc!r}")
            self._count(row["channel"], "dead")
            return
        message = OutboundMessage(
            id=row["id"],
            channel=row["channel"],
            recipient=row["recipient"],
            body=body,
            kind=row["kind"],
            attempts=attempts,
            language=row["language"],
            transfer_id=row["transfer_id"],
        )
        sender = self.senders.get(message.channel)
        try:
            if sender is None:
                raise SendFailed(f"no sender for channel {message.channel}", temporary=True)
            provider_id = await asyncio.wait_for(
                sender.send(message), timeout=self.policy.send_timeout_s
            )
        except SendFailed as exc:
            await self._failed(message, exc.message, exc.temporary)
        except TimeoutError:
            await self._failed(message, "the sender timed out", True)
        except Exception as exc:  # a sender bug must not stop the dispatcher
            log.exception("sender failed", extra={"outbox_id": message.id})
            await self._failed(message, f"{type(exc).__name__}: {exc}", True)
        else:
            # The message is out: a "sent" mark lost to a dropped connection would send it
            # again after the lease, so it is tried again through a short outage.
            self._count(message.channel, "sent")  # out, whatever becomes of its mark
            await record_retrying(
                self.db, _SENT_SQL, message.id, attempts, provider_id, body,
                what=f"outbox message {message.id} as sent",
            )  # fmt: skip

    async def _failed(self, message: OutboundMessage, reason: str, temporary: bool) -> None:
        if temporary and message.attempts < self.policy.max_attempts:
            delay = self.policy.backoff_s(message.attempts)
            await self.db.execute(_RETRY_SQL, message.id, message.attempts, delay, reason[:500])
            self._count(message.channel, "retry")
            return
        log.warning(
            "outbound message dead-lettered",
            extra={"outbox_id": message.id, "channel": message.channel, "reason": reason[:200]},
        )
        await self.db.execute(_DEAD_SQL, message.id, message.attempts, reason[:500])
        self._count(message.channel, "dead")

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set. A database outage is logged and retried with backoff
        (up to RUN_BACKOFF_MAX_S between tries), not in a tight loop."""
        failures = 0
        while not stop.is_set():
            try:
                claimed = await self.dispatch_once()
                failures = 0
            except Exception:
                raise_if_cancelled()
                failures += 1
                log.exception("outbox dispatch failed; retrying", extra={"failures": failures})
                claimed = 0
            if claimed:
                continue
            self._wake.clear()
            pause = self.policy.poll_interval_s
            if failures:
                pause = min(RUN_BACKOFF_MAX_S, pause * 2**failures)
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            _, pending = await asyncio.wait(
                waiters, timeout=pause, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()


# --- Backlog (metrics) ---------------------------------------------------------------------

# From the partial index on pending rows (outbox_due: channel, next_attempt_at), so its cost
# follows the backlog, not the table's millions of sent rows. `overdue_s`: how long the most
# overdue message has waited past its due time (0 when none is due: a retry's backoff and a
# row being sent, whose lease moved its time on, are not late).
_BACKLOG_SQL = """
SELECT channel, count(*) AS pending,
       greatest(0, extract(epoch FROM now() - min(next_attempt_at)))::float8 AS overdue_s
FROM outbox WHERE status = 'pending'
GROUP BY channel ORDER BY channel
"""


@dataclass(frozen=True, slots=True)
class Backlog:
    channel: str
    pending: int
    overdue_s: float


async def backlog(db: Db, timeout_s: float = 2.0) -> list[Backlog]:
    """Messages waiting, per channel, and how late the most overdue one is."""
    rows = await db.fetch(_BACKLOG_SQL, timeout=timeout_s)
    return [Backlog(r["channel"], r["pending"], r["overdue_s"]) for r in rows]


# --- Dead letters (admin) ------------------------------------------------------------------

MAX_DEAD_LETTER_PAGE = 100


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    channel: str
    recipient: str
    kind: str
    template: str | None
    body: str | None
    attempts: int
    last_error: str | None
    transfer_reference: str | None
    status: str
    created_at: Any

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channel": self.channel,
            "recipient": self.recipient,
            "kind": self.kind,
            "template": self.template,
            "body": self.body,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "transfer_reference": self.transfer_reference,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
        }


_DEAD_COLUMNS = """id, channel, recipient, kind, template, body, attempts, last_error, status,
    created_at, CASE WHEN transfer_id IS NOT NULL THEN ledger_reference(transfer_id) END AS ref"""


def _dead(row: Any) -> DeadLetter:
    return DeadLetter(
        row["id"],
        row["channel"],
        row["recipient"],
        row["kind"],
        row["template"],
        row["body"],
        row["attempts"],
        row["last_error"],
        row["ref"],
        row["status"],
        row["created_at"],
    )


def _channel_filter(channel: str | None) -> str | None:
    if channel is not None and channel not in CHANNELS:
        raise ValidationFailed(f"channel is one of {', '.join(CHANNELS)}", field="channel")
    return channel


async def dead_letters(
    db: Db, *, limit: int = 50, before: int | None = None, channel: str | None = None
) -> list[DeadLetter]:
    """Dead-lettered messages, newest first; `before` (an id) pages, `channel` filters."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise ValidationFailed("limit is 1 to 100", field="limit")
    rows = await db.fetch(
        f"SELECT {_DEAD_COLUMNS} FROM outbox WHERE status = 'dead' "  # noqa: S608 (constant)
        "AND ($1::bigint IS NULL OR id < $1) AND ($2::text IS NULL OR channel = $2) "
        "ORDER BY id DESC LIMIT $3",
        before,
        _channel_filter(channel),
        limit,
    )
    return [_dead(r) for r in rows]


# Back to pending, due now, with a fresh attempt count (the dispatcher's max_attempts applies
# again); the last error stays until the next attempt replaces it.
_REPLAY = "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now() "
_REPLAY_ONE_SQL = _REPLAY + "WHERE status = 'dead' AND id = $1 RETURNING " + _DEAD_COLUMNS
_REPLAY_ALL_SQL = (
    _REPLAY + "WHERE status = 'dead' AND ($1::text IS NULL OR channel = $1) RETURNING "
) + _DEAD_COLUMNS


async def replay_dead_letter(db: Db, message_id: int, *, actor: str) -> DeadLetter:
    """One dead letter back to pending (audited). NotFound for an unknown id, Conflict when
    the message is not dead (pending or sent: nothing to replay)."""
    async with connection(db) as conn, conn.transaction():
        row = await conn.fetchrow(_REPLAY_ONE_SQL, message_id)
        if row is None:
            status = await conn.fetchval("SELECT status FROM outbox WHERE id = $1", message_id)
            if status is None:
                raise NotFound(f"No outbox message {message_id}", id=message_id)
            raise Conflict(
                f"Message {message_id} is {status}, not dead", id=message_id, status=status
            )
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="outbox.replayed",
            target=str(message_id),
            details={"channel": row["channel"], "kind": row["kind"]},
        )
    return _dead(row)


async def replay_dead_letters(db: Db, *, actor: str, channel: str | None = None) -> int:
    """Every dead letter (of `channel`, when given) back to pending; how many (audited)."""
    async with connection(db) as conn, conn.transaction():
        rows = await conn.fetch(_REPLAY_ALL_SQL, _channel_filter(channel))
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="outbox.replayed_all",
            target=channel or "*",
            details={"count": len(rows)},
        )
    return len(rows)
