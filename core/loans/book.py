"""The loan book on asyncpg: loans, their installments, repayments, penalties, arrears and the
portfolio. Like `store`, every function runs in the caller's transaction; `move_loan` is the
only way a loan's status changes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from core.errors import Conflict, IllegalTransition, NotFound
from core.loans import lifecycle
from core.loans.allocation import Allocation, InstallmentDue
from core.loans.arrears import BUCKET_NAMES
from core.loans.lifecycle import FINAL_STATES, OPEN_LOAN_STATES
from core.loans.ports import Connection
from core.loans.products import Product
from core.loans.schedule import Schedule
from core.loans.store import Application, _history, guarded


@dataclass(frozen=True, slots=True)
class Loan:
    id: int
    application_id: int
    msisdn: str
    product_id: int
    currency: str
    terms: dict[str, Any]
    principal_minor: int
    interest_minor: int
    fee_minor: int
    status: str
    disbursed_on: date
    maturity_date: date
    days_past_due: int
    max_days_past_due: int
    arrears_bucket: str
    disbursement_key: str
    disbursement_ref: str | None
    closed_at: datetime | None

    def product(self) -> Product:
        """The product's terms as they were when the loan was made."""
        return Product.from_terms(self.terms, product_id=self.product_id)

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        out.pop("terms")
        out.pop("disbursement_key")
        return out


@dataclass(frozen=True, slots=True)
class InstallmentRow:
    number: int
    due_date: date
    principal_minor: int
    interest_minor: int
    fee_minor: int
    penalty_minor: int
    principal_paid_minor: int
    interest_paid_minor: int
    fee_paid_minor: int
    penalty_paid_minor: int
    paid_at: datetime | None

    def due(self) -> InstallmentDue:
        """What is still owed on this installment."""
        return InstallmentDue(
            self.number,
            self.due_date,
            self.penalty_minor - self.penalty_paid_minor,
            self.fee_minor - self.fee_paid_minor,
            self.interest_minor - self.interest_paid_minor,
            self.principal_minor - self.principal_paid_minor,
        )

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        out["outstanding_minor"] = self.due().total_minor
        return out


@dataclass(frozen=True, slots=True)
class Repayment:
    id: int
    loan_id: int
    amount_minor: int
    penalty_minor: int
    fee_minor: int
    interest_minor: int
    principal_minor: int
    channel: str
    idempotency_key: str
    ledger_ref: str | None
    created_at: datetime


