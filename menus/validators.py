"""Input validators for input screens: digits, amount, msisdn, pin, regex, length, text.

Each turns what the user typed into the value saved in the session (an amount becomes integer
minor units, a phone number becomes E.164) or refuses it. They are pure functions; the engine
shows the screen's error text on a refusal and stays on the screen.

Amounts and phone numbers are the banking core's rules (`core.money.parse_amount`,
`core.msisdn.normalise_msisdn`), so a value the menu accepts is one every channel accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ValidationFailed
from core.money import parse_amount
from core.msisdn import normalise_msisdn as core_msisdn

MAX_INPUT_CHARS = 160
PIN_LENGTH = 4
MIN_MOBILE_DIGITS = 10  # E.164 allows 8; a mobile wallet number has a longer subscriber part
KINDS = ("digits", "amount", "msisdn", "pin", "regex", "length", "text")

# "12,50": a decimal comma (French handsets, some keypads) is read as the decimal point; a
# thousands separator ("1,000") still fails because it leaves too many decimals.
_DECIMAL_COMMA = re.compile(r"^(\d+),(\d+)$")


@dataclass(frozen=True, slots=True)
class Rule:
    """What an input screen accepts. `match` names an earlier secret input this one must equal
    (the second PIN entry)."""

    kind: str
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    match: str | None = None


class Refused(ValueError):
    """The input does not satisfy the rule; `key` picks the error text."""

    def __init__(self, key: str = "invalid_input") -> None:
        super().__init__(key)
        self.key = key


def parse_amount_minor(text: str, currency: str = "KES") -> int:
    """`"500"`, `"12.50"`, `"12,5"` -> minor units of `currency` (the core's parser). Refuses
    zero, negatives, junk and more decimals than the currency has."""
    raw = text.strip()
    comma = _DECIMAL_COMMA.match(raw)
    if comma is not None:
        raw = f"{comma.group(1)}.{comma.group(2)}"
    try:
        return parse_amount(raw, currency)
    except ValidationFailed:
        raise Refused() from None


def normalise_msisdn(text: str, country_code: str) -> str:
    """`+254712345678`, `254712345678`, `0712345678`, `0712 345 678` -> `+254712345678` (the
    core's rules), refusing numbers too short to be a mobile wallet."""
    try:
        e164 = core_msisdn(text, country_code)
    except ValidationFailed:
        raise Refused() from None
    if len(e164) - 1 < MIN_MOBILE_DIGITS:
        raise Refused()
    return e164


def check(rule: Rule, raw: str, *, country_code: str, currency: str) -> str | int:
    """The value to save for `raw` under `rule`, or Refused."""
    text = raw.strip()
    if not text or len(text) > MAX_INPUT_CHARS:
        raise Refused()
    lo, hi = rule.min_length, rule.max_length
    if rule.kind == "amount":
        return parse_amount_minor(text, currency)
    if rule.kind == "msisdn":
        return normalise_msisdn(text, country_code)
    if rule.kind == "pin":
        if not (text.isascii() and text.isdigit()) or len(text) != (lo or PIN_LENGTH):
            raise Refused("invalid_pin")
        return text
    if (lo is not None and len(text) < lo) or (hi is not None and len(text) > hi):
        raise Refused()
    if rule.kind == "digits" and not (text.isascii() and text.isdigit()):
        raise Refused()
    if rule.kind == "regex" and rule.pattern is not None and not re.fullmatch(rule.pattern, text):
        raise Refused()
    if rule.kind == "text" and not text.isprintable():
        raise Refused()
    return text


SAMPLES: dict[str, str | int] = {
    "digits": "1234567890",
    "amount": 7_000_000,
    "msisdn": "+254712345678",
    "pin": "****",
    "regex": "ABCDEFGHIJ",
    "length": "ABCDEFGHIJKLMNOPQRST",
    "text": "Wanjiku-Nyambura",
}
