"""How long a screen is on the air: GSM-7 septets, or UTF-16 units when the text needs UCS-2.

A USSD screen carries 160 bytes: 182 characters of the GSM 03.38 default alphabet (7 bits each),
or 80 UTF-16 code units when any character falls outside it. Characters of the extension table
(`^{}\\[~]|€` and form feed) cost two septets (an escape plus the character). The length of a
text is therefore measured in the encoding the text needs, never in Python characters.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_LIMIT = 182
UCS2_LIMIT = 80

# GSM 03.38 default alphabet (basic character set).
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each costs an escape septet plus itself.
_EXTENSION = "\f^{}\\[~]|€"

GSM7_BASIC = frozenset(_BASIC)
GSM7_EXTENSION = frozenset(_EXTENSION)
_GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION


@dataclass(frozen=True, slots=True)
class Measure:
    """The encoding a text needs, its length in that encoding's units, and the screen limit."""

    encoding: str  # "gsm7" or "ucs2"
    length: int
    limit: int

    @property
    def fits(self) -> bool:
        return self.length <= self.limit


def is_gsm7(text: str) -> bool:
    return _GSM7_ALL.issuperset(text)


def measure(text: str) -> Measure:
    """Length of `text` in the units of the encoding it needs, with that encoding's limit."""
    if _GSM7_ALL.issuperset(text):
        septets = len(text) + sum(map(text.count, _EXTENSION))
        return Measure("gsm7", septets, GSM7_LIMIT)
    return Measure("ucs2", len(text.encode("utf-16-le")) // 2, UCS2_LIMIT)


def fits(text: str) -> bool:
    return measure(text).fits
