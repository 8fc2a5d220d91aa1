"""Agent commands: idempotent by command id, gated by location, executed behind an interface.

    device -> agents/{code}/cmd -> channels.agents.commands.decode_command() -> dict
           -> CommandDispatcher.handle() -> reply dict -> agents/{code}/reply

The command models here are channel-neutral (every op with its fields, unknown fields refused;
PINs are `SecretStr`, so a command's repr or a validation error never shows them, and the
fingerprint that tells a retried command from a different one under the same id leaves them
out: a hash of a 4-digit PIN is no secret). The dispatcher validates, claims
the command id in Redis (`SET NX`), runs the geofence gate for cash-in, cash-out and
registration on the agent's latest accepted fix, and hands the command and the gate's decision
to a `CommandExecutor`. The reply is stored under the id, so a repeated id gets the same reply
again without running anything; the same id with a different request is refused with
IDEMPOTENCY_CONFLICT. A duplicate that arrives while the first is still running gets no reply of
its own (the first one answers).

The banking core supplies the real executor (it verifies the agent's PIN, moves the money with
the command id as idempotency key and stores the gate's evidence with the transaction). Until
then `PendingCoreExecutor` enforces the gate and answers NOT_AVAILABLE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
)
from redis.asyncio import Redis

from core.errors import CoreError, LocationRefused, Unavailable
from geofence.gating import GateDecision, GatePolicy, gate
from menus.device import DeviceEngine

log = logging.getLogger("gateway.agents.commands")

REPLY_TTL_S = 7 * 24 * 3600
CLAIM_TTL_S = 60
MAX_AMOUNT_MINOR = 10**12
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
GATED_OPS = frozenset({"cash_in", "cash_out", "register_customer"})

Msisdn = Annotated[str, Field(pattern=r"^\+?\d{9,15}$")]
_PIN_RE = re.compile(r"^\d{4,6}$")


def _check_pin(value: SecretStr) -> SecretStr:
    if not _PIN_RE.match(value.get_secret_value()):
        raise ValueError("a PIN is 4 to 6 digits")
    return value


Pin = Annotated[SecretStr, AfterValidator(_check_pin)]
Name = Annotated[str, Field(min_length=1, max_length=64)]
CommandId = Annotated[str, Field(pattern=COMMAND_ID_RE.pattern)]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: CommandId

    @property
    def gated(self) -> bool:
        return self.op in GATED_OPS  # type: ignore[attr-defined]

    def fingerprint(self) -> str:
        """A digest of the request without its secrets (for same-id-different-request checks)."""
        public = {k: v for k, v in self.model_dump().items() if not isinstance(v, SecretStr)}
        canonical = json.dumps(public, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


class CashIn(_Command):
    op: Literal["cash_in"]
    msisdn: Msisdn
    amount_minor: int = Field(gt=0, le=MAX_AMOUNT_MINOR, strict=True)
    pin: Pin


class CashOut(_Command):
    op: Literal["cash_out"]
    msisdn: Msisdn
    amount_minor: int = Field(gt=0, le=MAX_AMOUNT_MINOR, strict=True)
    pin: Pin
    customer_pin: Pin


class RegisterCustomer(_Command):
    op: Literal["register_customer"]
    msisdn: Msisdn
    first_name: Name
    last_name: Name
    national_id: Annotated[str, Field(min_length=4, max_length=20, pattern=r"^[A-Za-z0-9]+$")]
    pin: Pin
    customer_pin: Pin


class Balance(_Command):
    op: Literal["balance"]
    pin: Pin


AgentCommand = Annotated[CashIn | CashOut | RegisterCustomer | Balance, Field(discriminator="op")]
_ADAPTER: TypeAdapter[CashIn | CashOut | RegisterCustomer | Balance] = TypeAdapter(AgentCommand)
OPS = ("cash_in", "cash_out", "register_customer", "balance")


Command = CashIn | CashOut | RegisterCustomer | Balance


class CommandInvalid(Exception):
    """A command that cannot be run as sent; becomes an error reply."""

    def __init__(
        self, command_id: str | None, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.code = code
        self.message = message
        self.details = details or {}


def validate_command(data: dict[str, Any]) -> Command:
    """A command from its decoded JSON object; CommandInvalid says what is wrong."""
    raw_id = data.get("id")
    command_id = raw_id if isinstance(raw_id, str) and COMMAND_ID_RE.match(raw_id) else None
    if command_id is None:
        raise CommandInvalid(None, "VALIDATION_ERROR", "'id' must be 1-64 letters, digits or ._:-")
    if data.get("op") not in OPS:
        raise CommandInvalid(command_id, "UNKNOWN_OP", f"'op' must be one of {', '.join(OPS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or "body", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise CommandInvalid(
            command_id, "VALIDATION_ERROR", "The command is not valid", {"errors": errors}
        ) from None


def reply_ok(command_id: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"id": command_id, "ok": True, "result": result}


def reply_error(
    command_id: str | None, code: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"id": command_id, "ok": False, "error": error}


@dataclass(frozen=True, slots=True)
class CommandContext:
    agent_code: str
    received_at: float
    gate: GateDecision | None  # None for ops that are not location-gated (balance)


class CommandExecutor(Protocol):
    """Runs one validated command. Returns the reply's `result`; raises a CoreError to refuse
    (its `error_code` becomes the reply's `error.code`)."""

    async def execute(self, command: Command, context: CommandContext) -> dict[str, Any]: ...


def refuse_unless_allowed(context: CommandContext) -> None:
    """What every executor does first: a refused gate is the answer."""
    decision = context.gate
    if decision is not None and not decision.allowed:
        assert decision.reason is not None
        raise LocationRefused(decision.message, code=decision.reason.value)


class PendingCoreExecutor:
    """Until the banking core's executor lands: the gate is enforced, nothing moves."""

    async def execute(self, command: Command, context: CommandContext) -> dict[str, Any]:
        refuse_unless_allowed(context)
        raise Unavailable(f"{command.op} is not available yet", code="NOT_AVAILABLE")


class CommandDispatcher:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        engine: DeviceEngine,
        executor: CommandExecutor,
        policy: GatePolicy,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.engine = engine
        self.executor = executor
        self.policy = policy

    def key(self, agent_code: str, command_id: str) -> str:
        return f"{self.prefix}agentcmd:{agent_code}:{command_id}"

    async def handle(
        self, agent_code: str, data: dict[str, Any], now: float | None = None
    ) -> dict[str, Any] | None:
        """The reply to publish, or None when another delivery of the same command answers."""
        now = time.time() if now is None else now
        try:
            command = validate_command(data)
        except CommandInvalid as exc:
            return reply_error(exc.command_id, exc.code, exc.message, exc.details)
        key, fingerprint = self.key(agent_code, command.id), command.fingerprint()
        claimed = await self.redis.set(key, f"pending|{fingerprint}", nx=True, ex=CLAIM_TTL_S)
        if not claimed:
            return await self._answered(key, command.id, fingerprint)
        try:
            reply = await self._run(agent_code, command, now)
        except Exception:
            await self.redis.delete(key)  # let a retry run it again (the core is idempotent)
            log.exception("agent command failed", extra={"agent": agent_code, "op": command.op})
            return reply_error(command.id, "INTERNAL_ERROR", "The command failed; retry it")
        await self.redis.set(key, f"done|{fingerprint}|{json.dumps(reply)}", ex=REPLY_TTL_S)
        return reply

    async def _answered(self, key: str, command_id: str, fingerprint: str) -> dict[str, Any] | None:
        raw = await self.redis.get(key)
        if raw is None:
            return reply_error(command_id, "RETRY", "The command is being retried; send it again")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        status, _, rest = text.partition("|")
        stored_fp, _, body = rest.partition("|")
        if stored_fp != fingerprint:
            return reply_error(
                command_id,
                "IDEMPOTENCY_CONFLICT",
                "This command id was already used with a different request",
            )
        if status == "pending":
            return None
        reply: dict[str, Any] = json.loads(body)
        return reply

    async def _run(self, agent_code: str, command: Command, now: float) -> dict[str, Any]:
        decision = None
        if command.gated:
            fix = await self.engine.latest_fix(agent_code)
            decision = gate(fix, self.engine.catalog.fences_for(agent_code), now, self.policy)
        context = CommandContext(agent_code, now, decision)
        try:
            result = await self.executor.execute(command, context)
        except CoreError as exc:
            log.info(
                "agent command refused",
                extra={"agent": agent_code, "op": command.op, "code": exc.error_code},
            )
            details = {k: v for k, v in exc.details.items() if k != "evidence"}
            return reply_error(command.id, exc.error_code, exc.message, details or None)
        return reply_ok(command.id, result)
