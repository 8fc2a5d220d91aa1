"""What the loan service needs from outside the loan area, as interfaces.

- `LoanLedger`: money. `core.loans.core_ledger.CoreLoanLedger` implements it on the banking
  core's double-entry ledger (one ledger function call per movement).
- `CustomerDirectory`: who the applicant is (KYC tier, when the wallet was opened, its status);
  `core.loans.core_ledger.CoreCustomerDirectory` reads the core's customers.
- `Notifier`: notification intents written in the caller's transaction;
  `core.loans.core_ledger.OutboxNotifier` queues them in the core's outbox.

Every call takes the caller's asyncpg connection and runs inside the caller's transaction, so
the loan-side rows and the money commit or roll back together (one database, one transaction).
Every money call takes an idempotency key; the same key with the same request must return the
first receipt, and with a different request raise `IdempotencyConflict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

Connection = Any  # asyncpg.Connection (or a pool connection proxy); untyped upstream


@dataclass(frozen=True, slots=True)
class LedgerReceipt:
    reference: str  # the ledger's transfer reference, stored with the loan-side row
    balance_after_minor: int | None = None  # the customer's wallet after the transfer


@dataclass(frozen=True, slots=True)
class WalletActivity:
    inflow_minor: int
    outflow_minor: int
    transactions: int


class LoanLedger(Protocol):
    """The transfers a loan makes. Accounts named here are the core's system accounts:
    `loan_fund` (lends and is repaid principal), `loan_interest_income`, `loan_fee_income`,
    `loan_penalty_income` (one per currency)."""

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
        """loan_fund -> the customer's wallet, `amount_minor`. Raises InsufficientFunds (the
        fund is short), NotFound (no wallet) or LimitExceeded (the wallet's balance cap)."""
        ...

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
        """One linked posting from the customer's wallet: principal to loan_fund, interest,
        fees and penalties to their income accounts (zero legs are skipped). Raises
        InsufficientFunds when the wallet cannot cover the sum."""
        ...

    async def available_minor(self, conn: Connection, msisdn: str, currency: str) -> int:
        """The wallet's spendable balance (what a sweep may take)."""
        ...

    async def wallet_activity(
        self, conn: Connection, msisdn: str, currency: str, since: datetime
    ) -> WalletActivity:
        """Money in and out of the wallet since `since` (scoring input)."""
        ...


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    msisdn: str
    tier: str
    registered_at: datetime
    active: bool = True
    status: str = "active"  # the core's customer status: active, locked or closed


class CustomerDirectory(Protocol):
    async def customer(self, conn: Connection, msisdn: str) -> CustomerFacts | None: ...


class Notifier(Protocol):
    """A loan notice to a customer, written in the caller's transaction and worded in the
    customer's language from the catalogue (core.loans.messages): `template` names the text
    (`kind` when None), `params` its figures (`*_minor` amounts with `currency`, dates).
    `transfer_reference` names the ledger transfer the notice is about: the notice then is the
    one message the customer gets for it (the core's receipt for that transfer is not sent
    on its own)."""

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
    ) -> None: ...
