"""The SEND confirmation's shared `transitions` machine: which events move which states, and
that events out of order change nothing (a YES with no SEND pending, a cancel after the
money moved)."""

from __future__ import annotations

import pytest

from channels.sms.dialogs import CODE_ALPHABET, CODE_LENGTH, SendDialog, fire, new_code

# (state, event, code given, next state)
MACHINE = [
    ("idle", "ask", None, "awaiting"),
    ("awaiting", "ask", None, "awaiting"),  # a new SEND replaces the pending one
    ("confirmed", "ask", None, "awaiting"),
    ("cancelled", "ask", None, "awaiting"),
    ("awaiting", "confirm", "ABCDE", "confirmed"),
    ("awaiting", "confirm", "abcde", "confirmed"),  # any case
    ("awaiting", "confirm", "ABCDF", "awaiting"),  # a wrong code
    ("idle", "confirm", "ABCDE", "idle"),
    ("confirmed", "confirm", "ABCDE", "confirmed"),
    ("cancelled", "confirm", "ABCDE", "cancelled"),
    ("awaiting", "cancel", None, "cancelled"),
    ("idle", "cancel", None, "idle"),
    ("confirmed", "cancel", None, "confirmed"),  # the money moved: nothing to cancel
]


@pytest.mark.parametrize(("state", "event", "code", "next_state"), MACHINE)
def test_machine(state: str, event: str, code: str | None, next_state: str) -> None:
    dialog = SendDialog(state=state, code="ABCDE", recipient="+254700000001", amount_minor=100)
    moved = fire(event, dialog, *([code] if code is not None else []))
    assert dialog.state == next_state
    assert moved == (next_state != state or (state, event) == ("awaiting", "ask"))


def test_an_empty_code_never_matches() -> None:
    dialog = SendDialog(state="awaiting", code="")
    assert not fire("confirm", dialog, "")
    assert dialog.state == "awaiting"


def test_the_dialog_round_trips_as_json_and_ignores_unknown_fields() -> None:
    dialog = SendDialog(state="awaiting", code="ABCDE", recipient="+254700000001", send_mo=7)
    assert SendDialog.from_json(dialog.to_json()) == dialog
    assert SendDialog.from_json(dialog.to_json()[:-1] + ',"later":1}') == dialog


def test_codes_have_no_look_alikes() -> None:
    codes = {new_code() for _ in range(200)}
    assert len(codes) > 190
    assert all(len(c) == CODE_LENGTH and set(c) <= set(CODE_ALPHABET) for c in codes)
    assert not set("0O1I") & set(CODE_ALPHABET)
