"""The loan texts catalogue (core.loans.messages): every notice and every reason in every
language, one SMS each, GSM-7 only, figures formatted, fallbacks when figures are missing."""

from __future__ import annotations

import string
import typing
from datetime import date

import pytest

from core.errors import CoreError, LoanRefused, Overpayment
from core.loans import messages
from core.loans.fraud import RULES, ApplicationFacts, FraudLimits
from menus.gsm import is_gsm7, measure
from tests.unit.loans.test_rules import PRODUCT

BIG = 99_999_99  # the largest amount a notice is sized for (KES 99,999.99)
# Every figure each notice is given by the loan service and its jobs, at its widest.
PARAMS: dict[str, dict[str, object]] = {
    "loan_disbursed": {
        "reference": "ABCDEFT12345678",
        "amount_minor": BIG,
        "first_minor": BIG,
        "due_date": date(2026, 12, 31),
        "total_minor": BIG,
        "balance_minor": BIG,
    },
    "loan_repayment": {
        "reference": "ABCDEFT12345678",
        "amount_minor": BIG,
        "outstanding_minor": BIG,
        "due_date": date(2026, 12, 31),
        "balance_minor": BIG,
    },
    "loan_repaid": {"reference": "ABCDEFT12345678", "amount_minor": BIG, "balance_minor": BIG},
    "loan_reminder_before": {"amount_minor": BIG, "due_date": date(2026, 12, 31)},
    "loan_reminder_today": {"amount_minor": BIG},
    "loan_reminder_late": {"amount_minor": BIG, "due_date": date(2026, 12, 31), "days": 999},
    "loan_penalty": {"amount_minor": BIG, "outstanding_minor": BIG},
    "loan_rejected": {"reason": "x" * 100},
}
FIELD = string.Formatter()


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in FIELD.parse(text) if name}


def test_every_notice_has_every_language_and_the_same_figures() -> None:
    assert set(PARAMS) == set(messages.NOTICES)
    for template, texts in messages.NOTICES.items():
        assert set(texts) == set(messages.LANGUAGES), template
        names = {fields(t).__repr__() for t in texts.values()}
        assert len(names) == 1, (template, names)  # each language shows the same figures


@pytest.mark.parametrize("language", messages.LANGUAGES)
@pytest.mark.parametrize("template", sorted(messages.NOTICES))
def test_each_notice_is_one_gsm7_sms_with_all_its_figures(template: str, language: str) -> None:
    params = {**PARAMS[template], "currency": "KES"}
    text = messages.notice(template, language, params)
    assert is_gsm7(text), text
    assert measure(text).length <= messages.SMS_CHARS, (len(text), text)
    assert "{" not in text and "  " not in text
    for name, value in params.items():
        if name.endswith("_minor"):
            assert "KES 99,999.99" in text
        elif isinstance(value, date):
            assert "31/12/2026" in text
        elif name != "currency":
            assert str(value) in text


def test_notice_texts_differ_by_language_and_unknown_languages_read_english() -> None:
    params = {**PARAMS["loan_disbursed"], "currency": "XTS"}
    texts = {lang: messages.notice("loan_disbursed", lang, params) for lang in messages.LANGUAGES}
    assert len(set(texts.values())) == 3
    assert texts["sw"].startswith("ABCDEFT12345678 Imethibitishwa. Mkopo wa XTS 99,999.99")
    assert "Payez XTS 99,999.99 le 31/12/2026" in texts["fr"]
    assert messages.notice("loan_disbursed", "de", params) == texts["en"]
    assert messages.language_of("de") == "en" and messages.language_of(None) == "en"
    with pytest.raises(KeyError):
        messages.notice("loan_party", "en", params)


def test_a_missing_figure_renders_empty_and_never_fails() -> None:
    text = messages.notice("loan_repaid", "en", {"amount_minor": 5_00, "currency": "KES"})
    assert text == (
        "Confirmed. KES 5.00 received. Your loan is fully repaid, thank you. New balance ."
    )


