"""The loan ports (core.loans.ports) on the banking core: money through the core's ledger
functions, customers from its customers table, notices through its outbox.

Every call takes the caller's asyncpg connection and runs on it, so inside the caller's
transaction: the core's money functions (`core.transfers.disburse_loan`, `repay_loan`) are one
statement each on that connection, and the outbox row is one INSERT on it. The loan rows, the
money and the notices therefore commit or roll back together. A refusal from the ledger (a
typed CoreError raised by the PL/pgSQL function) aborts the caller's transaction; the loan
service lets it roll back whole, so nothing is ever half written.

Idempotency keys are the service's (`loan-disburse:<application>`,
`loan-repay:<loan>:<key>`); the core keeps them unique across every transfer, replays the
first result for the same request and refuses another request under the same key.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from core import transfers
from core.loans import messages
from core.loans.ports import (
    Connection,
    CustomerFacts,
    LedgerReceipt,
    WalletActivity,
)
from core.outbox import enqueue
from core.pg import call

LOAN_CHANNEL = "loans"  # the transfers' channel: the loan service, whatever the customer used
ACTIVITY_MAX_ENTRIES = 1_000  # a bound on the scoring walk over one wallet's entries
# Money the wallet holds because of a loan is neither income nor spending.
LOAN_TRANSFER_TYPES = ("loan_disbursement", "loan_repayment")


def loan_reference(loan_id: int) -> str:
    return f"loan:{loan_id}"


class CoreLoanLedger:
    """`LoanLedger` on core.transfers: the loan fund lends and is repaid principal; interest,
    fees and penalties go to their income accounts in the same transfer."""

    async def disburse(
        self,
        conn: Connection,
        *,
        loan_id: int,
        msisdn: str,
        amount_minor: int,
        currency: str,
        idempotency_key: str,
    ) -> LedgerReceipt:
        result = await transfers.disburse_loan(
            conn,
            msisdn=msisdn,
            amount_minor=amount_minor,
            idempotency_key=idempotency_key,
            channel=LOAN_CHANNEL,
            loan_reference=loan_reference(loan_id),
            currency=currency,
            initiator="loans",
        )
        return LedgerReceipt(result.reference, result.balance_after_minor)

    async def collect(
        self,
        conn: Connection,
        *,
        loan_id: int,
        msisdn: str,
        currency: str,
        principal_minor: int,
        interest_minor: int,
        fee_minor: int,
        penalty_minor: int,
        idempotency_key: str,
    ) -> LedgerReceipt:
        result = await transfers.repay_loan(
            conn,
            msisdn=msisdn,
            amount_minor=principal_minor + interest_minor + fee_minor + penalty_minor,
            interest_minor=interest_minor,
            fee_minor=fee_minor,
            penalty_minor=penalty_minor,
            idempotency_key=idempotency_key,
            channel=LOAN_CHANNEL,
            loan_reference=loan_reference(loan_id),
            currency=currency,
            initiator="loans",
        )
        return LedgerReceipt(result.reference, result.balance_after_minor)

    async def available_minor(self, conn: Connection, msisdn: str, currency: str) -> int:
        """The wallet's balance when the ledger would let it pay: a locked or closed wallet
        (or none in this currency) has nothing a sweep may take."""
        row = await call(
            conn,
            "SELECT w.balance FROM customers c JOIN accounts w ON w.customer_id = c.id"
            " AND w.kind = 'wallet' AND w.currency = $2 WHERE c.msisdn = $1"
            " AND c.status = 'active'",
            msisdn,
            currency,
        )
        return 0 if row is None else int(row["balance"])

    async def wallet_activity(
        self, conn: Connection, msisdn: str, currency: str, since: datetime
    ) -> WalletActivity:
        """Money in and out of the wallet since `since`, loan movements left out, walking the
        wallet's entry chain newest first (entries have no per-account index on purpose)."""
        row = await call(
            conn,
            _ACTIVITY_SQL,
            msisdn,
            currency,
            since,
            ACTIVITY_MAX_ENTRIES,
            list(LOAN_TRANSFER_TYPES),
        )
        if row is None:
            return WalletActivity(0, 0, 0)
        return WalletActivity(int(row["inflow"]), int(row["outflow"]), int(row["n"]))


