"""`/api/v1/agents`: register an agent, top up its float from the bank, read it, unlock it.
A float top-up is money in from the settlement account, so it needs `deposits:create` (only
finance and admin hold it), like a deposit."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from core import agents as A
from core import transfers
from core.money import MAX_AMOUNT_MINOR
from gateway.admin.money import TransferOut, transfer_response
from gateway.api import ApiRoutes, json_response
from gateway.keys import PG_POOL, PRINCIPAL_KEY, SETTINGS

routes = ApiRoutes(tag="agents")


class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=3, max_length=16, pattern=r"^[A-Za-z0-9]+$")
    msisdn: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=100)
    pin: str = Field(min_length=4, max_length=4)
    language: Literal["en", "sw", "fr"] = "en"


class AgentLanguageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Literal["en", "sw", "fr"]


class FloatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount_minor: StrictInt = Field(gt=0, le=MAX_AMOUNT_MINOR)
    idempotency_key: str = Field(min_length=1, max_length=128)


class AgentOut(BaseModel):
    code: str
    msisdn: str
    name: str
    status: str
    currency: str
    language: str
    float_minor: int
    commission_minor: int


async def agent_json(request: web.Request, code: str) -> dict[str, object]:
    pool = request.app[PG_POOL]
    agent = await A.get_agent(pool, code)
    balances = await A.agent_balances(pool, agent.code)
    return AgentOut(
        code=agent.code,
        msisdn=agent.msisdn,
        name=agent.name,
        status=agent.status,
        currency=agent.currency,
        language=agent.language,
        float_minor=balances.float_minor,
        commission_minor=balances.commission_minor,
    ).model_dump()


@routes.post(
    "/api/v1/agents",
    body=AgentIn,
    response=AgentOut,
    status=201,
    permission="agents:write",
    summary="Register an agent with its float and commission accounts",
)
async def create_agent(request: web.Request, body: AgentIn) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    agent = await A.register_agent(
        request.app[PG_POOL],
        code=body.code,
        msisdn=body.msisdn,
        name=body.name,
        pin=body.pin,
        pin_rounds=settings.pin_bcrypt_rounds,
        actor=request[PRINCIPAL_KEY].username,
        currency=settings.currency,
        country_code=settings.default_country_code,
        language=body.language,
    )
    return json_response(await agent_json(request, agent.code), status=201)


@routes.get(
    "/api/v1/agents/{code}",
    response=AgentOut,
    permission="agents:read",
    summary="An agent with its float and commission balances",
)
async def get_agent(request: web.Request) -> web.StreamResponse:
    return json_response(await agent_json(request, request.match_info["code"]))


@routes.put(
    "/api/v1/agents/{code}/language",
    body=AgentLanguageIn,
    response=AgentOut,
    permission="agents:write",
    summary="Set the language of the texts an agent is sent (en, sw, fr)",
)
async def set_agent_language(request: web.Request, body: AgentLanguageIn) -> web.StreamResponse:
    code = request.match_info["code"]
    await A.set_agent_language(
        request.app[PG_POOL], code, body.language, actor=request[PRINCIPAL_KEY].username
    )
    return json_response(await agent_json(request, code))


@routes.post(
    "/api/v1/agents/{code}/float",
    body=FloatIn,
    response=TransferOut,
    status=201,
    permission="deposits:create",
    summary="Top up an agent's float from the bank's settlement account (idempotent)",
)
async def top_up_float(request: web.Request, body: FloatIn) -> web.StreamResponse:
    result = await transfers.float_topup(
        request.app[PG_POOL],
        agent_code=request.match_info["code"],
        amount_minor=body.amount_minor,
        idempotency_key=body.idempotency_key,
        channel="admin",
        currency=request.app[SETTINGS].currency,
        initiator=request[PRINCIPAL_KEY].username,
    )
    return transfer_response(result)


@routes.post(
    "/api/v1/agents/{code}/unlock",
    response=AgentOut,
    permission="agents:write",
    summary="Lift the lock after three wrong agent PINs",
)
async def unlock_agent(request: web.Request) -> web.StreamResponse:
    code = request.match_info["code"]
    await A.unlock_agent(request.app[PG_POOL], code, actor=request[PRINCIPAL_KEY].username)
    return json_response(await agent_json(request, code))
