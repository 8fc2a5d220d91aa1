"""`/api/v1/auth`: login with password and TOTP, refresh, logout, and who am I."""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core import identity
from core.errors import CoreError, TokenInvalid
from gateway.api import ApiRoutes, bearer_token, json_response
from gateway.keys import CIPHER, PRINCIPAL_KEY, REDIS, SESSIONMAKER, SETTINGS, TOKENS
from gateway.ratelimit import hit

log = logging.getLogger("gateway.auth")
routes = ApiRoutes(tag="auth")


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=128)
    otp: str = Field(min_length=1, max_length=10)


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str = Field(min_length=1, max_length=4096)


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class MeOut(BaseModel):
    user_id: int
    username: str
    roles: list[str]
    permissions: list[str]


@routes.post(
    "/api/v1/auth/login",
    public=True,
    body=LoginIn,
    response=TokensOut,
    summary="Log in with username, password and a TOTP code",
)
async def login(request: web.Request, body: LoginIn) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    redis = request.app[REDIS]
    prefix = settings.redis_prefix
    limit = settings.login_rate_per_minute
    await hit(redis, f"{prefix}rl:login:ip:{request.remote}", limit, 60)
    await hit(redis, f"{prefix}rl:login:user:{body.username.strip().lower()}", limit, 60)
    tokens = request.app[TOKENS]
    generation = 0
    async with request.app[SESSIONMAKER].begin() as db:
        outcome = await identity.authenticate(
            db,
            request.app[CIPHER],
            username=body.username,
            password=body.password,
            otp=body.otp,
            max_failures=settings.login_max_failures,
            lockout_s=settings.login_lockout_s,
        )
        if not isinstance(outcome, CoreError):
            # Read while authenticate's row lock is held: a deactivation or a role change
            # waits for it, so its cut-off comes after this and revokes these tokens.
            generation = await tokens.generation(outcome.user_id)
    if isinstance(outcome, CoreError):
        log.info(
            "admin login refused",
            extra={"username": body.username[:64], "reason": outcome.error_code},
        )
        raise outcome
    log.info("admin login", extra={"username": outcome.username})
    return json_response(tokens.issue(outcome, generation=generation).as_json())


@routes.post(
    "/api/v1/auth/refresh",
    public=True,
    body=RefreshIn,
    response=TokensOut,
    summary="Exchange a refresh token (single use) for new tokens",
)
async def refresh(request: web.Request, body: RefreshIn) -> web.StreamResponse:
    tokens = request.app[TOKENS]
    grant = await tokens.consume_refresh(body.refresh_token)
    async with request.app[SESSIONMAKER].begin() as db:
        try:
            principal = await identity.load_principal(db, grant.user_id)
        except CoreError:
            raise TokenInvalid("The admin no longer exists or is disabled") from None
    pair = tokens.issue(principal, sid=grant.sid, generation=grant.generation)
    return json_response(pair.as_json())


@routes.post(
    "/api/v1/auth/logout",
    status=204,
    summary="End the session: the access token and its refresh token stop working",
)
async def logout(request: web.Request) -> web.StreamResponse:
    tokens = request.app[TOKENS]
    claims = tokens.decode(bearer_token(request), "access")
    await tokens.revoke_session(claims["sid"])
    return web.Response(status=204)


@routes.get(
    "/api/v1/auth/me", response=MeOut, summary="The calling admin, with roles and permissions"
)
async def me(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    return json_response(
        MeOut(
            user_id=principal.user_id,
            username=principal.username,
            roles=list(principal.roles),
            permissions=sorted(principal.permissions),
        ).model_dump()
    )
