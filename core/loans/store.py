"""Loan persistence on asyncpg: products, applications, loans, installments, repayments,
penalties, arrears and the portfolio.

Every function takes a connection and runs in the caller's transaction (the caller owns it).
Status changes go through `move_application` / `move_loan`, which check the lifecycle table in
core first, update only if the row is still in the state the caller read (a concurrent change
makes the update miss and raises IllegalTransition), and write the status history. The
database trigger (migration 0500_loans) refuses anything else with SQLSTATE LN001, which is
mapped to the same IllegalTransition.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from core.errors import AlreadyExists, IllegalTransition, NotFound
from core.loans import lifecycle
from core.loans.decision import Decision
from core.loans.lifecycle import OPEN_LOAN_STATES, State
from core.loans.ports import Connection
from core.loans.products import Product, validate_product
from core.loans.scoring import Score
from core.pg import call

ILLEGAL_TRANSITION_SQLSTATE = "LN001"
MAX_PAGE = 200
VELOCITY_WINDOW = timedelta(hours=24)

PRODUCT_FIELDS = (
    "code",
    "name",
    "currency",
    "principal_min_minor",
    "principal_max_minor",
    "interest_rate_percent",
    "interest_method",
    "amortization",
    "repayments",
    "frequency",
    "repayment_every",
    "grace_principal_periods",
    "grace_interest_periods",
    "installment_multiple_minor",
    "facility_fee_percent",
    "facility_fee_flat_minor",
    "late_penalty_percent",
    "late_penalty_flat_minor",
    "penalty_grace_days",
    "default_after_days",
    "min_account_age_days",
    "auto_approve_max_minor",
    "tiers",
    "active",
)


@asynccontextmanager
async def guarded() -> AsyncIterator[None]:
    """Map the lifecycle trigger's SQLSTATE to IllegalTransition."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == ILLEGAL_TRANSITION_SQLSTATE:
            raise IllegalTransition(str(getattr(exc, "message", exc))) from None
        raise


# --- products ----------------------------------------------------------------------------------


def _product(row: asyncpg.Record) -> Product:
    data = {name: row[name] for name in PRODUCT_FIELDS}
    data["tiers"] = list(row["tiers"])
    return validate_product(data, product_id=row["id"])


