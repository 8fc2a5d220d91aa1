"""Agent devices: identity (MQTT credentials and a device token, stored only as hashes),
location history and geofence events.

Agents are keyed by their code here; the agents table itself belongs to the banking core
(`core/agents.py`). Device credentials name a real agent (a foreign key, migration
0420_agent_foreign_keys); location history and events deliberately do not (see there).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core import agent_messages, push_devices
from core.errors import AgentNotFound, ValidationFailed
from core.outbox import enqueue

# Agent codes appear in MQTT topics and in the broker's password file: no '/', '+', '#', ':'.
AGENT_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,31}")

MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's own default for $7$ (PBKDF2-SHA512)
SECRET_BYTES = 24
MAX_EVENTS_PAGE = 500
EVENT_KINDS = ("enter", "exit", "breach", "online", "offline")
LOCATION_COLUMNS = (
    "agent_code", "fix_ts", "received_at", "lat", "lon", "accuracy_m", "mock", "source", "zone",
    "fence_id",
)  # fmt: skip


def check_code(code: str) -> str:
    if not AGENT_CODE_RE.fullmatch(code):
        raise ValidationFailed("An agent code is 2-32 letters, digits, '_' or '-'")
    return code


# --- secrets ---------------------------------------------------------------------------------


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A password hash in Mosquitto's `$7$` format (PBKDF2-HMAC-SHA512, 12-byte salt). The
    passwords are 192-bit random strings, so the format's low iteration count costs nothing."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_ITERATIONS, 64)
    return (
        f"$7${MOSQUITTO_ITERATIONS}${base64.b64encode(salt).decode()}"
        f"${base64.b64encode(digest).decode()}"
    )


def mosquitto_verify(password: str, hashed: str) -> bool:
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    iterations = int(parts[2])
    if not 1 <= iterations <= 1_000_000:
        return False
    try:
        salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    if len(salt) < 8 or len(expected) < 32:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def token_hash(token: str) -> str:
    """Device tokens are random, so a plain SHA-256 is enough and keeps look-ups indexed."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Credentials:
    mqtt_username: str
    mqtt_password: str
    device_token: str
    version: int

    def __repr__(self) -> str:  # never print the secrets
        return f"Credentials({self.mqtt_username!r}, version={self.version})"


_UPSERT_CREDENTIALS = """
INSERT INTO agent_devices (agent_code, mqtt_username, mqtt_password_hash, device_token_hash)
VALUES ($1, $1, $2, $3)
ON CONFLICT (agent_code) DO UPDATE
   SET mqtt_password_hash = EXCLUDED.mqtt_password_hash,
       device_token_hash = EXCLUDED.device_token_hash,
       credentials_version = agent_devices.credentials_version + 1,
       issued_at = now()
RETURNING credentials_version
"""


async def issue_credentials(conn: asyncpg.Connection, agent_code: str) -> Credentials:
    """New MQTT password and device token for an agent; the previous ones stop working.
    AgentNotFound when the core knows no such agent."""
    check_code(agent_code)
    password = secrets.token_urlsafe(SECRET_BYTES)
    token = secrets.token_urlsafe(SECRET_BYTES)
    try:
        version = await conn.fetchval(
            _UPSERT_CREDENTIALS, agent_code, mosquitto_hash(password), token_hash(token)
        )
    except asyncpg.ForeignKeyViolationError:
        raise AgentNotFound(f"No agent {agent_code!r}", agent_code=agent_code) from None
    return Credentials(agent_code, password, token, int(version))


async def verify_device_token(
    conn: asyncpg.Connection | asyncpg.Pool, code: str, token: str
) -> bool:
    if not token or not AGENT_CODE_RE.fullmatch(code):
        return False
    stored = await conn.fetchval(
        "SELECT device_token_hash FROM agent_devices WHERE agent_code = $1", code
    )
    return stored is not None and hmac.compare_digest(stored, token_hash(token))


async def mqtt_password_hash(conn: asyncpg.Connection | asyncpg.Pool, username: str) -> str | None:
    value = await conn.fetchval(
        "SELECT mqtt_password_hash FROM agent_devices WHERE mqtt_username = $1", username
    )
    return None if value is None else str(value)


