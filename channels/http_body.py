"""Reading an HTTP request body with a deadline.

aiohttp's server has no read timeout: a client that sends its headers and then stops (a phone
that lost its signal, a slow-loris attacker) holds its handler until the client itself gives up,
and so does a body that breaks at the parser in a later packet than its headers (aiohttp's
compiled parser then drops the body stream without an error). Every body reader of ours (the
JSON API, the USSD callbacks, OsmAnd's form, KYC uploads) reads through `read_within`: a read
that does not finish in BODY_IDLE_TIMEOUT_S is answered 408 `REQUEST_TIMEOUT` and the connection
is not kept (the middleware does it). The small bodies (JSON, USSD, OsmAnd: at most 1 MiB, in
practice a few hundred bytes) are one read, so the deadline covers the whole body; a KYC upload
(megabytes) is read chunk by chunk, so it covers each chunk and a large upload over a slow link
is not cut as long as it keeps moving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")

# Long enough for a feature phone's operator or a 2G agent phone between two packets; short
# enough that a stalled client cannot hold handlers for minutes. Read at each call (tests shorten
# it).
BODY_IDLE_TIMEOUT_S = 30.0


def _received(request: web.BaseRequest) -> bool:
    # `total_bytes` counts what the parser fed the stream: decoded bytes when the body has a
    # Content-Encoding, which Content-Length (encoded) does not measure.
    length = request.content_length
    if length is None or "Content-Encoding" in request.headers:
        return False
    return request.content.total_bytes >= length


class BodyTimeout(Exception):
    """The client stopped sending its request body."""


async def read_within(read: Awaitable[T], request: web.BaseRequest | None = None) -> T:
    """`read` under the deadline; with `request`, a body already received whole (a small POST
    in one packet: most USSD hops) is read without one (the timer costs ~4 us a request)."""
    if request is not None and _received(request):
        return await read
    try:
        async with asyncio.timeout(BODY_IDLE_TIMEOUT_S):
            return await read
    except TimeoutError:
        raise BodyTimeout(f"no part of the body arrived in {BODY_IDLE_TIMEOUT_S:g} s") from None
