"""SMPP addresses <-> the E.164 numbers the gateway stores and shows.

The core will own MSISDN rules (`core.msisdn.normalise_msisdn`); until then this keeps the SMS
channel consistent with CONTRACTS.md: `+254712345678`, `254712345678` and `0712345678` (with
the default country code) are one number, stored as `+254712345678`.
"""

from __future__ import annotations

TON_UNKNOWN = 0
TON_INTERNATIONAL = 1
TON_NETWORK_SPECIFIC = 3
TON_ALPHANUMERIC = 5
NPI_UNKNOWN = 0
NPI_ISDN = 1
SHORT_CODE_MAX_DIGITS = 8


def to_e164(address: str, ton: int, country_code: str) -> str:
    """An SMSC source address as E.164 when it is a phone number; otherwise as it came."""
    digits = address.strip().lstrip("+")
    if not digits.isdigit():
        return address.strip()
    if ton == TON_INTERNATIONAL or address.strip().startswith("+"):
        return "+" + digits
    if digits.startswith("0") and len(digits) > SHORT_CODE_MAX_DIGITS:
        return "+" + country_code + digits[1:]
    if digits.startswith(country_code) and len(digits) > SHORT_CODE_MAX_DIGITS + 1:
        return "+" + digits
    return digits  # a short code or a number in a plan we cannot place


def destination(recipient: str, country_code: str) -> tuple[str, int, int]:
    """(destination_addr, dest_addr_ton, dest_addr_npi) for a recipient in any accepted form.
    Raises ValueError for something that is not a phone number."""
    raw = recipient.strip().replace(" ", "")
    digits = raw.lstrip("+")
    if not digits.isdigit() or not 6 <= len(digits) <= 15:
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
