"""SMS text on the wire: GSM-7 or UCS-2, split into concatenated parts, and back.

Outbound, a text goes as GSM 03.38 (SMPP data_coding 0, one unpacked septet per byte, `0x1B`
escapes for `{}[]~^|\\€`) when every character fits once common look-alikes are replaced (a
curly apostrophe becomes `'`), and as UCS-2 (data_coding 8, UTF-16BE) otherwise. A text longer
than one SMS (160 septets / 70 UCS-2 units) is split into parts of 153 septets / 67 units, each
behind a 6-byte UDH (`05 00 03 ref total seq`). Splits never cut an escape pair or a surrogate
pair, which smpplib's `make_parts` can do (its FIXME); its GSM table also maps `§` wrongly, so
the tables here follow 3GPP TS 23.038 directly.

Inbound, `parse_udh` separates the user-data header (8- and 16-bit concatenation references)
from the payload, and `decode_payload` turns bytes into text by data_coding (0, 1, 3, 8, their
GSM 03.38 class and message-waiting variants, and the rest best-effort).
"""

from __future__ import annotations

from dataclasses import dataclass

DC_DEFAULT = 0  # SMSC default alphabet: GSM 03.38, unpacked
DC_IA5 = 1
DC_OCTET = 2
DC_LATIN1 = 3
DC_OCTET_4 = 4
DC_CYRILLIC = 6
DC_HEBREW = 7
DC_UCS2 = 8

ESM_UDHI = 0x40  # esm_class bit: short_message starts with a user-data header

SINGLE_GSM7_SEPTETS = 160
PART_GSM7_SEPTETS = 153  # 160 - 7 septets taken by the 6-byte UDH
SINGLE_UCS2_OCTETS = 140
PART_UCS2_OCTETS = 134  # 140 - 6 octets of UDH
MAX_PARTS = 10  # our limit for one reply (1,530 GSM-7 characters); the UDH allows 255

IEI_CONCAT_8 = 0x00
IEI_CONCAT_16 = 0x08

# 3GPP TS 23.038 default alphabet, indexed by code (0x1B is the escape, never a character).
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_ESC = 0x1B
_ENCODE: dict[str, bytes] = {c: bytes([i]) for i, c in enumerate(GSM7_BASIC) if i != _ESC}
_ENCODE.update({c: bytes([_ESC, code]) for c, code in GSM7_EXTENSION.items()})
_EXT_DECODE = {code: c for c, code in GSM7_EXTENSION.items()}

# Characters phones and keyboards produce that have a GSM-7 twin; without the swap one curly
# apostrophe would turn a whole reply into UCS-2 (70 characters per SMS instead of 160).
LOOKALIKES = str.maketrans(
    {
        "\u2018": "'",  # ‘
        "\u2019": "'",  # ’
        "\u201a": "'",  # ‚
        "\u2032": "'",  # ′
        "\u00b4": "'",  # ´
        "\u201c": '"',  # “
        "\u201d": '"',  # ”
        "\u201e": '"',  # „
        "\u00ab": '"',  # «
        "\u00bb": '"',  # »
        "\u2013": "-",  # –
        "\u2014": "-",  # —
        "\u2212": "-",  # −
        "\u2010": "-",  # ‐
        "\u2026": "...",  # …
        "\u00a0": " ",  # no-break space
        "\u2007": " ",
        "\u202f": " ",
        "\u2009": " ",
        "\t": " ",
    }
)


class MessageTooLong(ValueError):
    """The text needs more parts than MAX_PARTS."""


@dataclass(frozen=True, slots=True)
class Concat:
    """Where one part sits in a concatenated message."""

    ref: int
    total: int
    seq: int
    ref_bits: int  # 8 or 16 (UDH), 0 for the SAR TLVs


@dataclass(frozen=True, slots=True)
class SplitMessage:
    """A text ready for submit_sm: one `short_message` per part (UDH included when split)."""

    data_coding: int
    encoding: str  # "gsm7" or "ucs2"
    esm_class: int
    parts: tuple[bytes, ...]


def substitute_lookalikes(text: str) -> str:
    return text.translate(LOOKALIKES)


def gsm7_units(text: str) -> list[bytes] | None:
    """Each character as its GSM-7 bytes (1, or 2 with the escape); None if one does not fit."""
    units = []
    for char in text:
        unit = _ENCODE.get(char)
        if unit is None:
            return None
        units.append(unit)
    return units


def gsm7_decode(data: bytes) -> str:
    """Unpacked GSM-7 to text. An escape before an unknown code shows the basic character (as
    TS 23.038 asks); a byte above 0x7F is not GSM-7 and shows as '?'."""
    out = []
    escaped = False
    for byte in data:
        if byte > 0x7F:
            out.append("?")
            escaped = False
        elif escaped:
            out.append(_EXT_DECODE.get(byte, GSM7_BASIC[byte] if byte != _ESC else " "))
            escaped = False
        elif byte == _ESC:
            escaped = True
        else:
            out.append(GSM7_BASIC[byte])
    return "".join(out)


def _ucs2_units(text: str) -> list[bytes]:
    # One unit per character: 2 bytes, or 4 for a character outside the BMP (an emoji) so the
    # surrogate pair is never split across parts.
    return [char.encode("utf-16-be") for char in text]


