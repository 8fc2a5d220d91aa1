"""The interface between menus and the operations they call (the banking core, through bindings).

An action screen names an action (`send_money`); the engine calls the function bound to that
name with an `ActionContext` and moves on with the `ActionResult` it returns, or with the typed
error it raises:

    async def send_money(ctx: ActionContext) -> ActionResult:
        result = await transfers.send_money(pool, sender=ctx.msisdn,
                                            recipient=ctx.vars["recipient"],
                                            amount_minor=ctx.vars["amount_minor"],
                                            idempotency_key=ctx.idempotency_key, ...)
        return ActionResult(vars={"reference": result.reference, ...})

- Errors are `core.errors.CoreError`s. The action screen's `on_error` maps the error's
  `error_code` (`WRONG_PIN`, `INSUFFICIENT_FUNDS` ...) to the next screen, `default` catches the
  rest; the error's `details` (e.g. `attempts_left`) become variables of that screen.
- Any other exception is a bug: the engine logs it and shows the `default` error screen.
- `ctx.secrets` holds PINs and other secret inputs, decrypted for this call only; they are
  never logged and never returned.
- `ctx.idempotency_key` is stable for this session and step: a retried step carries the same key,
  so a money movement happens at most once.

`MenuBindings` holds the implementations (bound at start-up by `menus.bindings`) and the
`Notifier` that queues the SMS when an action outlives the USSD deadline. What actions exist, and
what they read and return, is the catalogue (`menus.catalogue`), which the validator checks menus
against even before any implementation is bound.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from menus.pending import Settler

EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ActionContext:
    """Everything an action may read. Mappings are read-only views."""

    action: str
    msisdn: str  # the caller, E.164
    language: str
    vars: Mapping[str, Any]  # saved inputs and earlier outputs (no secrets)
    secrets: Mapping[str, str]  # secret inputs (PINs), this call only
    customer: Mapping[str, Any]  # the customer context (what customer.lookup returned)
    params: Mapping[str, Any]  # static parameters from the menu screen
    idempotency_key: str  # derived from the session and the step
    channel: str  # "ussd"
    session_id: str  # the provider-namespaced session id
    currency: str
    # The same request handled again (a retried SMS): its money may have moved already.
    again: bool = False

    def __repr__(self) -> str:
        # Secrets never reach a log line, even through a careless repr.
        return f"ActionContext(action={self.action!r}, msisdn={self.msisdn!r}, secrets=***)"


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an action returns: variables for the next screens; optionally a new customer context
    (lookup, registration) and a new session language (language change)."""

    vars: Mapping[str, Any] = field(default_factory=dict)
    customer: Mapping[str, Any] | None = None
    language: str | None = None
    # The core queued the caller's own receipt of this result (in the movement's transaction):
    # a result SMS sent after an outcome that was unknown would say it twice.
    receipted: bool = False


ActionFn = Callable[[ActionContext], Awaitable[ActionResult]]


class Notifier(Protocol):
    """Queues a message to the customer (bound to the core outbox)."""

    async def notify(self, *, msisdn: str, text: str, kind: str, idempotency_key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """The contract of one action: what it reads, what it returns (with a sample value of each
    output, used by the validator's length check and by dry-run simulation), which error codes
    it raises, and whether it moves money."""

    name: str
    summary: str
    reads: tuple[str, ...] = ()  # session variables it needs
    secrets: tuple[str, ...] = ()  # secret inputs it needs
    outputs: Mapping[str, Any] = field(default_factory=dict)
    customer: Mapping[str, Any] | None = None  # sample customer context it returns
    errors: tuple[str, ...] = ()
    money: bool = False


class MenuBindings:
    """The action implementations and the notifier, by name. Unbound actions make their screens
    answer "temporarily unavailable"; the catalogue still validates menus that use them."""

    def __init__(self, catalogue: Mapping[str, ActionSpec]) -> None:
        self.specs: dict[str, ActionSpec] = dict(catalogue)
        self.functions: dict[str, ActionFn] = {}
        self.notifier: Notifier | None = None
        # Settles or abandons a money action's movement under its key (menus.pending): what
        # keeps a promised late result once the instance that promised it is gone.
        self.settler: Settler | None = None

    def bind(self, name: str, fn: ActionFn, spec: ActionSpec | None = None) -> None:
        """Bind `fn` to `name`. `spec` declares an action outside the catalogue (tests,
        extensions); a catalogued action keeps its catalogue spec."""
        if spec is not None:
            self.specs[name] = spec
        if name not in self.specs:
            raise KeyError(f"no action {name!r} in the catalogue; pass its spec")
        self.functions[name] = fn

    def function(self, name: str) -> ActionFn | None:
        return self.functions.get(name)