async def insert_product(conn: Connection, product: Product, actor: str) -> Product:
    terms = product.terms()
    values = [terms[name] for name in PRODUCT_FIELDS]
    # numeric columns take Decimal-compatible text; asyncpg wants Decimal for numeric.
    for i, name in enumerate(PRODUCT_FIELDS):
        if name.endswith("_percent"):
            values[i] = getattr(product, name)
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 2))
    try:
        row = await conn.fetchrow(
            f"INSERT INTO loan_products ({', '.join(PRODUCT_FIELDS)}, created_by)"  # noqa: S608
            f" VALUES ({placeholders}) RETURNING *",
            *values,
            actor,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(
            f"A loan product with code {product.code} already exists", product_code=product.code
        ) from None
    return _product(row)


async def list_products(conn: Connection, *, active_only: bool = False) -> list[Product]:
    rows = await conn.fetch(
        "SELECT * FROM loan_products WHERE active OR NOT $1 ORDER BY code", active_only
    )
    return [_product(r) for r in rows]


async def get_product(
    conn: Connection, *, product_id: int | None = None, code: str | None = None
) -> Product:
    row = await conn.fetchrow(
        "SELECT * FROM loan_products WHERE id = $1 OR code = $2", product_id, code
    )
    if row is None:
        raise NotFound("No such loan product", code="PRODUCT_NOT_FOUND")
    return _product(row)


# --- applications ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Application:
    id: int
    msisdn: str
    product_id: int
    product_code: str
    principal_minor: int
    currency: str
    channel: str
    idempotency_key: str
    status: str
    decision: str
    decision_code: str
    decision_message: str
    score: int | None
    score_limit_minor: int | None
    decided_by: str | None
    decided_at: datetime | None
    note: str | None
    created_at: datetime
    loan_id: int | None
    loan_status: str | None

    @property
    def state(self) -> str:
        """The lifecycle state of the pair: the loan's once it exists."""
        return self.loan_status or self.status

    def as_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        out.pop("idempotency_key")
        out["state"] = self.state
        return out


_APPLICATION_SELECT = """
SELECT a.*, p.code AS product_code, l.id AS loan_id, l.status AS loan_status
FROM loan_applications a
JOIN loan_products p ON p.id = a.product_id
LEFT JOIN loans l ON l.application_id = a.id
"""


def _application(row: asyncpg.Record) -> Application:
    return Application(**{name: row[name] for name in Application.__slots__})


async def lock_applicant(conn: Connection, msisdn: str) -> None:
    """Serialise one MSISDN's applications (every instance): the in-flight and velocity rules
    then see each other's rows. Released at the end of the transaction."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('loan-apply:' || $1, 0))", msisdn
    )


async def claim_request(conn: Connection, msisdn: str, key: str) -> None:
    """Claim this customer's request key for an application or a repayment: the FIRST statement
    of its transaction, before any other lock (migration 0820 gives the lock order). Holds the
    key's shared lock until the commit, so an abandonment (`abandon_request`) waits for this
    request, or this request for it; raises MoneyAbandoned when the request was given up."""
    await call(conn, "SELECT loan_claim_key($1, $2)", msisdn, key)


async def abandon_request(conn: Connection, msisdn: str, key: str, action: str) -> str | None:
    """Settle or abandon a request whose outcome is lost, in the caller's transaction: "apply"
    or "repay" when the loan service has an application or a repayment under this customer's
    key (waited for when one is in flight), else None, the request then abandoned: no later
    ask under the key applies or repays (MoneyAbandoned). `action` is "apply" or "repay"."""
    row = await call(conn, "SELECT loan_abandon($1, $2, $3) AS found", msisdn, key, action)
    found = None if row is None else row["found"]
    return None if found is None else str(found)


async def applicant_counts(conn: Connection, msisdn: str, now: datetime) -> tuple[int, int, int]:
    """(applications in flight, applications in the last 24 h, open loans), one round trip."""
    row = await conn.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM loan_applications
            WHERE msisdn = $1 AND status = ANY($3::text[])) AS in_flight,
          (SELECT count(*) FROM loan_applications
            WHERE msisdn = $1 AND created_at > $2) AS recent,
          (SELECT count(*) FROM loans WHERE msisdn = $1 AND status = ANY($4::text[])) AS open
        """,
        msisdn,
        now - VELOCITY_WINDOW,
        [s.value for s in lifecycle.IN_FLIGHT_APPLICATION_STATES],
        [s.value for s in OPEN_LOAN_STATES],
    )
    return int(row["in_flight"]), int(row["recent"]), int(row["open"])


async def repayment_history(conn: Connection, msisdn: str) -> tuple[int, int, int]:
    """(repaid never late, repaid after being late, defaulted or written off)."""
    row = await conn.fetchrow(
        """
        SELECT
          count(*) FILTER (WHERE status = 'repaid' AND max_days_past_due = 0) AS on_time,
          count(*) FILTER (WHERE status = 'repaid' AND max_days_past_due > 0) AS late,
          count(*) FILTER (WHERE status IN ('defaulted', 'written_off')) AS defaulted
        FROM loans WHERE msisdn = $1
        """,
        msisdn,
    )
    return int(row["on_time"]), int(row["late"]), int(row["defaulted"])


async def find_application(conn: Connection, msisdn: str, key: str) -> Application | None:
    row = await conn.fetchrow(
        _APPLICATION_SELECT + " WHERE a.msisdn = $1 AND a.idempotency_key = $2", msisdn, key
    )
    return None if row is None else _application(row)


async def stalled_approvals(conn: Connection, before: datetime, limit: int) -> list[Application]:
    """Applications approved (so with no loan yet) and unchanged since before `before`: an
    approval whose disbursement never committed (the process or the database went away in
    between)."""
    rows = await conn.fetch(
        _APPLICATION_SELECT
        + " WHERE a.status = 'approved' AND a.updated_at < $1 ORDER BY a.id LIMIT $2",
        before,
        limit,
    )
    return [_application(row) for row in rows]


