"""Agent commands: idempotent by command id, executed by the banking core behind an interface.

    device -> agents/{code}/cmd -> channels.agents.commands.decode_command() -> dict
           -> CommandDispatcher.handle() -> reply dict -> agents/{code}/reply

The command models here are channel-neutral (every op with its fields, unknown fields refused;
PINs are `SecretStr`, so a command's repr or a validation error never shows them, and the
fingerprint that tells a retried command from a different one under the same id leaves them
out: a hash of a 4-digit PIN is no secret). The dispatcher validates, claims the command id in
Redis (`SET NX`) and hands the command to a `CommandExecutor`. The reply is stored under the id,
so a repeated id gets the same reply again without running anything; the same id with a
different request is refused with IDEMPOTENCY_CONFLICT. A duplicate that arrives while the first
is still running gets no reply of its own (the first one answers). A temporary failure (the
database or Redis unavailable) is answered but not stored: a retry of the same id runs again,
and the core's idempotency key keeps it from moving money twice.

`CoreCommandExecutor` is the real executor: core.agent_transactions verifies the agent's PIN,
runs the geofence gate on the agent's latest fix (this engine's state, read through core's
`Locator`), checks the customer's PIN for a cash-out, and moves the money with the command id
as the idempotency key and the gate's evidence stored with the transfer.
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
from redis.exceptions import RedisError

from core import agent_transactions as device
from core.crypto import FieldCipher
from core.errors import CoreError, Unavailable
from core.pg import CONNECTION_LOST, Db

log = logging.getLogger("gateway.agents.commands")

REPLY_TTL_S = 7 * 24 * 3600
CLAIM_TTL_S = 60
MAX_AMOUNT_MINOR = 10**12
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
GATED_OPS = frozenset({"cash_in", "cash_out", "register_customer"})  # core gates these

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


class CommandExecutor(Protocol):
    """Runs one validated command. Returns the reply's `result`; raises a CoreError to refuse
    (its `error_code` becomes the reply's `error.code`)."""

    async def execute(self, command: Command, context: CommandContext) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class CoreConfig:
    currency: str = "KES"
    country_code: str = "254"
    pin_rounds: int = 10


def _transfer_result(result: Any, msisdn: str) -> dict[str, Any]:
    """What the agent's device is told about a transfer (never the customer's balance)."""
    return {
        "reference": result.reference,
        "type": result.kind,
        "msisdn": msisdn,
        "currency": result.currency,
        "amount_minor": result.amount_minor,
        "fee_minor": result.fee_minor,
        "commission_minor": result.commission_minor,
        "created_at": result.created_at.isoformat(),
    }


class CoreCommandExecutor:
    """Each op through core.agent_transactions, where the gate stands in the core's path."""

    def __init__(
        self, db: Db, cipher: FieldCipher, gate: device.DeviceGate, config: CoreConfig
    ) -> None:
        self.db = db
        self.cipher = cipher
        self.gate = gate
        self.config = config

    async def execute(self, command: Command, context: CommandContext) -> dict[str, Any]:
        try:
            return await self._execute(command, context)
        except CONNECTION_LOST as exc:
            # Not every statement goes through core.pg.call or core.pg.connection (the agent's
            # PIN check, the balance read): a lost connection there is still "send the same id
            # again", never INTERNAL_ERROR, which a device may take as failed for good.
            raise Unavailable(
                "The database did not answer; send the command again with the same id",
                reason=type(exc).__name__,
            ) from None

    async def _execute(self, command: Command, context: CommandContext) -> dict[str, Any]:
        request = device.DeviceRequest(
            context.agent_code, command.pin.get_secret_value(), command.id, context.received_at
        )
        cfg = self.config
        money = {"currency": cfg.currency, "country_code": cfg.country_code}
        if isinstance(command, CashIn):
            result = await device.cash_in(
                self.db, self.gate, request, msisdn=command.msisdn,
                amount_minor=command.amount_minor, **money,
            )  # fmt: skip
            return _transfer_result(result, result.credit_party)
        if isinstance(command, CashOut):
            result = await device.cash_out(
                self.db, self.gate, request, msisdn=command.msisdn,
                amount_minor=command.amount_minor,
                customer_pin=command.customer_pin.get_secret_value(), **money,
            )  # fmt: skip
            return _transfer_result(result, result.debit_party)
        if isinstance(command, RegisterCustomer):
            return await self._register(command, request)
        balances = await device.float_balance(self.db, request)
        return {
            "currency": balances.currency,
            "float_minor": balances.float_minor,
            "commission_minor": balances.commission_minor,
        }

    async def _register(
        self, command: RegisterCustomer, request: device.DeviceRequest
    ) -> dict[str, Any]:
        customer = await device.register_customer(
            self.db,
            self.cipher,
            self.gate,
            request,
            msisdn=command.msisdn,
            first_name=command.first_name,
            last_name=command.last_name,
            national_id=command.national_id,
            customer_pin=command.customer_pin.get_secret_value(),
            pin_rounds=self.config.pin_rounds,
            currency=self.config.currency,
            country_code=self.config.country_code,
        )
        return {
            "msisdn": customer.msisdn,
            "first_name": customer.first_name,
            "last_name": customer.last_name,
            "tier": customer.tier,
            "status": customer.status,
        }


class CommandDispatcher:
    def __init__(self, redis: Redis, prefix: str, executor: CommandExecutor) -> None:
        self.redis = redis
        self.prefix = prefix
        self.executor = executor

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
        try:
            claimed = await self.redis.set(key, f"pending|{fingerprint}", nx=True, ex=CLAIM_TTL_S)
            if not claimed:
                return await self._answered(key, command.id, fingerprint)
        except RedisError:
            log.warning("agent command: redis unavailable", extra={"agent": agent_code})
            return reply_error(command.id, Unavailable.code, "Temporarily unavailable; retry it")
        try:
            reply, final = await self._run(agent_code, command, now)
        except Exception:
            await self._forget(key)  # let a retry run it again (the core is idempotent)
            log.exception("agent command failed", extra={"agent": agent_code, "op": command.op})
            return reply_error(command.id, "INTERNAL_ERROR", "The command failed; retry it")
        if not final:
            await self._forget(key)
            return reply
        try:
            await self.redis.set(key, f"done|{fingerprint}|{json.dumps(reply)}", ex=REPLY_TTL_S)
        except RedisError:  # the answer stands; a retry meets the core's idempotency key
            log.warning("agent command reply not stored", extra={"agent": agent_code})
        return reply

    async def _forget(self, key: str) -> None:
        try:
            await self.redis.delete(key)
        except RedisError:  # the claim expires by itself after CLAIM_TTL_S
            log.warning("agent command claim not released")

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

    async def _run(
        self, agent_code: str, command: Command, now: float
    ) -> tuple[dict[str, Any], bool]:
        """The reply, and whether it is final (a temporary failure is not: retry the id)."""
        try:
            result = await self.executor.execute(command, CommandContext(agent_code, now))
        except CoreError as exc:
            log.info(
                "agent command refused",
                extra={"agent": agent_code, "op": command.op, "code": exc.error_code},
            )
            details = {k: v for k, v in exc.details.items() if k != "evidence"}
            reply = reply_error(command.id, exc.error_code, exc.message, details or None)
            return reply, not isinstance(exc, Unavailable)
        return reply_ok(command.id, result), True
