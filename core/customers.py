"""Customers: registration (customer + a wallet at tier Basic in one statement), look-ups,
language and tier changes, and extra wallets in other currencies (one per currency).

The national id is stored encrypted (FieldCipher, MultiFernet: keys rotate) with a keyed
look-up hash, so a duplicate is refused and a customer can be found by it without the id ever
being stored in clear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core import errors as E
from core.agents import DEVICE_CHANNEL
from core.audit import actor_of, record
from core.crypto import FieldCipher
from core.limits import normalise_tier
from core.money import check_currency
from core.msisdn import normalise_msisdn
from core.pg import Db, call, connection, core_error, unique_violation
from core.pins import hash_pin

LANGUAGES = ("en", "sw", "fr")
NAME_MAX = 50
_NAME_RE = re.compile(r"^[^\W\d_]+(?:[ '.\-][^\W\d_]+)*\.?$")
_NATIONAL_ID_RE = re.compile(r"^[A-Z0-9]{4,20}$")


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    msisdn: str
    first_name: str
    last_name: str
    language: str
    tier: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Wallet:
    currency: str
    balance_minor: int


def check_name(raw: str, field: str) -> str:
    name = " ".join(raw.split()) if isinstance(raw, str) else ""
    if not 1 <= len(name) <= NAME_MAX or not _NAME_RE.match(name):
        raise E.ValidationFailed(f"{field.replace('_', ' ')}: letters only, 1-50", field=field)
    return name


def check_national_id(raw: str) -> str:
    text = re.sub(r"[\s\-]", "", raw).upper() if isinstance(raw, str) else ""
    if not _NATIONAL_ID_RE.match(text):
        raise E.ValidationFailed("A national id is 4 to 20 letters or digits", field="national_id")
    return text


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise E.ValidationFailed("language is en, sw or fr", field="language")
    return language


def _customer(row: Any) -> Customer:
    return Customer(
        id=row["id"],
        msisdn=row["msisdn"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        language=row["language"],
        tier=row["tier"],
        status=row["status"],
        created_at=row["created_at"],
    )


_REGISTER_SQL = """
WITH c AS (
    INSERT INTO customers (msisdn, first_name, last_name, national_id_enc, national_id_hash,
                           language, pin_hash, registered_by)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $12) RETURNING *
), w AS (
    INSERT INTO accounts (kind, currency, customer_id) SELECT 'wallet', $8, c.id FROM c
), a AS (
    INSERT INTO audit_log (actor_type, actor, action, target, details)
    SELECT $9, $10, 'customer.registered', c.msisdn, jsonb_build_object('channel', $11::text)
    FROM c
)
SELECT * FROM c
"""


async def register_customer(
    db: Db,
    cipher: FieldCipher,
    *,
    msisdn: str,
    first_name: str,
    last_name: str,
    national_id: str,
    pin: str,
    language: str = "en",
    channel: str,
    pin_rounds: int,
    currency: str = "KES",
    country_code: str = "254",
    actor: str | None = None,
    idempotency_key: str | None = None,
) -> Customer:
    """Create the customer and its wallet (tier Basic) in one statement. AlreadyExists when
    the number or the national id is taken; WeakPin for a guessable PIN.

    With `idempotency_key` (the channel's key for this request, a USSD step's) the customer
    remembers it (`registered_by`; `registered_under` finds it), and a request given up
    (`abandon_request`) is refused under its key with ActionAbandoned (migration 0840). The
    same request processed again is still AlreadyExists: the channel decides whether that
    is its answer (a USSD step asked again) or not (an SMS dialog's second final message)."""
    if channel == DEVICE_CHANNEL:  # an agent's device registers through the geofence gate
        raise E.ValidationFailed(
            "Agent device registrations go through core.agent_transactions", field="channel"
        )
    return await _register_customer(
        db,
        cipher,
        msisdn=msisdn,
        first_name=first_name,
        last_name=last_name,
        national_id=national_id,
        pin=pin,
        language=language,
        channel=channel,
        pin_rounds=pin_rounds,
        currency=currency,
        country_code=country_code,
        actor=actor,
        idempotency_key=idempotency_key,
    )


async def _register_customer(
    db: Db,
    cipher: FieldCipher,
    *,
    msisdn: str,
    first_name: str,
    last_name: str,
    national_id: str,
    pin: str,
    language: str = "en",
    channel: str,
    pin_rounds: int,
    currency: str = "KES",
    country_code: str = "254",
    actor: str | None = None,
    idempotency_key: str | None = None,
) -> Customer:
    """The registration itself; core.agent_transactions calls it for a device after the gate."""
    number = normalise_msisdn(msisdn, country_code)
    key = _request_key(idempotency_key)
    first = check_name(first_name, "first_name")
    last = check_name(last_name, "last_name")
    nid = check_national_id(national_id)
    check_language(language)
    check_currency(currency)
    pin_hash = await hash_pin(pin, pin_rounds)
    actor_type, who = actor_of(channel, actor)
    try:
        row = await db.fetchrow(
            _REGISTER_SQL,
            number,
            first,
            last,
            cipher.encrypt(nid),
            cipher.lookup_hash(nid),
            language,
            pin_hash,
            currency,
            actor_type,
            who,
            channel,
            key,
        )
    except asyncpg.RaiseError as exc:  # the request's key was abandoned (ActionAbandoned)
        raise core_error(exc) from None
    except asyncpg.UniqueViolationError as exc:
        if "national_id" in unique_violation(exc):
            raise E.AlreadyExists(
                "A customer with this national id exists", field="national_id"
            ) from None
        raise E.AlreadyExists(f"{number} is already registered", field="msisdn") from None
    return _customer(row)


MAX_REQUEST_KEY_CHARS = 200
# The requests a key may be abandoned for (migration 0840's action_abandon).
ABANDONABLE = ("register", "pin.change")


def _request_key(key: str | None) -> str | None:
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_REQUEST_KEY_CHARS):
        raise E.ValidationFailed(
            f"An idempotency key is 1 to {MAX_REQUEST_KEY_CHARS} characters",
            field="idempotency_key",
        )
    return key


