"""Case tables for the SMS command grammar: good, malformed, extra spaces, lower case, bad PINs,
unknown words, the hints in every language, and the masking of secrets for storage."""

from __future__ import annotations

import re

import pytest

from channels.sms.commands import (
    HELP_TEXT,
    MASK,
    Balance,
    ChangePin,
    Confirm,
    Help,
    Language,
    Loan,
    LoanStatus,
    Malformed,
    Mini,
    ParseResult,
    Register,
    Repay,
    Send,
    Stop,
    Unknown,
    hint,
    mask_secrets,
    parse,
    starts_registration,
)
from channels.sms.encoding import gsm7_units, split_text
from channels.sms.texts import HINT_PROBLEMS, HINT_USAGE, LANGUAGES, hint_text
from channels.sms.texts import text as catalogue_text
from core.customers import check_name
from core.errors import ValidationFailed

GOOD = [
    ("help", "HELP", Help()),
    ("help lower", "help", Help()),
    ("balance", "BAL 1234", Balance("1234")),
    ("balance lower", "bal 1234", Balance("1234")),
    ("balance mixed case", "BaL 1234", Balance("1234")),
    ("balance extra spaces", "  BAL    1234  ", Balance("1234")),
    ("balance tab and newline", "BAL\t1234\n", Balance("1234")),
    ("send local", "SEND 0712345678 500 1234", Send("0712345678", "500", "1234")),
    ("send e164", "send +254712345678 12.50 1234", Send("+254712345678", "12.50", "1234")),
    ("send spaces", "SEND   0712345678   500    1234", Send("0712345678", "500", "1234")),
    ("mini", "MINI 1234", Mini("1234")),
    ("pin change", "PIN 1234 5678", ChangePin("1234", "5678")),
    ("lang sw", "LANG SW", Language("sw")),
    ("lang fr lower", "lang fr", Language("fr")),
    ("loan", "LOAN 1000 1234", Loan("1000", "1234")),
    ("loan status", "LOAN STATUS 1234", LoanStatus("1234")),
    ("loan with product", "LOAN quick 1000 1234", Loan("1000", "1234", product="QUICK")),
    ("loan with product code", "loan BIZ_2-X 12.50 1234", Loan("12.50", "1234", "BIZ_2-X")),
    ("loan status lower", "loan status 1234", LoanStatus("1234")),
    ("repay", "REPAY 250.5 1234", Repay("250.5", "1234")),
    ("register", "REG Jane Doe 12345678 1234", Register("Jane", "Doe", "12345678", "1234")),
    (
        "register unicode name",
        "reg Zoë O'Neil ab12cd 4321",
        Register("Zoë", "O'Neil", "AB12CD", "4321"),
    ),
    ("confirm", "YES ab12", Confirm("ab12")),
    ("stop", "STOP", Stop()),
    ("cancel lower, words after it", "cancel my registration", Stop()),
]


@pytest.mark.parametrize(("label", "text", "expected"), GOOD, ids=[c[0] for c in GOOD])
def test_good(label: str, text: str, expected: ParseResult) -> None:
    assert parse(text) == expected


