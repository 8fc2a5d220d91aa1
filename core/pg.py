"""How core talks to PostgreSQL on the channel side: raw asyncpg, one round trip per operation.

`Db` is an asyncpg Pool or Connection (both answer fetchrow/fetch/execute). `call` runs one
statement with a timeout and turns the database's answers into core.errors:
- the ledger functions raise `ledger_fail(code, message, details)`: SQLSTATE P0001 with the
  stable code in DETAIL and JSON details in HINT;
- the CHECK that keeps wallets from going negative (the last line) becomes InsufficientFunds;
- a lost connection, a timeout or a cancelled statement becomes Unavailable: nothing or all of
  the call was committed, so a retry with the same idempotency key is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from core import errors as E

log = logging.getLogger("core.pg")

T = TypeVar("T")

Db = Any  # asyncpg.Pool | asyncpg.Connection (asyncpg ships no type hints)

CALL_TIMEOUT_S = 10.0
DEADLOCK_RETRIES = 3
# The database went away under a statement, or cannot be reached for now: nothing of it or
# all of it was committed, and it may be tried again on another connection.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # The connection died between two protocol steps ("cannot switch to state 12; another
    # operation is in progress"): as lost as any other (seen when a backend is terminated
    # mid-call).
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    OSError,
    TimeoutError,
)
# Pauses between tries at recording what already happened outside (a message sent) when the
# connection was lost: ~1.5 s in all, a restart's or a failover's blip.
RECORD_RETRY_PAUSES_S: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8)
# What `settle` asks again after: a lost connection, raw or as core's Unavailable.
_UNSETTLED: tuple[type[BaseException], ...] = (E.Unavailable, *CONNECTION_LOST)
_SLOW_REASONS = ("TimeoutError", "QueryCanceledError")

ERRORS_BY_CODE: dict[str, type[E.CoreError]] = {
    cls.code: cls
    for cls in (
        E.CustomerNotFound,
        E.AgentNotFound,
        E.TransferNotFound,
        E.SameAccount,
        E.CurrencyMismatch,
        E.ValidationFailed,
        E.InsufficientFunds,
        E.LimitExceeded,
        E.AlreadyReversed,
        E.NotReversible,
        E.IdempotencyConflict,
        E.MoneyAbandoned,
        E.ActionAbandoned,
        E.WalletLocked,
        E.AccountClosed,
        E.AgentUnavailable,
    )
}


def _from_raise(exc: asyncpg.RaiseError) -> E.CoreError:
    code = getattr(exc, "detail", None) or ""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:  # a RAISE we did not write: a bug, not an expected failure
        raise exc
    try:
        details = json.loads(getattr(exc, "hint", None) or "{}")
    except ValueError:
        details = {}
    return cls(exc.args[0] if exc.args else None, **details)


def core_error(exc: asyncpg.RaiseError) -> E.CoreError:
    """The typed error a ledger_fail RAISE stands for (a RAISE we did not write re-raised)."""
    return _from_raise(exc)


def _unavailable(exc: BaseException) -> E.Unavailable:
    return E.Unavailable(
        "The database did not answer; try again with the same idempotency key",
        reason=type(exc).__name__,
    )


def _in_transaction(db: Db) -> bool:
    probe = getattr(db, "is_in_transaction", None)  # Connections have it, Pools do not
    return bool(probe()) if callable(probe) else False


async def call(db: Db, sql: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
    """fetchrow(sql, *args) with the error mapping above. Deadlocks and serialisation failures
    (which sorted locking should make impossible) are retried a few times, except inside the
    caller's transaction, which they abort: there they are Unavailable (retry the whole)."""
    for attempt in range(DEADLOCK_RETRIES):
        try:
            return await db.fetchrow(sql, *args, timeout=timeout_s)
        except asyncpg.RaiseError as exc:
            raise _from_raise(exc) from None
        except asyncpg.DataError:  # a value the database types cannot hold (checked earlier)
            raise E.ValidationFailed("A value is out of range") from None
        except asyncpg.CheckViolationError as exc:
            if getattr(exc, "constraint_name", "") == "accounts_no_overdraft":
                raise E.InsufficientFunds() from None
            raise
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            if _in_transaction(db):
                # The caller's transaction is aborted: only the caller can retry, as a whole.
                raise _unavailable(exc) from None
            if attempt == DEADLOCK_RETRIES - 1:
                raise
        except (*CONNECTION_LOST, asyncpg.QueryCanceledError) as exc:
            raise _unavailable(exc) from None
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def connection(db: Db) -> AsyncIterator[Any]:
    """One connection for a multi-statement transaction: `db` itself, or one from the pool.

    A connection lost in the block is Unavailable, as in `call`: in `async with connection(db)
    as conn, conn.transaction()` the rollback on the dead connection raises asyncpg's
    InterfaceError in place of the Unavailable a `call` inside raised, and a caller's `except
    CoreError` (recording a refusal, say) never saw it."""
    try:
        if isinstance(db, asyncpg.Pool):
            async with db.acquire(timeout=CALL_TIMEOUT_S) as conn:
                yield conn
        else:
            yield db
    except CONNECTION_LOST as exc:
        raise _unavailable(exc) from None