async def abandon_request(db: Db, msisdn: str, idempotency_key: str, action: str) -> bool:
    """Settle or abandon a registration (`action` "register") or a PIN change ("pin.change")
    under its key, atomically (migration 0840): True when it was done under the key (the
    customer registered by it; the PIN set by it, even if changed again since), else False,
    the key then abandoned so that no later request under it registers or changes the PIN
    (ActionAbandoned). A request under the key in flight is waited for. For a request whose
    outcome was promised by SMS and will not be asked again: the caller tells the customer."""
    if action not in ABANDONABLE:
        raise E.ValidationFailed("register or pin.change", field="action")
    row = await call(
        db,
        "SELECT action_abandon($1, $2, $3) AS done",
        msisdn,
        _request_key(idempotency_key),
        action,
    )
    return bool(row["done"])


async def registered_under(
    db: Db, msisdn: str, idempotency_key: str, country_code: str = "254"
) -> Customer | None:
    """The customer the request `idempotency_key` registered, if it did."""
    number = normalise_msisdn(msisdn, country_code)
    row = await db.fetchrow(
        "SELECT * FROM customers WHERE msisdn = $1 AND registered_by = $2", number, idempotency_key
    )
    return None if row is None else _customer(row)


async def find_customer(db: Db, msisdn: str, country_code: str = "254") -> Customer | None:
    number = normalise_msisdn(msisdn, country_code)
    row = await db.fetchrow("SELECT * FROM customers WHERE msisdn = $1", number)
    return None if row is None else _customer(row)


async def get_customer(db: Db, msisdn: str, country_code: str = "254") -> Customer:
    customer = await find_customer(db, msisdn, country_code)
    if customer is None:
        number = normalise_msisdn(msisdn, country_code)
        raise E.CustomerNotFound(f"No customer with number {number}", msisdn=number)
    return customer


async def find_by_national_id(db: Db, cipher: FieldCipher, national_id: str) -> Customer | None:
    row = await db.fetchrow(
        "SELECT * FROM customers WHERE national_id_hash = $1",
        cipher.lookup_hash(check_national_id(national_id)),
    )
    return None if row is None else _customer(row)


async def national_id_of(db: Db, cipher: FieldCipher, msisdn: str) -> str:
    """Decrypt a customer's national id (for KYC review; never log it)."""
    customer = await get_customer(db, msisdn)
    token = await db.fetchval("SELECT national_id_enc FROM customers WHERE id = $1", customer.id)
    return cipher.decrypt(token)


