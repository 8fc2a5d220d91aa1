"""The SMS message store: every MO and MT message, with PINs masked, in PostgreSQL.

The SMS channel never touches the database; it calls this store, which the composition root
builds over the asyncpg pool. What it guarantees:

- An MO is stored (durably) before the SMSC gets its deliver_sm_resp, so an acknowledged MO is
  never lost; its raw text is kept encrypted (`body_enc`) only until it has been processed, and
  the readable `body` is always the masked text.
- An MO the SMSC delivers again within its de-duplication window (same keyed hash) is not
  stored or processed twice (`sms_mo_seen`, one statement with the insert). Each key carries
  its own expiry: the long window (`dedupe_window_s`) for an MO the SMSC identified (the
  channel says which) and for one whose acknowledgement may have been lost (`extend_dedupe`,
  and automatically when storing took longer than `ack_grace_s`, since the SMSC may have
  given up on the acknowledgement); the short window (`short_dedupe_window_s`) otherwise, so
  a customer who sends the same text again a minute later is answered again. Expiry times
  come from the store's clock.
- Processing is at least once: a stored MO holds a lease; a worker that finishes marks it
  processed, one that fails marks it for a retry, and MOs whose lease ran out (the process
  died) are claimed again with `FOR UPDATE SKIP LOCKED`, so any instance can finish them.
- Concatenated MO parts wait in `sms_mo_parts` (encrypted) until all have arrived or the
  timeout passes; assembly happens under an advisory lock on the group, so two parts arriving
  at once on two connections cannot both miss the completion.
- An MO's outcome (its replies' records with its "processed" mark) is written again when the
  connection is lost under it (`core.pg.through_outage`, ~1.5 s in all; the statement is made
  of upserts): a reply already sent whose record is lost would be sent again when the MO is
  processed again after its lease, so a short outage of the database (a restart, a
  failover, a dropped connection) must not cost the record.
- An MT is recorded with the SMSC's message id of every part; a delivery receipt updates its
  part and the message's status. A receipt that overtakes the submit's record leaves a part row
  without a message, which the record then claims (both are upserts on one key).

Text decoding and PIN masking belong to the channel: the store gets an `Assembler` that turns
the parts' payloads into (raw text, masked text, encoding name).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from core.batching import Batcher
from core.clock import Clock, SystemClock
from core.crypto import FieldCipher
from core.pg import through_outage

Assembler = Callable[[Sequence[bytes], int], tuple[str, str, str]]

MO_PENDING = ("received", "processing")
MT_FINAL_PART = ("delivered", "failed", "expired")
# A receipt waits this long for its submit's record. SMSCs reuse message ids (counters restart),
# so an id already on record for another message, or an older receipt, belongs to the past.
EARLY_RECEIPT_S = 3_600
ORPHAN_RECEIPT_TTL_S = EARLY_RECEIPT_S
PURGE_BATCH = 5_000
# How long an outcome write (MT records, the MO's `processed` mark) waits for others to share
# its commit; see SmsMessageStore.__init__.
OUTCOME_LINGER_S = 0.005
MAX_PAGE = 200


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One complete MO (a single-part message) ready to be stored."""

    smsc: str
    msisdn: str
    short_code: str
    text: str = field(repr=False)  # raw, the PIN in it: never in a repr or a log line
    masked: str
    encoding: str
    dedupe_key: str
    identified: bool = False  # the SMSC gave the MO an identity: remembered for the long window
    received: float = 0.0  # time.monotonic() when it arrived (0: unknown)


@dataclass(frozen=True, slots=True)
class InboundPart:
    """One part of a concatenated MO."""

    smsc: str
    msisdn: str
    short_code: str
    group_key: str
    seq: int
    total: int
    data_coding: int
    payload: bytes = field(repr=False)  # raw, the PIN in it
    dedupe_key: str


@dataclass(frozen=True, slots=True)
class StoredMo:
    """An MO that is stored and leased to the caller for processing."""

    id: int
    smsc: str
    msisdn: str
    short_code: str
    text: str = field(repr=False)  # raw, the PIN in it
    parts: int
    complete: bool
    attempts: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SubmittedPart:
    part_no: int
    message_id: str
    message_key: str  # the canonical id (receipts.message_key) receipts are matched on
    smsc: str  # the SMSC account that issued the id


