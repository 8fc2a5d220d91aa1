"""`POST /ussd/{provider}`: the aggregators' callbacks (not admin routes).

For each request: the provider's settings decide who may call (source networks, a shared secret
in `X-Ussd-Secret` or `?key=`, or HTTP basic auth), the body is read with a small cap, the
provider module parses it (anything malformed is a 400 with the standard error JSON), the
service answers, and the module renders the answer in the provider's own format. A failure
behind the parser never becomes an error page: the service answers "temporarily unavailable" as
an END screen, and a bug while rendering is a 503 in the standard format, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
from types import ModuleType

from aiohttp import web

from channels.http_body import read_within
from channels.ussd import PROVIDERS, infobip
from channels.ussd.base import Inbound, Raw, Wire
from config.settings import Settings, UssdProviderSettings
from core.errors import AuthFailed, BadRequest, CoreError, Forbidden, NotFound, Unavailable
from menus.service import UssdService

log = logging.getLogger("channels.ussd")

MAX_BODY_BYTES = 16 * 1024
SECRET_HEADER = "X-Ussd-Secret"


def _allowed(remote: str | None, networks: tuple[str, ...]) -> bool:
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


def _basic_ok(header: str, expected: str) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def authorise(request: web.Request, cfg: UssdProviderSettings) -> None:
    if not _allowed(request.remote, cfg.allow_from):
        raise Forbidden("This source address may not call this USSD endpoint")
    if cfg.secret is None and cfg.basic_auth is None:
        return
    given = request.headers.get(SECRET_HEADER) or request.query.get("key") or ""
    if (
        cfg.secret is not None
        and given
        and hmac.compare_digest(given.encode(), cfg.secret.encode())
    ):
        return
    auth = request.headers.get("Authorization", "")
    if cfg.basic_auth is not None and auth and _basic_ok(auth, cfg.basic_auth):
        return
    raise AuthFailed("The USSD callback is not authenticated", code="UNAUTHORIZED")


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"The body is larger than {MAX_BODY_BYTES} bytes")
    body = await read_within(request.content.read(MAX_BODY_BYTES + 1), request)
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"The body is larger than {MAX_BODY_BYTES} bytes")
    return body


class UssdHttp:
    """The callback handler. `service` is set when the app has started (its Redis, database and
    menus exist only then); until then every callback answers 503."""

    def __init__(self, settings: Settings) -> None:
        self.service: UssdService | None = None
        self.settings = settings

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/ussd/{provider}", self.handle)
        app.router.add_post("/ussd/{provider}/events", self.handle)
        app.router.add_route("*", "/ussd/{provider}/session/{tail:.*}", self.handle)

    def _module(self, request: web.Request) -> ModuleType:
        module = PROVIDERS.get(request.match_info["provider"])
        if module is None:
            raise NotFound("No such USSD provider", code="NOT_FOUND")
        return module

    async def handle(self, request: web.Request) -> web.StreamResponse:
        module = self._module(request)
        service = self.service
        if service is None:
            raise Unavailable("USSD is starting")
        cfg = self.settings.ussd_provider(module.NAME)
        authorise(request, cfg)
        body = await read_body(request)
        prefix = f"/ussd/{module.NAME}"
        raw = Raw(
            method=request.method,
            path=request.path[len(prefix) :],
            content_type=request.content_type if "Content-Type" in request.headers else "",
            body=body,
            query=dict(request.query),
        )
        try:
            inbound: Inbound = module.parse(raw)
        except CoreError:
            raise
        except Exception:
            log.exception("ussd parser failed", extra={"provider": module.NAME})
            raise BadRequest("The request could not be read") from None
        if inbound.request.kind == "status":
            active = await service.active(module.NAME, inbound.request.session_id)
            return self._response(infobip.render_status(active))
        reply = await service.handle(inbound.request, cfg.session_ttl_s)
        try:
            wire = module.render(inbound, reply)
        except Exception:
            log.exception("ussd renderer failed", extra={"provider": module.NAME})
            raise Unavailable("The USSD answer could not be produced") from None
        return self._response(wire)

    @staticmethod
    def _response(wire: Wire) -> web.Response:
        ctype, _, params = wire.content_type.partition(";")
        charset = "utf-8" if "charset" in params else None
        return web.Response(
            status=wire.status, body=wire.body, content_type=ctype.strip(), charset=charset
        )
