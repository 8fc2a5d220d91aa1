"""`/api/v1/loans`: products, the application queue with approve and reject, the portfolio with
its arrears buckets, a loan's schedule, write-off, and funding the loan fund.

Permissions: `loans:products` creates products; `loans:read` reads everything; `loans:manage`
approves, rejects and writes off; funding the loan fund is money in from the bank's settlement
account, so it needs `deposits:create` like deposits and float top-ups. Pydantic checks each
field's type and range; the product rules that span fields (max >= min, grace within the term)
are core's, in `core.loans.products.validate_product`, and come back as the same 422 shape.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from core import transfers
from core.errors import NotFound, ValidationFailed
from core.loans import book, store
from core.loans.lifecycle import APPLICATION_STATES
from core.loans.products import MAX_PRINCIPAL_MINOR, Product
from core.money import MAX_AMOUNT_MINOR
from gateway.admin.money import TransferOut, transfer_response
from gateway.api import ApiRoutes, json_response, whole_number
from gateway.keys import LOANS, PG_POOL, PRINCIPAL_KEY, SETTINGS

routes = ApiRoutes(tag="loans")

MAX_ID = 2**63 - 1
PAGE_DEFAULT = 50
PAGE_MAX = store.MAX_PAGE
QUERY_MSISDN_RE = re.compile(r"^\+?[1-9][0-9]{6,14}$")
MinorAmount = Field(ge=0, le=MAX_PRINCIPAL_MINOR)


class ProductIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: StrictStr = Field(min_length=2, max_length=32)
    name: StrictStr = Field(min_length=1, max_length=64)
    currency: StrictStr = Field(min_length=3, max_length=3)
    principal_min_minor: StrictInt = Field(ge=1, le=MAX_PRINCIPAL_MINOR)
    principal_max_minor: StrictInt = Field(ge=1, le=MAX_PRINCIPAL_MINOR)
    interest_rate_percent: Decimal = Field(ge=0, le=100, max_digits=9, decimal_places=4)
    interest_method: Literal["flat", "declining_balance"]
    amortization: Literal["equal_installments", "equal_principal"]
    repayments: StrictInt = Field(ge=1, le=120)
    frequency: Literal["days", "weeks", "months"]
    min_account_age_days: StrictInt = Field(ge=0, le=3650)
    auto_approve_max_minor: StrictInt = MinorAmount
    tiers: list[StrictStr] = Field(min_length=1, max_length=16)
    repayment_every: StrictInt = Field(default=1, ge=1, le=365)
    grace_principal_periods: StrictInt = Field(default=0, ge=0, le=119)
    grace_interest_periods: StrictInt = Field(default=0, ge=0, le=119)
    installment_multiple_minor: StrictInt = Field(default=1, ge=1, le=100_000)
    facility_fee_percent: Decimal = Field(default=Decimal(0), ge=0, le=50, decimal_places=4)
    facility_fee_flat_minor: StrictInt = Field(default=0, ge=0, le=MAX_PRINCIPAL_MINOR)
    late_penalty_percent: Decimal = Field(default=Decimal(0), ge=0, le=50, decimal_places=4)
    late_penalty_flat_minor: StrictInt = Field(default=0, ge=0, le=MAX_PRINCIPAL_MINOR)
    penalty_grace_days: StrictInt = Field(default=0, ge=0, le=365)
    default_after_days: StrictInt = Field(default=90, ge=1, le=3650)


class ProductOut(BaseModel):
    id: int
    code: str
    name: str
    currency: str
    principal_min_minor: int
    principal_max_minor: int
    interest_rate_percent: str
    interest_method: str
    amortization: str
    repayments: int
    frequency: str
    min_account_age_days: int
    auto_approve_max_minor: int
    tiers: list[str]
    repayment_every: int
    grace_principal_periods: int
    grace_interest_periods: int
    installment_multiple_minor: int
    facility_fee_percent: str
    facility_fee_flat_minor: int
    late_penalty_percent: str
    late_penalty_flat_minor: int
    penalty_grace_days: int
    default_after_days: int
    active: bool


class ProductList(BaseModel):
    items: list[ProductOut]


OfficerReason = Literal[
    "INCOMPLETE_DOCUMENTS",
    "INCOME_NOT_VERIFIED",
    "TOO_MUCH_DEBT",
    "REPAYMENT_HISTORY",
    "AMOUNT_TOO_HIGH",
    "POLICY",
]


class RejectIn(BaseModel):
    """`reason_code` is told to the customer in their language (then `reason` is the officer's
    note, not sent); `reason` alone is sent as written. At least one."""

    model_config = ConfigDict(extra="forbid")
    reason: StrictStr | None = Field(default=None, min_length=1, max_length=500)
    reason_code: OfficerReason | None = None

    @model_validator(mode="after")
    def _some_reason(self) -> RejectIn:
        if self.reason is None and self.reason_code is None:
            raise ValueError("a rejection needs a reason or a reason_code")
        return self


class ApplicationPage(BaseModel):
    items: list[dict[str, Any]]
    next_before: int | None


class ReviewOut(BaseModel):
    application: dict[str, Any]
    loan: dict[str, Any] | None


class PortfolioOut(BaseModel):
    currencies: list[dict[str, Any]]


class FundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount_minor: StrictInt = Field(gt=0, le=MAX_AMOUNT_MINOR)
    idempotency_key: StrictStr = Field(min_length=1, max_length=128)
    currency: StrictStr | None = Field(default=None, min_length=3, max_length=3)
    note: StrictStr = Field(default="", max_length=200)


def product_json(product: Product) -> dict[str, Any]:
    return {"id": product.id, **product.terms()}


def _path_id(request: web.Request, name: str, what: str) -> int:
    value = whole_number(request.match_info[name])
    if value is None or not 0 < value <= MAX_ID:
        raise NotFound(f"No such {what}", code=f"{what.upper().replace(' ', '_')}_NOT_FOUND")
    return value


def _actor(request: web.Request) -> str:
    return request[PRINCIPAL_KEY].username


async def _audit(request: web.Request, action: str, target: str, details: dict[str, Any]) -> None:
    await request.app[PG_POOL].execute(
        "INSERT INTO audit_log (actor_type, actor, action, target, details)"
        " VALUES ('admin', $1, $2, $3, $4)",
        _actor(request),
        action,
        target,
        json.dumps(details, default=str),
    )


@routes.post(
    "/api/v1/loans/products",
    body=ProductIn,
    permission="loans:products",
    status=201,
    response=ProductOut,
    summary="Define a loan product",
)
async def create_product(request: web.Request, body: ProductIn) -> web.StreamResponse:
    data = body.model_dump()
    product = await request.app[LOANS].create_product(
        request.app[PG_POOL], data, actor=_actor(request)
    )
    await _audit(request, "loan_product.create", product.code, {"id": product.id})
    return json_response(product_json(product), status=201)


@routes.get(
    "/api/v1/loans/products",
    permission="loans:read",
    response=ProductList,
    summary="Every loan product",
)
async def list_products(request: web.Request) -> web.StreamResponse:
    products = await request.app[LOANS].products(request.app[PG_POOL])
    return json_response({"items": [product_json(p) for p in products]})


_APPLICATION_QUERY = {
    "status": "applied, approved, rejected or disbursed",
    "decision": "approve, review or refuse (review: the officer's queue)",
    "msisdn": "E.164, with or without +",
    "before": "the next_before of the previous page",
    "limit": f"1-{PAGE_MAX}, default {PAGE_DEFAULT}",
}


def _page_query(query: Any) -> dict[str, Any]:
    problems: list[dict[str, str]] = []
    unknown = sorted(set(query) - set(_APPLICATION_QUERY))
    problems += [{"field": k, "problem": "unknown query parameter"} for k in unknown]
    out: dict[str, Any] = {}
    status = query.get("status")
    if status is not None and status not in {s.value for s in APPLICATION_STATES}:
        problems.append({"field": "status", "problem": _APPLICATION_QUERY["status"]})
    out["status"] = status
    decision = query.get("decision")
    if decision is not None and decision not in {"approve", "review", "refuse"}:
        problems.append({"field": "decision", "problem": _APPLICATION_QUERY["decision"]})
    out["decision"] = decision
    msisdn = query.get("msisdn")
    if msisdn is not None:
        msisdn = msisdn.strip()
        if not QUERY_MSISDN_RE.match(msisdn):
            problems.append({"field": "msisdn", "problem": _APPLICATION_QUERY["msisdn"]})
        out["msisdn"] = "+" + msisdn.lstrip("+")
    for name, low, high, default in (
        ("before", 1, MAX_ID, None),
        ("limit", 1, PAGE_MAX, PAGE_DEFAULT),
    ):
        raw = query.get(name)
        value = None if raw is None else whole_number(raw)
        if raw is None:
            out[name] = default
        elif value is not None and low <= value <= high:
            out[name] = value
        else:
            problems.append({"field": name, "problem": _APPLICATION_QUERY[name]})
    if problems:
        raise ValidationFailed("The query is not valid", errors=problems)
    return out


@routes.get(
    "/api/v1/loans/applications",
    permission="loans:read",
    response=ApplicationPage,
    query=tuple(_APPLICATION_QUERY.items()),
    summary="Loan applications, newest first, paged",
)
async def list_applications(request: web.Request) -> web.StreamResponse:
    q = _page_query(request.query)
    async with request.app[PG_POOL].acquire() as conn:
        apps = await store.list_applications(
            conn,
            status=q["status"],
            decision=q["decision"],
            msisdn=q.get("msisdn"),
            before_id=q["before"],
            limit=q["limit"],
        )
    next_before = apps[-1].id if len(apps) == q["limit"] else None
    return json_response({"items": [a.as_json() for a in apps], "next_before": next_before})


@routes.get(
    "/api/v1/loans/applications/{id}",
    permission="loans:read",
    summary="One application, with its loan and schedule once disbursed",
)
async def get_application(request: web.Request) -> web.StreamResponse:
    app_id = _path_id(request, "id", "application")
    async with request.app[PG_POOL].acquire() as conn:
        app = await store.get_application(conn, app_id)
        loan = await book.get_loan(conn, app.loan_id) if app.loan_id else None
        rows = await book.installments(conn, loan.id) if loan else []
    return json_response(
        {
            "application": app.as_json(),
            "loan": loan.as_json() if loan else None,
            "installments": [r.as_json() for r in rows],
        }
    )


@routes.post(
    "/api/v1/loans/applications/{id}/approve",
    permission="loans:manage",
    response=ReviewOut,
    summary="Approve an application waiting for review (it is then disbursed); the same officer "
    "approving again gets that approval (its loan; a stalled disbursement finished now)",
)
async def approve(request: web.Request) -> web.StreamResponse:
    app_id = _path_id(request, "id", "application")
    result = await request.app[LOANS].approve(request.app[PG_POOL], app_id, actor=_actor(request))
    if not result.replayed:  # the same officer's approval again is not a second decision
        await _audit(
            request,
            "loan_application.approve",
            str(app_id),
            {"loan_id": result.loan and result.loan.id},
        )
    return json_response(
        {
            "application": result.application.as_json(),
            "loan": result.loan.as_json() if result.loan else None,
        }
    )


@routes.post(
    "/api/v1/loans/applications/{id}/reject",
    body=RejectIn,
    permission="loans:manage",
    response=ReviewOut,
    summary="Reject an application: reason_code (told to the customer in their language; "
    "reason is then the officer's note) or reason (free text, sent as written)",
)
async def reject(request: web.Request, body: RejectIn) -> web.StreamResponse:
    app_id = _path_id(request, "id", "application")
    result = await request.app[LOANS].reject(
        request.app[PG_POOL],
        app_id,
        actor=_actor(request),
        reason=body.reason,
        reason_code=body.reason_code,
    )
    await _audit(
        request,
        "loan_application.reject",
        str(app_id),
        {"reason": body.reason, "reason_code": body.reason_code},
    )
    return json_response({"application": result.application.as_json(), "loan": None})


@routes.post(
    "/api/v1/loans/{id}/write-off",
    permission="loans:manage",
    summary="Write off a defaulted loan",
)
async def write_off(request: web.Request) -> web.StreamResponse:
    loan_id = _path_id(request, "id", "loan")
    loan = await request.app[LOANS].write_off(request.app[PG_POOL], loan_id, actor=_actor(request))
    await _audit(request, "loan.write_off", str(loan_id), {})
    return json_response({"loan": loan.as_json()})


@routes.get(
    "/api/v1/loans/portfolio",
    permission="loans:read",
    response=PortfolioOut,
    summary="The loan book per currency: loans by status, outstanding, arrears buckets",
)
async def portfolio(request: web.Request) -> web.StreamResponse:
    async with request.app[PG_POOL].acquire() as conn:
        currencies = await book.portfolio(conn)
    return json_response({"currencies": currencies})


@routes.post(
    "/api/v1/loans/fund",
    body=FundIn,
    response=TransferOut,
    status=201,
    permission="deposits:create",
    summary="Money for lending: settlement -> the loan fund (idempotent); the fund lends only "
    "what it holds",
)
async def fund(request: web.Request, body: FundIn) -> web.StreamResponse:
    result = await transfers.fund_loans(
        request.app[PG_POOL],
        amount_minor=body.amount_minor,
        idempotency_key=body.idempotency_key,
        channel="admin",
        currency=body.currency or request.app[SETTINGS].currency,
        initiator=_actor(request),
        note=body.note,
    )
    return transfer_response(result)
