"""Typed errors for every expected failure in the banking core.

Callers map these to their channel's idiom (HTTP status and error JSON, a USSD END screen, an
SMS hint, an MQTT error reply). Bugs are assertions, never CoreErrors.

    CoreError
    ├── NotFound                      a customer, agent, wallet, admin ... does not exist
    │   ├── CustomerNotFound          no customer with that MSISDN (banking core)
    │   ├── AgentNotFound             no agent with that code
    │   └── TransferNotFound          no transfer with that reference
    ├── ValidationFailed              well-formed input that breaks a rule (amount <= 0 ...)
    │   ├── SameAccount               source and destination are the same wallet
    │   ├── CurrencyMismatch          no wallet/account in the transfer's currency
    │   ├── WeakPin                   a PIN that is not 4 digits, a sequence or one digit repeated
    │   ├── Overpayment               a loan repayment larger than everything the loan owes
    │   ├── MenuInvalid               a menu document fails validation; `details.problems`
    │   └── FixRejected               a device's location fix: MALFORMED_FIX, FIX_OUT_OF_RANGE,
    │                                 STALE_FIX or FUTURE_FIX (the code says which)
    ├── Conflict                      the request clashes with current state
    │   ├── AlreadyExists
    │   ├── BalanceNotZero            closing an account that still holds money
    │   ├── IdempotencyConflict       same idempotency key, different request
    │   ├── MoneyAbandoned            the key was abandoned (a late USSD result given up): no
    │   │                             movement may happen under it any more
    │   ├── ActionAbandoned           the same for a registration or a PIN change: nothing
    │   │                             changes under the key any more
    │   ├── InsufficientFunds         the balance does not cover amount + fee
    │   ├── LimitExceeded             a KYC tier limit (`details.limit` says which)
    │   ├── AlreadyReversed           a transfer is reversed at most once
    │   ├── NotReversible             a loan disbursement or repayment: corrected through the
    │   │                             loan book, never by the core's reversal
    │   ├── IllegalTransition         a loan lifecycle move the state machine does not allow
    │   └── LoanRefused               a loan rule says no; `error_code` is the rule's
    │                                 (LOAN_OUTSTANDING, TIER_NOT_ALLOWED, AMOUNT_OUT_OF_RANGE ...)
    ├── AuthFailed                    credentials, PIN or OTP wrong (one generic message)
    │   ├── OtpInvalid                wrong or already used TOTP code
    │   ├── TokenInvalid              a JWT that is forged, expired or revoked
    │   └── WrongPin                  a wrong PIN; `details.attempts_left`
    ├── Forbidden                     authenticated, but not allowed
    │   ├── AccountLocked             too many failures; `details.retry_after_s` when it ends
    │   ├── WalletLocked              3 wrong PINs in a row; an admin must unlock it
    │   ├── AccountClosed             the customer's account is closed
    │   ├── AgentUnavailable          the agent is locked or closed
    │   └── LocationRefused           the geofence gate said no: OUTSIDE_GEOFENCE,
    │                                 STALE_LOCATION, ... (the code is the gate's reason)
    ├── RateLimited                   too many attempts in a window
    ├── Unavailable                   a dependency is down; try again later (same key is safe)
    │   └── Unsettled                 a movement's connection lost past `core.pg.settle`'s
    │                                 tries: it may have committed; ask again under its key
    ├── BadRequest                    malformed input: not the wire format at all (HTTP 400)
    └── SendFailed                    an outbox sender could not deliver (`temporary` or not)

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


class BalanceNotZero(Conflict):
    code = "BALANCE_NOT_ZERO"
    default_message = "The account still holds money"


class IdempotencyConflict(Conflict):
    code = "IDEMPOTENCY_CONFLICT"
    default_message = "This idempotency key was already used with a different request"


class MoneyAbandoned(Conflict):
    """The movement's key was abandoned (`core.transfers.abandon`): the customer was told it
    did not go through, so nothing may move under it any more, however late the ask."""

    code = "MONEY_ABANDONED"
    default_message = "This request was given up; nothing moved and nothing will move under it"


class ActionAbandoned(Conflict):
    """A registration's or a PIN change's key was abandoned (`core.customers.abandon_request`):
    the customer was told it did not go through, so nothing may change under it any more."""

    code = "ACTION_ABANDONED"
    default_message = "This request was given up; nothing changed and nothing will under it"


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


class Unsettled(Unavailable):
    """A money movement whose connection was lost on every try of `core.pg.settle`: whether it
    committed is unknown. Channels that answer Unavailable answer it alike (same code); USSD
    ends the session with "the result will come by SMS" and keeps asking under the same key."""


class IllegalTransition(Conflict):
    """A loan or application asked to move along an edge the lifecycle table does not have."""

    code = "ILLEGAL_TRANSITION"
    default_message = "The loan cannot make this change from its current state"


class LoanRefused(Conflict):
    """A loan quote or application refused by a rule; `error_code` is the rule's stable code
    (see core.loans.fraud and core.loans.decision) and `message` a screen-sized reason."""

    code = "LOAN_REFUSED"
    default_message = "The loan cannot be granted"


class Overpayment(ValidationFailed):
    """A repayment larger than the loan's whole outstanding balance; `details` says how much
    is owed so a channel can offer the exact figure."""

    code = "OVERPAYMENT"
    default_message = "The amount is more than the loan owes"


class BadRequest(CoreError):
    """Input that is not the expected wire format at all (a USSD callback missing fields, a body
    that is not JSON). HTTP 400; a well-formed request that breaks a rule is ValidationFailed."""

    code = "BAD_REQUEST"
    default_message = "The request is malformed"


class MenuInvalid(ValidationFailed):
    """A menu document fails validation; `details["problems"]` has one line per problem."""

    code = "MENU_INVALID"
    default_message = "The menu is not valid"


# --- banking core ----------------------------------------------------------------------------


class CustomerNotFound(NotFound):
    code = "CUSTOMER_NOT_FOUND"
    default_message = "No customer with that number"


class AgentNotFound(NotFound):
    code = "AGENT_NOT_FOUND"
    default_message = "No agent with that code"


class TransferNotFound(NotFound):
    code = "TRANSFER_NOT_FOUND"
    default_message = "No transfer with that reference"


class SameAccount(ValidationFailed):
    code = "SAME_ACCOUNT"
    default_message = "The source and the destination are the same"


class CurrencyMismatch(ValidationFailed):
    code = "CURRENCY_MISMATCH"
    default_message = "There is no account in that currency"


class WeakPin(ValidationFailed):
    code = "WEAK_PIN"
    default_message = "A PIN is 4 digits, not a sequence and not one digit repeated"


class InsufficientFunds(Conflict):
    code = "INSUFFICIENT_FUNDS"
    default_message = "Not enough money in the account"


class LimitExceeded(Conflict):
    code = "LIMIT_EXCEEDED"
    default_message = "A transaction limit would be passed"


class AlreadyReversed(Conflict):
    code = "ALREADY_REVERSED"
    default_message = "This transfer was already reversed"


class NotReversible(Conflict):
    code = "NOT_REVERSIBLE"
    default_message = "Loan transfers are corrected through the loan book, not reversed"


class WrongPin(AuthFailed):
    code = "WRONG_PIN"
    default_message = "Wrong PIN"


class WalletLocked(Forbidden):
    code = "WALLET_LOCKED"
    default_message = "The wallet is locked; ask support to unlock it"


class AccountClosed(Forbidden):
    code = "ACCOUNT_CLOSED"
    default_message = "The account is closed"


class AgentUnavailable(Forbidden):
    code = "AGENT_UNAVAILABLE"
    default_message = "The agent is locked or closed"


class SendFailed(CoreError):
    """A message could not be handed to its provider; the one send failure of every channel
    (`channels.base` re-exports it) and of the core's outbox dispatcher.

    `temporary=True`: the provider or the link is busy or down; the same message may be sent
    again later (the dispatcher retries with backoff until `max_attempts`). `temporary=False`:
    the provider refused the message for good (bad number, too long ...); the dispatcher moves
    the row to the dead-letter state with `reason`.
    """

    code = "SEND_FAILED"
    default_message = "The message could not be sent"

    def __init__(self, message: str | None = None, *, temporary: bool = True, **details: Any):
        super().__init__(message, temporary=temporary, **details)
        self.temporary = temporary

    @property
    def reason(self) -> str:
        return self.message

    def __repr__(self) -> str:
        kind = "temporary" if self.temporary else "permanent"
        return f"SendFailed({kind}: {self.message})"


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
