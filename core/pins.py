"""Customer PINs: 4 digits, never a sequence or one digit repeated, stored only as bcrypt
hashes (cost from settings, computed off the event loop). Three wrong PINs in a row, counted
in the database so every channel shares the count, lock the wallet until an admin unlocks it.
A PIN is never logged, returned or stored in clear."""

from __future__ import annotations

import asyncio
import itertools
import unicodedata
from collections.abc import Awaitable

import asyncpg
import bcrypt

from core import errors as E
from core.audit import record
from core.msisdn import normalise_msisdn
from core.pg import Db, core_error

PIN_LENGTH = 4
MAX_PIN_FAILURES = 3
MAX_CHANGE_KEY_CHARS = 200
_DUMMY_HASH = bcrypt.hashpw(b"0000", bcrypt.gensalt(rounds=4))


def check_pin_format(pin: str) -> str:
    """Refuse anything but 4 digits, and digits in a run (1234, 9876) or all alike (1111)."""
    if not isinstance(pin, str) or len(pin) != PIN_LENGTH or not pin.isascii():
        raise E.WeakPin("A PIN is exactly 4 digits", field="pin")
    if not pin.isdigit():
        raise E.WeakPin("A PIN is exactly 4 digits", field="pin")
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    if steps in ({0}, {1}, {-1}):
        raise E.WeakPin("Choose a PIN that is not a sequence or one digit repeated", field="pin")
    return pin


async def hash_pin(pin: str, rounds: int) -> str:
    check_pin_format(pin)
    salt = bcrypt.gensalt(rounds=rounds)
    return (await asyncio.to_thread(bcrypt.hashpw, pin.encode(), salt)).decode()


async def pin_matches(pin: str, hashed: str | None) -> bool:
    """bcrypt off the event loop; malformed input still spends the time of one check. A PIN
    in any script's decimal digits (a phone with an Arabic or full-width keyboard) is read as
    its ASCII digits: PINs are set in ASCII, and the right one in other digits is right."""
    well_formed = isinstance(pin, str) and len(pin) == PIN_LENGTH and pin.isdecimal()
    if well_formed and not pin.isascii():
        pin = "".join(str(unicodedata.decimal(c)) for c in pin)
    candidate = pin.encode() if well_formed else b"-"
    target = hashed.encode() if hashed else _DUMMY_HASH
    ok = await asyncio.to_thread(bcrypt.checkpw, candidate, target)
    return ok and well_formed and hashed is not None


_FAIL_SQL = """
WITH seen AS (
    -- This request's wrong PIN, counted already (its answer lost, the request run again).
    SELECT 1 FROM audit_log
    WHERE $3::text IS NOT NULL AND at > now() - make_interval(secs => $4)
      AND action = '{entity}.pin_failed' AND target = $5 AND details->>'request' = $3
    LIMIT 1
), u AS (
    UPDATE {table} SET pin_failures = pin_failures + 1,
        status = CASE WHEN pin_failures + 1 >= $2 THEN 'locked' ELSE status END
    WHERE id = $1 AND status = 'active' AND NOT EXISTS (SELECT 1 FROM seen)
    RETURNING pin_failures, status, {name}
), a AS (
    INSERT INTO audit_log (actor_type, actor, action, target, details)
    SELECT 'system', 'pins', '{entity}.locked', u.{name}, '{{"reason": "wrong PIN"}}'::jsonb
    FROM u WHERE u.status = 'locked'
), f AS (
    INSERT INTO audit_log (actor_type, actor, action, target, details)
    SELECT 'system', 'pins', '{entity}.pin_failed', u.{name}, jsonb_build_object('request', $3)
    FROM u WHERE $3::text IS NOT NULL
)
SELECT pin_failures, status FROM u
UNION ALL
SELECT pin_failures, status FROM {table} WHERE id = $1 AND EXISTS (SELECT 1 FROM seen)
"""
# How long a request's counted wrong PIN is remembered: longer than a channel takes to run a
# request again (an SMS is retried within minutes), short enough to read few audit rows.
FAILURE_MEMORY_S = 3600


async def register_failure(
    db: Db, table: str, entity_id: int, *, target: str = "", request_key: str | None = None
) -> E.CoreError:
    """Count one wrong PIN; the error to raise (WrongPin, or WalletLocked on the last).

    With `request_key` (the channel's idempotency key of the request) the count is recorded
    with it (an audit row, in the same statement): the same request run again because the
    answer was lost is not counted twice. `target` is the customer's MSISDN or the agent's
    code, as the audit rows name it."""
    name, entity = ("msisdn", "customer") if table == "customers" else ("code", "agent")
    row = await db.fetchrow(
        _FAIL_SQL.format(table=table, name=name, entity=entity),
        entity_id,
        MAX_PIN_FAILURES,
        request_key,
        float(FAILURE_MEMORY_S),
        target,
    )
    if row is None or row["status"] == "locked":
        return E.WalletLocked("Too many wrong PINs: the wallet is locked", attempts_left=0)
    return E.WrongPin(attempts_left=MAX_PIN_FAILURES - int(row["pin_failures"]))


