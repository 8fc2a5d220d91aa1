"""`/api/v1/auth`: login with password and TOTP, refresh, logout, who am I, changing one's own
password, and completing a credentials reset a manager issued (core.credentials).

A password change ends every session of the admin, the calling one included, and answers with
new tokens for the calling session (same session id, the generation after the cut): a token
copied from that session before the change dies with the others. A completed reset ends every
session too and answers with the new TOTP provisioning URI only: the admin then logs in.
"""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core import credentials, identity
from core.errors import CoreError, TokenInvalid, Unavailable
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


class PasswordChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # core.identity checks the policy; these bound size.
    current_password: str = Field(min_length=1, max_length=identity.PASSWORD_MAX)
    otp: str = Field(min_length=1, max_length=10)
    new_password: str = Field(min_length=1, max_length=identity.PASSWORD_MAX)


class ResetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=128)
    new_password: str = Field(min_length=1, max_length=identity.PASSWORD_MAX)


class ResetOut(BaseModel):
    username: str
    # The new authenticator secret, shown once: the old phone's codes no longer work.
    provisioning_uri: str


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


def _no_store(response: web.Response) -> web.Response:
    """Credentials in an answer: no cache (a proxy's, a browser's) may keep it."""
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.post(
    "/api/v1/auth/password",
    body=PasswordChangeIn,
    response=TokensOut,
    summary="Change your own password (current password and a fresh TOTP code; none of your "
    "last 5 passwords). Ends every session of yours; the answer holds new tokens for this one",
)
async def change_password(request: web.Request, body: PasswordChangeIn) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    settings = request.app[SETTINGS]
    tokens = request.app[TOKENS]
    sid = str(tokens.decode(bearer_token(request), "access")["sid"])
    # The login's per-username budget: guessing the current password here is guessing a login.
    await hit(
        request.app[REDIS],
        f"{settings.redis_prefix}rl:login:user:{principal.username}",
        settings.login_rate_per_minute,
        60,
    )
    async with request.app[SESSIONMAKER].begin() as db:
        outcome = await credentials.change_password(
            db,
            request.app[CIPHER],
            admin_id=principal.user_id,
            current_password=body.current_password,
            otp=body.otp,
            new_password=body.new_password,
            password_rounds=settings.password_bcrypt_rounds,
            max_failures=settings.login_max_failures,
            lockout_s=settings.login_lockout_s,
        )
        if outcome is None:
            # Inside the transaction: Redis down refuses the change (503, nothing saved)
            # rather than saving a password whose old sessions still work.
            await tokens.cut_sessions(principal.user_id)
    if outcome is not None:
        log.info(
            "admin password change refused",
            extra={"username": principal.username, "reason": outcome.error_code},
        )
        raise outcome
    log.info("admin password changed", extra={"username": principal.username})
    try:
        # Again after the commit: a token refreshed from before the change in between dies.
        await tokens.cut_sessions(principal.user_id)
        generation = await tokens.generation(principal.user_id)
    except Unavailable:
        raise Unavailable(
            "Your password is changed, but your sessions may not all have ended; "
            "log in again with the new password"
        ) from None
    async with request.app[SESSIONMAKER].begin() as db:
        try:
            current = await identity.load_principal(db, principal.user_id)
        except CoreError:  # deactivated since: the change stands, the session does not
            raise TokenInvalid("The admin no longer exists or is disabled") from None
    pair = tokens.issue(current, sid=sid, generation=generation)
    return _no_store(json_response(pair.as_json()))


@routes.post(
    "/api/v1/auth/reset",
    public=True,
    body=ResetIn,
    response=ResetOut,
    summary="Use a reset token a manager issued: set a new password and get a new TOTP secret "
    "(its provisioning URI is shown once); 401 INVALID_RESET_TOKEN for an unknown, used or "
    "expired token",
)
async def complete_reset(request: web.Request, body: ResetIn) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    tokens = request.app[TOKENS]
    await hit(
        request.app[REDIS],
        f"{settings.redis_prefix}rl:reset:ip:{request.remote}",
        settings.login_rate_per_minute,
        60,
    )
    async with request.app[SESSIONMAKER].begin() as db:
        done = await credentials.complete_reset(
            db,
            request.app[CIPHER],
            token=body.token,
            new_password=body.new_password,
            password_rounds=settings.password_bcrypt_rounds,
        )
        # A session opened with the old credentials since the reset was issued ends too.
        await tokens.cut_sessions(done.admin_id)
    log.info("admin reset completed", extra={"username": done.username})
    try:
        await tokens.cut_sessions(done.admin_id)
    except Unavailable:
        # The reset is spent: the new secret must still reach the admin. The cut inside the
        # transaction already ended every session from before it.
        log.warning("admin reset: second session cut failed", extra={"username": done.username})
    out = ResetOut(username=done.username, provisioning_uri=done.provisioning_uri)
    return _no_store(json_response(out.model_dump()))
