"""Input validators for input screens: digits, amount, msisdn, pin, regex, length, text.

Each turns what the user typed into the value saved in the session (an amount becomes integer
minor units, a phone number becomes E.164) or refuses it. They are pure functions; the engine
shows the screen's error text on a refusal and stays on the screen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

MAX_INPUT_CHARS = 160
MAX_AMOUNT_MINOR = 10**13  # far above any tier limit; the core enforces the real ones
PIN_LENGTH = 4
KINDS = ("digits", "amount", "msisdn", "pin", "regex", "length", "text")

# Minor-unit exponents that differ from 2 (ISO 4217).
_ZERO_DECIMAL = frozenset({"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "RWF", "UGX", "XAF"})
_ZERO_DECIMAL_MORE = frozenset({"XOF", "XPF", "VND", "VUV", "PYG"})
_AMOUNT = re.compile(r"(\d{1,13})(?:[.,](\d{1,2}))?")
_MSISDN_DIGITS = re.compile(r"\d{10,15}")  # E.164: at most 15; mobiles need 10+


def currency_exponent(currency: str) -> int:
    return 0 if currency in _ZERO_DECIMAL or currency in _ZERO_DECIMAL_MORE else 2


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


def parse_amount_minor(text: str, exponent: int = 2) -> int:
    """`"500"`, `"12.50"`, `"12,5"` -> minor units. Refuses zero, negatives, junk and more
    decimals than the currency has."""
    m = _AMOUNT.fullmatch(text.strip())
    if m is None:
        raise Refused()
    whole, frac = m.group(1), m.group(2) or ""
    if len(frac) > exponent:
        raise Refused()
    minor = int(Decimal(f"{whole}.{frac or '0'}").scaleb(exponent))
    if minor <= 0 or minor > MAX_AMOUNT_MINOR:
        raise Refused()
    return minor


def normalise_msisdn(text: str, country_code: str) -> str:
    """`+254712345678`, `254712345678` or `0712345678` -> `+254712345678`."""
    raw = re.sub(r"[\s-]", "", text)
    if raw.startswith("+"):
        digits = raw[1:]
    elif raw.startswith("00"):
        digits = raw[2:]
    elif raw.startswith("0"):
        digits = country_code + raw[1:]
    elif raw.startswith(country_code):
        digits = raw
    else:
        raise Refused()
    if not _MSISDN_DIGITS.fullmatch(digits) or digits.startswith("0"):
        raise Refused()
    return "+" + digits


def check(rule: Rule, raw: str, *, country_code: str, exponent: int) -> str | int:
    """The value to save for `raw` under `rule`, or Refused."""
    text = raw.strip()
    if not text or len(text) > MAX_INPUT_CHARS:
        raise Refused()
    lo, hi = rule.min_length, rule.max_length
    if rule.kind == "amount":
        return parse_amount_minor(text, exponent)
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