MALFORMED = [
    ("bal without pin", "BAL", "BAL", "arguments"),
    ("bal two args", "BAL 1234 5678", "BAL", "arguments"),
    ("bal short pin", "BAL 123", "BAL", "pin"),
    ("bal long pin", "BAL 12345", "BAL", "pin"),
    ("bal letters in pin", "BAL 12a4", "BAL", "pin"),
    ("send missing amount", "SEND 0712345678 1234", "SEND", "arguments"),
    ("send bad phone", "SEND 07123 500 1234", "SEND", "phone"),
    ("send letters phone", "SEND john 500 1234", "SEND", "phone"),
    ("send negative amount", "SEND 0712345678 -500 1234", "SEND", "amount"),
    ("send three decimals", "SEND 0712345678 5.005 1234", "SEND", "amount"),
    ("send comma amount", "SEND 0712345678 1,000 1234", "SEND", "amount"),
    ("send wrong pin", "SEND 0712345678 500 12", "SEND", "pin"),
    ("mini wrong pin", "MINI abcd", "MINI", "pin"),
    ("pin same twice", "PIN 1234 1234", "PIN", "same_pin"),
    ("pin one arg", "PIN 1234", "PIN", "arguments"),
    ("pin bad new", "PIN 1234 56", "PIN", "pin"),
    ("lang unknown", "LANG de", "LANG", "language"),
    ("lang missing", "LANG", "LANG", "arguments"),
    ("loan no pin", "LOAN 1000", "LOAN", "arguments"),
    ("loan status no pin", "LOAN STATUS", "LOAN", "arguments"),
    ("loan bad amount", "LOAN lots 1234", "LOAN", "amount"),
    ("loan three numbers", "LOAN 500 1234 5678", "LOAN", "arguments"),
    ("loan product one letter", "LOAN q 500 1234", "LOAN", "product"),
    ("loan product bad char", "LOAN quick! 500 1234", "LOAN", "product"),
    ("loan product bad amount", "LOAN QUICK lots 1234", "LOAN", "amount"),
    ("loan product bad pin", "LOAN QUICK 500 12", "LOAN", "pin"),
    ("loan status extra word", "LOAN STATUS 500 1234", "LOAN", "arguments"),
    ("repay bad pin", "REPAY 100 1", "REPAY", "pin"),
    ("reg missing id", "REG Jane Doe 1234", "REG", "arguments"),
    ("reg digit name", "REG 1Jane Doe 12345678 1234", "REG", "name"),
    ("reg bad id", "REG Jane Doe 12 1234", "REG", "national_id"),
    ("yes no code", "YES", "YES", "arguments"),
    ("yes bad code", "YES a!", "YES", "code"),
    # Zero: the core refuses it after the PIN check, and its reason was in English only.
    ("send zero", "SEND 0712345678 0 1234", "SEND", "zero_amount"),
    ("send zero with decimals", "SEND 0712345678 000.00 1234", "SEND", "zero_amount"),
    ("loan zero", "LOAN 0 1234", "LOAN", "zero_amount"),
    ("repay zero", "REPAY 0.0 1234", "REPAY", "zero_amount"),
    # Names the core refuses (core.customers.check_name): the grammar took them, so a REG or a
    # whole registration dialog ended in the core's refusal, in English.
    ("reg digit inside a name", "REG Am1na Otieno 12345678 4821", "REG", "name"),
    ("reg underscore in a name", "REG Jane_Ann Doe 12345678 4821", "REG", "name"),
    ("reg name ends with a hyphen", "REG Jane- Doe 12345678 4821", "REG", "name"),
    ("reg double hyphen", "REG Mary--Anne Doe 12345678 4821", "REG", "name"),
]


@pytest.mark.parametrize(
    ("label", "text", "keyword", "problem"), MALFORMED, ids=[c[0] for c in MALFORMED]
)
def test_malformed_gets_a_one_line_hint(label: str, text: str, keyword: str, problem: str) -> None:
    result = parse(text)
    assert isinstance(result, Malformed), result
    assert (result.keyword, result.problem) == (keyword, problem)
    assert "\n" not in result.hint
    assert "HELP" in result.hint
    assert len(result.hint) <= 160


UNKNOWN = [
    ("empty", ""),
    ("spaces only", "   "),
    ("word", "hello"),
    ("glued", "BAL1234"),
    ("number", "1234"),
    ("emoji", "😀"),
    ("too long", "BAL " + "x" * 600),
]


@pytest.mark.parametrize(("label", "text"), UNKNOWN, ids=[c[0] for c in UNKNOWN])
def test_unknown_gets_a_hint(label: str, text: str) -> None:
    result = parse(text)
    assert isinstance(result, Unknown)
    assert "HELP" in result.hint and "\n" not in result.hint


