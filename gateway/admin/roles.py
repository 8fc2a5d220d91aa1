"""`/api/v1/permissions` and `/api/v1/roles`: the permission codes, and roles with the
permissions they grant: list, read, create, change, delete (core.roles). Permission
`admins:manage`: whoever may give an admin a role may say what the role grants. Every change is
audited.

Tokens carry the permissions, so a change that takes permissions from a role ends the sessions
of every admin holding it, as a role change of one admin does (gateway.admin.admins): inside the
transaction, so that Redis being down refuses the change instead of saving one whose old tokens
still grant what was taken away, and again after the commit, to revoke a token refreshed from
the old state in between. A change that only adds permissions ends no session: the holders get
them at their next refresh (within the access token's lifetime) or login.
"""

from __future__ import annotations

import logging
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core import admins, roles
from core.errors import Unavailable
from core.pg import connection
from gateway.api import ApiRoutes, json_response
from gateway.keys import PG_POOL, PRINCIPAL_KEY, TOKENS

log = logging.getLogger("gateway.roles")
routes = ApiRoutes(tag="roles")
PERMISSION = admins.MANAGE

# core.roles checks the rules (name pattern, known codes, no control characters); these bound
# the size of what reaches it.
Code = Annotated[str, Field(min_length=1, max_length=roles.CODE_MAX)]
Codes = Annotated[list[Code], Field(max_length=roles.MAX_PERMISSIONS)]
Description = Annotated[str, Field(max_length=roles.DESCRIPTION_MAX)]


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=roles.NAME_MAX)
    description: Description = ""
    permissions: Codes


class RoleChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Absent or null: the description stays as it is.
    description: Description | None = None
    permissions: Codes


class PermissionOut(BaseModel):
    code: str
    description: str


class PermissionsOut(BaseModel):
    items: list[PermissionOut]


class RoleOut(BaseModel):
    name: str
    description: str
    is_superuser: bool
    permissions: list[str]
    active_admins: int
    admins: int


class RolesOut(BaseModel):
    items: list[RoleOut]


@routes.get(
    "/api/v1/permissions",
    permission=PERMISSION,
    response=PermissionsOut,
    summary="Every permission code a role can grant, with its description",
)
async def list_permissions(request: web.Request) -> web.StreamResponse:
    items = await roles.list_permissions(request.app[PG_POOL])
    return json_response({"items": items})


@routes.get(
    "/api/v1/roles",
    permission=PERMISSION,
    response=RolesOut,
    summary="Every role, by name: its permissions (a superuser role's: all of them) and how "
    "many admins hold it",
)
async def list_roles(request: web.Request) -> web.StreamResponse:
    items = await roles.list_roles(request.app[PG_POOL])
    return json_response({"items": [r.as_json() for r in items]})


@routes.get("/api/v1/roles/{name}", permission=PERMISSION, response=RoleOut, summary="One role")
async def get_role(request: web.Request) -> web.StreamResponse:
    view = await roles.get_role(request.app[PG_POOL], request.match_info["name"])
    return json_response(view.as_json())


@routes.post(
    "/api/v1/roles",
    permission=PERMISSION,
    body=RoleIn,
    response=RoleOut,
    status=201,
    summary="Create a role (409 when the name is taken); its permissions must be known codes",
)
async def create_role(request: web.Request, body: RoleIn) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    view = await roles.create_role(
        request.app[PG_POOL],
        actor=principal.username,
        name=body.name,
        description=body.description,
        permissions=body.permissions,
    )
    log.info("role created", extra={"role": view.name, "actor": principal.username})
    return json_response(view.as_json(), status=201)


@routes.put(
    "/api/v1/roles/{name}",
    permission=PERMISSION,
    body=RoleChangeIn,
    response=RoleOut,
    summary="Replace the role's permissions (and its description, when given); taking "
    "permissions away ends the sessions of every admin holding it. Not a superuser role; "
    "not the last way anyone may manage admins",
)
async def update_role(request: web.Request, body: RoleChangeIn) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    tokens = request.app[TOKENS]
    async with connection(request.app[PG_POOL]) as conn, conn.transaction():
        change = await roles.update_role(
            conn,
            actor_id=principal.user_id,
            actor=principal.username,
            name=request.match_info["name"],
            permissions=body.permissions,
            description=body.description,
        )
        await tokens.cut_sessions_of(change.cut)
    try:
        await tokens.cut_sessions_of(change.cut)
    except Unavailable:
        raise Unavailable(
            "The change is saved, but the sessions of the role's admins may not all have "
            "ended; send the same request again"
        ) from None
    log.info(
        "role changed",
        extra={"role": change.role.name, "actor": principal.username, "cut": len(change.cut)},
    )
    return json_response(change.role.as_json())


@routes.delete(
    "/api/v1/roles/{name}",
    permission=PERMISSION,
    status=204,
    summary="Delete a role no admin holds, active or not (409 ROLE_IN_USE); not a superuser role",
)
async def delete_role(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL_KEY]
    name = request.match_info["name"]
    await roles.delete_role(request.app[PG_POOL], actor=principal.username, name=name)
    log.info("role deleted", extra={"role": name, "actor": principal.username})
    return web.Response(status=204)
