"""GSM-7 / UCS-2 choice, look-alike substitution, splitting, UDH and MO decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.sms.encoding import (
    DC_DEFAULT,
    DC_UCS2,
    ESM_UDHI,
    GSM7_BASIC,
    GSM7_EXTENSION,
    MAX_PARTS,
    Concat,
    MessageTooLong,
    decode_payload,
    fix_surrogates,
    gsm7_decode,
    parse_udh,
    split_text,
    substitute_lookalikes,
    udh_concat,
    valid_concat,
)

# (label, text, data_coding, number of parts, payload bytes per part without the UDH)
SPLIT_CASES = [
    ("empty", "", DC_DEFAULT, 1, [0]),
    ("plain ascii", "BAL 1234", DC_DEFAULT, 1, [8]),
    ("160 gsm chars fit one", "a" * 160, DC_DEFAULT, 1, [160]),
    ("161 gsm chars split", "a" * 161, DC_DEFAULT, 2, [153, 8]),
    ("400 gsm chars", "x" * 400, DC_DEFAULT, 3, [153, 153, 94]),
    ("escapes cost two", "{" * 80, DC_DEFAULT, 1, [160]),
    ("81 escapes split", "{" * 81, DC_DEFAULT, 2, [152, 10]),
    ("euro is gsm", "€" * 10, DC_DEFAULT, 1, [20]),
    ("curly apostrophe substituted", "It’s “fine” – ok…", DC_DEFAULT, 1, [19]),
    ("70 cyrillic fit one", "Ж" * 70, DC_UCS2, 1, [140]),
    ("71 cyrillic split", "Ж" * 71, DC_UCS2, 2, [134, 8]),
    ("one emoji forces ucs2", "Hi 😀", DC_UCS2, 1, [10]),
    ("emoji never split", "a" * 66 + "😀" + "b" * 10, DC_UCS2, 2, [132, 24]),
    ("greek capitals are gsm", "ΔΦΓΛΩΠΨΣΘΞ", DC_DEFAULT, 1, [10]),
    ("lower-case greek is not", "αβγ", DC_UCS2, 1, [6]),
    ("section sign is gsm 0x5F", "§", DC_DEFAULT, 1, [1]),
    ("backtick is not gsm", "`", DC_UCS2, 1, [2]),
]


@pytest.mark.parametrize(
    ("label", "text", "coding", "count", "sizes"), SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES]
)
def test_split_table(label: str, text: str, coding: int, count: int, sizes: list[int]) -> None:
    msg = split_text(text, ref=0x42)
    assert msg.data_coding == coding
    assert len(msg.parts) == count
    if count == 1:
        assert msg.esm_class == 0
        assert [len(p) for p in msg.parts] == sizes
        return
    assert msg.esm_class == ESM_UDHI
    for seq, part in enumerate(msg.parts, start=1):
        assert part[:6] == bytes([0x05, 0x00, 0x03, 0x42, count, seq])
    assert [len(p) - 6 for p in msg.parts] == sizes


def test_escape_pair_is_never_split() -> None:
    text = "a" * 152 + "€" + "b" * 10
    msg = split_text(text, ref=1)
    first = msg.parts[0][6:]
    assert first[-1:] != b"\x1b"
    assert len(first) == 152
    joined = b"".join(p[6:] for p in msg.parts)
    assert gsm7_decode(joined) == text


def test_gsm_table_bytes() -> None:
    msg = split_text("@£$_§¿à{}€", ref=0)
    assert msg.parts[0] == bytes(
        [0x00, 0x01, 0x02, 0x11, 0x5F, 0x60, 0x7F, 0x1B, 0x28, 0x1B, 0x29, 0x1B, 0x65]
    )


def test_ucs2_is_big_endian_without_bom() -> None:
    msg = split_text("Жa", ref=0)
    assert msg.parts[0] == b"\x04\x16\x00a"


def test_surrogate_code_points_are_sent_not_raised() -> None:
    """A str can hold surrogate code points (JSON's "\\ud83d" escapes, text decoded with
    surrogatepass): a lone one raised UnicodeEncodeError out of `send_text` (no SendFailed,
    so an MO's reply failed its MO as a handler bug). A pair becomes its character, a lone
    half U+FFFD."""
    assert split_text("Asante \ud83d", ref=0).parts[0] == "Asante \ufffd".encode("utf-16-be")
    assert split_text("\ud83d\ude00", ref=0).parts[0] == "😀".encode("utf-16-be")
    long = "ж" * 66 + "\ud83d\ude00" + "ж" * 5  # the pair joined, so never split
    assert [len(p) - 6 for p in split_text(long, ref=0).parts] == [132, 14]


def test_too_many_parts_is_refused() -> None:
    with pytest.raises(MessageTooLong):
        split_text("a" * (153 * MAX_PARTS + 1), ref=0)
    assert len(split_text("a" * 153 * MAX_PARTS, ref=0).parts) == MAX_PARTS


@given(st.text(max_size=600))
def test_roundtrip_any_text(text: str) -> None:
    try:
        msg = split_text(text, ref=9)
    except MessageTooLong:
        return
    payloads = [parse_udh(p)[0] if msg.esm_class else p for p in msg.parts]
    decoded, _ = decode_payload(b"".join(payloads), msg.data_coding)
    expected = substitute_lookalikes(text)
    if msg.data_coding == DC_UCS2:
        # U+0000 (not in GSM-7, so always UCS-2) is dropped when an MO is decoded.
        expected = fix_surrogates(expected).replace("\x00", "")
    assert decoded == expected
    assert all(len(p) <= (160 if msg.data_coding == DC_DEFAULT else 140) for p in msg.parts)


UDH_CASES = [
    ("8-bit ref", bytes([5, 0, 3, 0xAB, 3, 2]) + b"hi", b"hi", Concat(0xAB, 3, 2, 8)),
    ("16-bit ref", bytes([6, 8, 4, 0x12, 0x34, 2, 1]) + b"yo", b"yo", Concat(0x1234, 2, 1, 16)),
    ("other IE first", bytes([8, 0x0A, 1, 0, 0, 3, 7, 2, 2]) + b"x", b"x", Concat(7, 2, 2, 8)),
    ("no concat IE", bytes([3, 0x0A, 1, 0]) + b"z", b"z", None),
]


@pytest.mark.parametrize(
    ("label", "raw", "payload", "concat"), UDH_CASES, ids=[c[0] for c in UDH_CASES]
)
def test_parse_udh(label: str, raw: bytes, payload: bytes, concat: Concat | None) -> None:
    assert parse_udh(raw) == (payload, concat)


@pytest.mark.parametrize(
    "raw",
    [b"", bytes([9, 0, 3, 1, 2, 1]), bytes([5, 0, 9, 1, 2, 1]), bytes([1, 0])],
    ids=["empty", "udhl too long", "ie too long", "truncated ie"],
)
def test_malformed_udh_raises(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_udh(raw)


def test_valid_concat_bounds() -> None:
    assert valid_concat(Concat(1, 3, 3, 8))
    assert not valid_concat(Concat(1, 3, 4, 8))
    assert not valid_concat(Concat(1, 0, 0, 8))
    assert not valid_concat(Concat(1, 2, 0, 8))


DECODE_CASES = [
    ("gsm7 default", b"BAL 1234", 0, "BAL 1234", "gsm7"),
    ("gsm7 at and dollar", b"\x00\x02", 0, "@$", "gsm7"),
    ("gsm7 escapes", b"\x1b\x65\x1b\x3c", 0, "€[", "gsm7"),
    ("gsm7 unknown escape shows basic", b"\x1b\x41", 0, "A", "gsm7"),
    ("gsm7 high byte", b"a\xffb", 0, "a?b", "gsm7"),
    ("gsm7 with class", b"ok", 0xF1, "ok", "gsm7"),
    ("latin1", "café".encode("latin-1"), 3, "café", "latin1"),
    ("ucs2 cyrillic", "Привет".encode("utf-16-be"), 8, "Привет", "ucs2"),
    ("ucs2 emoji pair", "😀".encode("utf-16-be"), 8, "😀", "ucs2"),
    ("ucs2 odd byte dropped", b"\x00a\x00", 8, "a", "ucs2"),
    ("ucs2 lone surrogate", b"\xd8\x3d", 8, "\ufffd", "ucs2"),
    ("ia5", b"HELP", 1, "HELP", "ia5"),
    ("binary", b"\x01\x02", 4, "\x01\x02", "binary"),
]


@pytest.mark.parametrize(
    ("label", "raw", "coding", "text", "name"), DECODE_CASES, ids=[c[0] for c in DECODE_CASES]
)
def test_decode_table(label: str, raw: bytes, coding: int, text: str, name: str) -> None:
    assert decode_payload(raw, coding) == (text, name)


def test_tables_are_complete() -> None:
    assert len(GSM7_BASIC) == 128
    assert len(set(GSM7_BASIC)) == 128
    assert set(GSM7_EXTENSION) == set("\f^{}\\[~]|€")


def test_udh_concat_header() -> None:
    assert udh_concat(0x1FF, 3, 1) == bytes([5, 0, 3, 0xFF, 3, 1])