MASKING = [
    ("balance", "BAL 1234", "BAL ****"),
    ("balance spacing kept", "bal   1234 ", "bal   **** "),
    ("send keeps phone and amount", "SEND 0712345678 5000 1234", "SEND 0712345678 5000 ****"),
    ("pin change masks both", "PIN 1234 5678", "PIN **** ****"),
    ("reg masks id and pin", "REG Jane Doe 12345678 1234", "REG Jane Doe **** ****"),
    ("loan status", "LOAN STATUS 9876", "LOAN STATUS ****"),
    ("loan", "LOAN 1000 9876", "LOAN 1000 ****"),
    ("loan with product", "LOAN QUICK 1000 9876", "LOAN QUICK 1000 ****"),
    ("loan three numbers", "LOAN 500 9876 5678", "LOAN **** **** ****"),
    ("confirm code", "YES AB12", "YES ****"),
    ("malformed send", "SEND 0712345678 1234", "SEND 0712345678 ****"),
    ("short wrong pin", "BAL 123", "BAL ****"),
    ("glued: one word with digits, masked whole", "BAL1234", MASK),
    ("unknown with pin", "my pin is 4321 ok", "my pin is **** ok"),
    ("malformed keeps the phone", "SEND 0712345678 500 97", "SEND 0712345678 **** ****"),
    ("short fragment", "BAL 12", "BAL ****"),
    ("help untouched", "HELP", "HELP"),
    ("lang untouched", "LANG sw", "LANG sw"),
    ("a PIN alone", "4821", MASK),
    ("an ID number alone", "A1234567", MASK),
    ("a long ID number alone", "AB123456789012", MASK),
    ("an ID number alone, spaced", " 123456789 ", MASK),
    ("names alone untouched", "Amina Otieno", "Amina Otieno"),
    ("a word alone untouched", "Otieno", "Otieno"),
    ("stop untouched", "STOP", "STOP"),
    ("reg short: a long ID number", "REG Amina Otieno AB123456789", "REG Amina Otieno ****"),
    ("reg malformed: bad ID", "REG Jane Doe 12 1234", "REG Jane Doe **** ****"),
    (
        "reg malformed: digits in a name",
        "REG 1Jane Doe 12345678 1234",
        "REG ****Jane Doe **** ****",
    ),
    ("reg too many words", "reg Mary Anne Kamau ID12345678 4821", "reg Mary Anne **** **** ****"),
    ("reg alone untouched", "REG", "REG"),
    ("a full-width PIN", "BAL \uff11\uff12\uff13\uff14", "BAL ****"),
    ("zero amount", "SEND 0712345678 0 4821", "SEND 0712345678 **** ****"),
]


@pytest.mark.parametrize(("label", "text", "masked"), MASKING, ids=[c[0] for c in MASKING])
def test_mask_secrets(label: str, text: str, masked: str) -> None:
    assert mask_secrets(text) == masked
    assert MASK in masked or not any(ch.isdigit() for ch in text) or label.startswith("lang")


NAMES = ["Amina", "Zoë", "O'Neil", "Mary-Anne", "St.John", "Jr.", "Олена", "Ñúñez", "A" * 50]
NOT_NAMES = ["Am1na", "Jane_Ann", "Jane-", "Mary--Anne", "O'", "-Ann", ".J", "A" * 51, "😀"]


@pytest.mark.parametrize("name", NAMES + NOT_NAMES)
def test_a_name_the_grammar_takes_is_one_the_core_takes(name: str) -> None:
    """REG (and the registration dialog, which checks with REGISTER_SPEC) must not take a name
    the core's registration then refuses."""
    parsed = parse(f"REG {name} Otieno 12345678 4821")
    try:
        check_name(name, "first_name")
    except ValidationFailed:
        assert isinstance(parsed, Malformed) and parsed.problem == "name", parsed
    else:
        assert parsed == Register(name, "Otieno", "12345678", "4821")
    assert (name in NAMES) is isinstance(parsed, Register)


REG_STARTS = [
    ("REG", True),
    ("  reg  ", True),
    ("REG Amina", True),
    ("REG Amina Otieno A1234567", True),  # three words: the dialog, from its first question
    ("REG Amina Otieno A1234567 4821", False),  # the one-shot form
    ("REG Amina Otieno A1234567 4821 extra", False),  # malformed one-shot: a hint
    ("REGISTER", False),
    ("BAL", False),
    ("", False),
]


@pytest.mark.parametrize(("text", "starts"), REG_STARTS)
def test_starts_registration(text: str, starts: bool) -> None:
    assert starts_registration(text) is starts
    if not starts and text.upper().startswith("REG "):
        assert not isinstance(parse(text), Register) or len(text.split()) == 5


def test_masked_text_never_contains_a_pin_from_the_good_table() -> None:
    for _, text, expected in GOOD:
        pins = [getattr(expected, f) for f in ("pin", "old_pin", "new_pin") if hasattr(expected, f)]
        masked = mask_secrets(text)
        for pin in pins:
            assert pin not in masked.split(), (text, masked)


def test_help_text_lists_every_keyword() -> None:
    for word in ("BAL", "SEND", "MINI", "PIN", "LANG", "LOAN", "REPAY", "REG"):
        assert word in HELP_TEXT


@pytest.mark.parametrize("language", LANGUAGES)
def test_help_in_every_language_names_the_loan_product_form_in_one_gsm7_sms(
    language: str,
) -> None:
    """`LOAN <product code> <amount> <PIN>` (and the plain form) as `LOAN [product] amount pin`,
    the keywords as the parser reads them, in one GSM-7 SMS."""
    written = catalogue_text("help", language)
    assert re.search(r"LOAN \[\w+\] \w+ pin;", written), written
    for word in ("BAL", "SEND", "MINI", "PIN", "LANG", "LOAN STATUS", "REPAY"):
        assert word in written, (word, written)
    message = split_text(written, ref=0)
    assert (message.encoding, len(message.parts)) == ("gsm7", 1), written


