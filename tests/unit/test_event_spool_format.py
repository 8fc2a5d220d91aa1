"""The event spool's entry format (gateway/event_spool.py): an event comes back as it went in,
and an entry that is not one this release can write is refused with a reason, never raised as
anything else (the writer sets it aside; anything else would stall every entry behind it)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import msgpack
import pytest

from core.devices import EventRow
from gateway.event_spool import (
    MAX_ENTRY_BYTES,
    EntryLater,
    EntryUnusable,
    decode,
    encode,
    unspoolable,
)

BREACH = EventRow(
    agent_code="AG12AB34CD",
    kind="breach",
    at=1_764_000_000.123456,
    fix_ts=1_763_999_990.5,
    fence_id=42,
    fence_version=3,
    details={
        "fix": {"lat": -1.28, "lon": 36.82, "acc": None, "mock": False},
        "decision": {"distance_m": 812.4, "zone": "outside"},
        "reason": "fix",
    },
)
ONLINE = EventRow(agent_code="AG1", kind="online", at=1_764_000_000.0)


@pytest.mark.parametrize("event", [BREACH, ONLINE], ids=["breach", "presence"])
def test_an_event_comes_back_as_it_went_in(event: EventRow) -> None:
    fields = encode(event)
    assert fields[b"v"] == b"1"
    assert decode(fields) == event  # times to the bit, the id, the details


def test_an_entry_is_compact() -> None:
    assert len(encode(ONLINE)[b"d"]) < 60
    assert len(encode(BREACH)[b"d"]) < 200


def body(**changes: Any) -> list[Any]:
    """BREACH's array with some of its places changed."""
    places = ["code", "kind", "at", "fix_ts", "fence_id", "fence_version", "details", "id"]
    values = msgpack.unpackb(encode(BREACH)[b"d"], raw=False)
    return [changes.get(p, v) for p, v in zip(places, values, strict=True)]


def packed(value: Any) -> dict[bytes, bytes]:
    return {b"v": b"1", b"d": msgpack.packb(value, use_bin_type=True)}


UNUSABLE: list[tuple[str, dict[bytes, bytes], str]] = [
    ("no fields of ours", {b"x": b"y"}, "format version"),
    ("a version zero", {b"v": b"0", b"d": encode(BREACH)[b"d"]}, "format version b'0'"),
    ("a version with a sign", {b"v": b"+2", b"d": encode(BREACH)[b"d"]}, "format version"),
    ("a version far too long", {b"v": b"2" * 10, b"d": encode(BREACH)[b"d"]}, "format version"),
    ("a version that is no number", {b"v": b"\xff\x00", b"d": b""}, "format version"),
    ("no payload", {b"v": b"1"}, "payload"),
    ("an oversized payload", {b"v": b"1", b"d": b"\x00" * (MAX_ENTRY_BYTES + 1)}, "payload"),
    ("garbage bytes", {b"v": b"1", b"d": b"\xc1\xff\xfe"}, "not msgpack"),
    ("a truncated array", {b"v": b"1", b"d": encode(BREACH)[b"d"][:20]}, "not msgpack"),
    ("extra data after the array", {b"v": b"1", b"d": encode(BREACH)[b"d"] + b"\x01"}, "msgpack"),
    ("a map, not an array", packed({"kind": "enter"}), "not an event array"),
    ("a short array", packed(body()[:7]), "not an event array"),
    ("an empty agent code", packed(body(code="")), "agent code"),
    ("a huge agent code", packed(body(code="A" * 65)), "agent code"),
    ("an agent code that is bytes", packed(body(code=b"AG1")), "agent code"),
    ("an unknown kind", packed(body(kind="teleport")), "kind"),
    ("a time that is text", packed(body(at="yesterday")), "time"),
    ("a time that is true", packed(body(at=True)), "time"),
    ("a time past year 9999", packed(body(at=1e300)), "time out of range"),
    ("a negative time", packed(body(at=-1.0)), "time out of range"),
    ("a time that is NaN", packed(body(at=float("nan"))), "time out of range"),
    ("a fix time that is infinite", packed(body(fix_ts=float("inf"))), "time out of range"),
    ("a fence id that is text", packed(body(fence_id="42")), "fence"),
    ("a fence version that is a float", packed(body(fence_version=3.5)), "fence"),
    ("details that are a list", packed(body(details=[1, 2])), "details"),
    ("details holding bytes", packed(body(details={"fix": b"\x00"})), "details"),
    ("details holding NaN", packed(body(details={"d": float("nan")})), "details"),
    ("a map key that is a number", packed(body(details={1: "x"})), "not msgpack"),
    ("an id too short", packed(body(id=b"\x01" * 15)), "event id"),
    ("an id that is text", packed(body(id=str(uuid.uuid4()))), "event id"),
]


@pytest.mark.parametrize(
    ("fields", "reason"), [(f, r) for _, f, r in UNUSABLE], ids=[c[0] for c in UNUSABLE]
)
def test_an_entry_that_is_no_event_is_refused_with_its_reason(
    fields: dict[bytes, bytes], reason: str
) -> None:
    with pytest.raises(EntryUnusable, match=reason.replace("(", r"\(")):
        decode(fields)


@pytest.mark.parametrize("version", [b"2", b"17", b"999999999"])
def test_an_entry_of_a_later_format_is_told_apart_from_garbage(version: bytes) -> None:
    """Left for a newer release to write, not set aside as unusable."""
    with pytest.raises(EntryLater, match="later"):
        decode({b"v": version, b"d": encode(BREACH)[b"d"]})


@pytest.mark.parametrize(
    ("details", "reason"),
    [
        ({"n": 2**64}, "OverflowError"),
        ({1: "x"}, "EntryUnusable"),
        ({"at": object()}, "TypeError"),
        ({"d": float("nan")}, "details"),
    ],
    ids=["an integer past 64 bits", "a key that is no string", "an object", "NaN"],
)
def test_an_event_the_spool_cannot_hold_says_why(details: dict[Any, Any], reason: str) -> None:
    assert reason in (unspoolable(replace(BREACH, details=details)) or "")


def test_an_event_the_spool_can_hold_has_no_problem() -> None:
    assert unspoolable(BREACH) is None
