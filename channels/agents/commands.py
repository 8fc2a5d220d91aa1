"""Commands on `agents/{code}/cmd` and replies on `agents/{code}/reply`.

    {"id": "c-17", "op": "cash_in", "msisdn": "+254712345678", "amount_minor": 50000,
     "pin": "1234"}
    -> {"id": "c-17", "ok": true, "result": {...}}
    -> {"id": "c-17", "ok": false, "error": {"code": "OUTSIDE_GEOFENCE", "message": "..."}}

Each op has its own model with unknown fields refused. PINs are `SecretStr`, so a command's repr
or a validation error never shows them, and the fingerprint that tells a retried command from a
different one under the same id leaves them out (a hash of a 4-digit PIN is no secret).
A payload that is not JSON, or has no usable id, is answered with `"id": null`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
)

from channels.agents.fixes import MAX_PAYLOAD_BYTES

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


class CommandError(Exception):
    """A command that cannot be run as sent; becomes an error reply."""

    def __init__(
        self, command_id: str | None, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.code = code
        self.message = message
        self.details = details or {}


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse_command(payload: bytes) -> CashIn | CashOut | RegisterCustomer | Balance:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandError(None, "MALFORMED_COMMAND", "The command is too large")
    try:
        data = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise CommandError(None, "MALFORMED_COMMAND", "The command is not valid JSON") from None
    if not isinstance(data, dict):
        raise CommandError(None, "MALFORMED_COMMAND", "The command must be a JSON object")
    raw_id = data.get("id")
    command_id = raw_id if isinstance(raw_id, str) and COMMAND_ID_RE.match(raw_id) else None
    if command_id is None:
        raise CommandError(None, "VALIDATION_ERROR", "'id' must be 1-64 letters, digits or ._:-")
    if data.get("op") not in OPS:
        raise CommandError(command_id, "UNKNOWN_OP", f"'op' must be one of {', '.join(OPS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or "body", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise CommandError(
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
