"""`/api/v1/limits` and `/api/v1/tariffs`: the KYC tier limits and the fee bands the ledger
functions read in each movement's own transaction, so a change applies to the next movement.
Reading needs `ledger:read`, changing `pricing:write` (finance); every change is audited with
the values before and after."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from core import fees, limits
from core.errors import NotFound
from core.money import MAX_AMOUNT_MINOR, check_currency
from gateway.api import ApiRoutes, json_response
from gateway.keys import PG_POOL, PRINCIPAL_KEY, SETTINGS

routes = ApiRoutes(tag="pricing")

Minor = StrictInt


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_balance_minor: Minor = Field(gt=0, le=MAX_AMOUNT_MINOR)
    per_transaction_minor: Minor = Field(gt=0, le=MAX_AMOUNT_MINOR)
    daily_debit_minor: Minor = Field(gt=0, le=MAX_AMOUNT_MINOR)
    monthly_debit_minor: Minor = Field(gt=0, le=MAX_AMOUNT_MINOR)


class LimitsOut(BaseModel):
    tier: str
    currency: str
    max_balance_minor: int
    per_transaction_minor: int
    daily_debit_minor: int
    monthly_debit_minor: int


class LimitsListOut(BaseModel):
    limits: list[LimitsOut]


class BandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_minor: Minor = Field(gt=0, le=MAX_AMOUNT_MINOR)
    max_minor: Minor = Field(gt=0, le=MAX_AMOUNT_MINOR)
    fee_minor: Minor = Field(ge=0, le=MAX_AMOUNT_MINOR)
    commission_minor: Minor = Field(default=0, ge=0, le=MAX_AMOUNT_MINOR)


class TariffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: str | None = Field(default=None, description="default: the gateway's currency")
    bands: list[BandIn] = Field(max_length=fees.MAX_BANDS)


class BandOut(BaseModel):
    min_minor: int
    max_minor: int
    fee_minor: int
    commission_minor: int


class TariffOut(BaseModel):
    kind: str
    currency: str
    bands: list[BandOut]


def _limits_json(value: limits.TierLimits) -> dict[str, object]:
    return LimitsOut(
        tier=value.tier,
        currency=value.currency,
        max_balance_minor=value.max_balance_minor,
        per_transaction_minor=value.per_transaction_minor,
        daily_debit_minor=value.daily_debit_minor,
        monthly_debit_minor=value.monthly_debit_minor,
    ).model_dump()


def _tariff_json(kind: str, currency: str, bands: list[fees.Band]) -> dict[str, object]:
    return {
        "kind": kind,
        "currency": currency,
        "bands": [
            {
                "min_minor": b.min_minor,
                "max_minor": b.max_minor,
                "fee_minor": b.fee_minor,
                "commission_minor": b.commission_minor,
            }
            for b in bands
        ],
    }


def _path_tier(request: web.Request) -> str:
    raw = request.match_info["tier"]
    for tier in limits.TIERS:
        if raw.lower() == tier.lower():
            return tier
    raise NotFound(
        f"No tier {raw[:32]!r}; tiers are {', '.join(limits.TIERS)}", code="TIER_NOT_FOUND"
    )


def _path_kind(request: web.Request) -> str:
    raw = request.match_info["kind"]
    if raw not in fees.TXN_TYPES:
        raise NotFound(
            f"No tariff {raw[:32]!r}; tariffs are {', '.join(fees.TXN_TYPES)}",
            code="TARIFF_NOT_FOUND",
        )
    return raw


@routes.get(
    "/api/v1/limits",
    response=LimitsListOut,
    permission="ledger:read",
    summary="Every KYC tier's limits in every currency",
)
async def list_limits(request: web.Request) -> web.StreamResponse:
    found = await limits.all_limits(request.app[PG_POOL])
    return json_response({"limits": [_limits_json(x) for x in found]})


@routes.put(
    "/api/v1/limits/{tier}/{currency}",
    body=LimitsIn,
    response=LimitsOut,
    permission="pricing:write",
    summary="Set one tier's limits in one currency (one transaction <= daily cap <= monthly "
    "cap; one transaction <= maximum balance)",
)
async def put_limits(request: web.Request, body: LimitsIn) -> web.StreamResponse:
    value = await limits.change_limits(
        request.app[PG_POOL],
        limits.TierLimits(
            _path_tier(request),
            check_currency(request.match_info["currency"]),
            body.max_balance_minor,
            body.per_transaction_minor,
            body.daily_debit_minor,
            body.monthly_debit_minor,
        ),
        actor=request[PRINCIPAL_KEY].username,
    )
    return json_response(_limits_json(value))


@routes.get(
    "/api/v1/tariffs/{kind}",
    response=TariffOut,
    permission="ledger:read",
    summary="The fee bands of one transaction type (p2p, deposit, float_topup, cash_in, cash_out)",
    query=(("currency", "the tariff's currency (default the gateway's)"),),
)
async def get_tariff(request: web.Request) -> web.StreamResponse:
    kind = _path_kind(request)
    currency = check_currency(request.query.get("currency") or request.app[SETTINGS].currency)
    bands = await fees.tariff(request.app[PG_POOL], kind, currency)
    return json_response(_tariff_json(kind, currency, bands))


@routes.put(
    "/api/v1/tariffs/{kind}",
    body=TariffIn,
    response=TariffOut,
    permission="pricing:write",
    summary="Replace the fee bands of one transaction type (sorted, non-overlapping; a "
    "cash-out commission comes out of its fee; an amount in no band is free)",
)
async def put_tariff(request: web.Request, body: TariffIn) -> web.StreamResponse:
    kind = _path_kind(request)
    currency = check_currency(body.currency or request.app[SETTINGS].currency)
    bands = await fees.change_tariff(
        request.app[PG_POOL],
        kind,
        currency,
        [fees.Band(b.min_minor, b.max_minor, b.fee_minor, b.commission_minor) for b in body.bands],
        actor=request[PRINCIPAL_KEY].username,
    )
    return json_response(_tariff_json(kind, currency, bands))
