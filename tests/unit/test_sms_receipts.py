"""Delivery receipts: id from the TLV first and the text second, status words, id bases."""

from __future__ import annotations

import pytest

from channels.sms.receipts import is_receipt, message_key, parse_receipt

TEXT = (
    b"id:{id} sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
    b"stat:{stat} err:{err} text:hello"
)


def receipt_text(mid: str, stat: str = "DELIVRD", err: str = "000") -> bytes:
    return (
        TEXT.replace(b"{id}", mid.encode())
        .replace(b"{stat}", stat.encode())
        .replace(b"{err}", err.encode())
    )


# (label, short_message, tlv id, message_state, expected (id, source, status, error) or None)
CASES = [
    ("text only", receipt_text("0A1B"), None, None, ("0A1B", "text", "delivered", None)),
    ("tlv wins", receipt_text("999"), b"0A1B", None, ("0A1B", "tlv", "delivered", None)),
    ("tlv state wins", receipt_text("1", "DELIVRD"), b"1", 5, ("1", "tlv", "failed", None)),
    ("expired", receipt_text("7", "EXPIRED"), None, None, ("7", "text", "expired", None)),
    (
        "undeliverable",
        receipt_text("7", "UNDELIV", "034"),
        None,
        None,
        ("7", "text", "failed", "034"),
    ),
    ("rejected", receipt_text("7", "REJECTD"), None, None, ("7", "text", "failed", None)),
    (
        "accepted is not final",
        receipt_text("7", "ACCEPTD"),
        None,
        None,
        ("7", "text", "submitted", None),
    ),
    ("unknown word", receipt_text("7", "WEIRD"), None, None, ("7", "text", "submitted", None)),
    ("lower case keys", b"ID:5 STAT:delivrd", None, None, ("5", "text", "delivered", None)),
    ("tlv with nul", b"", b"abc\x00", 2, ("abc", "tlv", "delivered", None)),
    ("no id anywhere", b"stat:DELIVRD", None, None, None),
    ("empty", b"", None, None, None),
    ("absurd id", b"id:" + b"9" * 100, None, None, None),
    (
        "binary junk",
        b"\xff\xfe\x00id:42 stat:DELIVRD",
        None,
        None,
        ("42", "text", "delivered", None),
    ),
]


@pytest.mark.parametrize(
    ("label", "sm", "tlv", "state", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_parse_receipt(
    label: str,
    sm: bytes,
    tlv: bytes | None,
    state: int | None,
    expected: tuple[str, str, str, str | None] | None,
) -> None:
    receipt = parse_receipt(sm, tlv, state)
    if expected is None:
        assert receipt is None
        return
    assert receipt is not None
    assert (receipt.message_id, receipt.id_source, receipt.status, receipt.error) == expected


def test_network_error_code_used_without_err_field() -> None:
    receipt = parse_receipt(b"", b"5", 5, b"\x03\x00\x22")
    assert receipt is not None and receipt.error == "030022"


@pytest.mark.parametrize(
    ("a", "base_a", "b", "base_b", "same"),
    [
        ("0000001F", 16, "31", 10, True),
        ("1f", 16, "0000001F", 16, True),
        ("31", 10, "031", 10, True),
        ("31", 16, "31", 10, False),
        ("abc-def", 16, "ABC-DEF", 16, True),
        ("abc-def", 16, "abc-deg", 16, False),
    ],
)
def test_message_key_normalises_bases(a: str, base_a: int, b: str, base_b: int, same: bool) -> None:
    assert (message_key(a, base_a) == message_key(b, base_b)) is same


@pytest.mark.parametrize(
    ("esm", "expected"),
    [(0x00, False), (0x04, True), (0x20, True), (0x40, False), (0x44, True), (0x08, False)],
)
def test_is_receipt(esm: int, expected: bool) -> None:
    assert is_receipt(esm) is expected


def test_a_nul_ends_a_value() -> None:
    """PostgreSQL's text refuses U+0000: no receipt field may carry one to the store."""
    receipt = parse_receipt(b"id:AB\x0012 stat:UNDELIV err:0\x0012", None, None)
    assert receipt is not None and receipt.message_id == "AB" and receipt.error is None
    receipt = parse_receipt(b"stat:DELIVRD", b"1F\x002\x00", None)
    assert receipt is not None and receipt.message_id == "1F"
