"""The SMS registration dialog's engine as case tables: (state, answer) -> (next state, reply),
the retry while registering (the chosen PIN again registers, anything else is told how to
finish), the shared machine's refusals of events out of order, the wrong-answer limit, what
the stored JSON holds (never a plain ID number or PIN), the masking of the answers as stored,
and every reply of the dialog in one GSM-7 SMS in each language."""

from __future__ import annotations

import json

import pytest

from channels.sms.commands import MASK, mask_secrets
from channels.sms.encoding import split_text
from channels.sms.registration import (
    MAX_WRONG_ANSWERS,
    QUESTIONS,
    RegDialog,
    answer,
    fire,
    is_pin_answer,
    pin_word,
    prefill,
    question,
)
from channels.sms.texts import LANGUAGES, TEXTS, text
from core.crypto import FieldCipher

CIPHER = FieldCipher("registration-dialog-test-secret-0123456789")
PIN = "4821"


def at(state: str, wrong: int = 0) -> RegDialog:
    """A dialog waiting at `state`, the answers before it given."""
    dialog = RegDialog(state=state, wrong=wrong, start_mo=7, last_mo=7)
    if state != "name":
        dialog.first_name, dialog.last_name = "Amina", "Otieno"
    if state in ("pin", "pin_confirm", "registering"):
        dialog.national_id = CIPHER.encrypt("A1234567")
    if state in ("pin_confirm", "registering"):
        dialog.pin = CIPHER.encrypt(PIN)
    if state == "registering":
        dialog.last_mo = dialog.final_mo = 9
    return dialog


# (label, state, answer, next state, the reply contains; "" = the caller registers)
CASES = [
    ("names", "name", "Amina Otieno", "national_id", "Thank you Amina. Now send your national"),
    ("names spaced, lower", "name", "  amina \t otieno ", "national_id", "Thank you amina."),
    ("names unicode", "name", "Zoë O'Neil", "national_id", "Thank you Zoë."),
    ("one name", "name", "Amina", "name", "Please send two names"),
    ("three names", "name", "Amina Wanjiru Otieno", "name", "Please send two names"),
    ("digit in a name", "name", "Amina 0tieno", "name", "letters only"),
    # Names the core's registration refuses: taken, the dialog ended in that refusal after
    # the customer had sent the ID number and the PIN twice.
    ("digit inside a name", "name", "Am1na Otieno", "name", "letters only"),
    ("underscore in a name", "name", "Amina Oti_eno", "name", "letters only"),
    ("a name ending in a hyphen", "name", "Amina Otieno-", "name", "letters only"),
    ("empty", "name", "", "name", "Please send two names"),
    ("emoji names", "name", "😀 😀", "name", "Please send two names"),
    ("a PIN for a name", "name", PIN, "name", "Please send two names"),
    ("id", "national_id", "a1234567", "pin", "choose a 4-digit PIN"),
    ("id digits", "national_id", "12345678", "pin", "choose a 4-digit PIN"),
    ("id too short", "national_id", "A12", "national_id", "4 to 20 letters or digits"),
    ("id too long", "national_id", "A" * 21, "national_id", "4 to 20 letters or digits"),
    ("id with a space", "national_id", "A123 4567", "national_id", "without spaces"),
    ("id with a dash", "national_id", "A1-234567", "national_id", "4 to 20 letters"),
    ("id names again", "national_id", "Amina Otieno", "national_id", "4 to 20 letters"),
    ("pin", "pin", PIN, "pin_confirm", "send YES and the same PIN, like this: YES <PIN>"),
    ("pin after PIN", "pin", f"pin {PIN}", "pin_confirm", "YES <PIN>"),
    ("pin after YES", "pin", f"YES {PIN}", "pin_confirm", "YES <PIN>"),
    ("pin spaced", "pin", f"  {PIN}\n", "pin_confirm", "YES <PIN>"),
    ("sequence", "pin", "1234", "pin", "too easy to guess"),
    ("down sequence", "pin", "9876", "pin", "too easy to guess"),
    ("one digit", "pin", "1111", "pin", "too easy to guess"),
    ("3 digits", "pin", "482", "pin", "exactly 4 digits"),
    ("5 digits", "pin", "48211", "pin", "exactly 4 digits"),
    ("letters", "pin", "abcd", "pin", "exactly 4 digits"),
    ("other digits", "pin", "٤٨٢١", "pin", "exactly 4 digits"),
    ("pin twice", "pin", f"{PIN} {PIN}", "pin", "exactly 4 digits"),
    ("other keyword", "pin", f"BAL {PIN}", "pin", "exactly 4 digits"),
    ("confirm", "pin_confirm", f"YES {PIN}", "registering", ""),
    ("confirm lower", "pin_confirm", f"yes {PIN}", "registering", ""),
    ("confirm bare", "pin_confirm", PIN, "registering", ""),
    ("confirm after PIN", "pin_confirm", f"PIN {PIN}", "registering", ""),
    ("mismatch", "pin_confirm", "YES 4812", "pin", "two PINs were different"),
    ("mismatch bare", "pin_confirm", "5930", "pin", "PIN <PIN>"),
    ("confirm without PIN", "pin_confirm", "YES", "pin_confirm", "Please send YES followed"),
    ("confirm short", "pin_confirm", "YES 48", "pin_confirm", "Please send YES followed"),
    ("confirm other digits", "pin_confirm", "YES ٤٨٢١", "pin_confirm", "Please send YES"),
]


