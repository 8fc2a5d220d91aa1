"""Middleware: request ids, metrics, security headers, and the one error format for every error.

Every error leaves as `{"status_code", "error_code", "message", "details"}`: CoreErrors by the
table below, aiohttp's own 404 / 405 / 413 included, and anything unexpected as a 500 that
carries the request id and no traceback (the traceback goes to the log). What aiohttp's HTTP
parser refuses never reaches a middleware: gateway.http_server answers it in the same format.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http import HttpProcessingError
from aiohttp.web_exceptions import HTTPException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from channels.http_body import BodyTimeout
from core import errors as E
from core.pg import CONNECTION_LOST
from gateway.api import HttpError
from gateway.keys import METRICS, PARSER_REFUSAL_KEY, REQUEST_ID_KEY
from gateway.logs import redact_query

log = logging.getLogger("gateway.http")

# A lost PostgreSQL or Redis connection. Of OSError only the network kinds (ConnectionError:
# refused, reset, aborted): a file a handler cannot open is a bug, a 500.
_DEPENDENCY_LOST: tuple[type[BaseException], ...] = (
    *(cls for cls in CONNECTION_LOST if cls is not OSError),
    ConnectionError,
    RedisConnectionError,
    RedisTimeoutError,
)
access_log = logging.getLogger("gateway.access")
# A request body the client broke, met while reading it: aiohttp's C parser raises
# RequestPayloadError, its pure-Python one (no compiled extension) the parser's own error.
BROKEN_BODY = (web.RequestPayloadError, HttpProcessingError)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Request ids: a random prefix per process and a counter (unique across instances, and an
# order of magnitude cheaper than a uuid4 per request).
_ID_PREFIX = secrets.token_hex(11)  # with the counter: 32 characters, like a uuid4 hex
_ID_COUNTER = itertools.count(1)
# USSD callbacks are recorded step by step by the USSD analytics (`ussd_steps`) and metrics;
# a JSON access line for each as well cost about a tenth of a step's CPU. Failures (4xx, 5xx)
# are still logged.
QUIET_PREFIXES = ("/ussd/",)

# Most specific first: the first matching class decides the status.
STATUS_BY_ERROR: tuple[tuple[type[E.CoreError], int], ...] = (
    (E.IdempotencyConflict, 409),
    (E.AccountLocked, 403),
    (E.NotFound, 404),
    (E.ValidationFailed, 422),
    (E.Conflict, 409),
    (E.AuthFailed, 401),
    (E.Forbidden, 403),
    (E.RateLimited, 429),
    (E.Unavailable, 503),
)

HTTP_CODES = {
    400: ("BAD_REQUEST", "The request is malformed"),
    401: ("UNAUTHORIZED", "Authentication is required"),
    403: ("FORBIDDEN", "You are not allowed to do this"),
    404: ("NOT_FOUND", "No such resource"),
    405: ("METHOD_NOT_ALLOWED", "This method is not allowed on this resource"),
    408: ("REQUEST_TIMEOUT", "The request did not arrive in time"),
    409: ("CONFLICT", "The request conflicts with the current state"),
    413: ("PAYLOAD_TOO_LARGE", "The request body is too large"),
    414: ("URI_TOO_LONG", "The request line is too long"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Unsupported content type"),
    422: ("VALIDATION_ERROR", "The request is not valid"),
    429: ("RATE_LIMITED", "Too many requests"),
    431: ("HEADERS_TOO_LARGE", "The request's header fields are too large"),
    500: ("INTERNAL_ERROR", "Something went wrong on our side"),
    504: ("TIMEOUT", "The request took too long"),
}


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def error_body(status: int, code: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"status_code": status, "error_code": code, "message": message, "details": details}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    resp = web.json_response(error_body(status, code, message, details or {}), status=status)
    retry = (details or {}).get("retry_after_s")
    if isinstance(retry, int) and status in (429, 403, 503):
        resp.headers["Retry-After"] = str(retry)
    return resp


def status_for(error: E.CoreError) -> int:
    if isinstance(error, HttpError):
        return error.status
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 400


def _from_http_exception(exc: HTTPException) -> web.Response:
    code, message = HTTP_CODES.get(exc.status, ("HTTP_ERROR", exc.reason))
    details: dict[str, Any] = {}
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        details["allowed"] = [m for m in allowed.split(",") if m]
    resp = error_response(exc.status, code, message, details)
    if "Allow" in exc.headers:
        resp.headers["Allow"] = exc.headers["Allow"]
    return resp


def _internal_error(request: web.Request) -> web.Response:
    rid = request.get(REQUEST_ID_KEY, "")
    log.exception("unhandled error", extra={"request_id": rid, "path": request.path})
    code, message = HTTP_CODES[500]
    return error_response(500, code, message, {"request_id": rid})


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def finish_headers(response: web.StreamResponse, request_id: str) -> None:
    """The request id and the security headers, on every response."""
    headers = response.headers
    headers["X-Request-Id"] = request_id
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON line per request; query strings pass through the secret redactor."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if response.status < 400 and request.path.startswith(QUIET_PREFIXES):
            return
        extra = {
            "request_id": request.get(REQUEST_ID_KEY, ""),
            "method": request.method,
            "path": redact_query(request.path_qs),
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "remote": request.remote,
        }
        refusal = request.get(PARSER_REFUSAL_KEY)
        if refusal is not None:
            extra.update(method="-", path="-", refused=refusal)
        access_log.info("request", extra=extra)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _observe(request: web.Request, status: int, started: float) -> None:
    info = request.match_info.route.resource
    route = info.canonical if info is not None else "unmatched"
    request.app[METRICS].observe(request.method, route, status, time.perf_counter() - started)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware, in one coroutine (three nested ones cost two more awaited frames per
    request, a measurable share of a USSD step in bench/ussd.py), in this order:
    - the request id (a valid incoming `X-Request-Id`, else a new one), echoed on the response;
    - a URL with a NUL (%00) in its path or query refused as 400 BAD_REQUEST;
    - every failure of a handler as the standard error JSON: CoreErrors by the table above,
      aiohttp's own 4xx/5xx, a body that cannot be read (bad Content-Encoding) as a 400,
      anything unexpected as a 500 carrying the request id (the
      traceback goes to the log); redirects (3xx) pass through;
    - request metrics by method, route and the status sent;
    - the security headers on every response."""
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    if not incoming or not _REQUEST_ID_RE.match(incoming):
        incoming = new_request_id()
    request[REQUEST_ID_KEY] = incoming
    try:
        if "%00" in request.raw_path:
            # PostgreSQL's text refuses NUL, and no path or query of ours means one: refused
            # here for every route (one substring search) rather than in each handler.
            raise E.BadRequest("The URL must not contain a NUL character (%00)")
        response = await handler(request)
    except E.CoreError as exc:
        response = error_response(status_for(exc), exc.error_code, exc.message, exc.details)
    except HTTPException as exc:
        if exc.status < 400:
            _observe(request, exc.status, started)
            raise
        response = _from_http_exception(exc)
    except BodyTimeout as exc:
        # The client stopped sending its body (channels.http_body): answered, and the
        # connection ends, since the rest of that body may still arrive.
        log.info("request body timed out", extra={"path": request.path, "error": str(exc)})
        response = error_response(408, "REQUEST_TIMEOUT", "The request body did not arrive in time")
        response.force_close()
    except BROKEN_BODY:
        # The body broke while being read: a Content-Encoding it is not in, a broken chunk. The
        # client's fault, and not an HTTPException, so it used to fall through to the 500.
        response = error_response(400, "BAD_REQUEST", "The request body could not be read")
        # Where the next request would start in the stream is unknown: the connection ends.
        response.force_close()
    except _DEPENDENCY_LOST as exc:
        if _client_gone(request):
            # The client hung up while its body was read or its answer written (aiohttp raises
            # ConnectionResetError for both): nobody to answer, and nothing of ours was lost.
            log.info("the client went away under a request", extra={"path": request.path})
            response = error_response(499, "CLIENT_CLOSED_REQUEST", "The client went away")
            _observe(request, response.status, started)
            return response
        # PostgreSQL or Redis went away under a handler's own query (not through core.pg.call,
        # which says Unavailable itself): "try again", not the 500 of a bug.
        log.warning(
            "a dependency was lost under a request",
            extra={"path": request.path, "error": type(exc).__name__},
        )
        unavailable = E.Unavailable()
        response = error_response(
            status_for(unavailable), unavailable.error_code, unavailable.message, {}
        )
    except Exception:
        response = _internal_error(request)
    except BaseException:
        _observe(request, 500, started)
        raise
    try:
        _observe(request, response.status, started)
    except Exception:
        response = _internal_error(request)
    finish_headers(response, request[REQUEST_ID_KEY])
    return response


MIDDLEWARES = [gateway_middleware]
