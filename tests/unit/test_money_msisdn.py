"""Pure rules: amounts typed by people become minor units (or a clear refusal); MSISDNs in any
local or international form become E.164 (or a clear refusal); receipts format amounts."""

from __future__ import annotations

import pytest

from core.errors import ValidationFailed
from core.money import MAX_AMOUNT_MINOR, check_amount, format_amount, parse_amount
from core.msisdn import normalise_msisdn


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("500", "KES", 500_00),
        ("12.50", "KES", 12_50),
        ("12.5", "KES", 12_50),
        (" 0.01 ", "KES", 1),
        ("1000", "UGX", 1000),
        ("1.234", "KWD", 1234),
        ("007", "KES", 7_00),
    ],
)
def test_parse_amount(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("-5", "KES"),
        ("0", "KES"),
        ("0.00", "KES"),
        ("1.234", "KES"),
        ("1.5", "UGX"),
        ("1,000", "KES"),
        ("1e3", "KES"),
        ("abc", "KES"),
        ("", "KES"),
        ("+5", "KES"),
        ("5.", "KES"),
        (".5", "KES"),
        ("9" * 30, "KES"),
        ("100000000000000", "KES"),  # past MAX_AMOUNT_MINOR
        ("١٢", "KES"),  # non-ASCII digits
        ("5", "kes"),
    ],
)
def test_parse_amount_refuses(text: str, currency: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_amount(text, currency)
    assert info.value.message


@pytest.mark.parametrize("value", [0, -1, 1.5, "5", True, None, MAX_AMOUNT_MINOR + 1, 2**63])
def test_check_amount_refuses(value: object) -> None:
    with pytest.raises(ValidationFailed):
        check_amount(value)


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (123_400, "KES", "KES 1,234.00"),
        (5, "KES", "KES 0.05"),
        (-105_000, "KES", "KES -1,050.00"),
        (1_000_000, "UGX", "UGX 1,000,000"),
        (1_234, "KWD", "KWD 1.234"),
    ],
)
def test_format_amount(minor: int, currency: str, text: str) -> None:
    assert format_amount(minor, currency) == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0712345678", "+254712345678"),
        ("254712345678", "+254712345678"),
        ("+254712345678", "+254712345678"),
        ("712345678", "+254712345678"),
        ("+254 712-345 678", "+254712345678"),
        ("(0712) 345678", "+254712345678"),
        ("00447911123456", "+447911123456"),
        ("+447911123456", "+447911123456"),
    ],
)
def test_normalise_msisdn(raw: str, expected: str) -> None:
    assert normalise_msisdn(raw) == expected


def test_country_code_is_configurable() -> None:
    assert normalise_msisdn("0241234567", "233") == "+233241234567"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "abc",
        "+0712345678",
        "0712",
        "12345",
        "+25412345",
        "07123456789012345",
        "+25471234567x",
        "1" * 40,
        "++254712345678",
    ],
)
def test_normalise_msisdn_refuses(raw: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        normalise_msisdn(raw)
    assert info.value.details["field"] == "msisdn"
