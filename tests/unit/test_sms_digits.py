"""Digits of other scripts in SMS commands: read as the ASCII digits they are, masked alike."""

from __future__ import annotations

import pytest

from channels.sms.commands import Balance, Malformed, Send, ascii_digits, mask_secrets, parse

SCRIPTS = [
    ("arabic-indic", "٤٨٢١", "٠٧١٢٣٤٥٦٧٨", "٥٠٠"),
    ("persian", "۴۸۲۱", "۰۷۱۲۳۴۵۶۷۸", "۵۰۰"),
    ("full-width", "４８２１", "０７１２３４５６７８", "５００"),
    ("devanagari", "४८२१", "०७१२३४५६७८", "५००"),
]


@pytest.mark.parametrize(("label", "pin", "phone", "amount"), SCRIPTS, ids=[c[0] for c in SCRIPTS])
def test_other_digits_are_the_same_command(label: str, pin: str, phone: str, amount: str) -> None:
    assert parse(f"BAL {pin}") == Balance("4821")
    assert parse(f"send {phone} {amount} {pin}") == Send("0712345678", "500", "4821")
    assert mask_secrets(f"BAL {pin}") == "BAL ****"
    assert mask_secrets(f"SEND {phone} {amount} {pin}") == f"SEND {phone} {amount} ****"
    assert isinstance(parse(f"BAL {pin[:3]}"), Malformed)  # still four digits, in any script


def test_ascii_text_is_left_as_it_is() -> None:
    text = "SEND 0712345678 500 4821"
    assert ascii_digits(text) is text
    assert ascii_digits("Zoë ½ ²") == "Zoë ½ ²"  # not decimal digits: untouched
