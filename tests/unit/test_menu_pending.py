"""A pending late-result record (menus.pending) round-trips through its JSON, and anything else
under its name (hostile, truncated, another version, wrong types) is a BadRecord, never a
crash or a record with made-up fields. The abandonment texts exist in every menu language."""

from __future__ import annotations

import json

import pytest

from menus.gsm import is_gsm7
from menus.messages import DONE, NOT_DONE, done_text, not_done_text
from menus.pending import BadRecord, Pending

GOOD = Pending(
    key="ussd:abc:5:send_do",
    action="send_money",
    msisdn="+254700000001",
    language="sw",
    menu="default",
    version=3,
    screen="send_do",
    promised_at=1_700_000_000.5,
    until=1_700_000_600.5,
)


def with_(**changes: object) -> str:
    data = json.loads(GOOD.to_json())
    data.update(changes)
    return json.dumps(data)


def test_a_record_round_trips() -> None:
    assert Pending.from_json(GOOD.to_json()) == GOOD
    assert Pending.from_json(GOOD.to_json().encode()) == GOOD


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("{", id="truncated"),
        pytest.param(b"\xff\xfe", id="not_utf8"),
        pytest.param("[]", id="a_list"),
        pytest.param("null", id="null"),
        pytest.param(with_(v=2), id="another_version"),
        pytest.param(with_(v=None), id="no_version"),
        pytest.param(with_(key=""), id="empty_key"),
        pytest.param(with_(key="k" * 129), id="longer_than_a_ledger_key"),
        pytest.param(with_(key="k" * 257), id="oversized_key"),
        pytest.param(with_(msisdn=254700000001), id="msisdn_a_number"),
        pytest.param(with_(action=None), id="no_action"),
        pytest.param(with_(version="3"), id="version_a_string"),
        pytest.param(with_(version=3.5), id="version_a_float"),
        pytest.param(with_(until=True), id="until_a_bool"),
        pytest.param(with_(promised_at="yesterday"), id="promised_at_a_string"),
    ],
)
def test_anything_else_is_a_bad_record(raw: str | bytes) -> None:
    with pytest.raises(BadRecord):
        Pending.from_json(raw)


def test_unknown_fields_are_not_carried() -> None:
    assert Pending.from_json(with_(pin="1234")) == GOOD


@pytest.mark.parametrize("action", sorted(NOT_DONE))
def test_the_abandonment_text_is_in_every_language(action: str) -> None:
    texts = {lang: not_done_text(action, lang) for lang in ("en", "sw", "fr")}
    assert len(set(texts.values())) == 3
    assert not_done_text(action, "yo") == texts["en"]
    # One SMS each: GSM-7, at most 160 characters.
    assert all(is_gsm7(t) and len(t) <= 160 for t in texts.values()), texts


@pytest.mark.parametrize("action", sorted(DONE))
def test_the_done_text_of_a_change_is_in_every_language(action: str) -> None:
    """A registration or a PIN change found done under its key by a sweeper: told so."""
    assert action in NOT_DONE
    texts = {lang: done_text(action, lang) for lang in ("en", "sw", "fr")}
    assert len(set(texts.values())) == 3
    assert done_text(action, "yo") == texts["en"]
    assert all(is_gsm7(t) and len(t) <= 160 for t in texts.values()), texts