@pytest.mark.parametrize(
    ("label", "state", "text_in", "next_state", "reply"), CASES, ids=[c[0] for c in CASES]
)
def test_answer(label: str, state: str, text_in: str, next_state: str, reply: str) -> None:
    dialog = at(state)
    step = answer(dialog, text_in, CIPHER)
    assert dialog.state == next_state
    assert step.register == (reply == "")
    if reply:
        assert reply in text(step.key, dialog.language, **step.values)
    mismatch = (state, next_state) == ("pin_confirm", "pin")  # goes back, and counts
    assert dialog.wrong == (0 if next_state != state and not mismatch else 1)


def test_the_answers_are_kept_and_secrets_encrypted() -> None:
    dialog = at("name")
    for reply in ("Amina Otieno", "a1234567", "PIN 4821"):
        answer(dialog, reply, CIPHER)
    assert (dialog.first_name, dialog.last_name) == ("Amina", "Otieno")
    assert CIPHER.decrypt(dialog.national_id) == "A1234567"  # upper case, as one-shot REG
    assert CIPHER.decrypt(dialog.pin) == PIN
    raw = dialog.to_json()
    assert "A1234567" not in raw and PIN not in raw
    assert RegDialog.from_json(raw) == dialog
    # Unknown fields in a stored record (a newer version wrote it) are ignored.
    assert RegDialog.from_json(json.dumps({**json.loads(raw), "later": 1})) == dialog


# While registering (the final message failed for good, or is still on its way): (answer) ->
# registers again with this message, or the reply says how to finish. Nothing counts as wrong.
RETRY = [
    ("YES and the PIN", f"YES {PIN}", True),
    ("PIN and the PIN", f"PIN {PIN}", True),
    ("the PIN alone", f" {PIN} ", True),
    ("lower case", f"yes {PIN}", True),
    ("another PIN", "YES 4812", False),
    ("another bare PIN", "5930", False),
    ("3 digits", "YES 482", False),
    ("other digits", "YES ٤٨٢١", False),
    ("the PIN twice", f"{PIN} {PIN}", False),
    ("a command with the PIN", f"BAL {PIN}", False),
    ("a SEND code", "YES ABCDE", False),
    ("text", "hello", False),
    ("empty", "", False),
    ("names again", "Amina Otieno", False),
]


@pytest.mark.parametrize(("label", "text_in", "registers"), RETRY, ids=[c[0] for c in RETRY])
def test_retry_while_registering(label: str, text_in: str, registers: bool) -> None:
    dialog = at("registering")
    before = dialog.to_json()
    step = answer(dialog, text_in, CIPHER)
    assert step.register is registers
    assert dialog.to_json() == before  # the caller moves final_mo; the pure step changes nothing
    if not registers:
        assert step == question(dialog)
        reply = text(step.key, "en")
        assert "still being opened" in reply and "PIN <PIN>" in reply and PIN not in reply