@pytest.mark.parametrize("language", LANGUAGES)
def test_help_for_a_number_without_a_wallet_names_reg_in_one_gsm7_sms(language: str) -> None:
    """HELP from an unregistered number: the two ways to open a wallet and LANG, which is all
    such a number can use (the full list has no room for REG in Kiswahili and French)."""
    written = catalogue_text("help_unregistered", language)
    for word in ("REG ", " pin", "REG ", "LANG en/sw/fr", "HELP"):
        assert word in written, (word, written)
    assert written.count("REG") == 2, written  # the one-shot form and the step-by-step one
    message = split_text(written, ref=0)
    assert (message.encoding, len(message.parts)) == ("gsm7", 1), written


def test_help_and_hints_fit_one_sms() -> None:
    texts = [HELP_TEXT] + [r.hint for r in map(parse, [c[1] for c in MALFORMED + UNKNOWN])]
    for text in texts:
        assert len(split_text(text, ref=0).parts) == 1, text


# --- hints in the customer's language ---------------------------------------------------------

HINTS = [
    ("sw", "BAL 12", "PIN iwe tarakimu 4. Tumia: BAL <PIN>. Tuma HELP kuona amri zote."),
    (
        "fr",
        "SEND 07123 500 1234",
        "Le numéro de téléphone n'est pas valide. Utilisez : SEND <téléphone> <montant> <PIN>. "
        "Envoyez HELP pour toutes les commandes.",
    ),
    (
        "sw",
        "LOAN lots 1234",
        "Kiasi kiwe nambari kama 500 au 12.50. Tumia: LOAN [<msimbo>] <kiasi> <PIN> "
        "au LOAN STATUS <PIN>. Tuma HELP kuona amri zote.",
    ),
    (
        "fr",
        "PIN 1234 1234",
        "Le nouveau PIN doit différer de l'ancien. Utilisez : PIN <ancien PIN> <nouveau PIN>. "
        "Envoyez HELP pour toutes les commandes.",
    ),
    ("sw", "hello", "Samahani, hatukuelewa ujumbe huo. Tuma HELP kuona orodha ya amri."),
    ("fr", "hello", "Désolé, nous n'avons pas compris. Envoyez HELP pour la liste des commandes."),
    (
        "fr",
        "BAL " + "x" * 600,
        "Le message est trop long. Envoyez HELP pour la liste des commandes.",
    ),
    ("en", "BAL 12", "The PIN must be 4 digits. Use: BAL <PIN>. Send HELP for all commands."),
    ("de", "BAL 12", "The PIN must be 4 digits. Use: BAL <PIN>. Send HELP for all commands."),
]


@pytest.mark.parametrize(("language", "text", "expected"), HINTS, ids=[c[1][:20] for c in HINTS])
def test_hint_in_the_language(language: str, text: str, expected: str) -> None:
    result = parse(text)
    assert isinstance(result, Malformed | Unknown)
    assert hint(result, language) == expected


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_hint_fits_one_gsm7_sms_and_keeps_the_keywords(language: str) -> None:
    """Every problem with every command's form, in every language: one GSM-7 SMS that names the
    keyword as the parser reads it, and HELP."""
    hints = [hint_text(None, "unknown", language), hint_text(None, "too_long", language)]
    for keyword in HINT_USAGE:
        for problem in HINT_PROBLEMS:
            written = hint_text(keyword, problem, language)
            assert f" {keyword}" in written and "\n" not in written, written
            hints.append(written)
    for written in hints:
        assert "HELP" in written
        assert gsm7_units(written) is not None, written
        assert len(split_text(written, ref=0).parts) == 1, written
        assert "{" not in written and "}" not in written, written


def test_every_problem_and_form_is_translated() -> None:
    for problem, by_language in HINT_PROBLEMS.items():
        assert set(by_language) == set(LANGUAGES), problem
    for keyword, by_language in HINT_USAGE.items():
        assert "en" in by_language, keyword
        for written in by_language.values():
            assert written.split()[0] == keyword, written  # the keyword is never translated
    every_malformed = {parse(c[1]).problem for c in MALFORMED}  # type: ignore[union-attr]
    assert every_malformed <= set(HINT_PROBLEMS)
