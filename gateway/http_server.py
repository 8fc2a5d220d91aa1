"""The HTTP server: aiohttp's runner with the gateway's protocol options, and the standard error
JSON for what aiohttp's HTTP parser refuses before any middleware runs.

A request line or a header field past its limit, too many headers, a request line that is not
HTTP, a bad chunk, a body that is not in its Content-Encoding: the parser raises, and aiohttp's
protocol (`RequestHandler`) answers through its `handle_error` with a plain-text 400 that echoes
the first 100 bytes of what it refused, and logs a traceback. No middleware, route or signal
sees such a request: `handle_error` is the one place to answer it, and aiohttp has no public
way to put a subclass of `RequestHandler` under an `Application` (aio-libs/aiohttp#3287 asks
for one). `GatewayRunner` does it with two private names, `AppRunner._make_server` and
`Server._kwargs`, and proves at every start, over a socket pair, that a refused request still
comes back as the standard error JSON: if a release changes the path, the server refuses to
start with a clear error instead of answering in plain text again. `serve` runs it for
`gateway serve` (web.run_app cannot take another runner); the tests' server runs on it too.

Raising the parser's limits and enforcing our own in a middleware was the other way: it only
moves the boundary (past the raised limit the parser answers again) and cannot reach a
malformed request line, a bad chunk or a broken body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from gateway.keys import METRICS, PARSER_REFUSAL_KEY, REQUEST_ID_KEY
from gateway.metrics import Metrics
from gateway.middlewares import (
    BROKEN_BODY,
    HTTP_CODES,
    JsonAccessLogger,
    error_response,
    finish_headers,
    new_request_id,
)

log = logging.getLogger("gateway.http")

# The request target may be longer than a header field: ids and filters travel in URLs. The two
# limits also differ so that a refusal can say which it was: aiohttp's LineTooLong carries only
# the limit it broke (414 for the request line, 431 for a header field).
MAX_REQUEST_LINE_BYTES = 16 * 1024
# One field, name and value (aiohttp 3.14's compiled parser counts the value alone for every
# field but the first): aiohttp's default.
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADERS = 128  # aiohttp's default
# web.run_app's default, which `gateway serve` used before it ran its own runner (the protocol's
# own default is an hour).
KEEPALIVE_TIMEOUT_S = 75.0
PROTOCOL_OPTIONS: dict[str, Any] = {
    "max_line_size": MAX_REQUEST_LINE_BYTES,
    "max_field_size": MAX_HEADER_FIELD_BYTES,
    "max_headers": MAX_HEADERS,
    "keepalive_timeout": KEEPALIVE_TIMEOUT_S,
    "access_log_class": JsonAccessLogger,
}
# The parser's own reason for a refusal it has no class for ("Invalid character in chunk size"):
# the text before its excerpt of the request, printable ASCII, at most this long.
REASON_MAX_CHARS = 120
SELF_CHECK_TIMEOUT_S = 5.0
# The metrics' route for a request the parser refused (the middleware's is "unmatched" for a
# request it could not route).
UNPARSED_ROUTE = "unparsed"

Refusal = tuple[int, str, str, dict[str, Any]]


def _reason(exc: BadHttpMessage) -> str:
    """The parser's description without its excerpt of the request (which may carry a token
    from a query string or a header)."""
    text = exc.message.split(":\n", 1)[0].strip().rstrip(":")
    text = "".join(c for c in text if c.isascii() and c.isprintable())
    return text[:REASON_MAX_CHARS]


def _refusal(handler: web.RequestHandler, exc: BaseException) -> Refusal:
    """(status, error code, message, details) for a parser refusal, by what was refused."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == handler.max_field_size:
            message = f"A header field is longer than {limit} bytes"
            return 431, HTTP_CODES[431][0], message, {"limit_bytes": limit}
        message = f"The request line is longer than {handler.max_line_size} bytes"
        return 414, HTTP_CODES[414][0], message, {"limit_bytes": handler.max_line_size}
    if isinstance(exc, BadHttpMessage) and exc.message.startswith("Too many headers"):
        message = f"The request has more than {handler.max_headers} header fields"
        return 431, HTTP_CODES[431][0], message, {"limit": handler.max_headers}
    message = _MESSAGES.get(type(exc), "")
    if message:
        return 400, "BAD_REQUEST", message, {}
    if isinstance(exc, BadHttpMessage):
        reason = _reason(exc)
        message = f"The request is malformed: {reason}" if reason else HTTP_CODES[400][1]
        return 400, "BAD_REQUEST", message, {}
    return 400, "BAD_REQUEST", HTTP_CODES[400][1], {}