@dataclass(frozen=True, slots=True)
class MtRecord:
    """The outcome of sending one MT: `status` is submitted, queued (a temporary failure, some
    parts may be out) or failed (refused for good, `error` says why)."""

    ref: str | None
    smsc: str
    msisdn: str
    short_code: str
    body: str
    encoding: str
    parts: int
    concat_ref: int | None
    status: str
    error: str | None
    submitted: Sequence[SubmittedPart]


@dataclass(frozen=True, slots=True)
class _Outcome:
    records: tuple[MtRecord, ...]
    processed: int | None  # an MO marked processed with these records


@dataclass(frozen=True, slots=True)
class SentMt:
    """What the store knows of an MT sent before under the same reference."""

    id: int
    status: str
    concat_ref: int | None
    parts: tuple[SubmittedPart, ...]


# A batch of single-part MOs: the ones whose de-duplication key is new (or older than the
# window) are inserted; the rest are redeliveries. One statement, one commit, for the batch.
_INSERT_MOS = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $10::float8[])
        AS u(dedupe_key, smsc, msisdn, short_code, body, encoding, body_enc, window_s)
), seen AS (
    INSERT INTO sms_mo_seen (dedupe_key, expires_at)
    SELECT dedupe_key, $8::timestamptz + make_interval(secs => window_s) FROM input
    ON CONFLICT (dedupe_key) DO UPDATE SET expires_at = EXCLUDED.expires_at
        WHERE sms_mo_seen.expires_at <= $8::timestamptz
    RETURNING dedupe_key
)
INSERT INTO sms_messages (direction, smsc, msisdn, short_code, body, encoding, parts, complete,
                          status, body_enc, attempts, lease_until, dedupe_key)
SELECT 'mo', i.smsc, i.msisdn, i.short_code, i.body, i.encoding, 1, true, 'processing',
       i.body_enc, 1, now() + make_interval(secs => $9), i.dedupe_key
FROM input AS i JOIN seen USING (dedupe_key)
RETURNING id, smsc, msisdn, short_code, body_enc, parts, complete, attempts, created_at,
          dedupe_key
"""

_SEEN = """
INSERT INTO sms_mo_seen (dedupe_key, expires_at)
VALUES ($1, $2::timestamptz + make_interval(secs => $3))
ON CONFLICT (dedupe_key) DO UPDATE SET expires_at = EXCLUDED.expires_at
    WHERE sms_mo_seen.expires_at <= $2::timestamptz
