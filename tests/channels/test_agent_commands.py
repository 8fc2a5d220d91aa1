"""Case tables for agent commands (envelope and per-op validation) and the topic rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from channels.agents import topics
from channels.agents.commands import decode_command
from menus.agent_commands import (
    Command,
    CommandInvalid,
    reply_error,
    reply_ok,
    validate_command,
)


def parse_command(payload: bytes) -> Command:
    return validate_command(decode_command(payload))


def js(**kw: Any) -> bytes:
    return json.dumps(kw).encode()


CASH_IN = {"id": "c-1", "op": "cash_in", "msisdn": "+254712345678", "amount_minor": 50_000,
           "pin": "5790"}  # fmt: skip
GOOD = [
    ("cash_in", js(**CASH_IN), "cash_in", True),
    ("cash_out", js(**{**CASH_IN, "op": "cash_out", "customer_pin": "9876"}), "cash_out", True),
    ("register_customer", js(id="r:9", op="register_customer", msisdn="254712345678",
                             first_name="Wanjiru", last_name="Kamau", national_id="12345678",
                             pin="5790", customer_pin="4321"), "register_customer", True),
    ("balance", js(id="b.1", op="balance", pin="123456"), "balance", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "op", "gated"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD]
)
def test_good_commands(payload: bytes, op: str, gated: bool) -> None:
    command = parse_command(payload)
    assert command.op == op
    assert command.gated is gated
    assert "5790" not in repr(command)  # PINs are secrets


BAD = [
    ("not JSON", b"{oops", None, "MALFORMED_COMMAND"),
    ("not an object", b'"cash_in"', None, "MALFORMED_COMMAND"),
    ("too large", js(**CASH_IN, pad="x" * 5000), None, "MALFORMED_COMMAND"),
    ("no id", js(**{k: v for k, v in CASH_IN.items() if k != "id"}), None, "VALIDATION_ERROR"),
    ("numeric id", js(**{**CASH_IN, "id": 7}), None, "VALIDATION_ERROR"),
    ("id with a space", js(**{**CASH_IN, "id": "a b"}), None, "VALIDATION_ERROR"),
    ("unknown op", js(**{**CASH_IN, "op": "steal"}), "c-1", "UNKNOWN_OP"),
    ("zero amount", js(**{**CASH_IN, "amount_minor": 0}), "c-1", "VALIDATION_ERROR"),
    ("fractional amount", js(**{**CASH_IN, "amount_minor": 10.5}), "c-1", "VALIDATION_ERROR"),
    ("amount as text", js(**{**CASH_IN, "amount_minor": "100"}), "c-1", "VALIDATION_ERROR"),
    ("bad msisdn", js(**{**CASH_IN, "msisdn": "07-12"}), "c-1", "VALIDATION_ERROR"),
    ("pin with letters", js(**{**CASH_IN, "pin": "12a4"}), "c-1", "VALIDATION_ERROR"),
    ("pin as number", js(**{**CASH_IN, "pin": 1234}), "c-1", "VALIDATION_ERROR"),
    ("cash_out without customer pin", js(**{**CASH_IN, "op": "cash_out"}), "c-1",
     "VALIDATION_ERROR"),
    ("unknown field", js(**CASH_IN, tip=5), "c-1", "VALIDATION_ERROR"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "command_id", "code"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_commands(payload: bytes, command_id: str | None, code: str) -> None:
    with pytest.raises(CommandInvalid) as err:
        parse_command(payload)
    assert (err.value.command_id, err.value.code) == (command_id, code)
    reply = reply_error(err.value.command_id, err.value.code, err.value.message, err.value.details)
    assert "5790" not in json.dumps(reply) and "12a4" not in json.dumps(reply)


def test_fingerprint_ignores_pins_but_not_the_request() -> None:
    a = parse_command(js(**CASH_IN))
    b = parse_command(js(**{**CASH_IN, "pin": "9999"}))
    c = parse_command(js(**{**CASH_IN, "amount_minor": 50_001}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert "5790" not in a.fingerprint()


def test_reply_shapes() -> None:
    assert reply_ok("c-1", {"balance_minor": 5}) == {
        "id": "c-1",
        "ok": True,
        "result": {"balance_minor": 5},
    }
    assert reply_error(None, "MALFORMED_COMMAND", "bad") == {
        "id": None,
        "ok": False,
        "error": {"code": "MALFORMED_COMMAND", "message": "bad"},
    }


TOPICS = [
    ("owntracks/AG001/phone", topics.Inbound(topics.Kind.OWNTRACKS, "AG001", "phone")),
    ("agents/AG001/location", topics.Inbound(topics.Kind.LOCATION, "AG001")),
    ("agents/AG001/cmd", topics.Inbound(topics.Kind.CMD, "AG001")),
    ("agents/AG001/status", topics.Inbound(topics.Kind.STATUS, "AG001")),
    ("agents/AG001/reply", None),
    ("agents/AG001/location/extra", None),
    ("owntracks/AG001/phone/event", None),
    ("agents/A/location", None),  # too short to be a code
    ("agents/A:1/location", None),
]


@pytest.mark.parametrize(("topic", "inbound"), TOPICS, ids=[t[0] for t in TOPICS])
def test_classify(topic: str, inbound: topics.Inbound | None) -> None:
    assert topics.classify(topic) == inbound


ACL = [
    ("own location", "publish", "agents/AG1/location", True),
    ("own owntracks", "publish", "owntracks/AG1/phone", True),
    ("someone else's location", "publish", "agents/AG2/location", False),
    ("someone else's owntracks", "publish", "owntracks/AG2/phone", False),
    ("forging a reply", "publish", "agents/AG1/reply", False),
    ("own replies", "read", "agents/AG1/reply", True),
    ("own events", "read", "agents/AG1/events", True),
    ("someone else's replies", "read", "agents/AG2/reply", False),
    ("every agent's replies", "read", "agents/+/reply", False),
    ("everything under own code", "read", "agents/AG1/#", False),
    ("everything", "read", "#", False),
    ("others' commands", "read", "agents/AG1/cmd", False),
]


@pytest.mark.parametrize(
    ("action", "topic", "allowed"), [a[1:] for a in ACL], ids=[a[0] for a in ACL]
)
def test_agent_acl(action: str, topic: str, allowed: bool) -> None:
    check = topics.agent_may_publish if action == "publish" else topics.agent_may_read
    assert check("AG1", topic) is allowed


def test_shared_subscriptions() -> None:
    assert topics.subscriptions(None)[0] == "owntracks/+/+"
    assert topics.subscriptions("gw")[1] == "$share/gw/agents/+/location"
