"""Money movement: P2P, deposits, float top-ups, cash-in, cash-out, reversals, and the loan
movements (disbursement, repayment split over principal and income, funding the loan fund).

Every movement is ONE database round trip: a PL/pgSQL function (migrations 0100_core_banking,
0510_loan_money)
resolves the parties, claims the idempotency key, locks the accounts in id order, checks balance
and KYC limits, posts the double-entry legs and queues the receipts, or raises and writes
nothing. Every function here takes an `idempotency_key`: the same key with the same request
returns the first result (`replayed=True`); the same key with another request raises
IdempotencyConflict. Only posted transfers bind a key: a refused request (insufficient funds,
say) may be retried with the same key.

`db` is an asyncpg Pool or Connection. Channels verify the PIN first (core.pins). Given a
Connection inside a transaction, a movement is part of that transaction (the loans area relies
on it); a refusal then aborts the transaction, which the caller rolls back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core import errors as E
from core.agents import DEVICE_CHANNEL
from core.fees import Quote, quote
from core.money import check_amount, check_currency
from core.msisdn import normalise_msisdn
from core.pg import Db, call

__all__ = [
    "MAX_KEY_CHARS",
    "Quote",
    "StatementLine",
    "TransferResult",
    "abandon",
    "balance",
    "cash_in",
    "cash_out",
    "deposit",
    "disburse_loan",
    "float_topup",
    "fund_loans",
    "posted_under",
    "quote",
    "repay_loan",
    "reverse",
    "send_money",
    "statement",
]

MAX_KEY_CHARS = 128
MAX_CHANNEL_CHARS = 32
MAX_NOTE_CHARS = 200
MAX_EVIDENCE_CHARS = 2000
MAX_STATEMENT_LINES = 100
# Transfers the loan book owns: reversing one in the ledger alone would leave the loan wrong.
LOAN_BOOK_TYPES = ("loan_disbursement", "loan_repayment")


@dataclass(frozen=True, slots=True)
class TransferResult:
    """What a posted (or replayed) movement returns. `balance_after_minor` is the customer
    wallet's balance right after this transfer (None for a float top-up, whose float is split
    into shards)."""

    reference: str
    kind: str
    currency: str
    amount_minor: int
    fee_minor: int
    commission_minor: int
    debit_party: str
    credit_party: str
    balance_after_minor: int | None
    created_at: datetime
    replayed: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "type": self.kind,
            "currency": self.currency,
            "amount_minor": self.amount_minor,
            "fee_minor": self.fee_minor,
            "commission_minor": self.commission_minor,
            "debit_party": self.debit_party,
            "credit_party": self.credit_party,
            "balance_after_minor": self.balance_after_minor,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class StatementLine:
    entry_id: int  # pass the last line's entry_id as `before` for the next page
    reference: str
    kind: str
    amount_minor: int  # signed: negative for money out (fee included)
    fee_minor: int
    balance_after_minor: int
    counterparty: str
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "reference": self.reference,
            "type": self.kind,
            "amount_minor": self.amount_minor,
            "fee_minor": self.fee_minor,
            "balance_after_minor": self.balance_after_minor,
            "counterparty": self.counterparty,
            "created_at": self.created_at.isoformat(),
        }


def request_hash(*parts: object) -> str:
    """A digest of everything that defines a request, so a reused key can be compared."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def _key(idempotency_key: str) -> str:
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= MAX_KEY_CHARS:
        raise E.ValidationFailed(
            f"An idempotency key is 1 to {MAX_KEY_CHARS} characters", field="idempotency_key"
        )
    return idempotency_key


def _channel(channel: str) -> str:
    if not isinstance(channel, str) or not 1 <= len(channel) <= MAX_CHANNEL_CHARS:
        raise E.ValidationFailed("A channel name is 1 to 32 characters", field="channel")
    return channel


def refuse_device_channel(channel: str) -> None:
    """The device channel belongs to core.agent_transactions, which gates by location first."""
    if channel == DEVICE_CHANNEL:
        raise E.ValidationFailed(
            "Agent device transactions go through core.agent_transactions (geofence gate)",
            field="channel",
        )


