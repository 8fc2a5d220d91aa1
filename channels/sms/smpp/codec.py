"""SMPP 3.4 PDUs as bytes, with smpplib as the codec and nothing else from it.

smpplib's client is blocking and not thread-safe, but `smpplib.smpp.make_pdu` / `parse_pdu`
encode and decode on their own. This module hides its quirks: it needs a "client" object with
`.sequence` / `.next_sequence()`, ignores `sequence=` given as a keyword (we set the attribute
after construction), returns C-strings as bytes, and parses truncated or inconsistent bodies
without complaint (so `check_sm_body` walks the structure first and a malformed deliver_sm gets a
generic_nack instead of garbage fields). A deliver_sm's TLVs are read here too, by the length
each one states: smpplib reads integer TLVs by their defined size and C-string ones one byte
short, so an odd TLV shifted the rest (or cut an id short).

Header-only PDUs (enquire_link, unbind, generic_nack and their responses), deliver_sm_resp (an
empty message_id) and the one C-string of submit_sm_resp / bind_*_resp are packed and read with
`struct`: nothing for a codec to do there, and on the MO -> MT path smpplib's object building
for them cost as much as the submit_sm and deliver_sm themselves.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from smpplib import command as smpplib_command
from smpplib import consts
from smpplib import smpp as smpplib_smpp

HEADER = struct.Struct(">LLLL")
HEADER_BYTES = 16
MAX_PDU_BYTES = 65_536  # a deliver_sm with a full message_payload fits; more is an attack or noise
RESP_BIT = 0x80000000
MAX_SEQUENCE = 0x7FFFFFFF

GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_TRANSMITTER = 0x00000002
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
BIND_TRANSCEIVER = 0x00000009
OUTBIND = 0x0000000B
ENQUIRE_LINK = 0x00000015
ALERT_NOTIFICATION = 0x00000102
DATA_SM = 0x00000103

BIND_COMMANDS = {
    "trx": (BIND_TRANSCEIVER, "bind_transceiver"),
    "tx": (BIND_TRANSMITTER, "bind_transmitter"),
    "rx": (BIND_RECEIVER, "bind_receiver"),
}

ESME_ROK: int = consts.SMPP_ESME_ROK
ESME_RINVCMDLEN: int = consts.SMPP_ESME_RINVCMDLEN
ESME_RINVCMDID: int = consts.SMPP_ESME_RINVCMDID
ESME_RSYSERR: int = consts.SMPP_ESME_RSYSERR
ESME_RMSGQFUL: int = consts.SMPP_ESME_RMSGQFUL
ESME_RTHROTTLED: int = consts.SMPP_ESME_RTHROTTLED
ESME_RX_T_APPN: int = consts.SMPP_ESME_RX_T_APPN  # temporary application error: the SMSC retries
ESME_RINVBNDSTS: int = consts.SMPP_ESME_RINVBNDSTS

# Statuses after which the same submit_sm may succeed later (the rest are the message's fault).
TEMPORARY_STATUSES: frozenset[int] = frozenset(
    {
        consts.SMPP_ESME_RSYSERR,
        consts.SMPP_ESME_RMSGQFUL,
        consts.SMPP_ESME_RTHROTTLED,
        consts.SMPP_ESME_RX_T_APPN,
        consts.SMPP_ESME_RINVBNDSTS,
        consts.SMPP_ESME_RSUBMITFAIL,
        consts.SMPP_ESME_RUNKNOWNERR,
    }
)
SLOW_DOWN_STATUSES: frozenset[int] = frozenset(
    {consts.SMPP_ESME_RTHROTTLED, consts.SMPP_ESME_RMSGQFUL}
)


class CodecError(ValueError):
    """A PDU that cannot be encoded or decoded."""


def status_text(status: int) -> str:
    desc = consts.DESCRIPTIONS.get(status, "unknown status")
    return f"0x{status:08X} {desc}"


class _SequenceHolder:
    """smpplib PDUs insist on a client with these two members; we set sequences ourselves."""

    sequence = 0

    def next_sequence(self) -> int:
        return 0


_HOLDER = _SequenceHolder()


def header_only(command_id: int, sequence: int, status: int = ESME_ROK) -> bytes:
    return HEADER.pack(HEADER_BYTES, command_id, status, sequence)


_SM_MANDATORY = smpplib_command.SubmitSM.params_order[
    : smpplib_command.SubmitSM.params_order.index("short_message") + 1
]


class _SubmitSm(smpplib_command.SubmitSM):  # type: ignore[misc]
    """smpplib's submit_sm, encoding only the mandatory fields: the gateway sends no TLVs
    (concatenation travels as a UDH in short_message). smpplib's own class walks all 42
    parameters twice per PDU (setting each optional one to None, then asking each whether it
    is set), which was most of the codec's share of an MO -> MT round trip. Same encoder,
    same bytes: a property test compares them with `make_pdu("submit_sm")`."""

    params: ClassVar[dict[str, Any]] = {
        name: smpplib_command.SubmitSM.params[name] for name in _SM_MANDATORY
    }
    params_order = _SM_MANDATORY


class _DeliverSm(smpplib_command.DeliverSM):  # type: ignore[misc]
    """smpplib's deliver_sm decoder for the mandatory fields, without setting every optional
    parameter to None on each instance first. The TLVs are read by `decode_deliver_sm`, not
    by smpplib: it reads an integer TLV by its defined size whatever the TLV's length says
    (and a C-string one as one byte shorter), so one odd TLV the gateway never uses shifted
    the rest and cost the MO. Same fields as smpplib's own class for well-formed TLVs
    (compared in a property test)."""

    def __init__(self, command: str, **kwargs: Any) -> None:
        smpplib_command.Command.__init__(self, command, **kwargs)

    def parse_optional_params(self, data: bytes) -> None:
        pass


for _name in smpplib_command.DeliverSM.params:
    if not hasattr(_DeliverSm, _name):
        setattr(_DeliverSm, _name, None)

_LEAN_ENCODERS: dict[str, tuple[type[Any], frozenset[str]]] = {
    "submit_sm": (_SubmitSm, frozenset(_SM_MANDATORY)),
}


def encode(command: str, sequence: int, status: int = ESME_ROK, **fields: Any) -> bytes:
    """Encode one PDU by smpplib name (`submit_sm`, `bind_transceiver`, ...)."""
    try:
        lean = _LEAN_ENCODERS.get(command)
        if lean is not None and fields.keys() <= lean[1]:
            pdu = lean[0](command, client=_HOLDER, **fields)
        else:
            pdu = smpplib_smpp.make_pdu(command, client=_HOLDER, **fields)
        pdu.sequence = sequence
        pdu.status = status
        data: bytes = pdu.generate()
    except Exception as exc:  # smpplib raises a mix of ValueError, TypeError, struct.error
        raise CodecError(f"cannot encode {command}: {exc}") from exc
    return data


def _decode(frame: bytes) -> Any:
    try:
        pdu = smpplib_smpp.parse_pdu(frame, client=_HOLDER, allow_unknown_opt_params=True)
    except Exception as exc:
        raise CodecError(f"cannot decode PDU: {exc}") from exc
    if pdu is None:
        raise CodecError("unknown command id")
    return pdu


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


@dataclass(frozen=True, slots=True)
class Response:
    """A *_resp (or generic_nack) as the session needs it."""

    command_id: int
    status: int
    sequence: int
    message_id: str  # submit_sm_resp's id, bind_*_resp's system_id, "" otherwise


def decode_response(frame: bytes) -> Response:
    _, command_id, status, sequence = HEADER.unpack_from(frame)
    if len(frame) == HEADER_BYTES or status != ESME_ROK:
        # An error response carries no body worth reading (SMPP 3.4 says it is not returned).
        return Response(command_id, status, sequence, "")
    # submit_sm_resp (message_id) and bind_*_resp (system_id) open with one C-string; what
    # follows (a bind_resp's sc_interface_version TLV) is not needed.
    # An SMSC that leaves the NUL off the id still took the message: the id runs to the
    # PDU's end (as `receipted_message_id` is read), rather than a permanent failure of a
    # message the SMSC accepted and will deliver.
    end = frame.find(b"\x00", HEADER_BYTES)
    if end < 0:
        end = len(frame)
    return Response(command_id, status, sequence, frame[HEADER_BYTES:end].decode("latin-1"))


@dataclass(frozen=True, slots=True)
class DeliverSm:
    """The fields of a deliver_sm the channel reads, as Python types."""

    sequence: int
    source_addr: str
    source_addr_ton: int
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes
    message_payload: bytes | None
    receipted_message_id: str | None
    message_state: int | None
    network_error_code: bytes | None
    sar_msg_ref_num: int | None
    sar_total_segments: int | None
    sar_segment_seqnum: int | None
    user_message_reference: int | None
    # An SMSC that fills these in on a deliver_sm (they should be empty) gives each MO its
    # own values: the MO's identity, the same on a redelivery.
    schedule_delivery_time: str = ""
    validity_period: str = ""
    # Vendor-specific TLVs (tags 0x1400-0x3FFF), which smpplib skips: (tag, value) in order.
    vendor_tlvs: tuple[tuple[int, bytes], ...] = ()


# Mandatory part of submit_sm/deliver_sm: (kind, max C-string length incl. NUL or int size).
_SM_LAYOUT = (
    ("c", 6),  # service_type
    ("i", 1),  # source_addr_ton
    ("i", 1),  # source_addr_npi
    ("c", 21),  # source_addr
    ("i", 1),  # dest_addr_ton
    ("i", 1),  # dest_addr_npi
    ("c", 21),  # destination_addr
    ("i", 1),  # esm_class
    ("i", 1),  # protocol_id
    ("i", 1),  # priority_flag
    ("c", 17),  # schedule_delivery_time
    ("c", 17),  # validity_period
    ("i", 1),  # registered_delivery
    ("i", 1),  # replace_if_present_flag
    ("i", 1),  # data_coding
    ("i", 1),  # sm_default_msg_id
)


def check_sm_body(body: bytes) -> str | None:
    """What is structurally wrong with a submit_sm/deliver_sm body, or None. smpplib would
    parse these into shifted fields instead of failing."""
    return _walk_sm_body(body)[0]


def _walk_sm_body(body: bytes) -> tuple[str | None, int]:
    """(problem or None, where the TLVs start)."""
    pos = 0
    for kind, size in _SM_LAYOUT:
        if kind == "i":
            pos += size
            continue
        end = body.find(b"\x00", pos, pos + size)
        if end < 0:
            return "a C-string field is missing its terminator or is too long", pos
        pos = end + 1
    if pos >= len(body):
        return "the body ends before short_message", pos
    pos += 1 + body[pos]  # sm_length, then the message
    if pos > len(body):
        return "short_message is shorter than sm_length", pos
    return _check_tlvs(body, pos), pos


TLV_RECEIPTED_MESSAGE_ID = 0x001E


def _tlvs(body: bytes, pos: int) -> list[tuple[int, bytes]]:
    """Every TLV as (tag, value), in order (the body was checked: they tile it exactly)."""
    found = []
    while pos + 4 <= len(body):
        tag, length = struct.unpack_from(">HH", body, pos)
        found.append((tag, body[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return found


def _receipted_id(value: bytes) -> str | None:
    """receipted_message_id up to its NUL, or all of it when the SMSC sent none. (smpplib
    drops the last byte of a C-string TLV whatever it is, so `0A1B2C3D` without the NUL
    became `0A1B2C3`: an unmatched receipt, or another message's.)"""
    text = value.partition(b"\x00")[0].decode("latin-1")
    return text or None


def _check_tlvs(body: bytes, pos: int) -> str | None:
    while pos < len(body):  # the TLVs must tile the rest exactly
        if pos + 4 > len(body):
            return "truncated TLV header"
        (length,) = struct.unpack_from(">H", body, pos + 2)
        pos += 4 + length
        if pos > len(body):
            return "a TLV runs past the end of the PDU"
    return None


# The TLVs a deliver_sm is read for (SMPP 3.4 5.3.2).
TLV_USER_MESSAGE_REFERENCE = 0x0204
TLV_SAR_MSG_REF_NUM = 0x020C
TLV_SAR_TOTAL_SEGMENTS = 0x020E
TLV_SAR_SEGMENT_SEQNUM = 0x020F
TLV_NETWORK_ERROR_CODE = 0x0423
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_MESSAGE_STATE = 0x0427


def _tlv_int(tlvs: dict[int, bytes], tag: int) -> int | None:
    """An integer TLV as the number its bytes hold (big-endian), whatever width the SMSC
    gave it; None when absent, empty or wider than 4 octets."""
    value = tlvs.get(tag)
    if not value or len(value) > 4:
        return None
    return int.from_bytes(value, "big")


def decode_deliver_sm(frame: bytes) -> DeliverSm:
    body = frame[HEADER_BYTES:]
    problem, tlv_start = _walk_sm_body(body)
    if problem:
        raise CodecError(problem)
    try:
        pdu = _DeliverSm("deliver_sm", client=_HOLDER, allow_unknown_opt_params=True)
        pdu.parse(frame)
    except Exception as exc:
        raise CodecError(f"cannot decode PDU: {exc}") from exc
    tlv_list = _tlvs(body, tlv_start) if tlv_start < len(body) else []
    tlvs = dict(tlv_list)  # a tag sent twice: the last one counts (as in smpplib)
    return DeliverSm(
        sequence=pdu.sequence,
        source_addr=_text(pdu.source_addr),
        source_addr_ton=int(pdu.source_addr_ton or 0),
        destination_addr=_text(pdu.destination_addr),
        esm_class=int(pdu.esm_class or 0),
        data_coding=int(pdu.data_coding or 0),
        short_message=bytes(pdu.short_message or b""),
        message_payload=tlvs.get(TLV_MESSAGE_PAYLOAD) or None,
        receipted_message_id=_receipted_id(tlvs.get(TLV_RECEIPTED_MESSAGE_ID, b"")),
        message_state=_tlv_int(tlvs, TLV_MESSAGE_STATE),
        network_error_code=tlvs.get(TLV_NETWORK_ERROR_CODE) or None,
        sar_msg_ref_num=_tlv_int(tlvs, TLV_SAR_MSG_REF_NUM),
        sar_total_segments=_tlv_int(tlvs, TLV_SAR_TOTAL_SEGMENTS),
        sar_segment_seqnum=_tlv_int(tlvs, TLV_SAR_SEGMENT_SEQNUM),
        user_message_reference=_tlv_int(tlvs, TLV_USER_MESSAGE_REFERENCE),
        schedule_delivery_time=_text(pdu.schedule_delivery_time),
        validity_period=_text(pdu.validity_period),
        vendor_tlvs=tuple((tag, v) for tag, v in tlv_list if 0x1400 <= tag <= 0x3FFF),
    )


def deliver_sm_resp(sequence: int, status: int = ESME_ROK) -> bytes:
    # The body is an empty message_id (one NUL): nothing for a codec to do.
    return HEADER.pack(HEADER_BYTES + 1, DELIVER_SM | RESP_BIT, status, sequence) + b"\x00"
