"""`/api/v1/menus`: drafts, validation, publish (a new immutable version), rollback, simulation.

    POST /api/v1/menus                          save a draft {document} (creates the menu)
    GET  /api/v1/menus                          every menu: current version, versions, draft time
    GET  /api/v1/menus/{id}                     one menu with its draft
    GET  /api/v1/menus/{id}/versions/{version}  a published version's document
    POST /api/v1/menus/{id}/validate            the draft's problems, one line each
    POST /api/v1/menus/{id}/publish             draft -> version N+1, current everywhere in ~1 s
    POST /api/v1/menus/{id}/rollback            {version} (default: the one before current)
    POST /api/v1/menus/{id}/simulate            {inputs: [...]} -> the screens (dry run)

Publishing and rolling back announce the version over Redis pub/sub; every instance loads it and
new sessions use it, while running sessions finish on the version they started with.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from core.errors import Conflict, MenuInvalid, NotFound, ValidationFailed
from gateway.api import ApiRoutes, json_response, whole_number
from gateway.keys import CIPHER, MENU_BINDINGS, MENU_REGISTRY, PG_POOL, PRINCIPAL_KEY, SETTINGS
from menus import store
from menus.simulate import SIMULATED_MSISDN, Simulator
from menus.validate import validate_data
from menus.validators import MAX_INPUT_CHARS

routes = ApiRoutes(tag="menus")
MAX_SIMULATED_INPUTS = 50
DB_ACQUIRE_TIMEOUT_S = 5.0


class DraftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document: dict[str, Any] = Field(description="The menu document (the YAML format, as JSON)")


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(default=None, ge=1, description="Default: the one before current")


class SimulateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(default_factory=list, max_length=MAX_SIMULATED_INPUTS)
    version: int | None = Field(default=None, ge=1, description="Default: the draft")
    msisdn: str = Field(default=SIMULATED_MSISDN, pattern=r"^\+\d{7,15}$")
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}$")
    outcomes: dict[str, str] = Field(
        default_factory=dict, description="action -> 'ok' or an error code to simulate"
    )
    customer: dict[str, Any] | None = Field(
        default=None, description="Overrides the looked-up customer, e.g. {registered: false}"
    )


class VersionOut(BaseModel):
    version: int
    published_at: str
    published_by: str
    checksum: str


class MenuOut(BaseModel):
    id: int
    name: str
    current_version: int | None
    service_code: str | None
    draft_updated_at: str
    draft_updated_by: str
    versions: list[VersionOut]
    draft: dict[str, Any] | None = None
    problems: list[str] | None = None


class MenuListOut(BaseModel):
    menus: list[MenuOut]


class ValidationOut(BaseModel):
    ok: bool
    problems: list[str]


class PublishOut(BaseModel):
    name: str
    version: int
    current_version: int


class DocumentOut(BaseModel):
    name: str
    version: int
    current: bool
    document: dict[str, Any]


class ScreenOut(BaseModel):
    input: str | None
    screen: str
    text: str
    end: bool


class SimulationOut(BaseModel):
    screens: list[ScreenOut]


def _out(row: store.MenuRow, *, draft: bool = False, problems: list[str] | None = None) -> Any:
    out = MenuOut(
        id=row.id,
        name=row.name,
        current_version=row.current_version,
        service_code=row.service_code,
        draft_updated_at=row.draft_updated_at.isoformat(),
        draft_updated_by=row.draft_updated_by,
        versions=[
            VersionOut(
                version=v.version,
                published_at=v.published_at.isoformat(),
                published_by=v.published_by,
                checksum=v.checksum,
            )
            for v in row.versions
        ],
        draft=row.draft if draft else None,
        problems=problems,
    ).model_dump()
    if not draft:
        del out["draft"]
    if problems is None:
        del out["problems"]
    return out


def _menu_id(request: web.Request) -> int:
    menu_id = whole_number(request.match_info["id"])
    if menu_id is None:
        raise NotFound("No such menu", code="MENU_NOT_FOUND")
    return menu_id


def _actor(request: web.Request) -> str:
    return request[PRINCIPAL_KEY].username


def _problems(request: web.Request, document: Any) -> list[str]:
    return validate_data(document, request.app[MENU_BINDINGS].specs)


@routes.post(
    "/api/v1/menus",
    body=DraftIn,
    permission="menus:write",
    status=201,
    response=MenuOut,
    summary="Save a menu draft (creates the menu when the name is new)",
)
async def save_draft(request: web.Request, body: DraftIn) -> web.StreamResponse:
    name = body.document.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationFailed(
            "The document needs a name", errors=[{"field": "document.name", "problem": "missing"}]
        )
    problems = _problems(request, body.document)
    if any(p.startswith("name:") for p in problems):
        raise MenuInvalid("The menu name is not valid", problems=problems)
    async with (
        request.app[PG_POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn,
        conn.transaction(),
    ):
        row, created = await store.save_draft(conn, name, body.document, _actor(request))
    return json_response(_out(row, draft=True, problems=problems), status=201 if created else 200)


@routes.get(
    "/api/v1/menus", permission="menus:read", response=MenuListOut, summary="List the menus"
)
async def list_menus(request: web.Request) -> web.StreamResponse:
    async with request.app[PG_POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn:
        rows = await store.list_menus(conn)
    return json_response({"menus": [_out(r) for r in rows]})


@routes.get(
    "/api/v1/menus/{id}",
    permission="menus:read",
    response=MenuOut,
    summary="A menu with its draft and versions",
)
async def get_menu(request: web.Request) -> web.StreamResponse:
    async with request.app[PG_POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn:
        row = await store.get_menu(conn, _menu_id(request))
    return json_response(_out(row, draft=True))


@routes.get(
    "/api/v1/menus/{id}/versions/{version}",
    permission="menus:read",
    response=DocumentOut,
    summary="A published version's document",
)
async def get_version(request: web.Request) -> web.StreamResponse:
    version = whole_number(request.match_info["version"], max_digits=9)  # int4
    if version is None:
        raise NotFound("No such version", code="VERSION_NOT_FOUND")
    async with request.app[PG_POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn:
        row = await store.get_menu(conn, _menu_id(request))
        document = await store.version_document(conn, row.name, version)
    return json_response(
        DocumentOut(
            name=row.name,
            version=version,
            current=row.current_version == version,
            document=document,
        ).model_dump()
    )


@routes.post(
    "/api/v1/menus/{id}/validate",
    permission="menus:write",
    response=ValidationOut,
    summary="Validate the draft: one line per problem",
)
async def validate(request: web.Request) -> web.StreamResponse:
    async with request.app[PG_POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn:
        row = await store.get_menu(conn, _menu_id(request))
    problems = _problems(request, row.draft)
    return json_response({"ok": not problems, "problems": problems})


@routes.post(
    "/api/v1/menus/{id}/publish",
    permission="menus:write",
    status=201,
    response=PublishOut,
    summary="Publish the draft as a new immutable version and make it current everywhere",
)
async def publish(request: web.Request) -> web.StreamResponse:
    menu_id = _menu_id(request)
    async with (
        request.app[PG_POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn,
        conn.transaction(),
    ):
        row = await store.get_menu(conn, menu_id, lock=True)
        problems = _problems(request, row.draft)
        if problems:
            raise MenuInvalid("The draft is not valid; nothing was published", problems=problems)
        current = [v for v in row.versions if v.version == row.current_version]
        if current and store.checksum(row.draft) == current[0].checksum:
            raise Conflict("The draft is the current version already", code="UNCHANGED")
        version = await store.publish(conn, row, row.draft, _actor(request))
    await request.app[MENU_REGISTRY].announce(row.name, version)
    return json_response(
        {"name": row.name, "version": version, "current_version": version}, status=201
    )


@routes.post(
    "/api/v1/menus/{id}/rollback",
    body=RollbackIn,
    permission="menus:write",
    response=PublishOut,
    summary="Make an earlier version current again (default: the one before current)",
)
async def rollback(request: web.Request, body: RollbackIn) -> web.StreamResponse:
    async with (
        request.app[PG_POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn,
        conn.transaction(),
    ):
        row = await store.get_menu(conn, _menu_id(request), lock=True)
        version = body.version
        if version is None:
            older = [v.version for v in row.versions if v.version < (row.current_version or 0)]
            if not older:
                raise Conflict("There is no earlier version", code="NO_EARLIER_VERSION")
            version = older[-1]
        await store.rollback(conn, row, version, _actor(request))
    await request.app[MENU_REGISTRY].announce(row.name, version)
    return json_response({"name": row.name, "version": version, "current_version": version})


@routes.post(
    "/api/v1/menus/{id}/simulate",
    body=SimulateIn,
    permission="menus:read",
    response=SimulationOut,
    summary="Walk the draft (or a version) with a list of inputs; actions answer with samples",
)
async def simulate(request: web.Request, body: SimulateIn) -> web.StreamResponse:
    if any(len(i) > MAX_INPUT_CHARS for i in body.inputs):
        raise ValidationFailed(f"An input is longer than {MAX_INPUT_CHARS} characters")
    async with request.app[PG_POOL].acquire(timeout=DB_ACQUIRE_TIMEOUT_S) as conn:
        row = await store.get_menu(conn, _menu_id(request))
        document = (
            row.draft
            if body.version is None
            else await store.version_document(conn, row.name, body.version)
        )
    settings = request.app[SETTINGS]
    simulator = Simulator(
        request.app[MENU_BINDINGS].specs,
        request.app[CIPHER],
        settings.currency,
        settings.default_country_code,
    )
    screens = await simulator.run(
        document,
        body.inputs,
        msisdn=body.msisdn,
        language=body.language,
        outcomes=body.outcomes,
        customer=body.customer,
    )
    return json_response(
        {
            "screens": [
                {"input": s.input, "screen": s.screen, "text": s.text, "end": s.end}
                for s in screens
            ]
        }
    )