def _agent_code(code: str) -> str:
    text = code.strip().upper() if isinstance(code, str) else ""
    if not 3 <= len(text) <= 16 or not text.isalnum() or not text.isascii():
        raise E.AgentNotFound(f"No agent {code!r}", agent_code=str(code)[:32])
    return text


def _evidence(evidence: dict[str, Any] | None) -> str:
    """An agent transaction's evidence (geofence decision, device ...) as JSON for the note."""
    if evidence is None:
        return ""
    text = json.dumps(evidence, default=str, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_EVIDENCE_CHARS:
        raise E.ValidationFailed("The evidence is too large", field="evidence")
    return text


def _result(row: Any) -> TransferResult:
    return TransferResult(
        reference=row["reference"],
        kind=row["type"],
        currency=row["currency"],
        amount_minor=row["amount"],
        fee_minor=row["fee"],
        commission_minor=row["commission"],
        debit_party=row["debit_party"],
        credit_party=row["credit_party"],
        balance_after_minor=row["balance_after"],
        created_at=row["created_at"],
        replayed=row["replayed"],
    )


async def send_money(
    db: Db,
    *,
    sender: str,
    recipient: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    currency: str = "KES",
    country_code: str = "254",
    initiator: str | None = None,
    sender_receipt: bool = True,
) -> TransferResult:
    """P2P: sender wallet -> recipient wallet; the fee (tariff `p2p`) goes to fee income. Both
    parties get a receipt through the outbox, the sender only with `sender_receipt` (a channel
    whose reply to the sender is the receipt, SMS banking, passes False: one SMS, not two)."""
    src = normalise_msisdn(sender, country_code, field="sender")
    dst = normalise_msisdn(recipient, country_code, field="recipient")
    amount = check_amount(amount_minor)
    check_currency(currency)
    if src == dst:
        raise E.SameAccount("You cannot send money to yourself", msisdn=src)
    key = _key(idempotency_key)
    digest = request_hash("p2p", src, dst, amount, currency)
    row = await call(
        db,
        "SELECT * FROM ledger_p2p($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        key,
        digest,
        src,
        dst,
        amount,
        currency,
        _channel(channel),
        initiator if initiator is not None else src,
        sender_receipt,
    )
    return _result(row)


async def deposit(
    db: Db,
    *,
    msisdn: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    reference: str = "",
    currency: str = "KES",
    country_code: str = "254",
    initiator: str = "",
) -> TransferResult:
    """Money in from the bank: settlement -> customer wallet (no fee). `reference` is the
    bank's own reference and is part of the request (another reference = another request)."""
    dst = normalise_msisdn(msisdn, country_code)
    amount = check_amount(amount_minor)
    check_currency(currency)
    if len(reference) > MAX_NOTE_CHARS:
        raise E.ValidationFailed("The reference is at most 200 characters", field="reference")
    key = _key(idempotency_key)
    digest = request_hash("deposit", dst, amount, currency, reference)
    row = await call(
        db,
        "SELECT * FROM ledger_deposit($1, $2, $3, $4, $5, $6, $7, $8)",
        key,
        digest,
        dst,
        amount,
        currency,
        _channel(channel),
        initiator,
        reference,
    )
    return _result(row)


async def float_topup(
    db: Db,
    *,
    agent_code: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    currency: str = "KES",
    initiator: str = "",
) -> TransferResult:
    """Agent float from the bank: settlement -> agent float."""
    code = _agent_code(agent_code)
    amount = check_amount(amount_minor)
    check_currency(currency)
    key = _key(idempotency_key)
    digest = request_hash("float_topup", code, amount, currency)
    row = await call(
        db,
        "SELECT * FROM ledger_float_topup($1, $2, $3, $4, $5, $6, $7)",
        key,
        digest,
        code,
        amount,
        currency,
        _channel(channel),
        initiator,
    )
    return _result(row)


async def cash_in(
    db: Db,
    *,
    agent_code: str,
    msisdn: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    evidence: dict[str, Any] | None = None,
    currency: str = "KES",
    country_code: str = "254",
) -> TransferResult:
    """The customer hands cash to the agent: agent float -> customer wallet; the agent earns
    the `cash_in` commission from fee income. `evidence` (e.g. the geofence decision) is kept
    as JSON in the transfer's note; it is not part of the request identity."""
    refuse_device_channel(channel)
    return await _cash_in(
        db,
        agent_code=agent_code,
        msisdn=msisdn,
        amount_minor=amount_minor,
        idempotency_key=idempotency_key,
        channel=channel,
        evidence=evidence,
        currency=currency,
        country_code=country_code,
    )


async def _cash_in(
    db: Db,
    *,
    agent_code: str,
    msisdn: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    evidence: dict[str, Any] | None = None,
    currency: str = "KES",
    country_code: str = "254",
) -> TransferResult:
    """The posting itself; core.agent_transactions calls it for a device after the gate."""
    code = _agent_code(agent_code)
    dst = normalise_msisdn(msisdn, country_code)
    amount = check_amount(amount_minor)
    check_currency(currency)
    key = _key(idempotency_key)
    digest = request_hash("cash_in", code, dst, amount, currency)
    row = await call(
        db,
        "SELECT * FROM ledger_cash_in($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        key,
        digest,
        code,
        dst,
        amount,
        currency,
        _channel(channel),
        code,
        _evidence(evidence),
    )
    return _result(row)


async def cash_out(
    db: Db,
    *,
    agent_code: str,
    msisdn: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    evidence: dict[str, Any] | None = None,
    currency: str = "KES",
    country_code: str = "254",
) -> TransferResult:
    """The agent hands cash to the customer: customer wallet -> agent float, plus the
    `cash_out` fee, of which the agent's commission goes to its commission account.
    `evidence` as for cash_in."""
    refuse_device_channel(channel)
    return await _cash_out(
        db,
        agent_code=agent_code,
        msisdn=msisdn,
        amount_minor=amount_minor,
        idempotency_key=idempotency_key,
        channel=channel,
        evidence=evidence,
        currency=currency,
        country_code=country_code,
    )


async def _cash_out(
    db: Db,
    *,
    agent_code: str,
    msisdn: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    evidence: dict[str, Any] | None = None,
    currency: str = "KES",
    country_code: str = "254",
) -> TransferResult:
    """The posting itself; core.agent_transactions calls it for a device after the gate."""
    code = _agent_code(agent_code)
    src = normalise_msisdn(msisdn, country_code)
    amount = check_amount(amount_minor)
    check_currency(currency)
    key = _key(idempotency_key)
    digest = request_hash("cash_out", code, src, amount, currency)
    row = await call(
        db,
        "SELECT * FROM ledger_cash_out($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        key,
        digest,
        src,
        code,
        amount,
        currency,
        _channel(channel),
        code,
        _evidence(evidence),
    )
    return _result(row)


async def posted_under(db: Db, idempotency_key: str) -> TransferResult | None:
    """The transfer already posted under this key (as a replay), or None."""
    row = await call(
        db,
        "SELECT r.* FROM transfers t, LATERAL ledger_result(t.id, true) r "
        "WHERE t.key_hash = hashtextextended($1, 0) AND t.idempotency_key = $1",
        _key(idempotency_key),
    )
    return None if row is None else _result(row)


async def abandon(db: Db, idempotency_key: str) -> TransferResult | None:
    """Settle or abandon the movement under this key, atomically (migration 0810): the
    transfer posted under it (as a replay), or None when none is, the key then abandoned so
    that no later ask under it moves money (it raises MoneyAbandoned). A movement under the
    key in flight is waited for. For a request whose outcome is lost and will not be asked
    again: the caller tells the customer that nothing moved."""
    row = await call(db, "SELECT * FROM ledger_abandon($1)", _key(idempotency_key))
    return None if row is None or row["reference"] is None else _result(row)


async def reverse(
    db: Db,
    *,
    reference: str,
    idempotency_key: str,
    channel: str,
    initiator: str = "",
    reason: str = "",
) -> TransferResult:
    """A new transfer undoing every leg of `reference` (fee and commission included). Refused
    when the money has been spent (InsufficientFunds) or was already reversed, and for a loan
    disbursement or repayment (NotReversible): the loan book would not know, so those are
    corrected through the loans area."""
    ref = reference.strip().upper() if isinstance(reference, str) else ""
    if not 1 <= len(ref) <= 32:
        raise E.TransferNotFound(f"No transfer {str(reference)[:32]!r}")
    if len(reason) > MAX_NOTE_CHARS:
        raise E.ValidationFailed("The reason is at most 200 characters", field="reason")
    key = _key(idempotency_key)
    original = await call(db, "SELECT type FROM transfers WHERE id = ledger_reference_id($1)", ref)
    if original is not None and original["type"] in LOAN_BOOK_TYPES:
        raise E.NotReversible(
            "A loan disbursement or repayment cannot be reversed here: the loan book would not "
            "know. Correct it through the loans area.",
            reference=ref,
            type=original["type"],
        )
    digest = request_hash("reversal", ref)
    row = await call(
        db,
        "SELECT * FROM ledger_reverse($1, $2, $3, $4, $5, $6)",
        key,
        digest,
        ref,
        _channel(channel),
        initiator,
        reason,
    )
    return _result(row)


async def _loan_movement(
    db: Db,
    function: str,
    kind: str,
    *,
    msisdn: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    loan_reference: str,
    currency: str,
    country_code: str,
    initiator: str,
    parts: tuple[int, ...] = (),
) -> TransferResult:
    number = normalise_msisdn(msisdn, country_code)
    amount = check_amount(amount_minor)
    check_currency(currency)
    if len(loan_reference) > MAX_NOTE_CHARS:
        raise E.ValidationFailed("The loan reference is at most 200 characters", field="loan")
    key = _key(idempotency_key)
    digest = request_hash(kind, number, amount, currency, loan_reference, *parts)
    extra = "".join(f", ${9 + i}" for i in range(len(parts)))
    row = await call(
        db,
        f"SELECT * FROM {function}($1, $2, $3, $4, $5, $6, $7, $8{extra})",  # noqa: S608 (constants)
        key,
        digest,
        number,
        amount,
        currency,
        _channel(channel),
        initiator,
        loan_reference,
        *parts,
    )
    return _result(row)


async def disburse_loan(
    db: Db,
    *,
    msisdn: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    loan_reference: str = "",
    currency: str = "KES",
    country_code: str = "254",
    initiator: str = "",
) -> TransferResult:
    """Loan fund -> customer wallet (the recipient's maximum balance applies; InsufficientFunds
    when the fund, the sum of its shards, cannot cover the loan). The loans area owns the loan
    itself; `loan_reference` (its id) is part of the request."""
    return await _loan_movement(
        db,
        "ledger_loan_disburse",
        "loan_disbursement",
        msisdn=msisdn,
        amount_minor=amount_minor,
        idempotency_key=idempotency_key,
        channel=channel,
        loan_reference=loan_reference,
        currency=currency,
        country_code=country_code,
        initiator=initiator,
    )


def _part(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise E.ValidationFailed(
            f"{field} is a whole number of minor units, 0 or more", field=field
        )
    return value


async def repay_loan(
    db: Db,
    *,
    msisdn: str,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    loan_reference: str = "",
    currency: str = "KES",
    country_code: str = "254",
    initiator: str = "",
    interest_minor: int = 0,
    fee_minor: int = 0,
    penalty_minor: int = 0,
) -> TransferResult:
    """Customer wallet -> the loan's books, ONE transfer: `amount_minor` leaves the wallet; of
    it `interest_minor`, `fee_minor` and `penalty_minor` go to the loan interest, fee and
    penalty income accounts and the rest (the principal) to the loan fund. InsufficientFunds
    when the wallet cannot pay; not counted towards the daily and monthly debit caps."""
    parts = (
        _part(interest_minor, "interest_minor"),
        _part(fee_minor, "fee_minor"),
        _part(penalty_minor, "penalty_minor"),
    )
    if sum(parts) > check_amount(amount_minor):
        raise E.ValidationFailed(
            "Interest, fees and penalties are parts of the amount", field="amount_minor"
        )
    return await _loan_movement(
        db,
        "ledger_loan_repay",
        "loan_repayment",
        msisdn=msisdn,
        amount_minor=amount_minor,
        idempotency_key=idempotency_key,
        channel=channel,
        loan_reference=loan_reference,
        currency=currency,
        country_code=country_code,
        initiator=initiator,
        parts=parts if any(parts) else (),
    )


async def fund_loans(
    db: Db,
    *,
    amount_minor: int,
    idempotency_key: str,
    channel: str,
    currency: str = "KES",
    initiator: str = "",
    note: str = "",
) -> TransferResult:
    """Money for lending: the bank's settlement account -> the loan fund (the fund lends only
    what it holds)."""
    amount = check_amount(amount_minor)
    check_currency(currency)
    if len(note) > MAX_NOTE_CHARS:
        raise E.ValidationFailed("The note is at most 200 characters", field="note")
    key = _key(idempotency_key)
    digest = request_hash("loan_fund_topup", amount, currency, note)
    row = await call(
        db,
        "SELECT * FROM ledger_loan_fund_topup($1, $2, $3, $4, $5, $6, $7)",
        key,
        digest,
        amount,
        currency,
        _channel(channel),
        initiator,
        note,
    )
    return _result(row)


async def balance(db: Db, msisdn: str, currency: str = "KES", country_code: str = "254") -> int:
    """The wallet balance in minor units (CustomerNotFound, CurrencyMismatch)."""
    number = normalise_msisdn(msisdn, country_code)
    row = await call(
        db,
        "SELECT c.id, w.balance FROM customers c LEFT JOIN accounts w ON w.customer_id = c.id "
        "AND w.kind = 'wallet' AND w.currency = $2 WHERE c.msisdn = $1",
        number,
        check_currency(currency),
    )
    if row is None:
        raise E.CustomerNotFound(f"No customer with number {number}", msisdn=number)
    if row["balance"] is None:
        raise E.CurrencyMismatch(f"{number} has no {currency} wallet", currency=currency)
    return int(row["balance"])


# A statement walks the wallet's chain of entries (accounts.last_entry_id, entries.prev_id)
# newest first, by primary key: no (account, id) index to slow every posting down.
_STATEMENT_SQL = """
WITH RECURSIVE start AS (
    SELECT CASE WHEN $2::bigint IS NULL THEN a.last_entry_id
                ELSE (SELECT e.prev_id FROM entries e WHERE e.id = $2 AND e.account_id = a.id)
           END AS id
    FROM accounts a WHERE a.id = $1
), chain AS (
    SELECT e.id, e.prev_id, e.amount, e.balance_after, e.transfer_id, 1 AS n
    FROM entries e JOIN start ON e.id = start.id
    UNION ALL
    SELECT e.id, e.prev_id, e.amount, e.balance_after, e.transfer_id, chain.n + 1
    FROM chain JOIN entries e ON e.id = chain.prev_id
    WHERE chain.n < $3
)
SELECT c.id, c.amount, c.balance_after, ledger_reference(t.id) AS reference, t.type, t.fee,
       t.created_at,
       CASE WHEN c.amount < 0 THEN t.credit_party ELSE t.debit_party END AS counterparty
FROM chain c JOIN transfers t ON t.id = c.transfer_id
ORDER BY c.id DESC
"""


async def statement(
    db: Db,
    msisdn: str,
    *,
    limit: int = 10,
    before: int | None = None,
    currency: str = "KES",
    country_code: str = "254",
) -> list[StatementLine]:
    """The latest `limit` lines of the wallet, newest first; `before` (an entry_id) pages."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise E.ValidationFailed("limit is 1 to 100", field="limit")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise E.ValidationFailed("before is an entry id", field="before")
    number = normalise_msisdn(msisdn, country_code)
    wallet = await call(
        db,
        "SELECT c.id, w.id AS wallet FROM customers c LEFT JOIN accounts w ON w.customer_id = "
        "c.id AND w.kind = 'wallet' AND w.currency = $2 WHERE c.msisdn = $1",
        number,
        check_currency(currency),
    )
    if wallet is None:
        raise E.CustomerNotFound(f"No customer with number {number}", msisdn=number)
    if wallet["wallet"] is None:
        raise E.CurrencyMismatch(f"{number} has no {currency} wallet", currency=currency)
    rows = await db.fetch(_STATEMENT_SQL, wallet["wallet"], before, limit)
    return [
        StatementLine(
            entry_id=r["id"],
            reference=r["reference"],
            kind=r["type"],
            amount_minor=r["amount"],
            fee_minor=r["fee"] if r["amount"] < 0 else 0,
            balance_after_minor=r["balance_after"],
            counterparty=r["counterparty"],
            created_at=r["created_at"],
        )
        for r in rows
    ]
