"""MSISDNs in E.164: what people type ("0712345678", "254712345678", "+254 712 345 678") becomes
"+254712345678"; anything else is refused with a ValidationFailed naming the field."""

from __future__ import annotations

import re

from core.errors import ValidationFailed

MAX_INPUT_CHARS = 32
_SEPARATORS = re.compile(r"[\s\-().]")
# 10 to 15 digits: E.164 allows 15; no mobile numbering plan we serve is shorter than 10 with
# its country code, so "12345" typed as a local number is refused instead of becoming +25412345.
_E164 = re.compile(r"^\+[1-9][0-9]{9,14}$")  # ASCII digits only


def normalise_msisdn(raw: str, country_code: str = "254", field: str = "msisdn") -> str:
    """Return the E.164 form of `raw`. A leading 0 is the local form under `country_code`;
    a leading 00 is the international prefix; digits starting with the country code are
    international, shorter digits are local."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_INPUT_CHARS:
        raise ValidationFailed("Type a phone number like 0712345678", field=field)
    text = _SEPARATORS.sub("", raw.strip())
    if text.startswith("00"):
        text = "+" + text[2:]
    elif text.startswith("0"):
        text = "+" + country_code + text[1:]
    elif not text.startswith("+"):
        # "254712345678" carries its country code; "712345678" is a local number without the 0.
        international = text.startswith(country_code) and len(text) > len(country_code) + 7
        text = "+" + (text if international else country_code + text)
    if not _E164.match(text):
        raise ValidationFailed("Type a phone number like 0712345678", field=field)
    return text