async def all_mqtt_users(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """(agent code, username, password hash) of every device, for the broker's files."""
    rows = await conn.fetch(
        "SELECT agent_code, mqtt_username, mqtt_password_hash FROM agent_devices "
        "ORDER BY agent_code"
    )
    return [(r["agent_code"], r["mqtt_username"], r["mqtt_password_hash"]) for r in rows]


# --- location history and events ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocationRow:
    agent_code: str
    fix_ts: float
    received_at: float
    lat: float
    lon: float
    accuracy_m: float | None
    mock: bool
    source: str
    zone: str | None
    fence_id: int | None


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def insert_locations(conn: asyncpg.Connection, rows: Sequence[LocationRow]) -> int:
    """Append fixes to the history with COPY (one round trip for a whole batch)."""
    if not rows:
        return 0
    records = [
        (
            r.agent_code,
            _dt(r.fix_ts),
            _dt(r.received_at),
            r.lat,
            r.lon,
            r.accuracy_m,
            r.mock,
            r.source,
            r.zone,
            r.fence_id,
        )
        for r in rows
    ]
    await conn.copy_records_to_table(
        "agent_locations",
        records=records,
        columns=LOCATION_COLUMNS,
    )
    return len(records)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event as it happened. `event_id` is drawn when the event is made, before any
    write: every attempt to store it carries the same id, and the table's unique index on it
    (migration 0780_agent_event_ids) keeps a retried write from storing it twice. A random id
    rather than one derived from (agent, kind, fix time): one fix can enter one fence and leave
    another, and presence events carry no fix time at all."""

    agent_code: str
    kind: str
    at: float
    fix_ts: float | None = None
    fence_id: int | None = None
    fence_version: int | None = None
    details: dict[str, Any] | None = None
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True, slots=True)
class BreachAlerts:
    """Who hears of a breach: an outbox channel ("log", "email", "sms", "push"), the
    recipients on it (admins' addresses or numbers) and the language they read
    (core.agent_messages). With `devices` (push only), also the phones the admins who may
    read agents registered (core.push_devices), as they are when the breach is stored."""

    channel: str
    recipients: tuple[str, ...]
    language: str = "en"
    devices: bool = False

    async def resolve(self, conn: asyncpg.Connection) -> dict[str, str]:
        """Every recipient of an alert stored now, each once, with the language it reads (a
        registered phone's own, else the deployment's)."""
        recipients = dict.fromkeys(self.recipients, self.language)
        if self.devices:
            for token, language in await push_devices.alert_tokens(conn):
                recipients.setdefault(token, language or self.language)
        return recipients


def breach_text(event: EventRow, language: str = "en") -> str:
    """The alert's text in `language`: which agent, since when, where it was and how far from
    which fence."""
    when = _dt(event.fix_ts if event.fix_ts is not None else event.at)
    details = event.details or {}
    fix, decision = details.get("fix") or {}, details.get("decision") or {}
    text = agent_messages.render(
        "breach", language, agent=event.agent_code, when=f"{when:%Y-%m-%d %H:%M:%S}"
    )
    if fix:
        accuracy = (
            agent_messages.render("accuracy_unknown", language)
            if fix.get("acc") is None
            else f"{fix['acc']:.0f} m"
        )
        text += agent_messages.render(
            "breach_fix", language,
            lat=f"{fix['lat']:.5f}", lon=f"{fix['lon']:.5f}", accuracy=accuracy,
        )  # fmt: skip
    if decision.get("distance_m") is not None and event.fence_id is not None:
        text += agent_messages.render(
            "breach_distance", language,
            distance=f"{decision['distance_m']:.0f}", fence=event.fence_id,
            version=event.fence_version,
        )  # fmt: skip
    return text + "."


async def insert_events(
    conn: asyncpg.Connection, events: Sequence[EventRow], alerts: BreachAlerts | None = None
) -> list[int]:
    """Store the events not stored yet (by `event_id`) and return their ids; with `alerts`,
    queue an outbox message per newly stored breach and recipient in the same transaction
    (the alert exists exactly when its event does, once however often this is tried)."""
    if not events:
        return []
    for e in events:
        assert e.kind in EVENT_KINDS, e.kind
    breaches = [e for e in events if e.kind == "breach"] if alerts is not None else []
    if not breaches:
        return list((await _insert_events(conn, events)).values())
    assert alerts is not None
    async with conn.transaction():
        stored = await _insert_events(conn, events)
        new = [e for e in breaches if e.event_id in stored]  # not copies already stored
        recipients = await alerts.resolve(conn) if new else {}
        for event in new:
            await _queue_alerts(conn, event, alerts, recipients)
    return list(stored.values())


async def _queue_alerts(
    conn: asyncpg.Connection, event: EventRow, alerts: BreachAlerts, recipients: dict[str, str]
) -> None:
    bodies: dict[str, str] = {}
    for recipient, language in recipients.items():
        if language not in bodies:
            bodies[language] = breach_text(event, language)
        await enqueue(
            conn, channel=alerts.channel, recipient=recipient, body=bodies[language],
            kind="agent_breach", language=language,
        )  # fmt: skip


async def _insert_events(
    conn: asyncpg.Connection, events: Sequence[EventRow]
) -> dict[uuid.UUID, int]:
    """Insert in the given order; event id -> row id of the events this call stored."""
    rows = await conn.fetch(
        """
        INSERT INTO agent_events (agent_code, kind, at, fix_ts, fence_id, fence_version, details,
                                  event_id)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                             $5::bigint[], $6::int[], $7::jsonb[], $8::uuid[])
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id, id
        """,
        [e.agent_code for e in events],
        [e.kind for e in events],
        [_dt(e.at) for e in events],
        [None if e.fix_ts is None else _dt(e.fix_ts) for e in events],
        [e.fence_id for e in events],
        [e.fence_version for e in events],
        [json.dumps(e.details or {}) for e in events],
        [e.event_id for e in events],
    )
    return {r["event_id"]: r["id"] for r in rows}


@dataclass(frozen=True, slots=True)
class EventPosition:
    """Where an event stands in the lists' order: its time, then its row id (ties)."""

    at: datetime
    id: int


async def event_position(conn: asyncpg.Connection, event_id: int) -> EventPosition | None:
    """The position of the event with row id `event_id` (None: no such row)."""
    row = await conn.fetchrow("SELECT at, id FROM agent_events WHERE id = $1", event_id)
    return None if row is None else EventPosition(row["at"], row["id"])


async def list_events(
    conn: asyncpg.Connection,
    *,
    agent_code: str | None = None,
    before: EventPosition | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest first by the event's time (`at`), ties by row id: the order the events
    happened, not the order they were written (a deferred event is written late, with a
    higher id than events after it). Page with `before`, the position of the previous page's
    last event: a keyset on (at, id), so rows written meanwhile shift nothing and every event
    comes at most once. `before_id` is the position of that row (ValidationFailed when there is
    none), for callers that page by id."""
    if before_id is not None:
        assert before is None, "before or before_id, not both"
        before = await event_position(conn, before_id)
        if before is None:
            raise ValidationFailed(
                "before_id names no event",
                errors=[{"field": "before_id", "problem": "the id of an event"}],
            )
    # Two or three conditions as the page needs them (no `$1 IS NULL OR ...`: a generic plan
    # of that could not pick the index of agent_events_agent_at or agent_events_at).
    where: list[str] = []
    args: list[Any] = []
    if agent_code is not None:
        args.append(agent_code)
        where.append(f"agent_code = ${len(args)}")
    if before is not None:
        args += [before.at, before.id]
        where.append(f"(at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(min(max(limit, 1), MAX_EVENTS_PAGE))
    # Only constant fragments and $n placeholders go into the text; the values are arguments.
    conditions = f"WHERE {' AND '.join(where)}" if where else ""
    rows = await conn.fetch(
        "SELECT id, agent_code, kind, at, fix_ts, fence_id, fence_version, details"  # noqa: S608
        f" FROM agent_events {conditions} ORDER BY at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


async def latest_positions(
    conn: asyncpg.Connection, agent_codes: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Each agent's newest fix in the history (one row per agent)."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (agent_code) agent_code, fix_ts, received_at, lat, lon, accuracy_m,
               mock, source, zone, fence_id
          FROM agent_locations
         WHERE $1::text[] IS NULL OR agent_code = ANY($1)
         ORDER BY agent_code, fix_ts DESC
        """,
        None if agent_codes is None else list(agent_codes),
    )
    return [dict(r) for r in rows]
