"""Every text the gateway sends a phone, in every language, uses only GSM-7 letters.

One letter outside GSM-7 (ê, ç, û, ô ...) turns a whole SMS into UCS-2 (70 characters instead of
160, so a receipt becomes two or three billed parts) and a USSD page into 80 characters instead
of 182. French wording therefore avoids those letters (é, è, à, ù are GSM-7 and stay)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from channels.sms.texts import HINT_PROBLEMS, HINT_USAGE
from channels.sms.texts import TEXTS as SMS_TEXTS
from core.agent_messages import CUSTOMER_WORD
from core.agent_messages import TEXTS as AGENT_TEXTS
from core.loans.messages import NOTICES, REASONS, REASONS_WITHOUT_FIGURES
from core.receipts import TEMPLATES as RECEIPTS
from menus.bindings import _LINES as STATEMENT_LINES
from menus.gsm import is_gsm7
from menus.messages import DEFAULTS as SYSTEM_TEXTS

MENU = Path(__file__).resolve().parents[2] / "config" / "menus" / "default.yaml"


def _strings(node: object, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _catalogue(name: str, table: object) -> Iterator[tuple[str, str]]:
    yield from _strings(table, name)


CASES = [
    *_strings(yaml.safe_load(MENU.read_text()), "menu"),
    *_catalogue("sms", {k: dict(v) for k, v in SMS_TEXTS.items()}),
    *_catalogue("sms_hint_problems", HINT_PROBLEMS),
    *_catalogue("sms_hint_usage", HINT_USAGE),
    *_catalogue("receipts", RECEIPTS),
    *_catalogue("agent_texts", AGENT_TEXTS),
    *_catalogue("agent_customer_word", CUSTOMER_WORD),
    *_catalogue("loan_notices", NOTICES),
    *_catalogue("loan_reasons", REASONS),
    *_catalogue("loan_reasons_plain", REASONS_WITHOUT_FIGURES),
    *_catalogue("statement", STATEMENT_LINES),
    *_catalogue("system", {k: dict(v) for k, v in SYSTEM_TEXTS.items()}),
]


@pytest.mark.parametrize(("where", "text"), CASES, ids=[c[0] for c in CASES])
def test_gsm7_only(where: str, text: str) -> None:
    outside = sorted({ch for ch in text if not is_gsm7(ch)})
    assert not outside, f"{where}: {outside} would send {text!r} as UCS-2"


def test_the_check_would_catch_a_french_letter_outside_gsm7() -> None:
    assert not is_gsm7("Prêt") and not is_gsm7("Français") and is_gsm7("Réf à payer")


@pytest.mark.parametrize("language", ["en", "sw", "fr"])
def test_agent_texts_render_in_each_language_within_one_sms(language: str) -> None:
    from core.agent_messages import customer_word, render

    text = render(
        "cash_out_give",
        language,
        reference="RCX7K2M9QP",
        amount="KES 70,000.00",
        customer="Wanjiku Kamau-Otieno",
        msisdn="+254712345678",
    )
    assert "{" not in text and text.count("KES 70,000.00") == 2
    assert len(text) <= 160 and is_gsm7(text)
    assert render("cash_out_give", "de", reference="R") == render(
        "cash_out_give", "en", reference="R"
    )
    assert customer_word(language) != customer_word("xx") or language == "en"


BREACH = {
    "agent_code": "AG7Q2", "kind": "breach", "at": 1_800_000_000.0, "fix_ts": 1_799_999_990.0,
    "fence_id": 41, "fence_version": 3,
    "details": {"fix": {"lat": -1.2801234, "lon": 36.8212345, "acc": 12.4},
                "decision": {"distance_m": 812.6}},
}  # fmt: skip


def test_the_english_breach_alert_reads_as_before() -> None:
    from core.devices import EventRow, breach_text

    assert breach_text(EventRow(**BREACH)) == (  # type: ignore[arg-type]
        "Agent AG7Q2 is outside its permitted zone during its working hours (breach at "
        "2027-01-15 07:59:50 UTC); last fix -1.28012,36.82123 (accuracy 12 m), 813 m from "
        "geofence 41 (version 3)."
    )


@pytest.mark.parametrize(
    ("language", "words"),
    [("sw", ("Wakala AG7Q2", "usahihi 12 m", "mita 813 kutoka eneo 41 (toleo 3)")),
     ("fr", ("L'agent AG7Q2", "précision 12 m", "à 813 m de la zone 41 (version 3)"))],
)  # fmt: skip
def test_breach_alerts_in_each_staff_language(language: str, words: tuple[str, ...]) -> None:
    from core.devices import EventRow, breach_text

    text = breach_text(EventRow(**BREACH), language)  # type: ignore[arg-type]
    assert all(w in text for w in words), text
    assert "2027-01-15 07:59:50 UTC" in text and "-1.28012,36.82123" in text
    assert "{" not in text and is_gsm7(text) and text.endswith(".")
    bare = EventRow(**{**BREACH, "details": {"fix": {"lat": 0.5, "lon": 1.5, "acc": None}}})
    unknown = {"sw": "(usahihi haijulikani)", "fr": "(précision inconnue)"}[language]
    assert unknown in breach_text(bare, language)
    assert breach_text(EventRow(**BREACH), "xx") == breach_text(EventRow(**BREACH))  # type: ignore[arg-type]