RETURNING 1
"""

# Never inserts: a key that is not on record belongs to an MO that was not stored, which the
# SMSC must deliver again and which must then be taken.
_EXTEND_SEEN = """
UPDATE sms_mo_seen
SET expires_at = greatest(expires_at, $2::timestamptz + make_interval(secs => $3))
WHERE dedupe_key = ANY($1::text[])
"""

# A batch of MT records in one statement: the messages (upserted by ref), then their parts
# (upserted by SMSC message id), and the MOs those MTs answered marked processed in the same
# commit (an MO is never processed without its replies on record). A part row that already
# carries a receipt (one that overtook this record, or an earlier attempt of the same
# message) keeps it; its message is returned for a status recompute. An id on record for
# another, older message starts clean (SMSCs reuse ids).
_RECORD_MTS = """
WITH m_in AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::int[], $8::text[], $9::text[], $10::int[])
        AS u(ref, smsc, msisdn, short_code, body, encoding, parts, status, error, concat_ref)
), msg AS (
    INSERT INTO sms_messages AS m (direction, smsc, msisdn, short_code, body, encoding, parts,
                                   status, error, ref, concat_ref, attempts)
    SELECT 'mt', smsc, msisdn, short_code, body, encoding, parts, status, error, ref,
           concat_ref, 1
    FROM m_in
    ON CONFLICT (ref) WHERE direction = 'mt' AND ref IS NOT NULL DO UPDATE
        SET smsc = EXCLUDED.smsc, status = EXCLUDED.status, error = EXCLUDED.error,
            attempts = m.attempts + 1, updated_at = now()
    RETURNING m.id, m.ref
), parts AS (
    INSERT INTO sms_mt_parts AS p (smsc, message_key, message_id, mt_id, part_no)
    SELECT q.smsc, q.message_key, q.message_id, msg.id, q.part_no
    FROM unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::int[])
        AS q(ref, smsc, message_key, message_id, part_no)
    JOIN msg ON msg.ref = q.ref
    ON CONFLICT (smsc, message_key) DO UPDATE
        SET mt_id = EXCLUDED.mt_id, part_no = EXCLUDED.part_no,
            message_id = EXCLUDED.message_id,
            status = CASE WHEN p.mt_id = EXCLUDED.mt_id OR (p.mt_id IS NULL AND p.updated_at >
                          now() - make_interval(secs => $16)) THEN p.status ELSE 'submitted' END,
            error = CASE WHEN p.mt_id = EXCLUDED.mt_id OR (p.mt_id IS NULL AND p.updated_at >
                         now() - make_interval(secs => $16)) THEN p.error END,
            updated_at = now()
    RETURNING p.mt_id, p.status
), done AS (
    UPDATE sms_messages SET status = 'processed', body_enc = NULL, lease_until = NULL,
        error = NULL, updated_at = now()
    WHERE id = ANY($17::bigint[]) AND direction = 'mo'
)
SELECT DISTINCT mt_id FROM parts WHERE status <> 'submitted'
"""

_APPLY_RECEIPT = """
INSERT INTO sms_mt_parts AS p (smsc, message_key, message_id, status, error)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (smsc, message_key) DO UPDATE
    SET status = EXCLUDED.status, error = EXCLUDED.error, updated_at = now()
    WHERE p.status NOT IN ('delivered', 'failed', 'expired') OR EXCLUDED.status <> 'submitted'
RETURNING mt_id
"""

# The message's status from its parts, once every part is out (a message refused part-way
# keeps its failed status and reason).
_RECOMPUTE_MT = """
UPDATE sms_messages AS m
SET status = a.status, error = coalesce(a.error, m.error), updated_at = now()
FROM (
    SELECT CASE
               WHEN bool_or(p.status = 'failed') THEN 'failed'
               WHEN bool_or(p.status = 'expired') THEN 'expired'
               WHEN bool_and(p.status = 'delivered') THEN 'delivered'
               ELSE 'submitted'
           END AS status,
           max(p.error) FILTER (WHERE p.status IN ('failed', 'expired')) AS error,
           count(*) AS submitted
    FROM sms_mt_parts AS p WHERE p.mt_id = $1
) AS a
WHERE m.id = $1 AND m.status <> 'queued' AND a.submitted >= m.parts
"""

_CLAIM_MO = """
UPDATE sms_messages SET status = 'processing', attempts = attempts + 1,
    lease_until = now() + make_interval(secs => $2), updated_at = now()
