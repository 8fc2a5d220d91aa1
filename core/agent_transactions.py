"""Agent transactions from the agent's own device, with the geofence gate in the path.

Cash-in, cash-out and customer registration that an agent's device originates go through here
and nowhere else: the public money and registration functions refuse `DEVICE_CHANNEL`, so a
device transaction cannot skip the gate. Each runs, in order:

1. the agent's PIN (core.agents.verify_agent_pin; three wrong in a row lock the agent);
2. the gate: the agent's latest accepted fix and its fences, read through a `Locator` (the live
   device state is in Redis, which core does not touch; the fences are the catalog the ingest
   path holds), judged by geofence.gating.gate: fresh, accurate enough, not mocked and INSIDE
   one of the agent's fences. A refusal raises LocationRefused with the gate's reason as its
   code (OUTSIDE_GEOFENCE, STALE_LOCATION, ...);
3. for a cash-out, the customer's PIN (core.pins.verify_pin: the same three-strikes counter as
   USSD and SMS), typed on the agent's device;
4. the money, with the command id as the idempotency key and the gate's evidence (the fix, the
   decision, the fence id and version, the policy) as the transfer's note; a registration
   stores it in the audit log in the customer's own transaction.

Every attempt whose agent PIN was right leaves one row in `agent_decisions` (the gate's answer,
its evidence, the outcome: "ok" or the refusal's code); a completed one binds its command id
there, in the same transaction as the money or the registration. An attempt that ended in
SERVICE_UNAVAILABLE (no outcome yet) is the exception: the same command's next attempt replaces
its row, and a command already done adds none (TRANSIENT_OUTCOME).

A command retried after its answer was lost (the gateway died between the commit and the
reply) finds its first result even when the gate would now refuse: the money moved under the
decision recorded with it, and the device must hear so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core import errors as E
from core.agents import DEVICE_CHANNEL, Agent, AgentBalances, agent_balances, verify_agent_pin
from core.crypto import FieldCipher
from core.customers import Customer, _register_customer, get_customer
from core.msisdn import normalise_msisdn
from core.pg import Db, connection
from core.pins import verify_pin
from core.transfers import TransferResult, _cash_in, _cash_out, posted_under
from geofence.fences import Fence
from geofence.fix import Fix
from geofence.gating import GateDecision, GatePolicy, gate

__all__ = [
    "DEVICE_CHANNEL",
    "DeviceGate",
    "DeviceRequest",
    "Locator",
    "cash_in",
    "cash_out",
    "float_balance",
    "gate_customer_withdrawal",
    "idempotency_key",
    "list_decisions",
    "register_customer",
]

log = logging.getLogger("core.agent_transactions")

MAX_COMMAND_ID_CHARS = 64
MAX_DECISIONS_PAGE = 500


class Locator(Protocol):
    """Where an agent is: its latest accepted fix and the fences it may work in."""

    async def latest_fix(self, agent_code: str) -> Fix | None: ...

    def fences_for(self, agent_code: str) -> Sequence[Fence]: ...


@dataclass(frozen=True, slots=True)
class DeviceGate:
    """The gate over live device state: the policy comes from settings, the state from the
    locator; the decision itself is geofence.gating.gate (pure)."""

    locator: Locator
    policy: GatePolicy

    async def decide(self, agent_code: str, now: float) -> GateDecision:
        fix = await self.locator.latest_fix(agent_code)
        return gate(fix, self.locator.fences_for(agent_code), now, self.policy)


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """Who asks and when: the agent (its code and PIN, as sent), the command id, the clock."""

    agent_code: str
    agent_pin: str
    command_id: str
    now: float

    def __repr__(self) -> str:  # never show the PIN
        return f"DeviceRequest({self.agent_code!r}, {self.command_id!r})"


def idempotency_key(agent_code: str, command_id: str) -> str:
    """The money path's key for one device command (ids are unique per agent, not globally)."""
    if not 1 <= len(command_id) <= MAX_COMMAND_ID_CHARS:
        raise E.ValidationFailed("A command id is 1 to 64 characters", field="id")
    return f"agent:{agent_code}:{command_id}"


# --- one attempt and its record ----------------------------------------------------------------

