"""Admin route declarations: one decorator gives the aiohttp route, its body validation, its
permission check and its OpenAPI entry, so the document cannot drift from the router.

    routes = ApiRoutes(tag="customers")

    @routes.post("/api/v1/customers", body=CustomerIn, permission="customers:write",
                 status=201, summary="Register a customer", response=CustomerOut)
    async def create_customer(request: web.Request, body: CustomerIn) -> web.StreamResponse: ...

A body that is not JSON is 400 `INVALID_JSON`; JSON that fails the model is 422
`VALIDATION_ERROR` with one entry per problem in `details.errors`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from channels.http_body import read_within
from core.errors import CoreError, Forbidden, TokenInvalid, ValidationFailed
from core.identity import Principal
from gateway.keys import PRINCIPAL_KEY, TOKENS

Handler = Callable[..., Awaitable[web.StreamResponse]]
B = TypeVar("B", bound=BaseModel)


class HttpError(CoreError):
    """An error that only exists at the HTTP layer (bad JSON, wrong content type)."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message, code=code, **details)
        self.status = status


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    permission: str | None
    public: bool
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    query: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()  # the body is a file of one of these types (not JSON)


@dataclass
class ApiRoutes:
    """A group of admin routes (one module per resource)."""

    tag: str
    specs: list[RouteSpec] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        permission: str | None = None,
        public: bool = False,
        body: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        query: tuple[tuple[str, str], ...] = (),
        files: tuple[str, ...] = (),
    ) -> Callable[[Handler], Handler]:
        # Not public and no permission: any authenticated admin (e.g. logout, who-am-I).
        def register(handler: Handler) -> Handler:
            self.specs.append(
                RouteSpec(
                    method,
                    path,
                    handler,
                    summary,
                    self.tag,
                    permission,
                    public,
                    body,
                    response,
                    status,
                    query,
                    files,
                )
            )
            return handler

        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


# No admin body nests anywhere near this (a GeoJSON MultiPolygon is 6 levels deep). The json
# module recurses while it parses: 100 000 `[` was a RecursionError, a 500.
MAX_JSON_DEPTH = 64


def _invalid_json(message: str = "The body is not valid JSON") -> HttpError:
    return HttpError(400, "INVALID_JSON", message)


class _NotANumber(str):
    """Stands in for NaN, Infinity or a number past a double while parsing, so that the walk
    below refuses it with its field's path. NaN and Infinity are not JSON (RFC 8259) but Python
    reads them by default, and 1e400 becomes inf: PostgreSQL's json types refused them (a 500)
    and float fields took them as numbers."""


def _finite_float(text: str) -> float | _NotANumber:
    value = float(text)
    return _NotANumber(text[:32]) if math.isinf(value) else value


# PostgreSQL's text refuses NUL, and UTF-8 cannot encode a lone surrogate (JSON's "\ud800"
# escape makes one): either reached the database as a 500. No route stores a number past int8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1


def _unstorable(value: Any) -> str | None:
    """Why `value` (a str, a key or a number of the body) cannot be stored, or None."""
    if isinstance(value, _NotANumber):
        return f"is {value}, not a finite number"
    if isinstance(value, str):
        found = _UNSTORABLE.search(value)
        if found is None:
            return None
        if found.group() == "\x00":
            return "contains a NUL character"
        return "contains an unpaired surrogate (not Unicode)"
    if isinstance(value, int) and not isinstance(value, bool) and not INT8_MIN <= value <= INT8_MAX:
        return "is a whole number out of range"
    return None


def _refuse(path: tuple[str, ...], problem: str) -> NoReturn:
    field = ".".join(path) or "body"
    raise ValidationFailed(f"{field} {problem}", errors=[{"field": field, "problem": problem}])


def _suspect(value: Any) -> bool:
    """A scalar `_unstorable` must look at: cheap type checks first (this runs per value)."""
    kind = type(value)
    if kind is str:
        return _UNSTORABLE.search(value) is not None
    if kind is int:
        return not INT8_MIN <= value <= INT8_MAX
    return kind is _NotANumber


def _check_json(data: Any) -> None:
    """Refuse what no route can use: nesting past MAX_JSON_DEPTH (400), and any key or value
    `_unstorable` names (422, with its path). One pass without paths (the login route is
    public, so this must cost about what parsing does: paths for every value cost 20 times
    that); the paths are worked out only once something is wrong."""
    container = type(data) is dict or type(data) is list
    stack: list[tuple[Any, int]] = [(data, 1)] if container else []
    suspect = not container and _suspect(data)
    while stack and not suspect:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _invalid_json(f"The body nests deeper than {MAX_JSON_DEPTH} levels")
        if type(value) is dict:
            if any(_suspect(key) for key in value):
                suspect = True
                break
            children: Any = value.values()
        else:
            children = value
        for child in children:  # _suspect inlined: this loop runs once per value
            kind = type(child)
            if kind is str:
                suspect = _UNSTORABLE.search(child) is not None
            elif kind is int:
                suspect = not INT8_MIN <= child <= INT8_MAX
            elif kind is dict or kind is list:
                stack.append((child, depth + 1))
            else:
                suspect = kind is _NotANumber
            if suspect:
                break
    if suspect:
        _refuse_with_path(data)


