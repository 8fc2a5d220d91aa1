"""Delivery receipts: which submitted message a receipt is about, and what happened to it.

A receipt is a deliver_sm with esm_class message type 0x04 (SMSC delivery receipt) or 0x20
(intermediate notification). The message is found by the `receipted_message_id` TLV first and
by the `id:` field of the receipt text second; the outcome by the `message_state` TLV first and
the `stat:` field second. The text is the SMPP 3.4 appendix B format
(`id:... sub:... dlvrd:... submit date:... done date:... stat:DELIVRD err:000 text:...`) and is
read as ASCII whatever data_coding says (decoding it with the message's coding is a known
cause of unmatched receipts).

SMSCs disagree on how they write message ids: hex in submit_sm_resp and decimal in the receipt
text, with or without leading zeros. `message_key` turns an id into one canonical key given the
base it is written in, so `0000001F` (hex) and `31` (decimal) match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ESM_TYPE_MASK = 0x3C
ESM_TYPE_RECEIPT = 0x04
ESM_TYPE_INTERMEDIATE = 0x20

SUBMITTED = "submitted"
DELIVERED = "delivered"
FAILED = "failed"
EXPIRED = "expired"

# SMPP 3.4 message_state values (5.3.2.35).
_MESSAGE_STATES = {
    1: ("ENROUTE", SUBMITTED),
    2: ("DELIVERED", DELIVERED),
    3: ("EXPIRED", EXPIRED),
    4: ("DELETED", FAILED),
    5: ("UNDELIVERABLE", FAILED),
    6: ("ACCEPTED", SUBMITTED),
    7: ("UNKNOWN", SUBMITTED),
    8: ("REJECTED", FAILED),
}
# stat: words as SMSCs write them (the appendix's 7-letter forms and common long forms).
_STAT_WORDS = {
    "DELIVRD": DELIVERED,
    "DELIVERED": DELIVERED,
    "EXPIRED": EXPIRED,
    "DELETED": FAILED,
    "UNDELIV": FAILED,
    "UNDELIVERABLE": FAILED,
    "REJECTD": FAILED,
    "REJECTED": FAILED,
    "FAILED": FAILED,
    "ACCEPTD": SUBMITTED,
    "ACCEPTED": SUBMITTED,
    "ENROUTE": SUBMITTED,
    "UNKNOWN": SUBMITTED,
}
# A value ends at white space or a NUL (a C-string's end): PostgreSQL's text refuses U+0000, so a
# receipt carrying one made the store's write raise and the SMSC got a system error for it.
_FIELD = re.compile(r"(?i)\b(id|stat|err):([^\s\x00]*)")
MAX_ID_LENGTH = 64  # SMPP message_id is a C-string of at most 65 octets


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str
    id_source: str  # "tlv" or "text"
    status: str  # submitted | delivered | failed | expired
    stat: str  # the SMSC's own word, for the record
    error: str | None


def is_receipt(esm_class: int) -> bool:
    return (esm_class & ESM_TYPE_MASK) in (ESM_TYPE_RECEIPT, ESM_TYPE_INTERMEDIATE)


def message_key(message_id: str, base: int) -> str:
    """The canonical matching key of a message id written in `base` (10 or 16)."""
    cleaned = message_id.strip().strip("\x00")
    try:
        return f"n:{int(cleaned, base)}"
    except ValueError:
        return f"s:{cleaned.lower()}"


def _text_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in _FIELD.findall(text):
        fields.setdefault(name.lower(), value)
    return fields


def parse_receipt(
    short_message: bytes,
    receipted_message_id: bytes | str | None,
    message_state: int | None,
    network_error_code: bytes | int | None = None,
) -> Receipt | None:
    """The receipt in a deliver_sm, or None when it names no message id at all."""
    fields = _text_fields(short_message.decode("latin-1"))
    tlv_id = receipted_message_id
    if isinstance(tlv_id, bytes):
        tlv_id = tlv_id.decode("latin-1")
    tlv_id = (tlv_id or "").split("\x00", 1)[0].strip()  # a C-string: up to its NUL
    if tlv_id:
        message_id, source = tlv_id, "tlv"
    elif fields.get("id"):
        message_id, source = fields["id"], "text"
    else:
        return None
    if len(message_id) > MAX_ID_LENGTH:
        return None
    if message_state in _MESSAGE_STATES:
        stat, status = _MESSAGE_STATES[message_state]
    else:
        stat = fields.get("stat", "").upper()
        status = _STAT_WORDS.get(stat, SUBMITTED)
    error = fields.get("err")
    if error is None and network_error_code:
        error = (
            network_error_code.hex()
            if isinstance(network_error_code, bytes)
            else str(network_error_code)
        )
    if error is not None and error.strip("0") == "":
        error = None  # err:000 means no error
    return Receipt(message_id, source, status, stat or "?", error)
