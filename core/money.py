"""Money as integer minor units plus a currency: parsing what people type, formatting receipts,
and the bounds every amount must respect before it reaches the ledger.

Amounts are typed in major units ("500", "12.50") and stored as integers of the currency's minor
unit (cents for KES). Floats never appear: parsing is string arithmetic.
"""

from __future__ import annotations

import re

from core.errors import ValidationFailed

# Exponents that differ from 2 (ISO 4217). Every other three-letter code has two decimals.
_EXPONENTS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip
MAX_AMOUNT_MINOR = 10**13  # far above any tier limit, far below bigint: refuses "huge" early
MAX_AMOUNT_CHARS = 24
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_AMOUNT_RE = re.compile(r"^([0-9]+)(?:\.([0-9]+))?$")  # ASCII digits only


def exponent(currency: str) -> int:
    check_currency(currency)
    return _EXPONENTS.get(currency, 2)


def check_currency(currency: str) -> str:
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
        raise ValidationFailed("A currency is three capital letters, like KES", field="currency")
    return currency


def check_amount(amount_minor: object, field: str = "amount_minor") -> int:
    """An amount in minor units: a positive int no larger than MAX_AMOUNT_MINOR (not a float,
    not a bool, not a string)."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise ValidationFailed("An amount is a whole number of minor units", field=field)
    if amount_minor <= 0:
        raise ValidationFailed("The amount must be more than zero", field=field)
    if amount_minor > MAX_AMOUNT_MINOR:
        raise ValidationFailed("The amount is too large", field=field)
    return amount_minor


def parse_amount(text: str, currency: str) -> int:
    """ "500" or "12.50" in major units -> minor units. Refuses negative, zero, too many
    decimals, separators and anything that is not a plain decimal number."""
    digits = exponent(currency)
    raw = text.strip() if isinstance(text, str) else ""
    if not raw or len(raw) > MAX_AMOUNT_CHARS:
        raise ValidationFailed("Type an amount like 500 or 12.50", field="amount")
    if raw.startswith("-"):
        raise ValidationFailed("The amount must be more than zero", field="amount")
    match = _AMOUNT_RE.match(raw)
    if match is None:
        raise ValidationFailed("Type an amount like 500 or 12.50", field="amount")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > digits:
        raise ValidationFailed(
            f"{currency} amounts have at most {digits} decimal places", field="amount"
        )
    minor = int(whole) * 10**digits + int(fraction.ljust(digits, "0") or "0")
    return check_amount(minor, field="amount")


def format_amount(minor: int, currency: str) -> str:
    """1234_00, "KES" -> "KES 1,234.00"; negative amounts keep their sign after the code."""
    digits = exponent(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**digits)
    text = f"{whole:,}"
    if digits:
        text += "." + str(fraction).rjust(digits, "0")
    return f"{currency} {sign}{text}"