def _refuse_with_path(data: Any) -> None:
    """The slow walk, keeping each value's path: raises for the first problem it meets."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            children: list[tuple[Any, Any]] = list(value.items())
        elif isinstance(value, list):
            children = list(enumerate(value))
        else:
            problem = _unstorable(value)
            if problem is not None:
                _refuse(path, problem)
            continue
        for key, child in children:
            problem = _unstorable(key) if isinstance(key, str) else None
            if problem is not None:
                _refuse(path, f"has a key that {problem}")
            stack.append((child, (*path, str(key))))


async def read_json(request: web.Request) -> Any:
    """The body as JSON: 400 `INVALID_CONTENT_TYPE` unless it says JSON, 400 `INVALID_JSON`
    when it is not JSON or nests deeper than MAX_JSON_DEPTH; 422 `VALIDATION_ERROR` naming the
    field for NaN, Infinity or a number past a double, a string with NUL or a lone surrogate,
    or a whole number past int8 (see `_unstorable`)."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HttpError(400, "INVALID_CONTENT_TYPE", "The body must be JSON (application/json)")
    raw = await read_within(request.read(), request)
    try:
        data = json.loads(raw, parse_float=_finite_float, parse_constant=_NotANumber)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid_json() from None
    _check_json(data)
    return data


def validate(model: type[B], data: Any) -> B:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(p) for p in err["loc"]) or "body",
                "problem": err["msg"],
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise ValidationFailed("The request is not valid", errors=errors) from None


# An id or a page cursor in a path or a query: at most 18 digits, so any of them fits int8.
MAX_ID_DIGITS = 18


def whole_number(raw: str, max_digits: int = MAX_ID_DIGITS) -> int | None:
    """`raw` as an int when it is 1 to `max_digits` ASCII digits, else None. `str.isdigit()`
    alone also says yes to "²" (int() refuses it: a 500), to "١" (int() reads 1) and to a
    5000-digit string (past int()'s 4300-digit limit)."""
    if not raw or len(raw) > max_digits or not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenInvalid("A Bearer token is required", code="UNAUTHORIZED")
    return token.strip()


async def authorise(request: web.Request, permission: str | None) -> Principal:
    principal = await request.app[TOKENS].verify_access(bearer_token(request))
    if permission is not None and not principal.may(permission):
        raise Forbidden(f"This needs the {permission!r} permission", permission=permission)
    request[PRINCIPAL_KEY] = principal
    return principal


def _wrap(spec: RouteSpec) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not spec.public:
            await authorise(request, spec.permission)
        if spec.body is not None:
            return await spec.handler(request, validate(spec.body, await read_json(request)))
        return await spec.handler(request)

    handler.__name__ = spec.handler.__name__
    handler.__doc__ = spec.handler.__doc__
    return handler


def add_routes(app: web.Application, groups: list[ApiRoutes]) -> list[RouteSpec]:
    specs = [spec for group in groups for spec in group.specs]
    for spec in specs:
        app.router.add_route(spec.method, spec.path, _wrap(spec))
    return specs


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


# --- OpenAPI -----------------------------------------------------------------------------------

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["status_code", "error_code", "message", "details"],
    "properties": {
        "status_code": {"type": "integer"},
        "error_code": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}


def _path_params(path: str) -> list[dict[str, Any]]:
    params = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1].split(":")[0]
            params.append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            )
    return params


def openapi_document(specs: list[RouteSpec], version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    paths: dict[str, Any] = {}
    for spec in specs:
        op: dict[str, Any] = {
            "summary": spec.summary,
            "tags": [spec.tag],
            "operationId": f"{spec.method.lower()}_{spec.handler.__name__}",
            "parameters": _path_params(spec.path)
            + [
                {
                    "name": n,
                    "in": "query",
                    "required": False,
                    "description": d,
                    "schema": {"type": "string"},
                }
                for n, d in spec.query
            ],
            "responses": {
                "default": {
                    "description": "Error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
        }
        ok: dict[str, Any] = {"description": "Success"}
        if spec.response is not None:
            schemas[spec.response.__name__] = spec.response.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            ok["content"] = {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{spec.response.__name__}"}
                }
            }
        op["responses"][str(spec.status)] = ok
        if spec.body is not None:
            schemas[spec.body.__name__] = spec.body.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{spec.body.__name__}"}
                    }
                },
            }
        if spec.files:
            op["requestBody"] = {
                "required": True,
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}} for t in spec.files
                },
            }
        if not spec.public:
            op["security"] = [{"bearer": []}]
            if spec.permission:
                op["x-permission"] = spec.permission
        paths.setdefault(spec.path, {})[spec.method.lower()] = op
    for schema in list(schemas.values()):
        schemas.update(schema.pop("$defs", {}))
    return {
        "openapi": "3.1.0",
        "info": {"title": "CodeForge Channel Gateway admin API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