async def verify_pin(
    db: Db, msisdn: str, pin: str, country_code: str = "254", *, request_key: str | None = None
) -> None:
    """Return when `pin` is right; raise WrongPin (details.attempts_left), WalletLocked,
    AccountClosed or CustomerNotFound otherwise. `request_key`: see `register_failure` (a
    request run again after a lost answer counts its wrong PIN once)."""
    await _verify(db, normalise_msisdn(msisdn, country_code), pin, request_key=request_key)


async def _verify(
    db: Db,
    number: str,
    pin: str,
    change_key: str | None = None,
    *,
    request_key: str | None = None,
) -> bool:
    """`verify_pin`; True, with nothing checked or counted, when the PIN change `change_key`
    already set this customer's PIN (the same request processed again)."""
    row = await db.fetchrow(
        "SELECT id, pin_hash, pin_failures, status, pin_changed_by FROM customers "
        "WHERE msisdn = $1",
        number,
    )
    if row is None:
        await pin_matches(pin, None)
        raise E.CustomerNotFound(f"No customer with number {number}", msisdn=number)
    if row["status"] == "closed":
        raise E.AccountClosed()
    if row["status"] == "locked":
        raise E.WalletLocked()
    if change_key is not None and row["pin_changed_by"] == change_key:
        return True
    if not await pin_matches(pin, row["pin_hash"]):
        raise await register_failure(
            db, "customers", row["id"], target=number, request_key=request_key
        )
    if row["pin_failures"]:
        await db.execute(
            "UPDATE customers SET pin_failures = 0 WHERE id = $1 AND status = 'active'", row["id"]
        )
    return False


def _change_key(key: str | None) -> str | None:
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_CHANGE_KEY_CHARS):
        raise E.ValidationFailed(
            f"An idempotency key is 1 to {MAX_CHANGE_KEY_CHARS} characters",
            field="idempotency_key",
        )
    return key


async def change_pin(  # noqa: PLR0917 (the planned API passes rounds positionally)
    db: Db,
    msisdn: str,
    old_pin: str,
    new_pin: str,
    rounds: int,
    country_code: str = "254",
    *,
    idempotency_key: str | None = None,
) -> None:
    """Verify the old PIN (a wrong one counts towards the lock), then store the new one.

    With `idempotency_key` (the channel's key for this request: "sms:{MO id}", a USSD step's
    key) the change remembers it: the same request processed again (a crash between the change
    and the reply) returns as the first did, without checking the old PIN against the new hash,
    which would count a wrong PIN. Only the key of the latest change is remembered, so any
    other request, an older one included, is checked and counted as usual. A wrong old PIN is
    counted once per key, however often the request runs (`register_failure`). A key given up
    (`core.customers.abandon_request`) is refused with ActionAbandoned, nothing counted."""
    number = normalise_msisdn(msisdn, country_code)
    key = _change_key(idempotency_key)
    check_pin_format(new_pin)
    if key is not None:
        # A request given up (a late USSD result abandoned, migration 0840) is refused first:
        # no PIN checked, no wrong PIN counted. The UPDATE's trigger checks again under the
        # key's lock (an abandonment between the two is seen there).
        await _raising(db.execute("SELECT action_claim_key($1, $2)", number, key))
    if await _verify(db, number, old_pin, key, request_key=key):
        return
    if new_pin == old_pin:
        raise E.WeakPin("The new PIN must differ from the old one", field="new_pin")
    hashed = await hash_pin(new_pin, rounds)
    # The audit row names the request's key: a change overwritten since by another is still
    # found under its key (core.customers.abandon_request).
    await _raising(
        db.execute(
            "WITH u AS (UPDATE customers SET pin_hash = $2, pin_changed_by = $3, "
            "updated_at = now() WHERE msisdn = $1 RETURNING msisdn) INSERT INTO audit_log "
            "(actor_type, actor, action, target, details) SELECT 'customer', msisdn, "
            "'customer.pin_changed', msisdn, CASE WHEN $3::text IS NULL THEN '{}'::jsonb "
            "ELSE jsonb_build_object('request', $3::text) END FROM u",
            number,
            hashed,
            key,
        )
    )


async def _raising(statement: Awaitable[object]) -> None:
    """`statement`, a ledger_fail RAISE (an abandoned key) as its typed error."""
    try:
        await statement
    except asyncpg.RaiseError as exc:
        raise core_error(exc) from None


async def unlock(db: Db, msisdn: str, actor: str, country_code: str = "254") -> None:
    """An admin lifts a PIN lock (idempotent on an active wallet); a closed one stays closed."""
    number = normalise_msisdn(msisdn, country_code)
    row = await db.fetchrow("SELECT id, status FROM customers WHERE msisdn = $1", number)
    if row is None:
        raise E.CustomerNotFound(f"No customer with number {number}", msisdn=number)
    if row["status"] == "closed":
        raise E.AccountClosed()
    await db.execute(
        "UPDATE customers SET status = 'active', pin_failures = 0, updated_at = now() "
        "WHERE id = $1",
        row["id"],
    )
    await record(db, actor_type="admin", actor=actor, action="customer.unlocked", target=number)