_ACTIVITY_SQL = """
WITH RECURSIVE wallet AS (
    SELECT w.id, w.last_entry_id FROM customers c
    JOIN accounts w ON w.customer_id = c.id AND w.kind = 'wallet' AND w.currency = $2
    WHERE c.msisdn = $1
), chain AS (
    SELECT e.id, e.prev_id, e.amount, t.type, 1 AS n
    FROM wallet JOIN entries e ON e.id = wallet.last_entry_id
    JOIN transfers t ON t.id = e.transfer_id
    WHERE t.created_at >= $3
    UNION ALL
    SELECT e.id, e.prev_id, e.amount, t.type, chain.n + 1
    FROM chain JOIN entries e ON e.id = chain.prev_id
    JOIN transfers t ON t.id = e.transfer_id
    WHERE t.created_at >= $3 AND chain.n < $4
)
SELECT coalesce(sum(amount) FILTER (WHERE amount > 0), 0)::bigint AS inflow,
       coalesce(-sum(amount) FILTER (WHERE amount < 0), 0)::bigint AS outflow,
       count(*) AS n
FROM chain WHERE type <> ALL ($5::text[])
"""


class CoreCustomerDirectory:
    """`CustomerDirectory` on the core's customers: tier (lower case, as loan products name
    tiers), when the customer registered, and whether the wallet may borrow."""

    async def customer(self, conn: Connection, msisdn: str) -> CustomerFacts | None:
        row = await conn.fetchrow(
            "SELECT msisdn, tier, status, created_at FROM customers WHERE msisdn = $1", msisdn
        )
        if row is None:
            return None
        return CustomerFacts(
            msisdn=row["msisdn"],
            tier=str(row["tier"]).lower(),
            registered_at=row["created_at"],
            active=row["status"] == "active",
            status=row["status"],
        )


class OutboxNotifier:
    """`Notifier` on the core outbox (delivered by the dispatcher through the channel's
    sender), with a row in `loan_notices` naming the loan and the outbox message: the loan's
    notice history for officers and tests.

    The text is rendered here, in the customer's language (their `customers.language`), from
    core.loans.messages. A notice about a ledger transfer (disbursement, repayment) takes over
    the core's receipt for that transfer, written a moment earlier in the same transaction by
    the ledger function: the receipt row gets the loan's text (which carries the receipt's
    reference and new balance too) and the loan's kind, so the customer gets ONE message per
    movement, in the language the core chose for the receipt. Found through the partial index
    `outbox_loan_receipts` (migration 0641). If there is no such receipt (another channel, or
    a core that writes none), the notice is queued as a message of its own."""

    async def enqueue(
        self,
        conn: Connection,
        *,
        channel: str,
        recipient: str,
        kind: str,
        params: Mapping[str, Any],
        template: str | None = None,
        loan_id: int | None = None,
        transfer_reference: str | None = None,
    ) -> None:
        name = template or kind
        if transfer_reference is not None:
            # One round trip (a disbursement holds its fund's lock until the commit): the text
            # in each language, the receipt's language picks one.
            texts = [messages.notice(name, lang, params) for lang in messages.LANGUAGES]
            folded = await conn.fetchval(
                _FOLD_SQL, transfer_reference, recipient, channel, kind, loan_id, texts
            )
            if folded is not None:
                return
        language = messages.language_of(await conn.fetchval(_LANGUAGE_SQL, recipient))
        body = messages.notice(name, language, params)
        outbox_id = await enqueue(
            conn, channel=channel, recipient=recipient, body=body, kind=kind, language=language
        )
        await conn.execute(
            "INSERT INTO loan_notices (loan_id, channel, recipient, kind, body, outbox_id)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            loan_id,
            channel,
            recipient,
            kind,
            body,
            outbox_id,
        )


# The core's receipt for a loan transfer (ledger_notify in ledger_loan_disburse / _repay), not
# yet sent: it is in the caller's uncommitted transaction. It takes the loan's text in its own
# language ($6 holds one text per messages.LANGUAGES, in that order; English for any other),
# and the notice history points at it. The template list matches the partial index's
# predicate, so the index serves the look-up.
_FOLD_SQL = f"""
WITH receipt AS (
    UPDATE outbox SET kind = $4,
        body = ($6::text[])[coalesce(array_position(
            ARRAY[{", ".join(f"'{lang}'" for lang in messages.LANGUAGES)}]::text[], language), 1)]
    WHERE transfer_id = ledger_reference_id($1) AND recipient = $2 AND channel = $3
      AND template IN ('loan_disbursed', 'loan_repaid') AND status = 'pending' AND body IS NULL
    RETURNING id, body
)
INSERT INTO loan_notices (loan_id, channel, recipient, kind, body, outbox_id)
SELECT $5, $3, $2, $4, body, id FROM receipt
RETURNING outbox_id
"""  # noqa: S608 (the language codes are constants)
_LANGUAGE_SQL = "SELECT language FROM customers WHERE msisdn = $1"