# An attempt that ended in SERVICE_UNAVAILABLE has no outcome yet: the device is told to send
# the same id again, and the attempt may even have committed (its COMMIT's answer lost). Its row
# stands for the command only until the command has an outcome: the next attempt's row
# replaces it, and none is added once the command is done ("ok"). A retried command thus
# leaves one row with its final outcome, not the "ok" and a stale "unavailable" after it.
TRANSIENT_OUTCOME = E.Unavailable.code

_RECORD_SQL = """
WITH superseded AS (
    DELETE FROM agent_decisions
     WHERE agent_code = $1 AND command_id = $2 AND outcome = $10::text
)
INSERT INTO agent_decisions (agent_code, command_id, op, allowed, reason, outcome, reference,
                             target, evidence)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb
 WHERE $6::text <> $10::text
    OR NOT EXISTS (SELECT FROM agent_decisions
                    WHERE agent_code = $1 AND command_id = $2 AND outcome = 'ok')
ON CONFLICT (agent_code, command_id) WHERE outcome = 'ok' DO NOTHING
"""


async def _record_decision(db: Db, *args: Any) -> None:
    """_RECORD_SQL with its nine values (agent code to evidence)."""
    await db.execute(_RECORD_SQL, *args, TRANSIENT_OUTCOME)


@dataclass(frozen=True, slots=True)
class _Attempt:
    """An authorised agent's command and the gate's decision on it."""

    agent: Agent
    request: DeviceRequest
    op: str
    decision: GateDecision

    @property
    def key(self) -> str:
        return idempotency_key(self.agent.code, self.request.command_id)

    @property
    def reason(self) -> str:
        assert self.decision.reason is not None  # only asked of a refused decision
        return self.decision.reason.value

    def evidence(self) -> dict[str, Any]:
        """What the transaction stores: the gate's evidence and the command it answered."""
        return {"gate": "allowed", "command_id": self.request.command_id, **self.decision.evidence}

    def refusal(self) -> E.LocationRefused:
        return E.LocationRefused(
            self.decision.message, code=self.reason, evidence=self.decision.evidence
        )

    async def record(
        self, db: Db, outcome: str, *, reference: str | None = None, target: str | None = None
    ) -> None:
        await _record_decision(
            db,
            self.agent.code,
            self.request.command_id,
            self.op,
            self.decision.allowed,
            None if self.decision.reason is None else self.decision.reason.value,
            outcome,
            reference,
            target,
            json.dumps(self.decision.evidence, default=str),
        )

    async def record_failure(self, db: Db, outcome: str, target: str | None = None) -> None:
        """Record a refused attempt; never in the way of the refusal itself (the database may
        be the reason it failed)."""
        try:
            await self.record(db, outcome, target=target)
        except Exception:
            log.warning(
                "agent decision not recorded",
                extra={"agent": self.agent.code, "op": self.op, "outcome": outcome},
                exc_info=True,
            )


async def _authorise(db: Db, gate_: DeviceGate, request: DeviceRequest, op: str) -> _Attempt:
    """The agent's PIN, then the gate's decision on its latest fix. A wrong PIN is counted
    once per command id, however often the device sends the command."""
    key = idempotency_key(request.agent_code, request.command_id)
    agent = await verify_agent_pin(db, request.agent_code, request.agent_pin, request_key=key)
    return _Attempt(agent, request, op, await gate_.decide(agent.code, request.now))


async def _refused_or_replayed(db: Db, attempt: _Attempt, same: dict[str, Any]) -> TransferResult:
    """The gate said no: the first result when this command already moved the money (under
    a decision that allowed it), else the refusal, recorded. `same` is what the earlier
    transfer must match to be this command (type, customer, amount)."""
    earlier = await posted_under(db, attempt.key)
    if earlier is not None:
        if any(getattr(earlier, k) != v for k, v in same.items()):
            raise E.IdempotencyConflict("This command id was already used for another request")
        return earlier
    party = same.get("credit_party") or same.get("debit_party")
    await attempt.record_failure(db, attempt.reason, party)
    raise attempt.refusal()


async def _post(
    db: Db, attempt: _Attempt, target: str, post: Callable[[Db], Awaitable[TransferResult]]
) -> TransferResult:
    """Move the money and bind the command id in one transaction; a refusal is recorded."""
    try:
        async with connection(db) as conn, conn.transaction():
            result = await post(conn)
            await attempt.record(conn, "ok", reference=result.reference, target=target)
    except E.CoreError as exc:
        await attempt.record_failure(db, exc.error_code, target)
        raise
    return result


