"""Money in and out from the admin side: deposits from the bank, reversals, the ledger check.
Each movement carries the caller's idempotency key: the same key and body answer the first
result again (with `Idempotent-Replayed: true`); another body is 409 IDEMPOTENCY_CONFLICT."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from core import transfers
from core.errors import Unavailable
from core.ledger import check_ledger
from core.money import MAX_AMOUNT_MINOR
from core.transfers import TransferResult
from gateway.api import ApiRoutes, json_response
from gateway.keys import PG_POOL, PRINCIPAL_KEY, SETTINGS

# Each check's statement, in the admin request: longer than the pool's 10 s (a full audit of a
# big ledger reads every entry), short of a request left hanging for ever.
LEDGER_CHECK_TIMEOUT_S = 120.0

routes = ApiRoutes(tag="money")


class DepositIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    msisdn: str = Field(min_length=1, max_length=32)
    amount_minor: StrictInt = Field(gt=0, le=MAX_AMOUNT_MINOR)
    idempotency_key: str = Field(min_length=1, max_length=128)
    reference: str = Field(default="", max_length=200, description="the bank's reference")


class ReversalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    idempotency_key: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=200)


class TransferOut(BaseModel):
    reference: str
    type: str
    currency: str
    amount_minor: int
    fee_minor: int
    commission_minor: int
    debit_party: str
    credit_party: str
    balance_after_minor: int | None
    created_at: str


class CheckOut(BaseModel):
    name: str
    ok: bool
    breaches: list[dict[str, object]]


class LedgerCheckOut(BaseModel):
    ok: bool
    checks: list[CheckOut]


def transfer_response(result: TransferResult) -> web.Response:
    response = json_response(result.as_json(), status=201)
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@routes.post(
    "/api/v1/deposits",
    body=DepositIn,
    response=TransferOut,
    status=201,
    permission="deposits:create",
    summary="Credit a wallet from the bank's settlement account (idempotent)",
)
async def create_deposit(request: web.Request, body: DepositIn) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    result = await transfers.deposit(
        request.app[PG_POOL],
        msisdn=body.msisdn,
        amount_minor=body.amount_minor,
        idempotency_key=body.idempotency_key,
        reference=body.reference,
        channel="admin",
        currency=settings.currency,
        country_code=settings.default_country_code,
        initiator=request[PRINCIPAL_KEY].username,
    )
    return transfer_response(result)


@routes.post(
    "/api/v1/transfers/{reference}/reversal",
    body=ReversalIn,
    response=TransferOut,
    status=201,
    permission="ledger:reverse",
    summary="Reverse a transfer: a new transfer undoing every leg (idempotent)",
)
async def reverse_transfer(request: web.Request, body: ReversalIn) -> web.StreamResponse:
    result = await transfers.reverse(
        request.app[PG_POOL],
        reference=request.match_info["reference"],
        idempotency_key=body.idempotency_key,
        channel="admin",
        initiator=request[PRINCIPAL_KEY].username,
        reason=body.reason,
    )
    return transfer_response(result)


@routes.get(
    "/api/v1/ledger/check",
    response=LedgerCheckOut,
    permission="ledger:read",
    summary="Verify the ledger invariants on the live database (each check up to 120 s; "
    "503 LEDGER_CHECK_TIMEOUT past it: run `gateway ledger check`)",
)
async def ledger_check(request: web.Request) -> web.StreamResponse:
    try:
        report = await check_ledger(
            request.app[PG_POOL], statement_timeout_s=LEDGER_CHECK_TIMEOUT_S
        )
    except asyncpg.QueryCanceledError:
        raise Unavailable(
            f"The ledger check did not finish within {LEDGER_CHECK_TIMEOUT_S:g} s; "
            "run `gateway ledger check` for a full audit",
            code="LEDGER_CHECK_TIMEOUT",
        ) from None
    return json_response(report.as_json())