async def get_application(
    conn: Connection, application_id: int, *, for_update: bool = False
) -> Application:
    lock = " FOR UPDATE OF a" if for_update else ""
    row = await conn.fetchrow(_APPLICATION_SELECT + " WHERE a.id = $1" + lock, application_id)
    if row is None:
        raise NotFound("No such loan application", code="APPLICATION_NOT_FOUND")
    return _application(row)


async def _history(
    conn: Connection,
    *,
    application_id: int,
    loan_id: int | None,
    trigger: str,
    source: str | None,
    dest: str,
    actor: str,
    now: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO loan_status_history"
        " (application_id, loan_id, trigger, from_status, to_status, actor, at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        application_id,
        loan_id,
        trigger,
        source,
        dest,
        actor,
        now,
    )


async def insert_application(
    conn: Connection,
    *,
    msisdn: str,
    product: Product,
    principal_minor: int,
    channel: str,
    idempotency_key: str,
    decision: Decision,
    score: Score | None,
    now: datetime,
) -> Application:
    assert product.id is not None
    async with guarded():
        app_id = await conn.fetchval(
            """
            INSERT INTO loan_applications
              (msisdn, product_id, principal_minor, currency, channel, idempotency_key, status,
               decision, decision_code, decision_message, score, score_limit_minor,
               score_detail, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, 'applied', $7, $8, $9, $10, $11, $12, $13, $13)
            RETURNING id
            """,
            msisdn,
            product.id,
            principal_minor,
            product.currency,
            channel,
            idempotency_key,
            decision.outcome.value,
            decision.code,
            decision.message,
            None if score is None else score.value,
            None if score is None else score.limit_minor,
            json.dumps({} if score is None else {"source": score.source, **score.components}),
            now,
        )
    await _history(
        conn,
        application_id=app_id,
        loan_id=None,
        trigger="apply",
        source=None,
        dest=State.APPLIED,
        actor="system",
        now=now,
    )
    return await get_application(conn, app_id)


async def move_application(
    conn: Connection,
    app: Application,
    *,
    trigger: str,
    dest: str,
    actor: str,
    now: datetime,
    note: str | None = None,
) -> Application:
    """Move an application along one edge of the lifecycle; IllegalTransition otherwise."""
    if lifecycle.next_state(app.status, trigger) != dest:
        raise IllegalTransition(f"{trigger!r} does not lead to {dest}", state=app.status)
    decided = trigger in ("approve", "reject")
    async with guarded():
        moved = await conn.fetchval(
            """
            UPDATE loan_applications
            SET status = $3, updated_at = $4,
                decided_by = CASE WHEN $5 THEN $6 ELSE decided_by END,
                decided_at = CASE WHEN $5 THEN $4 ELSE decided_at END,
                note = coalesce($7, note)
            WHERE id = $1 AND status = $2
            RETURNING id
            """,
            app.id,
            app.status,
            dest,
            now,
            decided,
            actor,
            note,
        )
    if moved is None:
        current = await get_application(conn, app.id)
        raise IllegalTransition(
            f"The application is {current.status} now", state=current.status, trigger=trigger
        )
    await _history(
        conn,
        application_id=app.id,
        loan_id=None,
        trigger=trigger,
        source=app.status,
        dest=dest,
        actor=actor,
        now=now,
    )
    return await get_application(conn, app.id)


async def list_applications(
    conn: Connection,
    *,
    status: str | None = None,
    decision: str | None = None,
    msisdn: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Application]:
    """Newest first, keyset-paged by id (`before_id` is the last id of the previous page)."""
    rows = await conn.fetch(
        _APPLICATION_SELECT
        + """
        WHERE ($1::text IS NULL OR a.status = $1)
          AND ($2::text IS NULL OR a.decision = $2)
          AND ($3::text IS NULL OR a.msisdn = $3)
          AND ($4::bigint IS NULL OR a.id < $4)
        ORDER BY a.id DESC LIMIT $5
        """,
        status,
        decision,
        msisdn,
        before_id,
        min(max(limit, 1), MAX_PAGE),
    )
    return [_application(r) for r in rows]