def test_registering_answers_how_to_finish_in_each_language() -> None:
    replies = {language: text(question(at("registering")).key, language) for language in LANGUAGES}
    assert len(set(replies.values())) == len(LANGUAGES)
    for reply in replies.values():
        for word in ("PIN <PIN>", "REG", "STOP"):
            assert word in reply, reply


def test_a_mismatch_forgets_the_first_pin() -> None:
    dialog = at("pin_confirm")
    answer(dialog, "YES 4812", CIPHER)
    assert dialog.state == "pin" and dialog.pin == ""
    assert answer(dialog, "PIN 5930", CIPHER).key == "reg_ask_confirm"
    assert dialog.candidate == ""  # one chance only
    assert answer(dialog, "YES 4812", CIPHER).key == "reg_mismatch"
    assert answer(dialog, "PIN 7305", CIPHER).key == "reg_ask_confirm"
    assert answer(dialog, "YES 7305", CIPHER).register
    assert dialog.state == "registering" and CIPHER.decrypt(dialog.pin) == "7305"


def test_a_new_pin_equal_to_the_mismatched_confirmation_registers() -> None:
    """The first PIN had the typo: the confirmation's PIN sent again is the second entry (the
    confirmation repeated word for word would be dropped as an SMSC redelivery)."""
    dialog = at("pin_confirm")  # the first PIN was 4821
    assert answer(dialog, "YES 5930", CIPHER).key == "reg_mismatch"
    assert "5930" not in dialog.to_json()
    step = answer(dialog, "PIN 5930", CIPHER)
    assert step.register and dialog.state == "registering"
    assert CIPHER.decrypt(dialog.pin) == "5930" and dialog.candidate == ""


def test_a_weak_pin_is_refused_even_as_the_candidate() -> None:
    dialog = at("pin_confirm")
    answer(dialog, "YES 1234", CIPHER)
    assert answer(dialog, "PIN 1234", CIPHER).key == "reg_weak_pin"
    assert dialog.state == "pin" and dialog.wrong == 2


@pytest.mark.parametrize("state", ["name", "national_id", "pin", "pin_confirm"])
def test_the_third_wrong_answer_ends_the_dialog(state: str) -> None:
    dialog = at(state, wrong=MAX_WRONG_ANSWERS - 1)
    bad = {"pin_confirm": "YES 4812"}.get(state, "x")
    step = answer(dialog, bad, CIPHER)
    assert step.key == "reg_too_many"
    assert dialog.state == "ended"
    assert dialog.pin == dialog.national_id == ""  # ending forgets the secrets
    assert "Send REG to start again" in text(step.key, "en")


def test_wrong_answers_add_up_across_questions() -> None:
    dialog = at("name")
    answer(dialog, "Amina", CIPHER)
    answer(dialog, "Amina Otieno", CIPHER)
    answer(dialog, "12", CIPHER)
    assert dialog.wrong == 2 and dialog.state == "national_id"
    assert answer(dialog, "?", CIPHER).key == "reg_too_many"


# The shared machine: (state, event) -> state; events out of order change nothing.
MACHINE = [
    ("idle", "start", "name"),
    ("ended", "start", "name"),
    ("registered", "start", "name"),
    ("pin_confirm", "start", "name"),
    ("name", "next", "national_id"),
    ("national_id", "next", "pin"),
    ("pin", "next", "pin_confirm"),
    ("pin_confirm", "next", "pin_confirm"),
    ("name", "confirm", "name"),
    ("pin", "confirm", "registering"),  # a PIN sent twice across a mismatch
    ("pin_confirm", "confirm", "registering"),
    ("pin_confirm", "mismatch", "pin"),
    ("name", "mismatch", "name"),
    ("registering", "finish", "registered"),
    ("registering", "retry", "registering"),  # the PIN again: a new final message
    ("pin_confirm", "retry", "pin_confirm"),
    ("registered", "retry", "registered"),
    ("pin_confirm", "finish", "pin_confirm"),
    ("registering", "end", "ended"),
    ("name", "end", "ended"),
    ("registered", "end", "registered"),
    ("idle", "end", "idle"),
    ("idle", "next", "idle"),
]


@pytest.mark.parametrize(("state", "event", "next_state"), MACHINE)
def test_machine(state: str, event: str, next_state: str) -> None:
    dialog = at(state) if state in QUESTIONS else RegDialog(state=state)
    reflexive = event == "start" or (state, event) == ("registering", "retry")
    assert fire(event, dialog) == (next_state != state or reflexive)
    assert dialog.state == next_state