def _chunk(units: list[bytes], limit: int) -> list[bytes]:
    parts: list[bytes] = []
    current = bytearray()
    for unit in units:
        if len(current) + len(unit) > limit:
            parts.append(bytes(current))
            current = bytearray()
        current += unit
    parts.append(bytes(current))
    return parts


def udh_concat(ref: int, total: int, seq: int) -> bytes:
    """The 6-byte concatenation header with an 8-bit reference."""
    return bytes([0x05, IEI_CONCAT_8, 0x03, ref & 0xFF, total, seq])


def split_text(text: str, ref: int) -> SplitMessage:
    """Encode `text` for submit_sm; `ref` is the concatenation reference (0-255) if it splits."""
    text = substitute_lookalikes(text)
    units = gsm7_units(text)
    if units is not None:
        coding, encoding, single, part = DC_DEFAULT, "gsm7", SINGLE_GSM7_SEPTETS, PART_GSM7_SEPTETS
    else:
        # Surrogate code points (a str from JSON escapes can hold them) do not encode: a pair
        # becomes its character, a lone half U+FFFD.
        units = _ucs2_units(fix_surrogates(text))
        coding, encoding, single, part = DC_UCS2, "ucs2", SINGLE_UCS2_OCTETS, PART_UCS2_OCTETS
    if sum(len(u) for u in units) <= single:
        return SplitMessage(coding, encoding, 0, (b"".join(units),))
    chunks = _chunk(units, part)
    if len(chunks) > MAX_PARTS:
        raise MessageTooLong(f"the text needs {len(chunks)} parts; at most {MAX_PARTS} are sent")
    total = len(chunks)
    parts = tuple(udh_concat(ref, total, i) + c for i, c in enumerate(chunks, start=1))
    return SplitMessage(coding, encoding, ESM_UDHI, parts)


def parse_udh(short_message: bytes) -> tuple[bytes, Concat | None]:
    """Split a UDHI short_message into (payload, concatenation info). Raises ValueError when the
    header is malformed (its length runs past the message, or an element is truncated)."""
    if not short_message:
        raise ValueError("UDHI set on an empty message")
    udhl = short_message[0]
    if udhl + 1 > len(short_message):
        raise ValueError("the UDH is longer than the message")
    header, payload = short_message[1 : udhl + 1], short_message[udhl + 1 :]
    concat = None
    pos = 0
    while pos < len(header):
        if pos + 2 > len(header):
            raise ValueError("truncated information element")
        iei, length = header[pos], header[pos + 1]
        value = header[pos + 2 : pos + 2 + length]
        if len(value) != length:
            raise ValueError("truncated information element")
        if iei == IEI_CONCAT_8 and length == 3:
            concat = Concat(value[0], value[1], value[2], 8)
        elif iei == IEI_CONCAT_16 and length == 4:
            concat = Concat((value[0] << 8) | value[1], value[2], value[3], 16)
        pos += 2 + length
    return payload, concat


def valid_concat(concat: Concat) -> bool:
    return 1 <= concat.seq <= concat.total <= 255 and concat.total >= 1


# Single-byte SMPP codings: data_coding -> (name we store, Python codec).
_SINGLE_BYTE = {
    DC_IA5: ("ia5", "ascii"),
    DC_LATIN1: ("latin1", "latin-1"),
    DC_CYRILLIC: ("iso-8859-5", "iso-8859-5"),
    DC_HEBREW: ("iso-8859-8", "iso-8859-8"),
}


def decode_payload(data: bytes, data_coding: int) -> tuple[str, str]:
    """(text, encoding name) for a short_message payload (UDH already removed). U+0000 is
    dropped: it means nothing in a text (handsets pad UCS-2 with it), and PostgreSQL's text
    refuses it, so one such MO failed its whole batch's store and the SMSC redelivered it for
    ever. (GSM-7's 0x00 is "@" and stays.)"""
    # GSM 03.38 codings SMSCs pass through: 0x10-0x13 and 0xF0-0xF3 are the default alphabet
    # with a message class, 0x18-0x1B UCS-2 with one; 0xC0-0xDF the default alphabet with a
    # message-waiting indication, 0xE0-0xEF UCS-2 with one.
    if (
        data_coding == DC_DEFAULT
        or (data_coding & 0xFC) in (0x10, 0xF0)
        or (0xC0 <= data_coding <= 0xDF)
    ):
        return gsm7_decode(data), "gsm7"
    if data_coding == DC_UCS2 or (data_coding & 0xFC) == 0x18 or (data_coding & 0xF0) == 0xE0:
        if len(data) % 2:
            data = data[:-1]  # half a unit is noise; the rest is still readable
        # surrogatepass keeps a half pair readable; `fix_surrogates` joins pairs after assembly.
        text = fix_surrogates(data.decode("utf-16-be", errors="surrogatepass"))
        return text.replace("\x00", ""), "ucs2"
    name, codec = _SINGLE_BYTE.get(data_coding, ("binary", "latin-1"))
    return data.decode(codec, errors="replace").replace("\x00", ""), name


def fix_surrogates(text: str) -> str:
    """Join surrogate halves into characters; a lone half becomes U+FFFD."""
    return text.encode("utf-16-be", errors="surrogatepass").decode("utf-16-be", errors="replace")
