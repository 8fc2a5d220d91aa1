"""SMPP addresses <-> the E.164 numbers the gateway stores and shows.

A sender's number is read by the core's rules (`core.msisdn.normalise_msisdn`), so the number
the channel answers, rate-limits and keeps dialogs for is the customer the core acts for:
`+254712345678`, `254712345678`, `0712345678`, `00254712345678` and, in national form (TON 2),
`712345678` (with the default country code) are one number, stored as `+254712345678`.
"""

from __future__ import annotations

from core.errors import ValidationFailed
from core.msisdn import normalise_msisdn

TON_UNKNOWN = 0
TON_INTERNATIONAL = 1
TON_NETWORK_SPECIFIC = 3
TON_ALPHANUMERIC = 5
NPI_UNKNOWN = 0
NPI_ISDN = 1
SHORT_CODE_MAX_DIGITS = 8


def to_e164(address: str, ton: int, country_code: str) -> str:
    """An SMSC source address as E.164 when it is a phone number; otherwise as it came."""
    raw = address.strip()
    digits = raw.lstrip("+")
    if not digits.isdigit() or not digits.isascii():
        return raw
    if ton == TON_INTERNATIONAL or raw.startswith("+"):
        return "+" + digits
    if len(digits) <= SHORT_CODE_MAX_DIGITS:
        return digits  # a short code
    # National (TON 2) or unknown: as the core reads a number typed without its `+`. Before,
    # `712345678` (national) and `00254712345678` stayed as they came while the core found the
    # customer under +254712345678, and the reply went to another number.
    try:
        return normalise_msisdn(digits, country_code)
    except ValidationFailed:
        return digits  # a number in a plan we cannot place


def destination(recipient: str, country_code: str) -> tuple[str, int, int]:
    """(destination_addr, dest_addr_ton, dest_addr_npi) for a recipient in any accepted form.
    Raises ValueError for something that is not a phone number."""
    raw = recipient.strip().replace(" ", "")
    digits = raw.lstrip("+")
    if not digits.isdigit() or not digits.isascii() or not 6 <= len(digits) <= 15:
        raise ValueError(f"not a phone number: {recipient!r}")
    if not raw.startswith("+") and digits.startswith("0"):
        digits = country_code + digits[1:]
    return digits, TON_INTERNATIONAL, NPI_ISDN


def source(source_addr: str) -> tuple[str, int, int]:
    """(source_addr, ton, npi): alphanumeric sender ids, short codes and long numbers differ."""
    if not source_addr.isdigit():
        return source_addr, TON_ALPHANUMERIC, NPI_UNKNOWN
    if len(source_addr) <= SHORT_CODE_MAX_DIGITS:
        return source_addr, TON_NETWORK_SPECIFIC, NPI_UNKNOWN
    return source_addr, TON_INTERNATIONAL, NPI_ISDN