async def cash_in(
    db: Db,
    gate_: DeviceGate,
    request: DeviceRequest,
    *,
    msisdn: str,
    amount_minor: int,
    currency: str = "KES",
    country_code: str = "254",
) -> TransferResult:
    """The customer hands the agent cash; the agent's float pays the customer's wallet."""
    number = normalise_msisdn(msisdn, country_code)
    attempt = await _authorise(db, gate_, request, "cash_in")
    if not attempt.decision.allowed:
        same = {"kind": "cash_in", "credit_party": number, "amount_minor": amount_minor}
        return await _refused_or_replayed(db, attempt, same)

    async def post(conn: Db) -> TransferResult:
        return await _cash_in(
            conn,
            agent_code=attempt.agent.code,
            msisdn=number,
            amount_minor=amount_minor,
            idempotency_key=attempt.key,
            channel=DEVICE_CHANNEL,
            evidence=attempt.evidence(),
            currency=currency,
            country_code=country_code,
        )

    return await _post(db, attempt, number, post)


async def cash_out(
    db: Db,
    gate_: DeviceGate,
    request: DeviceRequest,
    *,
    msisdn: str,
    amount_minor: int,
    customer_pin: str,
    currency: str = "KES",
    country_code: str = "254",
) -> TransferResult:
    """The agent hands the customer cash; the customer's wallet pays the agent's float (and
    the fee). The customer's PIN is checked only once the agent is authorised and inside, so
    a device out of its zone cannot even try customers' PINs."""
    number = normalise_msisdn(msisdn, country_code)
    attempt = await _authorise(db, gate_, request, "cash_out")
    if not attempt.decision.allowed:
        same = {"kind": "cash_out", "debit_party": number, "amount_minor": amount_minor}
        return await _refused_or_replayed(db, attempt, same)
    try:
        await verify_pin(db, number, customer_pin, country_code, request_key=attempt.key)
    except E.CoreError as exc:
        await attempt.record_failure(db, exc.error_code, number)
        raise

    async def post(conn: Db) -> TransferResult:
        return await _cash_out(
            conn,
            agent_code=attempt.agent.code,
            msisdn=number,
            amount_minor=amount_minor,
            idempotency_key=attempt.key,
            channel=DEVICE_CHANNEL,
            evidence=attempt.evidence(),
            currency=currency,
            country_code=country_code,
        )

    return await _post(db, attempt, number, post)


WITHDRAWAL_GATE_MODES = ("off", "fenced", "always")


async def gate_customer_withdrawal(
    gate_: DeviceGate,
    agent_code: str,
    now: float,
    mode: str = "fenced",
    *,
    db: Db | None = None,
    command_id: str | None = None,
    customer: str | None = None,
) -> dict[str, Any]:
    """The geofence gate for a withdrawal the customer starts (USSD "withdraw at agent").

    The agent is not on the call, so its PIN is not asked, but the cash still changes hands at
    the agent's counter: the same gate as the agent's own cash-out decides on the agent's
    latest device fix, with the same refusals (LocationRefused with NO_LOCATION,
    STALE_LOCATION, OUTSIDE_GEOFENCE ...). `mode`: "fenced" gates only agents that have
    fences (agents without devices or zones keep working); "always" also refuses an agent
    without fences (NO_GEOFENCE); "off" never gates. Returns the evidence the transfer stores.
    With `db`, a refusal is recorded in `agent_decisions` like a refused device command (op
    cash_out, outcome `refused`, the customer as target, `command_id` the channel's
    idempotency key), so the agent's decision history shows it.
    """
    if mode not in WITHDRAWAL_GATE_MODES:
        raise ValueError(f"unknown withdrawal gate mode {mode!r}")
    if mode == "off":
        return {}
    if mode == "fenced" and not gate_.locator.fences_for(agent_code):
        return {"gate": "not_fenced"}
    decision = await gate_.decide(agent_code, now)
    if not decision.allowed:
        assert decision.reason is not None
        log.info(
            "customer withdrawal refused by the gate",
            extra={"agent_code": agent_code, "reason": decision.reason.value},
        )
        if db is not None:
            await _record_customer_refusal(db, agent_code, decision, command_id, customer)
        raise E.LocationRefused(
            decision.message, code=decision.reason.value, evidence=decision.evidence
        )
    return {"gate": "allowed", **decision.evidence}