def unique_violation(exc: asyncpg.UniqueViolationError) -> str:
    """The name of the violated unique constraint or index."""
    return str(getattr(exc, "constraint_name", "") or "")


async def through_outage(op: Callable[[], Awaitable[T]], *, what: str) -> T:
    """`op()` for work that records something already done outside the database (a message
    sent), tried again after RECORD_RETRY_PAUSES_S when the connection is lost: `op` must be
    idempotent. A record lost there makes the work happen again."""
    for pause in RECORD_RETRY_PAUSES_S:
        try:
            return await op()
        except CONNECTION_LOST as exc:
            log.warning(
                "connection lost recording %s; again in %.2f s (%s)",
                what,
                pause,
                type(exc).__name__,
            )
            await asyncio.sleep(pause)
    return await op()


async def record_retrying(db: Db, sql: str, *args: Any, what: str) -> None:
    """One idempotent statement through `through_outage`."""
    await through_outage(lambda: db.execute(sql, *args, timeout=CALL_TIMEOUT_S), what=what)


async def settle(op: Callable[[], Awaitable[T]], *, what: str) -> T:
    """`op()`, a movement under its idempotency key, asked again after RECORD_RETRY_PAUSES_S
    while its connection is lost (Unavailable, or asyncpg's own error from a transaction's
    COMMIT or rollback): whether it committed is then unknown, and asking again settles it,
    the first result replayed or the movement made now. Without it a channel answers "try
    again later" to money that may have moved, and the customer's new attempt comes under a
    new key. A timeout is not asked again: a database too slow to answer gets no more load.
    Only for `op`s whose every statement is idempotent under the key; the channels check the
    PIN before, once. Still lost after the last try: `Unsettled` (an Unavailable), so that a
    channel able to answer later (USSD's "result by SMS") may keep asking."""
    for pause in RECORD_RETRY_PAUSES_S:
        try:
            return await op()
        except _UNSETTLED as exc:
            if not _lost(exc):
                raise
            log.warning(
                "connection lost under %s; asking again in %.2f s (%s)",
                what,
                pause,
                type(exc).__name__,
            )
            await asyncio.sleep(pause)
    try:
        return await op()
    except _UNSETTLED as exc:
        if not _lost(exc):
            raise
        # The same words as Unavailable's: channels that answer it alike show no difference.
        raise E.Unsettled(_unavailable(exc).message, reason=type(exc).__name__) from None


def _lost(exc: BaseException) -> bool:
    """A connection lost, raw or as the Unavailable made of it (its `reason` names the lost
    connection's error); not a timeout, nor an Unavailable of another kind (a dependency not
    configured), which asking again would not change."""
    if isinstance(exc, E.Unavailable):
        reason = exc.details.get("reason")
        return reason is not None and reason not in _SLOW_REASONS
    return not isinstance(exc, TimeoutError)
