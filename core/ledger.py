"""Ledger housekeeping: system accounts per currency and the invariant check.

`check_ledger` runs every check in one REPEATABLE READ snapshot, so a live system under load
gives a consistent answer:
- each transfer's entries sum to zero (and every transfer has entries);
- each account's balance equals the sum of its entries;
- no customer wallet, agent float or commission account is negative;
- per currency, debits equal credits;
- every entry points at a transfer and an account (no foreign keys on the hot tables);
- each account's chain of entries (for statements) is intact;
- a sharded account's parent holds nothing (its balance is the sum of its shards);
- no loan fund has lent more than it holds (its shards may dip below zero, the sum may not);
- nothing moved under an abandoned idempotency key (core.transfers.abandon).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.money import check_currency
from core.pg import Db, connection

HOT_SHARDS = 256  # settlement, fee income, loan fund and loan income rows per currency
MAX_BREACHES_SHOWN = 20


async def ensure_system_accounts(db: Db, currency: str, shards: int = HOT_SHARDS) -> None:
    """Settlement, fee income, the loan fund and the loan interest, fee and penalty income
    accounts for `currency` (idempotent, safe concurrently)."""
    await db.execute(
        "SELECT ledger_ensure_system_accounts($1, $2)", check_currency(currency), shards
    )


async def system_balance(db: Db, kind: str, currency: str) -> int:
    """A system account's balance: the sum of its shards."""
    value = await db.fetchval(
        "SELECT coalesce(sum(balance), 0) FROM accounts WHERE kind = $1 AND currency = $2 "
        "AND customer_id IS NULL AND agent_id IS NULL",
        kind,
        check_currency(currency),
    )
    return int(value)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    breaches: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "breaches": self.breaches}


@dataclass(frozen=True, slots=True)
class LedgerReport:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.as_json() for c in self.checks]}

    def lines(self) -> list[str]:
        out = []
        for check in self.checks:
            out.append(f"{'ok    ' if check.ok else 'BREACH'} {check.name}")
            out.extend(f"       {b}" for b in check.breaches)
        return out


CHECKS: tuple[tuple[str, str], ...] = (
    (
        "transfers_sum_to_zero",
        "SELECT t.id AS transfer_id, ledger_reference(t.id) AS reference, "
        "coalesce(sum(e.amount), 0)::bigint AS sum_minor, "
        "count(e.id) AS entries FROM transfers t LEFT JOIN entries e ON e.transfer_id = t.id "
        "GROUP BY t.id HAVING coalesce(sum(e.amount), 0) <> 0 OR count(e.id) < 2",
    ),
    (
        "balances_equal_entries",
        "SELECT a.id AS account_id, a.kind, a.balance AS balance_minor, "
        "coalesce(e.total, 0)::bigint AS entries_minor FROM accounts a LEFT JOIN "
        "(SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) e "
        "ON e.account_id = a.id WHERE a.balance <> coalesce(e.total, 0)",
    ),
    (
        "no_negative_wallets",
        "SELECT id AS account_id, kind, balance AS balance_minor FROM accounts "
        "WHERE balance < 0 AND (NOT allow_negative "
        "OR kind IN ('wallet', 'agent_float', 'agent_commission'))",
    ),
    (
        "debits_equal_credits_per_currency",
        "SELECT a.currency, sum(e.amount)::bigint AS net_minor, "
        "(sum(-e.amount) FILTER (WHERE e.amount < 0))::bigint AS debits_minor, "
        "(sum(e.amount) FILTER (WHERE e.amount > 0))::bigint AS credits_minor "
        "FROM entries e JOIN accounts a ON a.id = e.account_id GROUP BY a.currency "
        "HAVING sum(e.amount) <> 0",
    ),
    (
        "entries_in_transfer_currency",
        "SELECT e.id AS entry_id, ledger_reference(t.id) AS reference, "
        "a.currency AS account_currency, "
        "t.currency AS transfer_currency FROM entries e JOIN transfers t ON t.id = e.transfer_id "
        "JOIN accounts a ON a.id = e.account_id WHERE a.currency <> t.currency",
    ),
    (
        "entries_point_at_transfers_and_accounts",
        "SELECT e.id AS entry_id, e.transfer_id, e.account_id FROM entries e "
        "LEFT JOIN transfers t ON t.id = e.transfer_id LEFT JOIN accounts a ON a.id = e.account_id "
        "WHERE t.id IS NULL OR a.id IS NULL",
    ),
    (
        "entry_chains_intact",
        "SELECT e.id AS entry_id, e.account_id FROM entries e LEFT JOIN entries p "
        "ON p.id = e.prev_id WHERE e.prev_id IS NOT NULL "
        "AND (p.id IS NULL OR p.account_id <> e.account_id OR p.id >= e.id) "
        "UNION ALL SELECT a.last_entry_id, a.id FROM accounts a LEFT JOIN "
        "(SELECT account_id, max(id) AS newest, count(*) FILTER (WHERE prev_id IS NULL) AS firsts "
        "FROM entries GROUP BY account_id) x ON x.account_id = a.id "
        "WHERE a.last_entry_id IS DISTINCT FROM x.newest OR x.firsts > 1",
    ),
    (
        "sharded_parents_hold_nothing",
        "SELECT id AS account_id, kind, balance AS balance_minor FROM accounts "
        "WHERE shards > 1 AND balance <> 0",
    ),
    (
        "loan_funds_not_overdrawn",
        "SELECT currency, sum(balance)::bigint AS balance_minor FROM accounts "
        "WHERE kind = 'loan_fund' GROUP BY currency HAVING sum(balance) < 0",
    ),
    (
        "nothing_moved_under_abandoned_keys",
        "SELECT ledger_reference(t.id) AS reference, a.idempotency_key FROM money_abandoned a "
        "JOIN transfers t ON t.key_hash = hashtextextended(a.idempotency_key, 0) "
        "AND t.idempotency_key = a.idempotency_key",
    ),
)


async def check_ledger(
    db: Db,
    *,
    statement_timeout_s: float | None = None,
    progress: Callable[[int, int, Check, float], None] | None = None,
) -> LedgerReport:
    """Every invariant in one snapshot. `statement_timeout_s` bounds each check's statement for
    this transaction only (a pool's own timeout, meant for requests, is too short for a full
    audit of a big ledger; 0: no limit; None keeps the connection's); past it, asyncpg's
    QueryCanceledError. `progress(done, total, check, seconds)` hears of each check as it
    ends (a big ledger's audit takes minutes)."""
    checks = []
    async with (
        connection(db) as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        if statement_timeout_s is not None:  # 0: no limit
            ms = max(0, round(statement_timeout_s * 1000))
            await conn.execute(f"SET LOCAL statement_timeout = {ms}")
        for name, sql in CHECKS:
            started = time.monotonic()
            rows = await conn.fetch(f"{sql} LIMIT {MAX_BREACHES_SHOWN}")
            checks.append(Check(name, not rows, [dict(r) for r in rows]))
            if progress is not None:
                progress(len(checks), len(CHECKS), checks[-1], time.monotonic() - started)
    return LedgerReport(checks)