WHERE id IN (
    SELECT id FROM sms_messages
    WHERE direction = 'mo' AND status IN ('received', 'processing') AND lease_until < now()
      AND attempts < $3
    ORDER BY id LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, smsc, msisdn, short_code, body_enc, parts, complete, attempts, created_at
"""

_SEARCH = """
SELECT id, direction, smsc, msisdn, short_code, body, encoding, parts, complete, status, error,
       ref, attempts, created_at, updated_at
FROM sms_messages
WHERE ($1::text IS NULL OR direction = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR msisdn = $3)
  AND ($4::text IS NULL OR body ILIKE $4 ESCAPE '\\')
  AND ($5::bigint IS NULL OR id < $5)
ORDER BY id DESC
LIMIT $6
"""


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _part_keys(parts: Sequence[tuple[str, SubmittedPart]]) -> list[str]:
    """The matching key each part is recorded under. A part the SMSC gave no id, or an id an
    earlier part of this statement already holds (one id for every part of a long message,
    or the same id twice), is keyed by its message and number instead (`x:` is no key a
    receipt makes): upserting one key twice in a statement is refused by PostgreSQL, and the
    whole outcome batch failed with it. A receipt for a shared id matches its first part."""
    seen: set[tuple[str, str]] = set()
    keys = []
    for ref, p in parts:
        key = p.message_key
        if not p.message_id.strip().strip("\x00") or (p.smsc, key) in seen:
            key = f"x:{ref}:{p.part_no}"
        seen.add((p.smsc, key))
        keys.append(key)
    return keys


class SmsMessageStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        cipher: FieldCipher,
        *,
        assemble: Assembler,
        dedupe_window_s: int = 600,
        short_dedupe_window_s: int = 45,
        ack_grace_s: float = 5.0,
        lease_s: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self._pool = pool
        self._cipher = cipher
        self._assemble = assemble
        self.dedupe_window_s = dedupe_window_s
        self.short_dedupe_window_s = min(short_dedupe_window_s, dedupe_window_s)
        self.ack_grace_s = ack_grace_s
        self.lease_s = lease_s
        self.clock: Clock = clock or SystemClock()
        # The MO -> MT path writes twice per message (the MO before its ack; its replies with
        # its processed mark); under load each write joins the others waiting for the same
        # round trip and commit. An MO insert holds the SMSC's window (its deliver_sm_resp
        # waits for the commit), so two may be in flight: latency beats fewer commits there.
        # The outcome writes are off that path (the MT window slot is free once the
        # submit_sm_resp is in, and the reply is out), so one flush at a time, each waiting
        # OUTCOME_LINGER_S for company, lets them pile up into bigger batches: fewer commits,
        # less CPU on both sides. Measured in bench/sms.py (3 repeats, twice): 5 ms took the
        # round trips from ~2,050 to ~2,570/s and PostgreSQL's CPU per round trip from 0.17 to
        # 0.12 s per 1,000; 2 ms changed nothing, 10-20 ms was worse (workers wait on it).
        self._mo_batch: Batcher[InboundRecord, StoredMo | None] = Batcher(
            self._insert_mos, concurrency=2
        )
        # MT records and "MO processed" share one batcher and one statement.
        self._write_batch: Batcher[_Outcome, None] = Batcher(
            self._write_outcomes, concurrency=1, linger_s=OUTCOME_LINGER_S
        )

    # --- MO ----------------------------------------------------------------------------------

    def _mo(self, row: asyncpg.Record, text: str | None = None) -> StoredMo:
        if text is None:
            text = self._cipher.decrypt(row["body_enc"]) if row["body_enc"] else ""
        return StoredMo(
            id=row["id"],
            smsc=row["smsc"],
            msisdn=row["msisdn"],
            short_code=row["short_code"],
            text=text,
            parts=row["parts"],
            complete=row["complete"],
            attempts=row["attempts"],
            created_at=row["created_at"],
        )

    async def drain(self) -> None:
        """Until the writes submitted so far are done (a stop, before the pool closes)."""
        await self._mo_batch.drain()
        await self._write_batch.drain()

    async def record_mo(self, rec: InboundRecord) -> StoredMo | None:
        """Store a single-part MO leased for processing; None when it is a redelivery."""
        return await self._mo_batch.submit(rec)

    async def _insert_mos(self, recs: Sequence[InboundRecord]) -> list[StoredMo | None]:
        first: dict[str, InboundRecord] = {}
        for rec in recs:
            first.setdefault(rec.dedupe_key, rec)  # a copy inside one batch is a redelivery too
        unique = list(first.values())
        long_s, short_s = float(self.dedupe_window_s), float(self.short_dedupe_window_s)
        rows = await self._pool.fetch(
            _INSERT_MOS,
            [r.dedupe_key for r in unique],
            [r.smsc for r in unique],
            [r.msisdn for r in unique],
            [r.short_code for r in unique],
            [r.masked for r in unique],
            [r.encoding for r in unique],
            [self._cipher.encrypt(r.text) for r in unique],
            self.clock.now(),
            self.lease_s,
            [long_s if r.identified else short_s for r in unique],
        )
        # Stored so late that the SMSC may have stopped waiting for the acknowledgement (or
        # it got an error status): it will deliver again, maybe after the short window.
        late = time.monotonic() - self.ack_grace_s
        slow = [r.dedupe_key for r in unique if 0 < r.received < late and not r.identified]
        if slow:
            await self.extend_dedupe(slow)
        stored = {row["dedupe_key"]: row for row in rows}
        out: list[StoredMo | None] = []
        for rec in recs:
            row = stored.pop(rec.dedupe_key, None) if first.get(rec.dedupe_key) is rec else None
            out.append(None if row is None else self._mo(row, rec.text))
        return out

    async def record_mo_part(self, part: InboundPart) -> StoredMo | bool | None:
        """Store one part. Returns the assembled MO when this part completed it, False for a
        redelivered part, None while parts are still missing."""
        payload = self._cipher.encrypt(base64.b64encode(part.payload).decode())
        async with self._pool.acquire() as conn, conn.transaction():
            # A part carries its concatenation reference: remembered for the long window.
            seen = await conn.fetchval(
                _SEEN, part.dedupe_key, self.clock.now(), float(self.dedupe_window_s)
            )
            if seen is None:
                return False
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", part.group_key
            )
            await conn.execute(
                """INSERT INTO sms_mo_parts (group_key, seq, total, smsc, msisdn, short_code,
                                             data_coding, payload_enc)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING""",
                part.group_key,
                part.seq,
                part.total,
                part.smsc,
                part.msisdn,
                part.short_code,
                part.data_coding,
                payload,
            )
            return await self._assemble_group(conn, part.group_key, force=False)

    async def _assemble_group(
        self, conn: asyncpg.Connection, group_key: str, *, force: bool
    ) -> StoredMo | None:
        rows = await conn.fetch(
            "SELECT * FROM sms_mo_parts WHERE group_key = $1 ORDER BY seq", group_key
        )
        if not rows:
            return None
        total = rows[0]["total"]
        if len(rows) < total and not force:
            return None
        payloads = [base64.b64decode(self._cipher.decrypt(r["payload_enc"]).encode()) for r in rows]
        text, masked, encoding = self._assemble(payloads, rows[0]["data_coding"])
        complete = len(rows) >= total
        error = None if complete else f"incomplete: {len(rows)} of {total} parts arrived"
        row = await conn.fetchrow(
            """INSERT INTO sms_messages (direction, smsc, msisdn, short_code, body, encoding,
                    parts, complete, status, error, body_enc, attempts, lease_until)
                VALUES ('mo', $1, $2, $3, $4, $5, $6, $7, 'processing', $8, $9, 1,
                        now() + make_interval(secs => $10))
                RETURNING id, smsc, msisdn, short_code, body_enc, parts, complete, attempts,
                          created_at""",
            rows[0]["smsc"],
            rows[0]["msisdn"],
            rows[0]["short_code"],
            masked,
            encoding,
            total,
            complete,
            error,
            self._cipher.encrypt(text),
            self.lease_s,
        )
        await conn.execute("DELETE FROM sms_mo_parts WHERE group_key = $1", group_key)
        return self._mo(row, text)

    async def expire_part_groups(self, timeout_s: float, limit: int = 50) -> list[StoredMo]:
        """Assemble whatever arrived of groups older than the timeout (marked incomplete)."""
        keys = await self._pool.fetch(
            """SELECT group_key FROM sms_mo_parts GROUP BY group_key
               HAVING min(received_at) < now() - make_interval(secs => $1) LIMIT $2""",
            float(timeout_s),
            limit,
        )
        out = []
        for key in keys:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key["group_key"]
                )
                mo = await self._assemble_group(conn, key["group_key"], force=True)
            if mo is not None:
                out.append(mo)
        return out

    async def extend_dedupe(self, keys: Sequence[str]) -> None:
        """Remember these MOs for the long window: their acknowledgement may not have reached
        the SMSC, which then delivers them again, possibly much later."""
        await self._pool.execute(
            _EXTEND_SEEN, list(keys), self.clock.now(), float(self.dedupe_window_s)
        )

    async def claim_mo(self, limit: int, max_attempts: int) -> list[StoredMo]:
        """MOs whose lease ran out (a retry is due, or the process handling them died)."""
        rows = await self._pool.fetch(_CLAIM_MO, limit, self.lease_s, max_attempts)
        return [self._mo(r) for r in rows]

    async def mo_processed(self, mo_id: int, replies: Sequence[MtRecord] = ()) -> None:
        """Mark an MO processed, recording the MTs sent in reply in the same commit."""
        await self._write_batch.submit(_Outcome(tuple(replies), mo_id))

    async def _write_outcomes(self, items: Sequence[_Outcome]) -> list[None]:
        records = [rec for item in items for rec in item.records]
        processed = [item.processed for item in items if item.processed is not None]
        await through_outage(
            lambda: self._record_mts(records, processed), what=f"{len(items)} SMS outcomes"
        )
        return [None] * len(items)

    async def mo_retry(self, mo_id: int, error: str, delay_s: float) -> None:
        await self._pool.execute(
            """UPDATE sms_messages SET status = 'received', error = $2, updated_at = now(),
                   lease_until = now() + make_interval(secs => $3) WHERE id = $1""",
            mo_id,
            error[:500],
            float(delay_s),
        )

    async def mo_failed(self, mo_id: int, error: str) -> None:
        await self._pool.execute(
            """UPDATE sms_messages SET status = 'failed', error = $2, body_enc = NULL,
                   lease_until = NULL, updated_at = now() WHERE id = $1""",
            mo_id,
            error[:500],
        )

    async def give_up_mo(self, max_attempts: int) -> int:
        """MOs that used every attempt: failed, raw text erased."""
        result = await self._pool.execute(
            """UPDATE sms_messages SET status = 'failed', body_enc = NULL, lease_until = NULL,
                   error = coalesce(error, '') || ' (gave up after ' || attempts || ' attempts)',
                   updated_at = now()
               WHERE direction = 'mo' AND status IN ('received', 'processing')
                 AND lease_until < now() AND attempts >= $1""",
            max_attempts,
        )
        return int(result.split()[-1])

    async def purge(self, orphan_ttl_s: float = ORPHAN_RECEIPT_TTL_S) -> None:
        """Forget de-duplication keys past the window and receipts nobody claimed."""
        await self._pool.execute(
            """DELETE FROM sms_mo_seen WHERE ctid IN (
                   SELECT ctid FROM sms_mo_seen WHERE expires_at <= $1 LIMIT $2)""",
            self.clock.now(),
            PURGE_BATCH,
        )
        await self._pool.execute(
            """DELETE FROM sms_mt_parts WHERE mt_id IS NULL
                   AND updated_at < now() - make_interval(secs => $1)""",
            float(orphan_ttl_s),
        )

    # --- MT ----------------------------------------------------------------------------------

    async def find_mt(self, ref: str) -> SentMt | None:
        rows = await self._pool.fetch(
            """SELECT m.id, m.status, m.concat_ref, p.part_no, p.message_id, p.message_key,
                      p.smsc
               FROM sms_messages m LEFT JOIN sms_mt_parts p ON p.mt_id = m.id
               WHERE m.direction = 'mt' AND m.ref = $1 ORDER BY p.part_no""",
            ref,
        )
        if not rows:
            return None
        parts = tuple(
            SubmittedPart(r["part_no"], r["message_id"], r["message_key"], r["smsc"])
            for r in rows
            if r["message_id"] is not None
        )
        return SentMt(rows[0]["id"], rows[0]["status"], rows[0]["concat_ref"], parts)

    async def record_mt(self, rec: MtRecord) -> None:
        await self._write_batch.submit(_Outcome((rec,), None))

    async def _record_mts(self, recs: Sequence[MtRecord], processed: Sequence[int] = ()) -> None:
        # Every row needs a ref to tie its parts to it within the statement; one ref twice in
        # a statement is not allowed by ON CONFLICT, so a repeat waits for the next statement.
        # The processed MOs go with the last statement, after all their replies.
        refs = [rec.ref or f"auto:{uuid.uuid4().hex}" for rec in recs]
        pending = list(zip(refs, recs, strict=True))
        while True:
            batch: dict[str, MtRecord] = {}
            rest = []
            for ref, rec in pending:
                if ref in batch:
                    rest.append((ref, rec))
                else:
                    batch[ref] = rec
            await self._record_mt_batch(batch, () if rest else processed)
            if not rest:
                return
            pending = rest

    async def _record_mt_batch(self, batch: dict[str, MtRecord], processed: Sequence[int]) -> None:
        recs = list(batch.values())
        parts = [(ref, p) for ref, rec in batch.items() for p in rec.submitted]
        keys = _part_keys(parts)
        async with self._pool.acquire() as conn:
            early = await conn.fetch(
                _RECORD_MTS,
                list(batch),
                [r.smsc for r in recs],
                [r.msisdn for r in recs],
                [r.short_code for r in recs],
                [r.body for r in recs],
                [r.encoding for r in recs],
                [r.parts for r in recs],
                [r.status for r in recs],
                [r.error for r in recs],
                [r.concat_ref for r in recs],
                [ref for ref, _ in parts],
                [p.smsc for _, p in parts],
                keys,
                [p.message_id for _, p in parts],
                [p.part_no for _, p in parts],
                float(EARLY_RECEIPT_S),
                list(processed),
            )
            for row in early:  # a receipt is already there: the message's status follows it
                await self._recompute(conn, row["mt_id"])

    async def _recompute(self, conn: asyncpg.Connection, mt_id: int) -> None:
        async with conn.transaction():
            # The row lock orders concurrent receipts for parts of one message, so the last
            # one to commit sees every part's status.
            await conn.execute("SELECT 1 FROM sms_messages WHERE id = $1 FOR UPDATE", mt_id)
            await conn.execute(_RECOMPUTE_MT, mt_id)

    async def apply_receipt(
        self, smsc: str, message_key: str, message_id: str, status: str, error: str | None
    ) -> bool:
        """Record a delivery receipt; True when it matched a recorded MT part."""
        async with self._pool.acquire() as conn:
            mt_id = await conn.fetchval(
                _APPLY_RECEIPT, smsc, message_key, message_id, status, error
            )
            if mt_id is None:
                return False
            await self._recompute(conn, mt_id)
        return True


# --- admin reads ------------------------------------------------------------------------------


async def search_messages(
    pool: asyncpg.Pool,
    *,
    direction: str | None = None,
    status: str | None = None,
    msisdn: str | None = None,
    text: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first; `before_id` pages on (keyset). `text` matches the masked body."""
    rows = await pool.fetch(
        _SEARCH,
        direction,
        status,
        msisdn,
        _like(text) if text else None,
        before_id,
        max(1, min(limit, MAX_PAGE)),
    )
    return [dict(r) for r in rows]


async def get_message(pool: asyncpg.Pool, message_id: int) -> dict[str, Any] | None:
    """One message with the SMSC ids and receipt status of its submitted parts."""
    rows = await pool.fetch(
        """SELECT m.id, m.direction, m.smsc, m.msisdn, m.short_code, m.body, m.encoding,
                  m.parts, m.complete, m.status, m.error, m.ref, m.attempts, m.created_at,
                  m.updated_at, p.part_no, p.message_id, p.status AS part_status,
                  p.error AS part_error
           FROM sms_messages m LEFT JOIN sms_mt_parts p ON p.mt_id = m.id
           WHERE m.id = $1 ORDER BY p.part_no""",
        message_id,
    )
    if not rows:
        return None
    first = dict(rows[0])
    for key in ("part_no", "message_id", "part_status", "part_error"):
        first.pop(key)
    first["submitted_parts"] = [
        {
            "part_no": r["part_no"],
            "message_id": r["message_id"],
            "status": r["part_status"],
            "error": r["part_error"],
        }
        for r in rows
        if r["message_id"] is not None
    ]
    return first
