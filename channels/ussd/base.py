"""What every USSD provider module shares: the raw request it parses, the wire answer it renders,
and strict field readers that turn anything malformed into a 400 (`core.errors.BadRequest`).

A provider module exposes:

    NAME: str
    def parse(raw: Raw) -> Inbound        # raises BadRequest on anything malformed
    def render(inbound: Inbound, reply: Reply) -> Wire

`Inbound.request` is the provider-neutral `menus.engine.UssdRequest`; `Inbound.echo` carries the
fields the provider wants echoed back in its reply (Nalo's USERID, Beem's request_id ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from core.errors import BadRequest, ValidationFailed
from core.msisdn import normalise_msisdn
from menus.engine import Reply, UssdRequest

MAX_FIELD_CHARS = 200
MAX_TEXT_CHARS = 1000  # Africa's Talking's cumulative text grows with every hop
NORMALISED_CACHE = 8192  # phone numbers and dial codes already checked (bounded LRU)
_SESSION_ID = re.compile(r"[A-Za-z0-9._:@+=\-]{1,128}")
_INTERNATIONAL = re.compile(r"\+?([1-9]\d*)")  # providers send the country code, never a 0
_DIAL = re.compile(r"\*?\d{1,8}(\*\d{0,20})*#?")
_LANGUAGE = re.compile(r"[a-z]{2,3}")
# Control characters, and lone surrogates: JSON's "\ud800" escape decodes to one, which UTF-8
# cannot encode (in an input it failed the session's save: "temporarily unavailable"; in an
# echoed field the reply's render: a 503 after the step had run). One search for both.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")

__all__ = [
    "Inbound",
    "Raw",
    "Reply",
    "UssdRequest",
    "Wire",
    "dial_code",
    "form_body",
    "json_body",
    "json_wire",
    "language",
    "msisdn",
    "session_id",
    "text",
]


# Read-only by convention, not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (4x the cost), and several of these are built on every USSD request.
@dataclass(slots=True)
class Raw:
    """An HTTP request as a provider module sees it. `path` is what follows `/ussd/<provider>`
    (Infobip puts the session id and the event there)."""

    method: str
    path: str
    content_type: str
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)


# Read-only by convention, not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (4x the cost), and several of these are built on every USSD request.
@dataclass(slots=True)
class Wire:
    status: int
    content_type: str
    body: bytes


# Read-only by convention, not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (4x the cost), and several of these are built on every USSD request.
@dataclass(slots=True)
class Inbound:
    request: UssdRequest
    echo: Mapping[str, Any] = field(default_factory=dict)


def bad(message: str, **details: Any) -> BadRequest:
    return BadRequest(message, **details)


def json_body(raw: Raw) -> dict[str, Any]:
    """The body as a JSON object. JSON is required (`application/json`; a missing or text/plain
    content type is tolerated because some aggregators send one); anything else is a 400."""
    ctype = raw.content_type
    if ctype and ctype not in ("application/json", "text/plain") and not ctype.endswith("+json"):
        raise bad("The body must be JSON", content_type=ctype)
    try:
        data = json.loads(raw.body)
    except (ValueError, UnicodeDecodeError):
        raise bad("The body is not valid JSON") from None
    except RecursionError:  # json recurses once per level of nesting
        raise bad("The body is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise bad("The body must be a JSON object")
    return data


# "%XX" (either case) -> the byte, as `urllib.parse.unquote_to_bytes` reads escapes.
_HEX_DIGITS = "0123456789abcdefABCDEF"
_HEX_BYTE = {a + b: bytes.fromhex(a + b) for a in _HEX_DIGITS for b in _HEX_DIGITS}


def unquote_plus(value: str) -> str:
    """`urllib.parse.unquote_plus(value)` (UTF-8, bad bytes as U+FFFD), in one pass over the
    escapes instead of the standard library's split into ASCII and non-ASCII runs (a third of
    a callback's parsing). UTF-8 resynchronises at every lead byte, so decoding the whole value
    at once replaces exactly what decoding each run apart would."""
    value = value.replace("+", " ")
    if "%" not in value:
        return value
    first, *rest = value.split("%")
    out = [first.encode()]
    for part in rest:
        byte = _HEX_BYTE.get(part[:2])
        if byte is None:
            out.append(b"%" + part.encode())
        else:
            out.append(byte)
            out.append(part[2:].encode())
    return b"".join(out).decode("utf-8", "replace")


def decode_form(text: str) -> dict[str, str]:
    """`a=1&b=x%2By` -> {"a": "1", "b": "x+y"}: what `urllib.parse.parse_qsl(text,
    keep_blank_values=True)` gives (first value of each field kept), without its per-pair
    overhead, which was the biggest single cost of parsing a callback. Only fields with an
    escape (`%` or `+`) are unquoted; bad escapes become U+FFFD as there."""
    form: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        if key in form:
            continue
        form[key] = unquote_plus(value) if "%" in value or "+" in value else value
    return form


def form_body(raw: Raw) -> dict[str, str]:
    """The body as an `application/x-www-form-urlencoded` form (first value of each field)."""
    if raw.content_type != "application/x-www-form-urlencoded":
        raise bad("The body must be a form (application/x-www-form-urlencoded)")
    try:
        return decode_form(raw.body.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("The form is not valid UTF-8") from None


def _get(data: Mapping[str, Any], name: str, required: bool) -> Any:
    value = data.get(name)
    if value is None and required:
        raise bad(f"{name} is required", field=name)
    return value


def text(
    data: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
    max_chars: int = MAX_FIELD_CHARS,
    numbers: bool = False,
) -> str | None:
    """A string field (numbers accepted when `numbers`: some providers send ids as numbers)."""
    value = _get(data, name, required)
    if value is None:
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise bad(f"{name} must be a string", field=name)
    if len(value) > max_chars:
        raise bad(f"{name} is longer than {max_chars} characters", field=name)
    found = _CONTROL.search(value)
    if found is not None:
        if found.group() >= "\ud800":
            raise bad(f"{name} is not valid Unicode (a lone surrogate)", field=name)
        raise bad(f"{name} contains control characters", field=name)
    return value


def boolean(data: Mapping[str, Any], name: str) -> bool:
    value = _get(data, name, True)
    if not isinstance(value, bool):
        raise bad(f"{name} must be a JSON boolean (true or false)", field=name)
    return value


def session_id(data: Mapping[str, Any], name: str) -> str:
    value = text(data, name, numbers=True)
    assert value is not None
    if not _SESSION_ID.fullmatch(value):
        raise bad(f"{name} is not a valid session id", field=name)
    return value


@lru_cache(maxsize=NORMALISED_CACHE)
def _international(value: str) -> str | None:
    """E.164 of a provider MSISDN, or None. Cached: every hop of a session repeats it."""
    m = _INTERNATIONAL.fullmatch(value.strip())
    if m is None:
        return None
    try:
        return normalise_msisdn("+" + m.group(1))
    except ValidationFailed:
        return None


def msisdn(data: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    """Provider MSISDNs arrive as international digits with or without a leading `+` (a local
    form is malformed here); E.164 by the core's rules."""
    value = text(data, name, required=required, numbers=True)
    if value is None:
        return ""
    normal = _international(value)
    if normal is None:
        raise bad(f"{name} is not an international phone number", field=name)
    return normal


@lru_cache(maxsize=NORMALISED_CACHE)
def _dial(value: str) -> str | None:
    raw = value.strip()
    if not _DIAL.fullmatch(raw):
        return None
    inner = raw.strip("#").lstrip("*")
    return f"*{inner}#"


def dial_code(value: str | None, name: str) -> str:
    """`384`, `*384#`, `*384*1*2#`, `714*5` -> `*384#`, `*384*1*2#`, `*714*5#`."""
    if value is None:
        raise bad(f"{name} is required", field=name)
    code = _dial(value)
    if code is None:
        raise bad(f"{name} is not a USSD code", field=name)
    return code


def looks_like_dial(value: str | None) -> bool:
    return bool(value) and value is not None and value.strip().endswith("#")


def language(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if isinstance(value, str) and _LANGUAGE.fullmatch(value.strip().lower()):
        return value.strip().lower()
    return None


def json_wire(payload: Mapping[str, Any], status: int = 200) -> Wire:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return Wire(status, "application/json", body)
