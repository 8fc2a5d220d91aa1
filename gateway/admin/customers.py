"""`/api/v1/customers`: register, read (with wallets), statement, unlock, KYC tier."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core import customers as C
from core import errors as E
from core import kyc, pins, transfers
from core.customers import Customer
from core.msisdn import normalise_msisdn
from gateway.api import ApiRoutes, json_response, whole_number
from gateway.keys import CIPHER, PG_POOL, PRINCIPAL_KEY, SETTINGS

routes = ApiRoutes(tag="customers")
STATEMENT_DEFAULT_LINES = 20


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    msisdn: str = Field(min_length=1, max_length=32)
    first_name: str = Field(min_length=1, max_length=50)
    last_name: str = Field(min_length=1, max_length=50)
    national_id: str = Field(min_length=1, max_length=32)
    pin: str = Field(min_length=4, max_length=4, description="4 digits; never stored in clear")
    language: Literal["en", "sw", "fr"] = "en"


class TierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tier: Literal["Basic", "Standard", "Premium", "Business"]


class WalletOut(BaseModel):
    currency: str
    balance_minor: int


class CustomerOut(BaseModel):
    msisdn: str
    first_name: str
    last_name: str
    tier: str
    status: str
    language: str
    wallets: list[WalletOut]


class StatementLineOut(BaseModel):
    entry_id: int
    reference: str
    type: str
    amount_minor: int
    fee_minor: int
    balance_after_minor: int
    counterparty: str
    created_at: str


class StatementOut(BaseModel):
    msisdn: str
    currency: str
    lines: list[StatementLineOut]
    next_before: int | None


async def customer_json(request: web.Request, customer: Customer) -> dict[str, object]:
    wallets = await C.wallets(request.app[PG_POOL], customer.id)
    return CustomerOut(
        msisdn=customer.msisdn,
        first_name=customer.first_name,
        last_name=customer.last_name,
        tier=customer.tier,
        status=customer.status,
        language=customer.language,
        wallets=[WalletOut(currency=w.currency, balance_minor=w.balance_minor) for w in wallets],
    ).model_dump()


def path_msisdn(request: web.Request) -> str:
    country = request.app[SETTINGS].default_country_code
    return normalise_msisdn(request.match_info["msisdn"], country)


@routes.post(
    "/api/v1/customers",
    body=CustomerIn,
    response=CustomerOut,
    status=201,
    permission="customers:write",
    summary="Register a customer with a wallet at tier Basic",
)
async def create_customer(request: web.Request, body: CustomerIn) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    customer = await C.register_customer(
        request.app[PG_POOL],
        request.app[CIPHER],
        msisdn=body.msisdn,
        first_name=body.first_name,
        last_name=body.last_name,
        national_id=body.national_id,
        pin=body.pin,
        language=body.language,
        channel="admin",
        pin_rounds=settings.pin_bcrypt_rounds,
        currency=settings.currency,
        country_code=settings.default_country_code,
        actor=request[PRINCIPAL_KEY].username,
    )
    return json_response(await customer_json(request, customer), status=201)


@routes.get(
    "/api/v1/customers/{msisdn}",
    response=CustomerOut,
    permission="customers:read",
    summary="A customer with its wallets ({msisdn} is E.164 with or without +)",
)
async def get_customer(request: web.Request) -> web.StreamResponse:
    customer = await C.get_customer(request.app[PG_POOL], path_msisdn(request))
    return json_response(await customer_json(request, customer))


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = whole_number(raw)
    if value is None:
        raise E.ValidationFailed(f"{name} is a positive whole number", field=name)
    return value


@routes.get(
    "/api/v1/customers/{msisdn}/statement",
    response=StatementOut,
    permission="customers:read",
    summary="Wallet statement, newest first; page with ?before=<next_before>",
    query=(
        ("limit", "lines per page, 1-100 (default 20)"),
        ("before", "an entry_id: lines older than it"),
        ("currency", "the wallet's currency (default the gateway's)"),
    ),
)
async def get_statement(request: web.Request) -> web.StreamResponse:
    msisdn = path_msisdn(request)
    currency = request.query.get("currency") or request.app[SETTINGS].currency
    limit = _int_query(request, "limit", STATEMENT_DEFAULT_LINES)
    assert limit is not None
    lines = await transfers.statement(
        request.app[PG_POOL],
        msisdn,
        limit=limit,
        before=_int_query(request, "before", None),
        currency=currency,
    )
    return json_response(
        {
            "msisdn": msisdn,
            "currency": currency,
            "lines": [line.as_json() for line in lines],
            "next_before": lines[-1].entry_id if len(lines) == limit else None,
        }
    )


@routes.post(
    "/api/v1/customers/{msisdn}/unlock",
    response=CustomerOut,
    permission="customers:write",
    summary="Lift the lock after three wrong PINs",
)
async def unlock_customer(request: web.Request) -> web.StreamResponse:
    pool = request.app[PG_POOL]
    msisdn = path_msisdn(request)
    await pins.unlock(pool, msisdn, actor=request[PRINCIPAL_KEY].username)
    return json_response(await customer_json(request, await C.get_customer(pool, msisdn)))


@routes.put(
    "/api/v1/customers/{msisdn}/tier",
    body=TierIn,
    response=CustomerOut,
    permission="customers:write",
    summary="Move a customer to another KYC tier; raising it needs the new tier's accepted "
    "documents (409 KYC_DOCUMENTS_MISSING with details.missing)",
)
async def put_tier(request: web.Request, body: TierIn) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    customer = await kyc.change_tier(
        request.app[PG_POOL],
        path_msisdn(request),
        body.tier,
        actor=request[PRINCIPAL_KEY].username,
        require_documents=settings.kyc_documents_required,
        country_code=settings.default_country_code,
    )
    return json_response(await customer_json(request, customer))


@routes.post(
    "/api/v1/customers/{msisdn}/close",
    response=CustomerOut,
    permission="customers:write",
    summary="Close a customer's account: only with every wallet empty and no loan open "
    "(409 BALANCE_NOT_ZERO / LOAN_OUTSTANDING); a closed wallet refuses money in and out",
)
async def close_customer(request: web.Request) -> web.StreamResponse:
    customer = await C.close_customer(
        request.app[PG_POOL],
        path_msisdn(request),
        actor=request[PRINCIPAL_KEY].username,
        country_code=request.app[SETTINGS].default_country_code,
    )
    return json_response(await customer_json(request, customer))
