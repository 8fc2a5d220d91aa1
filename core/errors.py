"""Typed errors for every expected failure in the banking core.

Callers map these to their channel's idiom (HTTP status and error JSON, a USSD END screen, an
SMS hint, an MQTT error reply). Bugs are assertions, never CoreErrors.

    CoreError
    ├── NotFound                      a customer, agent, wallet, admin ... does not exist
    ├── ValidationFailed              well-formed input that breaks a rule (amount <= 0 ...)
    │   └── FixRejected               a device's location fix: MALFORMED_FIX, FIX_OUT_OF_RANGE,
    │                                 STALE_FIX or FUTURE_FIX (the code says which)
    ├── Conflict                      the request clashes with current state
    │   ├── AlreadyExists
    │   └── IdempotencyConflict       same idempotency key, different request
    ├── AuthFailed                    credentials, PIN or OTP wrong (one generic message)
    │   ├── OtpInvalid                wrong or already used TOTP code
    │   └── TokenInvalid              a JWT that is forged, expired or revoked
    ├── Forbidden                     authenticated, but not allowed
    │   ├── AccountLocked             too many failures; `details.retry_after_s` when it ends
    │   └── LocationRefused           the geofence gate said no: OUTSIDE_GEOFENCE,
    │                                 STALE_LOCATION, ... (the code is the gate's reason)
    ├── RateLimited                   too many attempts in a window
    └── Unavailable                   a dependency is down; try again later

Each class carries a stable `code` (the `error_code` channels show) and a human `message`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CoreError(Exception):
    """Base of every expected failure; `code` is stable and machine-readable."""

    code: ClassVar[str] = "ERROR"
    default_message: ClassVar[str] = "The request could not be completed"

    def __init__(
        self, message: str | None = None, *, code: str | None = None, **details: Any
    ) -> None:
        self.message = message or self.default_message
        self.error_code = code or self.code
        self.details: dict[str, Any] = details
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error_code}: {self.message})"


class NotFound(CoreError):
    code = "NOT_FOUND"
    default_message = "Not found"


class ValidationFailed(CoreError):
    code = "VALIDATION_ERROR"
    default_message = "The request is not valid"


class Conflict(CoreError):
    code = "CONFLICT"
    default_message = "The request conflicts with the current state"


class AlreadyExists(Conflict):
    code = "ALREADY_EXISTS"
    default_message = "It already exists"


class IdempotencyConflict(Conflict):
    code = "IDEMPOTENCY_CONFLICT"
    default_message = "This idempotency key was already used with a different request"


class AuthFailed(CoreError):
    code = "INVALID_CREDENTIALS"
    default_message = "Invalid credentials"


class OtpInvalid(AuthFailed):
    code = "INVALID_OTP"
    default_message = "The one-time code is wrong or was already used"


class TokenInvalid(AuthFailed):
    code = "INVALID_TOKEN"
    default_message = "The token is invalid, expired or revoked"


class Forbidden(CoreError):
    code = "FORBIDDEN"
    default_message = "You are not allowed to do this"


class AccountLocked(Forbidden):
    code = "ACCOUNT_LOCKED"
    default_message = "The account is locked"


class RateLimited(CoreError):
    code = "RATE_LIMITED"
    default_message = "Too many requests; try again later"


class Unavailable(CoreError):
    code = "SERVICE_UNAVAILABLE"
    default_message = "The service is temporarily unavailable"


class FixRejected(ValidationFailed):
    """A location fix that cannot be used; `code` is MALFORMED_FIX, FIX_OUT_OF_RANGE, STALE_FIX
    or FUTURE_FIX."""

    code = "MALFORMED_FIX"
    default_message = "The location fix is malformed"


class LocationRefused(Forbidden):
    """An agent transaction refused by the geofence gate; `code` is the gate's reason
    (OUTSIDE_GEOFENCE, STALE_LOCATION, ...) and `details.evidence` what it rests on."""

    code = "LOCATION_REFUSED"
    default_message = "The agent's location does not allow this transaction"
