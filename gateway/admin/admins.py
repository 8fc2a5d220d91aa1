"""`/api/v1/admins`: list admins, create one, replace its roles, deactivate, reactivate, unlock
it, and issue a credentials reset for it (core.admins, core.identity, core.credentials).
Permission `admins:manage`; every change is audited.

A deactivation or a role change takes effect at once: the route ends every session of the
admin (gateway.auth `cut_sessions`) inside the transaction, so that Redis being down refuses
the change instead of saving a change whose old tokens still work, and again after the commit,
to revoke a token refreshed from the old state in between. A role change ends the sessions
rather than re-checking roles per request (which would cost a database read on every call):
the admin logs in again and gets the new permissions. Issuing a reset ends the sessions the
same way, and from then on the old password and phone no longer log in (core.identity answers
401 `RESET_PENDING`) until the admin has used the token: whoever holds them is out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core import admins, credentials, identity
from core.admins import AdminView
from core.errors import NotFound, Unavailable
from core.pg import connection
from gateway.api import ApiRoutes, json_response, validate, whole_number
from gateway.keys import CIPHER, PG_POOL, PRINCIPAL_KEY, SESSIONMAKER, SETTINGS, TOKENS

log = logging.getLogger("gateway.admins")
routes = ApiRoutes(tag="admins")
PERMISSION = admins.MANAGE
MAX_ID = 2**63 - 1


class AdminsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    before: int | None = Field(default=None, ge=1, le=MAX_ID)
    limit: int = Field(default=50, ge=1, le=admins.MAX_PAGE)


class AdminIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # core.identity checks the rules (normalised username, password policy); these bound size.
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=identity.PASSWORD_MAX)
    role: str = Field(min_length=1, max_length=64)


class RolesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roles: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=admins.MAX_ROLES
    )


class AdminOut(BaseModel):
    id: int
    username: str
    roles: list[str]
    active: bool
    failed_logins: int
    locked_until: str | None
    created_at: str
    updated_at: str


class AdminsPage(BaseModel):
    items: list[AdminOut]
    next_before: int | None


class NewAdminOut(AdminOut):
    # Shown once: the admin's authenticator app reads it; the gateway never shows it again.
    provisioning_uri: str


class ResetTokenOut(BaseModel):
    id: int
    username: str
    # Shown once: the manager hands it to the admin out of band (no address or number on file).
    reset_token: str
    expires_at: str


def _admin_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    admin_id = whole_number(raw)
    if admin_id is None:
        raise NotFound(f"No admin {raw[:32]!r}")
    return admin_id


@routes.get(
    "/api/v1/admins",
    permission=PERMISSION,
    response=AdminsPage,
    summary="Admins, newest first, with roles, whether active, and any login lockout",
    query=(
        ("before", "page on: the next_before of the previous page"),
        ("limit", f"1 to {admins.MAX_PAGE}, default 50"),
    ),
)
async def list_admins(request: web.Request) -> web.StreamResponse:
    query = validate(AdminsQuery, dict(request.query))
    rows = await admins.list_admins(request.app[PG_POOL], before_id=query.before, limit=query.limit)
    next_before = rows[-1].id if len(rows) == query.limit else None
    return json_response({"items": [r.as_json() for r in rows], "next_before": next_before})


@routes.get("/api/v1/admins/{id}", permission=PERMISSION, response=AdminOut, summary="One admin")
async def get_admin(request: web.Request) -> web.StreamResponse:
    view = await admins.get_admin(request.app[PG_POOL], _admin_id(request))
    return json_response(view.as_json())


@routes.post(
    "/api/v1/admins",
    permission=PERMISSION,
    body=AdminIn,
    response=NewAdminOut,
    status=201,
    summary="Create an admin with one role (409 when the username is taken); the TOTP "
    "provisioning URI in the answer is shown once",
)
async def create_admin(request: web.Request, body: AdminIn) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    async with request.app[SESSIONMAKER].begin() as db:
        created = await identity.create_admin(
            db,
            request.app[CIPHER],
            username=body.username,
            password=body.password,
            role=body.role,
            password_rounds=request.app[SETTINGS].password_bcrypt_rounds,
            actor_type="admin",
            actor=principal.username,
        )
    log.info(
        "admin created",
        extra={"username": created.username, "role": body.role, "actor": principal.username},
    )
    view = await admins.get_admin(request.app[PG_POOL], created.user_id)
    return json_response(
        {**view.as_json(), "provisioning_uri": created.provisioning_uri}, status=201
    )


async def _ending_sessions(
    request: web.Request, admin_id: int, change: Callable[[Any], Awaitable[AdminView]]
) -> AdminView:
    """Run `change` in a transaction and end the admin's sessions (see the module docstring)."""
    tokens = request.app[TOKENS]
    async with connection(request.app[PG_POOL]) as conn, conn.transaction():
        view = await change(conn)
        await tokens.cut_sessions(admin_id)
    try:
        await tokens.cut_sessions(admin_id)
    except Unavailable:
        raise Unavailable(
            "The change is saved, but the admin's sessions may not all have ended; "
            "send the same request again"
        ) from None
    return view