async def wallets(db: Db, customer_id: int) -> list[Wallet]:
    rows = await db.fetch(
        "SELECT currency, balance FROM accounts WHERE customer_id = $1 AND kind = 'wallet' "
        "ORDER BY currency",
        customer_id,
    )
    return [Wallet(r["currency"], r["balance"]) for r in rows]


async def open_wallet(db: Db, msisdn: str, currency: str, country_code: str = "254") -> None:
    """A wallet in another currency (one per currency; AlreadyExists otherwise)."""
    customer = await get_customer(db, msisdn, country_code)
    try:
        await db.execute(
            "INSERT INTO accounts (kind, currency, customer_id) VALUES ('wallet', $1, $2)",
            check_currency(currency),
            customer.id,
        )
    except asyncpg.UniqueViolationError:
        raise E.AlreadyExists(f"{customer.msisdn} has a {currency} wallet") from None


async def set_language(db: Db, msisdn: str, language: str, country_code: str = "254") -> None:
    number = normalise_msisdn(msisdn, country_code)
    done = await db.fetchval(
        "UPDATE customers SET language = $2, updated_at = now() WHERE msisdn = $1 RETURNING id",
        number,
        check_language(language),
    )
    if done is None:
        raise E.CustomerNotFound(f"No customer with number {number}", msisdn=number)


async def set_tier(
    db: Db, msisdn: str, tier: str, *, actor: str, country_code: str = "254"
) -> Customer:
    """Move a customer to another KYC tier (an admin's decision, audited)."""
    number = normalise_msisdn(msisdn, country_code)
    new_tier = normalise_tier(tier)
    row = await db.fetchrow(
        "UPDATE customers SET tier = $2, updated_at = now() WHERE msisdn = $1 RETURNING *",
        number,
        new_tier,
    )
    if row is None:
        raise E.CustomerNotFound(f"No customer with number {number}", msisdn=number)
    await record(
        db,
        actor_type="admin",
        actor=actor,
        action="customer.tier_changed",
        target=number,
        details={"tier": new_tier},
    )
    return _customer(row)


async def close_customer(db: Db, msisdn: str, *, actor: str, country_code: str = "254") -> Customer:
    """Close a customer's account (an admin's decision, audited): every wallet must be empty
    (BalanceNotZero otherwise, with the balances) and no loan open (Conflict
    LOAN_OUTSTANDING). A closed wallet refuses money in and out (the ledger functions check
    the status). Closing a closed account changes nothing and returns it.

    The wallets are locked first, so a transfer that is posting to one finishes before the
    balances are read; a transfer past its look-up of the customer but not yet at its posting
    (microseconds inside one ledger call) can still land after the close: its money shows on the
    closed wallet and the ledger stays balanced."""
    number = normalise_msisdn(msisdn, country_code)
    async with connection(db) as conn, conn.transaction():
        row = await conn.fetchrow("SELECT * FROM customers WHERE msisdn = $1 FOR UPDATE", number)
        if row is None:
            raise E.CustomerNotFound(f"No customer with number {number}", msisdn=number)
        if row["status"] == "closed":
            return _customer(row)
        held = await conn.fetch(
            "SELECT currency, balance FROM accounts WHERE customer_id = $1 AND kind = 'wallet' "
            "ORDER BY id FOR UPDATE",
            row["id"],
        )
        money = {r["currency"]: r["balance"] for r in held if r["balance"] != 0}
        if money:
            raise E.BalanceNotZero(
                "Only an account with empty wallets can be closed; move the money out first",
                msisdn=number,
                balances_minor=money,
            )
        if await conn.fetchval(_OPEN_LOAN_SQL, number):
            raise E.Conflict(
                "The customer has a loan open; it must be repaid or written off first",
                code="LOAN_OUTSTANDING",
                msisdn=number,
            )
        closed = await conn.fetchrow(
            "UPDATE customers SET status = 'closed', updated_at = now() WHERE id = $1 RETURNING *",
            row["id"],
        )
        await record(
            conn,
            actor_type="admin",
            actor=actor,
            action="customer.closed",
            target=number,
            details={"previous_status": row["status"]},
        )
    return _customer(closed)


# Loans live in the loans area's tables (migration 0500); open = not repaid or written off.
_OPEN_LOAN_SQL = """
SELECT EXISTS (SELECT 1 FROM loans WHERE msisdn = $1
               AND status IN ('disbursed', 'active', 'overdue', 'defaulted'))
"""