async def _record_customer_refusal(
    db: Db, agent_code: str, decision: GateDecision, command_id: str | None, customer: str | None
) -> None:
    """Best effort: the refusal stands whether or not it could be written down."""
    assert decision.reason is not None
    key = command_id or "customer"
    if len(key) > 64:  # the column's limit; a digest keeps it stable per attempt
        key = "c:" + hashlib.sha256(key.encode()).hexdigest()[:62]
    try:
        await _record_decision(
            db,
            agent_code,
            key,
            "cash_out",
            False,
            decision.reason.value,
            "refused",
            None,
            customer,
            json.dumps({"initiated_by": "customer", **decision.evidence}, default=str),
        )
    except Exception:
        log.warning(
            "customer withdrawal refusal not recorded", extra={"agent": agent_code}, exc_info=True
        )


async def _registered_before(db: Db, attempt: _Attempt, number: str) -> Customer | None:
    """The customer this very command registered, when it ran before (a retried command)."""
    done = await db.fetchval(
        "SELECT target FROM agent_decisions WHERE agent_code = $1 AND command_id = $2 "
        "AND outcome = 'ok'",
        attempt.agent.code,
        attempt.request.command_id,
    )
    if done is None:
        return None
    if done != number:
        raise E.IdempotencyConflict("This command id was already used for another request")
    return await get_customer(db, number)


async def register_customer(
    db: Db,
    cipher: FieldCipher,
    gate_: DeviceGate,
    request: DeviceRequest,
    *,
    msisdn: str,
    first_name: str,
    last_name: str,
    national_id: str,
    customer_pin: str,
    pin_rounds: int,
    language: str = "en",
    currency: str = "KES",
    country_code: str = "254",
) -> Customer:
    """Register a customer (wallet at tier Basic) at the agent's counter; the gate's evidence
    goes to the audit log in the customer's own transaction."""
    number = normalise_msisdn(msisdn, country_code)
    attempt = await _authorise(db, gate_, request, "register_customer")
    earlier = await _registered_before(db, attempt, number)
    if earlier is not None:
        return earlier
    if not attempt.decision.allowed:
        await attempt.record_failure(db, attempt.reason, number)
        raise attempt.refusal()
    try:
        async with connection(db) as conn, conn.transaction():
            customer = await _register_customer(
                conn,
                cipher,
                msisdn=number,
                first_name=first_name,
                last_name=last_name,
                national_id=national_id,
                pin=customer_pin,
                language=language,
                channel=DEVICE_CHANNEL,
                pin_rounds=pin_rounds,
                currency=currency,
                country_code=country_code,
            )
            await conn.execute(
                "INSERT INTO audit_log (actor_type, actor, action, target, details) "
                "VALUES ('agent', $1, 'agent.customer_registered', $2, $3::jsonb)",
                attempt.agent.code,
                number,
                json.dumps(attempt.evidence(), default=str),
            )
            await attempt.record(conn, "ok", target=number)
    except E.CoreError as exc:
        await attempt.record_failure(db, exc.error_code, number)
        raise
    return customer


async def float_balance(db: Db, request: DeviceRequest) -> AgentBalances:
    """The agent's float and commission (not location-gated: it moves nothing)."""
    key = idempotency_key(request.agent_code, request.command_id)
    agent = await verify_agent_pin(db, request.agent_code, request.agent_pin, request_key=key)
    return await agent_balances(db, agent.code)


async def list_decisions(
    db: Db, agent_code: str, *, before_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """An agent's recorded attempts, newest first; page with `before_id`."""
    rows = await db.fetch(
        "SELECT id, at, command_id, op, allowed, reason, outcome, reference, target, evidence "
        "FROM agent_decisions WHERE agent_code = $1 AND ($2::bigint IS NULL OR id < $2) "
        "ORDER BY id DESC LIMIT $3",
        agent_code,
        before_id,
        min(max(limit, 1), MAX_DECISIONS_PAGE),
    )
    return [{**dict(r), "evidence": json.loads(r["evidence"])} for r in rows]