REASON_DETAILS: dict[str, dict[str, object]] = {
    "ACCOUNT_TOO_NEW": {"wait_days": 12},
    "AMOUNT_OUT_OF_RANGE": {"min_minor": 100_00, "max_minor": 2_000_00, "currency": "KES"},
    "OVER_LIMIT": {"limit_minor": 500_00, "currency": "KES"},
    "OVERPAYMENT": {"outstanding_minor": 1_050_00, "currency": "KES"},
}
SHOWN = {
    "ACCOUNT_TOO_NEW": ["12"],
    "AMOUNT_OUT_OF_RANGE": ["KES 100.00", "KES 2,000.00"],
    "OVER_LIMIT": ["KES 500.00"],
    "OVERPAYMENT": ["KES 1,050.00"],
}


@pytest.mark.parametrize("language", messages.LANGUAGES)
@pytest.mark.parametrize("code", sorted(messages.REASONS))
def test_every_reason_in_every_language(code: str, language: str) -> None:
    text = messages.reason(code, language, REASON_DETAILS.get(code, {}))
    assert text is not None and is_gsm7(text) and len(text) <= 80 and "{" not in text
    for figure in SHOWN.get(code, []):
        assert figure in text
    if language != "en":
        assert text != messages.reason(code, "en", REASON_DETAILS.get(code, {}))
    plain = messages.reason(code, language, {})
    assert plain is not None and "{" not in plain
    if code in REASON_DETAILS:  # no figures: the wording without them, not a broken text
        assert plain == messages.REASONS_WITHOUT_FIGURES[code][language]


def test_every_rule_and_decision_code_has_a_reason() -> None:
    facts = ApplicationFacts("+254700000001", "nobody", 0, 1, 99, 1)
    refusals = [rule(facts, PRODUCT, FraudLimits()) for rule in RULES]
    codes = {r.code for r in refusals if r is not None}
    assert len(codes) == len(RULES)  # every rule refuses these facts
    codes |= {"AMOUNT_OUT_OF_RANGE", "LOW_SCORE", "OVER_LIMIT", "REVIEW_SCORE", "REVIEW_AMOUNT"}
    codes |= {"SCORER_UNAVAILABLE", "APPROVED", "DISBURSEMENT_FAILED", "REJECTED"}
    codes |= {"NO_OPEN_LOAN", "OVERPAYMENT", "PRODUCT_NOT_FOUND"}
    assert codes <= set(messages.REASONS)


def test_refusal_text_for_raised_errors() -> None:
    refused = LoanRefused("Your account is too new", code="ACCOUNT_TOO_NEW", wait_days=3)
    assert messages.refusal_text(refused, "sw") == (
        "Akaunti yako ni mpya mno; jaribu tena baada ya siku 3"
    )
    over = Overpayment("owes", outstanding_minor=2_500, currency="TZS")
    assert messages.refusal_text(over, "fr") == "Vous devez TZS 25.00; ne payez pas plus"
    assert messages.reason("NO_SUCH_CODE", "sw") is None
    odd = CoreError("Something else", code="NO_SUCH_CODE")
    assert messages.refusal_text(odd, "sw") == "Something else"


def test_officer_reasons_are_the_admin_api_choices_and_fit_the_rejection_notice() -> None:
    from gateway.admin.loans import OfficerReason

    assert set(typing.get_args(OfficerReason)) == set(messages.OFFICER_REASONS)
    for code, texts in messages.OFFICER_REASONS.items():
        assert set(texts) == set(messages.LANGUAGES), code
        bodies = set()
        for language in messages.LANGUAGES:
            text = messages.notice("loan_rejected", language, {"reason_code": code})
            assert texts[language] in text and is_gsm7(text), text
            assert measure(text).length <= messages.SMS_CHARS, text
            bodies.add(text)
        assert len(bodies) == 3, code
    # Free text is sent as written; an unknown code is not a reason.
    assert messages.notice("loan_rejected", "sw", {"reason": "Hakuna"}).endswith(". Hakuna")
    assert messages.notice("loan_rejected", "en", {"reason_code": "NOPE"}).endswith("approved.")