@routes.put(
    "/api/v1/admins/{id}/roles",
    permission=PERMISSION,
    body=RolesIn,
    response=AdminOut,
    summary="Replace the admin's roles (each must exist); ends the admin's sessions, so the "
    "new permissions apply from their next login",
)
async def set_roles(request: web.Request, body: RolesIn) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    admin_id = _admin_id(request)
    view = await _ending_sessions(
        request,
        admin_id,
        lambda conn: admins.set_roles(
            conn,
            actor_id=principal.user_id,
            actor=principal.username,
            admin_id=admin_id,
            roles=body.roles,
        ),
    )
    log.info("admin roles set", extra={"username": view.username, "actor": principal.username})
    return json_response(view.as_json())


@routes.post(
    "/api/v1/admins/{id}/deactivate",
    permission=PERMISSION,
    response=AdminOut,
    summary="Deactivate an admin: no more logins, and every session ends at once",
)
async def deactivate(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    admin_id = _admin_id(request)
    view = await _ending_sessions(
        request,
        admin_id,
        lambda conn: admins.deactivate(
            conn, actor_id=principal.user_id, actor=principal.username, admin_id=admin_id
        ),
    )
    log.info("admin deactivated", extra={"username": view.username, "actor": principal.username})
    return json_response(view.as_json())


@routes.post(
    "/api/v1/admins/{id}/reactivate",
    permission=PERMISSION,
    response=AdminOut,
    summary="Let a deactivated admin log in again (their old tokens stay revoked)",
)
async def reactivate(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    view = await admins.reactivate(
        request.app[PG_POOL], actor=principal.username, admin_id=_admin_id(request)
    )
    return json_response(view.as_json())


@routes.post(
    "/api/v1/admins/{id}/unlock",
    permission=PERMISSION,
    response=AdminOut,
    summary="Clear a login lockout (after repeated wrong logins) and the failure count",
)
async def unlock(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    view = await admins.unlock(
        request.app[PG_POOL], actor=principal.username, admin_id=_admin_id(request)
    )
    return json_response(view.as_json())


@routes.post(
    "/api/v1/admins/{id}/reset",
    permission=PERMISSION,
    response=ResetTokenOut,
    status=201,
    summary="Issue a single-use credentials reset token for another active admin (shown once; "
    "an earlier unused one dies); ends the admin's sessions at once. The admin uses it at "
    "POST /api/v1/auth/reset",
)
async def issue_reset(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    admin_id = _admin_id(request)
    tokens = request.app[TOKENS]
    async with request.app[SESSIONMAKER].begin() as db:
        issued = await credentials.issue_reset(
            db,
            actor_id=principal.user_id,
            actor_type="admin",
            actor=principal.username,
            admin_id=admin_id,
            ttl_s=request.app[SETTINGS].admin_reset_ttl_s,
        )
        await tokens.cut_sessions(admin_id)
    try:
        await tokens.cut_sessions(admin_id)
    except Unavailable:
        raise Unavailable(
            "The admin's sessions may not all have ended; send the same request again "
            "(its new token replaces the one not shown)"
        ) from None
    log.info("admin reset issued", extra={"username": issued.username, "actor": principal.username})
    out = ResetTokenOut(
        id=issued.admin_id,
        username=issued.username,
        reset_token=issued.token,
        expires_at=issued.expires_at.isoformat(),
    )
    response = json_response(out.model_dump(), status=201)
    response.headers["Cache-Control"] = "no-store"
    return response
