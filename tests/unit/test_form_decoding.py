"""The USSD form decoder gives what the standard library's parse_qsl gives (first value of each
field), on generated forms: escapes, pluses, blanks, repeated and empty fields, bad escapes."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from channels.ussd.base import decode_form


def reference(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        out.setdefault(key, value)
    return out


PIECES = st.sampled_from(
    [
        *("a", "=", "&", "%", "+", "%2B", "%2A", "%zz", "%e9", "*", "1", " ", "é", "€"),
        *("%C3", "%A9", "%e2", "%82", "%AC", "%F0", "%9F", "%98", "%80", "%Ff", "%2", "%%41"),
    ]
)


@settings(max_examples=1500)
@given(st.lists(PIECES, max_size=30).map("".join))
def test_raw_texts(text: str) -> None:
    assert decode_form(text) == reference(text)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=6))
def test_encoded_forms(pairs: list[tuple[str, str]]) -> None:
    text = urlencode(pairs)
    assert decode_form(text) == reference(text)


def test_an_africas_talking_callback() -> None:
    text = "sessionId=ATUid_1&serviceCode=%2A384%23&phoneNumber=%2B254711000111&text=1%2A2&text=9"
    assert decode_form(text) == {
        "sessionId": "ATUid_1",
        "serviceCode": "*384#",
        "phoneNumber": "+254711000111",
        "text": "1*2",
    }