# REG with fewer than four words: (words after REG) -> (state, first name, ID number)
PREFILL = [
    ([], "name", "", ""),
    (["Amina"], "name", "", ""),
    (["Amina", "Otieno"], "national_id", "Amina", ""),
    (["Amina", "0tieno"], "name", "", ""),
    (["Amina", "Otieno", "a1234567"], "pin", "Amina", "A1234567"),
    (["Amina", "Otieno", "12"], "national_id", "Amina", ""),
    (["1", "2", "3"], "name", "", ""),
]


@pytest.mark.parametrize(("given", "state", "first_name", "national_id"), PREFILL)
def test_prefill(given: list[str], state: str, first_name: str, national_id: str) -> None:
    dialog = RegDialog()
    fire("start", dialog)
    prefill(dialog, given, CIPHER)
    assert (dialog.state, dialog.first_name, dialog.wrong) == (state, first_name, 0)
    assert (CIPHER.decrypt(dialog.national_id) if dialog.national_id else "") == national_id


def test_start_forgets_the_old_secrets() -> None:
    dialog = at("pin_confirm")
    fire("start", dialog)
    assert dialog.pin == dialog.national_id == ""


def test_an_answer_to_no_question_is_a_bug() -> None:
    for state in ("idle", "registered", "ended"):
        with pytest.raises(AssertionError):
            answer(RegDialog(state=state), PIN, CIPHER)


@pytest.mark.parametrize(
    ("text_in", "pin", "shaped"),
    [
        (PIN, PIN, True),
        (f"PIN {PIN}", PIN, True),
        (f"yes {PIN}", PIN, True),
        (f"BAL {PIN}", None, False),
        (f"{PIN} {PIN}", None, False),
        ("YES ABCDE", "ABCDE", False),  # a SEND confirmation code, not a PIN
        ("", None, False),
        ("PIN 1234 5678", None, False),
    ],
)
def test_pin_shaped(text_in: str, pin: str | None, shaped: bool) -> None:
    assert pin_word(text_in) == pin
    assert is_pin_answer(text_in) is shaped


# The answers as the message store keeps them: no context needed to mask them.
MASKED = [
    (PIN, MASK),
    (f" {PIN} ", MASK),
    (f"YES {PIN}", f"YES {MASK}"),
    (f"PIN {PIN}", f"PIN {MASK}"),
    ("A1234567", MASK),
    ("AB123456789", MASK),  # 9 digits: outside a single word a phone number would stay
    ("123456789012", MASK),
    ("Amina Otieno", "Amina Otieno"),
    ("REG", "REG"),
    ("STOP", "STOP"),
]


@pytest.mark.parametrize(("text_in", "stored"), MASKED)
def test_answers_are_masked_when_stored(text_in: str, stored: str) -> None:
    assert mask_secrets(text_in) == stored


def test_every_dialog_text_fits_one_gsm7_sms() -> None:
    keys = [k for k in TEXTS if k.startswith("reg_")]
    keys += ["send_stopped", "nothing_to_stop", "not_registered", "registered"]
    assert set(QUESTIONS.values()) <= set(keys)
    for key in keys:
        for language in LANGUAGES:
            assert language in TEXTS[key], (key, language)
            body = text(key, language, first_name="Wanjiru")
            assert "{" not in body and PIN not in body
            message = split_text(body, ref=0)
            assert (message.encoding, len(message.parts)) == ("gsm7", 1), (key, language, body)


def test_question_names_the_current_step() -> None:
    assert question(at("national_id")).values == {"first_name": "Amina"}
    assert [question(at(s)).key for s in QUESTIONS] == list(QUESTIONS.values())
    assert question(at("registering")).key == "reg_pending"


@pytest.mark.parametrize(
    ("state", "waiting"),
    [(s, True) for s in (*QUESTIONS, "registering")]
    + [(s, False) for s in ("idle", "registered", "ended")],
)
def test_which_dialogs_wait(state: str, waiting: bool) -> None:
    dialog = at(state) if state in QUESTIONS or state == "registering" else RegDialog(state=state)
    assert dialog.waiting is waiting
    assert dialog.active is (waiting and state != "registering")