# By the exact class: the parser raises the generic BadHttpMessage for most of what it refuses
# (its reason then says what), and these for the rest.
_MESSAGES: dict[type[BaseException], str] = {
    BadHttpMethod: "The request line does not start with an HTTP method",
    BadStatusLine: "The request line is malformed",
    InvalidURLError: "The request target (URL) is malformed",
    InvalidHeader: "A header field is malformed",
    TransferEncodingError: "The chunked body is malformed",
    ContentLengthError: "The body is shorter than its Content-Length",
    ContentEncodingError: "The body is not in its Content-Encoding",
}


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's HTTP protocol, answering what it refuses in the standard error JSON (and
    counting it in `metrics`, as method "-" on route "unparsed": aiohttp does not say which)."""

    __slots__ = ("metrics",)

    metrics: Metrics | None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Called with 400 and the parser's exception for a request the parser refused; with
        500 or 504 for a handler that failed past the middleware (which answers every failure
        itself, so only a bug of its own lands here). The connection is closed after it."""
        if request.writer.output_size > 0:
            # Part of a response is on the wire already: another cannot follow it.
            raise ConnectionError("a response was started; the error cannot be sent")
        request_id = new_request_id()
        request[REQUEST_ID_KEY] = request_id
        if status == 400 and exc is not None:
            status, code, text, details = _refusal(self, exc)
            request[PARSER_REFUSAL_KEY] = type(exc).__name__
            # The access log has the line (status, request id, kind); the excerpt the parser
            # keeps of the request may hold a secret, so only the kind of refusal is logged.
            log.debug(
                "request refused by the HTTP parser",
                extra={"request_id": request_id, "status": status, "error": type(exc).__name__},
            )
        else:
            code, text = HTTP_CODES.get(status, ("HTTP_ERROR", HTTP_CODES[400][1]))
            details = {"request_id": request_id}
            log.error(
                "error past the middleware",
                exc_info=exc,
                extra={"request_id": request_id, "status": status},
            )
        if self.metrics is not None:
            self.metrics.observe("-", UNPARSED_ROUTE, status, 0.0)
        response = error_response(status, code, text, details)
        finish_headers(response, request_id)
        response.headers["Connection"] = "close"
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """A body the client broke (a bad chunk, a Content-Encoding it is not in) is met again
        when aiohttp drains it after the middleware has answered 400: aiohttp logs that as an
        "Unhandled exception" with a traceback. It is the client's, so it is debug here."""
        if isinstance(kwargs.get("exc_info"), BROKEN_BODY):
            log.debug("the rest of a broken request body was dropped")
            return
        super().log_exception(*args, **kwargs)


class GatewayServer(web.Server):
    """aiohttp's connection factory, making GatewayRequestHandler protocols."""

    metrics: Metrics | None = None

    def __call__(self) -> web.RequestHandler:
        # Called by the event loop for each accepted connection, so a loop is running.
        handler = GatewayRequestHandler(
            self, loop=asyncio.get_running_loop(), **_server_kwargs(self)
        )
        handler.metrics = self.metrics
        return handler


class GatewayRunner(web.AppRunner):
    """web.AppRunner with the gateway's protocol options (PROTOCOL_OPTIONS, which keyword
    arguments may override) and its protocol, checked before the first connection."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**PROTOCOL_OPTIONS, **kwargs})

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        server = GatewayServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **_server_kwargs(made),
        )
        await check_protocol(server)
        server.metrics = self.app.get(METRICS)
        return server


def _server_kwargs(server: web.Server) -> dict[str, Any]:
    kwargs = getattr(server, "_kwargs", None)
    if not isinstance(kwargs, dict):
        raise _changed("web.Server no longer keeps its protocol options in _kwargs")
    return kwargs


def _changed(what: str) -> RuntimeError:
    return RuntimeError(
        f"aiohttp {aiohttp.__version__}: {what}; gateway.http_server needs updating "
        "(requests its HTTP parser refuses would be answered in plain text)"
    )


# A request line the parser refuses at its first byte (NUL is no method character).
_PROBE = b"\x00 / HTTP/1.1\r\nHost: gateway\r\n\r\n"


def _quiet(server: GatewayServer, kwargs: dict[str, Any]) -> GatewayRequestHandler:
    handler = GatewayRequestHandler(server, loop=asyncio.get_running_loop(), **kwargs)
    handler.metrics = None
    return handler


async def check_protocol(server: GatewayServer) -> None:
    """Prove that a request the parser refuses comes back as the standard error JSON: one
    refused request through the server's own protocol, over a socket pair (no port, no access
    log line, not counted), before the server takes its first connection."""
    loop = asyncio.get_running_loop()
    kwargs = {**_server_kwargs(server), "access_log": None}
    ours, theirs = socket.socketpair()
    try:
        transport, _ = await loop.connect_accepted_socket(lambda: _quiet(server, kwargs), ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        try:
            writer.write(_PROBE)
            async with asyncio.timeout(SELF_CHECK_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.read()
        finally:
            writer.close()
            transport.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise _changed(f"the protocol self-check got no answer ({exc!r})") from exc
    finally:
        ours.close()  # each end again, for when the check failed before a transport owned it
        theirs.close()
    status = head.split(b"\r\n", 1)[0]
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if b" 400 " not in status or not isinstance(answer, dict) or answer.get("status_code") != 400:
        raise _changed(
            f"a refused request no longer reaches RequestHandler.handle_error (got {status!r})"
        )


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout_s: float,
    ready: Callable[[], None],
) -> None:
    """Serve `app` on host:port until SIGINT or SIGTERM, then stop it gracefully: web.run_app
    (which cannot take another runner) on GatewayRunner. A signal during start-up (which may
    wait GATEWAY_STARTUP_WAIT_S for PostgreSQL) ends it too, stopping what had started."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    runner = GatewayRunner(app, shutdown_timeout=shutdown_timeout_s)
    starting = asyncio.create_task(_start(runner, host, port), name="http-start")
    stopping = asyncio.create_task(stop.wait(), name="http-stop")
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            starting.result()  # a start-up that failed raises here (DependencyDown: exit 3)
            ready()
            await stopping
    finally:
        for task in (starting, stopping):
            task.cancel()
        await asyncio.gather(starting, stopping, return_exceptions=True)
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        # Also after a start-up that failed or was cut short: what had started stops.
        await runner.cleanup()


SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _start(runner: GatewayRunner, host: str, port: int) -> None:
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