@asynccontextmanager
async def _one_open_loan(msisdn: str) -> AsyncIterator[None]:
    """The unique index behind the LOAN_OUTSTANDING rule, as the typed error."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if getattr(exc, "constraint_name", None) != "loans_one_open_per_msisdn":
            raise
        raise Conflict("A loan is already outstanding", code="LOAN_OUTSTANDING") from None


def _loan(row: asyncpg.Record) -> Loan:
    data = {name: row[name] for name in Loan.__slots__}
    terms = data["terms"]
    data["terms"] = json.loads(terms) if isinstance(terms, str) else terms
    return Loan(**data)


async def insert_loan(
    conn: Connection,
    app: Application,
    product: Product,
    schedule: Schedule,
    *,
    disbursement_key: str,
    disbursement_ref: str | None,
    now: datetime,
) -> Loan:
    """The loan row (status `disbursed`) and its installments. The application must already be
    `disbursed` (the trigger checks); that move wrote the history row."""
    async with guarded(), _one_open_loan(app.msisdn):
        loan_id = await conn.fetchval(
            """
            INSERT INTO loans
              (application_id, msisdn, product_id, currency, terms, principal_minor,
               interest_minor, fee_minor, status, disbursed_on, maturity_date,
               disbursement_key, disbursement_ref, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'disbursed', $9, $10, $11, $12, $13, $13)
            RETURNING id
            """,
            app.id,
            app.msisdn,
            app.product_id,
            product.currency,
            json.dumps(product.terms()),
            schedule.principal_minor,
            schedule.interest_minor,
            schedule.fee_minor,
            now.date(),
            schedule.maturity_date,
            disbursement_key,
            disbursement_ref,
            now,
        )
    rows = schedule.installments
    await conn.execute(
        """
        INSERT INTO loan_installments
          (loan_id, number, due_date, principal_minor, interest_minor, fee_minor)
        SELECT $1, * FROM unnest($2::smallint[], $3::date[], $4::bigint[], $5::bigint[],
                                 $6::bigint[])
        """,
        loan_id,
        [r.number for r in rows],
        [r.due_date for r in rows],
        [r.principal_minor for r in rows],
        [r.interest_minor for r in rows],
        [r.fee_minor for r in rows],
    )
    return await get_loan(conn, loan_id)


_LOAN = "SELECT * FROM loans WHERE id = $1"
_LOAN_FOR_UPDATE = _LOAN + " FOR UPDATE"


async def get_loan(conn: Connection, loan_id: int, *, for_update: bool = False) -> Loan:
    sql = _LOAN_FOR_UPDATE if for_update else _LOAN
    row = await conn.fetchrow(sql, loan_id)
    if row is None:
        raise NotFound("No such loan", code="LOAN_NOT_FOUND")
    return _loan(row)


async def open_loan_for(conn: Connection, msisdn: str, *, for_update: bool = False) -> Loan | None:
    sql = "SELECT * FROM loans WHERE msisdn = $1 AND status = ANY($2::text[])"
    row = await conn.fetchrow(
        sql + (" FOR UPDATE" if for_update else ""),
        msisdn,
        [s.value for s in OPEN_LOAN_STATES],
    )
    return None if row is None else _loan(row)


async def latest_loan_for(conn: Connection, msisdn: str) -> Loan | None:
    row = await conn.fetchrow(
        "SELECT * FROM loans WHERE msisdn = $1 ORDER BY id DESC LIMIT 1", msisdn
    )
    return None if row is None else _loan(row)


async def move_loan(
    conn: Connection, loan: Loan, *, trigger: str, dest: str, actor: str, now: datetime
) -> Loan:
    """Move a loan along one edge of the lifecycle; IllegalTransition otherwise."""
    if lifecycle.next_state(loan.status, trigger) != dest:
        raise IllegalTransition(f"{trigger!r} does not lead to {dest}", state=loan.status)
    closing = dest in FINAL_STATES
    async with guarded():
        moved = await conn.fetchval(
            """
            UPDATE loans SET status = $3, updated_at = $4,
                   closed_at = CASE WHEN $5 THEN $4 ELSE closed_at END
            WHERE id = $1 AND status = $2 RETURNING id
            """,
            loan.id,
            loan.status,
            dest,
            now,
            closing,
        )
    if moved is None:
        current = await get_loan(conn, loan.id)
        raise IllegalTransition(
            f"The loan is {current.status} now", state=current.status, trigger=trigger
        )
    await _history(
        conn,
        application_id=loan.application_id,
        loan_id=loan.id,
        trigger=trigger,
        source=loan.status,
        dest=dest,
        actor=actor,
        now=now,
    )
    return await get_loan(conn, loan.id)


async def installments(conn: Connection, loan_id: int) -> list[InstallmentRow]:
    rows = await conn.fetch(
        "SELECT * FROM loan_installments WHERE loan_id = $1 ORDER BY number", loan_id
    )
    return [InstallmentRow(**{n: r[n] for n in InstallmentRow.__slots__}) for r in rows]


async def record_repayment(
    conn: Connection,
    loan: Loan,
    allocation: Allocation,
    *,
    channel: str,
    idempotency_key: str,
    ledger_ref: str | None,
    now: datetime,
) -> Repayment:
    """The repayment row and the paid columns of each installment it touched, two statements."""
    portions = allocation.portions
    row = await conn.fetchrow(
        """
        INSERT INTO loan_repayments
          (loan_id, amount_minor, penalty_minor, fee_minor, interest_minor, principal_minor,
           portions, channel, idempotency_key, ledger_ref, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *
        """,
        loan.id,
        allocation.amount_minor,
        allocation.penalty_minor,
        allocation.fee_minor,
        allocation.interest_minor,
        allocation.principal_minor,
        json.dumps([{k: getattr(p, k) for k in p.__slots__} for p in portions]),
        channel,
        idempotency_key,
        ledger_ref,
        now,
    )
    await conn.execute(
        """
        UPDATE loan_installments i SET
          penalty_paid_minor = i.penalty_paid_minor + u.pen,
          fee_paid_minor = i.fee_paid_minor + u.fee,
          interest_paid_minor = i.interest_paid_minor + u.int,
          principal_paid_minor = i.principal_paid_minor + u.prin,
          paid_at = CASE WHEN i.penalty_minor = i.penalty_paid_minor + u.pen
                          AND i.fee_minor = i.fee_paid_minor + u.fee
                          AND i.interest_minor = i.interest_paid_minor + u.int
                          AND i.principal_minor = i.principal_paid_minor + u.prin
                         THEN $7::timestamptz ELSE NULL END
        FROM unnest($2::smallint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
             AS u(number, pen, fee, int, prin)
        WHERE i.loan_id = $1 AND i.number = u.number
        """,
        loan.id,
        [p.number for p in portions],
        [p.penalty_minor for p in portions],
        [p.fee_minor for p in portions],
        [p.interest_minor for p in portions],
        [p.principal_minor for p in portions],
        now,
    )
    return Repayment(**{n: row[n] for n in Repayment.__slots__})


async def add_penalty(
    conn: Connection, loan_id: int, number: int, *, amount_minor: int, day: date, now: datetime
) -> bool:
    """A late penalty on one installment, at most once (the unique key); False if it exists."""
    inserted = await conn.fetchval(
        """
        INSERT INTO loan_penalties
          (loan_id, installment_number, reason, amount_minor, charged_on, created_at)
        VALUES ($1, $2, 'late', $3, $4, $5)
        ON CONFLICT (loan_id, installment_number, reason) DO NOTHING RETURNING id
        """,
        loan_id,
        number,
        amount_minor,
        day,
        now,
    )
    if inserted is None:
        return False
    await conn.execute(
        "UPDATE loan_installments SET penalty_minor = penalty_minor + $3, paid_at = NULL"
        " WHERE loan_id = $1 AND number = $2",
        loan_id,
        number,
        amount_minor,
    )
    return True


async def set_arrears(
    conn: Connection, loan_id: int, days_past_due: int, bucket: str, now: datetime
) -> None:
    assert bucket in BUCKET_NAMES
    await conn.execute(
        """
        UPDATE loans SET days_past_due = $2, arrears_bucket = $3, updated_at = $4,
               max_days_past_due = greatest(max_days_past_due, $2)
        WHERE id = $1
        """,
        loan_id,
        days_past_due,
        bucket,
        now,
    )


async def portfolio(conn: Connection) -> list[dict[str, Any]]:
    """Per currency: loans by status, money outstanding, and the arrears buckets of open loans."""
    rows = await conn.fetch(
        """
        WITH owed AS (
          SELECT l.id, l.currency, l.status, l.arrears_bucket,
                 sum(i.principal_minor - i.principal_paid_minor) AS principal,
                 sum(i.principal_minor + i.interest_minor + i.fee_minor + i.penalty_minor
                     - i.principal_paid_minor - i.interest_paid_minor - i.fee_paid_minor
                     - i.penalty_paid_minor) AS total
          FROM loans l JOIN loan_installments i ON i.loan_id = l.id
          GROUP BY l.id
        )
        SELECT currency, status, arrears_bucket, count(*) AS loans,
               coalesce(sum(principal), 0) AS principal, coalesce(sum(total), 0) AS total
        FROM owed GROUP BY currency, status, arrears_bucket ORDER BY currency
        """
    )
    return _portfolio_shape(rows)


def _portfolio_shape(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    open_states = {s.value for s in OPEN_LOAN_STATES}
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        cur = out.setdefault(
            r["currency"],
            {
                "currency": r["currency"],
                "loans_by_status": {s.value: 0 for s in lifecycle.LOAN_STATES},
                "open_loans": 0,
                "outstanding_principal_minor": 0,
                "outstanding_total_minor": 0,
                "arrears": {
                    name: {"loans": 0, "outstanding_principal_minor": 0} for name in BUCKET_NAMES
                },
            },
        )
        cur["loans_by_status"][r["status"]] += r["loans"]
        if r["status"] not in open_states:
            continue
        cur["open_loans"] += r["loans"]
        cur["outstanding_principal_minor"] += int(r["principal"])
        cur["outstanding_total_minor"] += int(r["total"])
        bucket = cur["arrears"][r["arrears_bucket"]]
        bucket["loans"] += r["loans"]
        bucket["outstanding_principal_minor"] += int(r["principal"])
    for cur in out.values():
        principal = cur["outstanding_principal_minor"]
        late = principal - cur["arrears"]["current"]["outstanding_principal_minor"]
        # Portfolio at risk: the share of outstanding principal in any arrears bucket, in
        # basis points (integers, like money).
        cur["par_bps"] = 0 if principal == 0 else late * 10_000 // principal
    return list(out.values())


async def set_disbursement_ref(conn: Connection, loan_id: int, reference: str) -> None:
    await conn.execute("UPDATE loans SET disbursement_ref = $2 WHERE id = $1", loan_id, reference)


async def find_repayment_for(conn: Connection, msisdn: str, key: str) -> Repayment | None:
    """A repayment made earlier with this key on any of the customer's loans (a retry after the
    loan was cleared must still find it)."""
    row = await conn.fetchrow(
        """
        SELECT r.* FROM loan_repayments r JOIN loans l ON l.id = r.loan_id
        WHERE l.msisdn = $1 AND r.idempotency_key = $2 ORDER BY r.id DESC LIMIT 1
        """,
        msisdn,
        key,
    )
    return None if row is None else Repayment(**{n: row[n] for n in Repayment.__slots__})
