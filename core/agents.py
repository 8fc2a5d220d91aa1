"""Agents: a code, a phone number, a name, a PIN (same rules and lock as customers), a float
account (the agent's e-money, never negative) and a commission account. Both accounts are
sharded (`AGENT_SHARDS` rows each) so one busy agent's cash-outs do not queue on one row."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core import errors as E
from core.audit import record
from core.money import check_currency
from core.msisdn import normalise_msisdn
from core.pg import Db
from core.pins import hash_pin, pin_matches, register_failure

AGENT_SHARDS = 32
NAME_MAX = 100
LANGUAGES = ("en", "sw", "fr")  # the languages of an agent's texts (core.agent_messages)
# The channel of transactions an agent's own device originates (MQTT commands). Only
# core.agent_transactions posts on it, after the geofence gate; the public money and
# registration functions refuse it, so a device transaction cannot skip the gate.
DEVICE_CHANNEL = "agent_device"
_CODE_RE = re.compile(r"^[A-Z0-9]{3,16}$")


@dataclass(frozen=True, slots=True)
class Agent:
    id: int
    code: str
    msisdn: str
    name: str
    currency: str
    status: str
    created_at: datetime
    language: str = "en"


@dataclass(frozen=True, slots=True)
class AgentBalances:
    currency: str
    float_minor: int
    commission_minor: int


def check_code(raw: str) -> str:
    code = raw.strip().upper() if isinstance(raw, str) else ""
    if not _CODE_RE.match(code):
        raise E.ValidationFailed("An agent code is 3 to 16 letters or digits", field="code")
    return code


def check_language(language: object) -> str:
    if language not in LANGUAGES:
        raise E.ValidationFailed("A language is one of en, sw, fr", field="language")
    return str(language)


def _agent(row: Any) -> Agent:
    return Agent(
        row["id"],
        row["code"],
        row["msisdn"],
        row["name"],
        row["currency"],
        row["status"],
        row["created_at"],
        row["language"],
    )


_REGISTER_SQL = """
WITH g AS (
    INSERT INTO agents (code, msisdn, name, currency, pin_hash, language)
    VALUES ($1, $2, $3, $4, $5, $8)
    RETURNING *
), f AS (
    SELECT ledger_open_account('agent_float', g.currency, NULL, g.id, $6, false),
           ledger_open_account('agent_commission', g.currency, NULL, g.id, $6, false)
    FROM g
), a AS (
    INSERT INTO audit_log (actor_type, actor, action, target) SELECT 'admin', $7,
        'agent.registered', g.code FROM g
)
SELECT g.*, (SELECT count(*) FROM f) AS accounts FROM g
"""


async def register_agent(
    db: Db,
    *,
    code: str,
    msisdn: str,
    name: str,
    pin: str,
    pin_rounds: int,
    actor: str,
    currency: str = "KES",
    country_code: str = "254",
    language: str = "en",
) -> Agent:
    """Create the agent with its float and commission accounts (AlreadyExists on the code)."""
    agent_code = check_code(code)
    check_language(language)
    number = normalise_msisdn(msisdn, country_code)
    clean = " ".join(name.split()) if isinstance(name, str) else ""
    if not 1 <= len(clean) <= NAME_MAX:
        raise E.ValidationFailed("An agent name is 1 to 100 characters", field="name")
    pin_hash = await hash_pin(pin, pin_rounds)
    try:
        row = await db.fetchrow(
            _REGISTER_SQL,
            agent_code,
            number,
            clean,
            check_currency(currency),
            pin_hash,
            AGENT_SHARDS,
            actor,
            language,
        )
    except asyncpg.UniqueViolationError:
        raise E.AlreadyExists(f"Agent {agent_code} exists", field="code") from None
    return _agent(row)


async def find_agent(db: Db, code: str) -> Agent | None:
    try:
        agent_code = check_code(code)
    except E.ValidationFailed:
        return None
    row = await db.fetchrow("SELECT * FROM agents WHERE code = $1", agent_code)
    return None if row is None else _agent(row)


async def get_agent(db: Db, code: str) -> Agent:
    agent = await find_agent(db, code)
    if agent is None:
        raise E.AgentNotFound(f"No agent {str(code)[:32]!r}", agent_code=str(code)[:32])
    return agent


async def agent_balances(db: Db, code: str) -> AgentBalances:
    """Float and commission balances: the sum of each account's shards."""
    agent = await get_agent(db, code)
    row = await db.fetchrow(
        "SELECT coalesce(sum(balance) FILTER (WHERE kind = 'agent_float'), 0) AS float, "
        "coalesce(sum(balance) FILTER (WHERE kind = 'agent_commission'), 0) AS commission "
        "FROM accounts WHERE agent_id = $1",
        agent.id,
    )
    return AgentBalances(agent.currency, int(row["float"]), int(row["commission"]))


async def verify_agent_pin(db: Db, code: str, pin: str, *, request_key: str | None = None) -> Agent:
    """The agent when `pin` is right; WrongPin, WalletLocked (3 in a row), AgentUnavailable
    (closed) or AgentNotFound otherwise. `request_key`: a command sent again after its answer
    was lost counts its wrong PIN once (core.pins.register_failure)."""
    agent_code = check_code(code) if isinstance(code, str) else ""
    row = await db.fetchrow("SELECT * FROM agents WHERE code = $1", agent_code)
    if row is None:
        await pin_matches(pin, None)
        raise E.AgentNotFound(f"No agent {str(code)[:32]!r}", agent_code=str(code)[:32])
    if row["status"] == "closed":
        raise E.AgentUnavailable()
    if row["status"] == "locked":
        raise E.WalletLocked("The agent is locked; ask support to unlock it")
    if not await pin_matches(pin, row["pin_hash"]):
        raise await register_failure(
            db, "agents", row["id"], target=agent_code, request_key=request_key
        )
    if row["pin_failures"]:
        await db.execute(
            "UPDATE agents SET pin_failures = 0 WHERE id = $1 AND status = 'active'", row["id"]
        )
    return _agent(row)


async def unlock_agent(db: Db, code: str, actor: str) -> None:
    agent = await get_agent(db, code)
    if agent.status == "closed":
        raise E.AgentUnavailable()
    await db.execute(
        "UPDATE agents SET status = 'active', pin_failures = 0 WHERE id = $1", agent.id
    )
    await record(db, actor_type="admin", actor=actor, action="agent.unlocked", target=agent.code)


async def set_agent_language(db: Db, code: str, language: str, actor: str) -> Agent:
    """Change the language of the agent's texts (audited)."""
    agent = await get_agent(db, code)
    check_language(language)
    row = await db.fetchrow(
        "UPDATE agents SET language = $2 WHERE id = $1 RETURNING *", agent.id, language
    )
    await record(
        db,
        actor_type="admin",
        actor=actor,
        action="agent.language",
        target=agent.code,
        details={"from": agent.language, "to": language},
    )
    return _agent(row)
