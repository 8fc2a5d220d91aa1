"""Small parts of the menu engine: conditions, templates, input validators."""

from __future__ import annotations

from typing import Any

import pytest

from menus.expr import ExpressionError, compile_condition, paths
from menus.template import TemplateError, compile_template
from menus.validators import Refused, Rule, check, normalise_msisdn, parse_amount_minor

SCOPE = {"customer": {"registered": True, "status": "active", "tier": 2}, "count": 1, "name": "x"}


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("customer.registered", True),
        ("not customer.registered", False),
        ("count == 1 and customer.status != 'locked'", True),
        ("count > 1 or customer.tier >= 2", True),
        ("customer.missing", False),
        ("customer.missing == None", True),
        ("customer.tier < 'a'", False),  # comparing across types is simply false
        ("name in ['x', 'y']", True),
        ("name not in ['x']", False),
        ("1 < count < 3", False),
    ],
)
def test_conditions(text: str, result: bool) -> None:
    assert compile_condition(text)(SCOPE) is result


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('id')",
        "customer['registered']",
        "customer.registered.__class__()",
        "lambda: 1",
        "count + 1",
        "[x for x in count]",
        "",
        "a" * 201,
        "count ==",
        "b'bytes'",
    ],
)
def test_conditions_outside_the_language(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_condition(text)


def test_condition_paths() -> None:
    assert paths("customer.registered and count == 1") == {"customer.registered", "count"}


@pytest.mark.parametrize(
    ("source", "scope", "rendered"),
    [
        ("Hello {customer.status}", SCOPE, "Hello active"),
        ("{{literal}} {name}", SCOPE, "{literal} x"),
        ("Missing: [{nothing}]", SCOPE, "Missing: []"),
        ("Lines:\n{items}", {"items": ["a", "b"]}, "Lines:\na\nb"),
    ],
)
def test_templates(source: str, scope: dict[str, Any], rendered: str) -> None:
    assert compile_template(source).render(scope) == rendered


@pytest.mark.parametrize("source", ["{", "}", "{1abc}", "{a b}", "x { y"])
def test_bad_templates(source: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(source)


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("500", "KES", 50_000),
        ("12.50", "KES", 1_250),
        ("12,5", "KES", 1_250),
        ("0.01", "KES", 1),
        ("1500", "UGX", 1_500),
        (" 7 ", "KES", 700),
        ("1.005", "KWD", 1_005),
    ],
)
def test_amounts(text: str, currency: str, minor: int) -> None:
    assert parse_amount_minor(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("0", "KES"),
        ("-5", "KES"),
        ("1.234", "KES"),
        ("1.5", "UGX"),
        ("1e3", "KES"),
        ("abc", "KES"),
        ("", "KES"),
        ("1,000", "KES"),
        ("1,2,3", "KES"),
        ("99999999999999", "KES"),
        ("١٢", "KES"),  # non-ASCII digits
    ],
)
def test_bad_amounts(text: str, currency: str) -> None:
    with pytest.raises(Refused):
        parse_amount_minor(text, currency)


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("+254712345678", "+254712345678"),
        ("254712345678", "+254712345678"),
        ("0712345678", "+254712345678"),
        ("0712 345-678", "+254712345678"),
        ("00233244000111", "+233244000111"),
        ("712345678", "+254712345678"),  # the core reads this as local without the 0
    ],
)
def test_msisdns(text: str, e164: str) -> None:
    assert normalise_msisdn(text, "254") == e164


@pytest.mark.parametrize(
    "text", ["12345", "+0712345678", "abc", "+25412345", "+1234567890123456", "07 12"]
)
def test_bad_msisdns(text: str) -> None:
    with pytest.raises(Refused):
        normalise_msisdn(text, "254")


@pytest.mark.parametrize(
    ("rule", "text", "ok"),
    [
        (Rule("pin"), "1234", True),
        (Rule("pin"), "123", False),
        (Rule("pin"), "12a4", False),
        (Rule("pin"), "١٢٣٤", False),  # non-ASCII digits are not a PIN
        (Rule("digits", 2, 4), "123", True),
        (Rule("digits", 2, 4), "12345", False),
        (Rule("regex", pattern="[A-Z]{3}"), "ABC", True),
        (Rule("regex", pattern="[A-Z]{3}"), "ABCD", False),
        (Rule("length", 2, 5), "abc", True),
        (Rule("length", 2, 5), "a", False),
        (Rule("text"), "Zoé", True),
        (Rule("text"), "x" * 161, False),
        (Rule("text"), "   ", False),
    ],
)
def test_input_rules(rule: Rule, text: str, ok: bool) -> None:
    if ok:
        assert check(rule, text, country_code="254", currency="KES") == text.strip()
    else:
        with pytest.raises(Refused):
            check(rule, text, country_code="254", currency="KES")
