"""The smpplib codec wrapper: what we pack by hand is what smpplib would decode, and bodies
smpplib would misparse are refused."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import smpp

from channels.sms.smpp.codec import (
    CodecError,
    check_sm_body,
    decode_deliver_sm,
    decode_response,
    deliver_sm_resp,
    encode,
    header_only,
)


class _Holder:
    sequence = 0

    def next_sequence(self) -> int:
        return 0


def test_deliver_sm_resp_is_what_smpplib_reads() -> None:
    frame = deliver_sm_resp(77, 0x64)
    pdu = smpp.parse_pdu(frame, client=_Holder())
    assert (pdu.command, pdu.sequence, pdu.status) == ("deliver_sm_resp", 77, 0x64)


@pytest.mark.parametrize("command", ["submit_sm_resp", "bind_transceiver_resp"])
def test_responses_read_by_hand_match_smpplib(command: str) -> None:
    field = "message_id" if command == "submit_sm_resp" else "system_id"
    frame = encode(command, 9, **{field: "0A1B2C"})
    resp = decode_response(frame)
    assert (resp.sequence, resp.status, resp.message_id) == (9, 0, "0A1B2C")


def test_error_response_has_no_id() -> None:
    frame = header_only(0x80000004, 5, 0x58)
    resp = decode_response(frame)
    assert (resp.status, resp.message_id) == (0x58, "")


def test_an_unterminated_message_id_runs_to_the_pdus_end() -> None:
    # The SMSC accepted the message (status 0) but left the NUL off its id: the id is read to
    # the end, as the receipt's TLV is, so the message is submitted, not failed for good.
    frame = encode("submit_sm_resp", 3, message_id="0A1B2C3D")[:-1]
    frame = (len(frame)).to_bytes(4, "big") + frame[4:]
    resp = decode_response(frame)
    assert (resp.status, resp.sequence, resp.message_id) == (0, 3, "0A1B2C3D")


def test_sequence_is_set_after_construction() -> None:
    # smpplib ignores sequence= as a keyword; the header must still carry ours.
    frame = encode("submit_sm", 1234, source_addr="1", destination_addr="2", short_message=b"x")
    assert int.from_bytes(frame[12:16], "big") == 1234


def test_deliver_sm_roundtrip_with_tlvs() -> None:
    frame = encode(
        "deliver_sm",
        8,
        source_addr="254700000001",
        destination_addr="12345",
        esm_class=4,
        short_message=b"id:1 stat:DELIVRD",
        receipted_message_id="0A1B",
        message_state=2,
        sar_msg_ref_num=7,
        sar_total_segments=2,
        sar_segment_seqnum=1,
    )
    pdu = decode_deliver_sm(frame)
    assert (pdu.source_addr, pdu.destination_addr, pdu.esm_class) == ("254700000001", "12345", 4)
    assert (pdu.receipted_message_id, pdu.message_state) == ("0A1B", 2)
    assert (pdu.sar_msg_ref_num, pdu.sar_total_segments, pdu.sar_segment_seqnum) == (7, 2, 1)
    assert check_sm_body(frame[16:]) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"0000001F\x00", "0000001F"),
        (b"0000001F", "0000001F"),  # no NUL: the TLV's length ends it
        (b"7\x00\x00", "7"),
        (b"\x00", None),
        (b"", None),
    ],
)
def test_receipted_message_id_with_or_without_its_nul(value: bytes, expected: str | None) -> None:
    frame = encode("deliver_sm", 3, source_addr="1", destination_addr="2", esm_class=4)
    tlv = struct.pack(">HH", 0x001E, len(value)) + value
    frame = struct.pack(">L", len(frame) + len(tlv)) + frame[4:] + tlv
    assert decode_deliver_sm(frame).receipted_message_id == expected


def test_encoding_garbage_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        encode("submit_sm", 1, source_addr=object())


# --- the lean submit_sm / deliver_sm classes against smpplib's own -----------------------------

ADDRESS = st.text(alphabet="0123456789+", max_size=20)
OCTET = st.integers(min_value=0, max_value=255)
SUBMIT_FIELDS = st.fixed_dictionaries(
    {
        "source_addr": ADDRESS,
        "source_addr_ton": OCTET,
        "source_addr_npi": OCTET,
        "destination_addr": ADDRESS,
        "dest_addr_ton": OCTET,
        "dest_addr_npi": OCTET,
        "esm_class": OCTET,
        "data_coding": OCTET,
        "registered_delivery": OCTET,
        "short_message": st.binary(max_size=254),
    }
)


@settings(max_examples=300)
@given(SUBMIT_FIELDS, st.integers(min_value=0, max_value=0x7FFFFFFF))
def test_submit_sm_is_byte_for_byte_smpplibs(fields: dict[str, Any], sequence: int) -> None:
    full = smpp.make_pdu("submit_sm", client=_Holder(), **fields)
    full.sequence = sequence
    assert encode("submit_sm", sequence, **fields) == full.generate()


def test_a_submit_sm_with_a_tlv_goes_through_smpplibs_own_class() -> None:
    frame = encode("submit_sm", 5, destination_addr="2", message_payload=b"x" * 300)
    pdu = smpp.parse_pdu(frame, client=_Holder())
    assert pdu.message_payload == b"x" * 300


TLV = st.sampled_from(
    [
        (0x0204, b"\x00\x07"),  # user_message_reference
        (0x020C, b"\x01\x02"),  # sar_msg_ref_num
        (0x020E, b"\x03"),  # sar_total_segments
        (0x020F, b"\x01"),  # sar_segment_seqnum
        (0x001E, b"0A1B\x00"),  # receipted_message_id
        (0x0427, b"\x02"),  # message_state
        (0x0423, b"\x03\x00\x01"),  # network_error_code
        (0x0424, b"payload bytes"),  # message_payload
        (0x1501, b"vendor"),  # a vendor TLV (skipped by smpplib)
    ]
)


@settings(max_examples=300)
@given(SUBMIT_FIELDS, st.lists(TLV, max_size=4, unique_by=lambda t: t[0]))
def test_deliver_sm_decodes_as_smpplibs_own_class(
    fields: dict[str, Any], tlvs: list[tuple[int, bytes]]
) -> None:
    base = smpp.make_pdu("deliver_sm", client=_Holder(), **fields)
    base.sequence = 9
    frame = base.generate()
    extra = b"".join(struct.pack(">HH", tag, len(v)) + v for tag, v in tlvs)
    frame = struct.pack(">L", len(frame) + len(extra)) + frame[4:] + extra
    ours = decode_deliver_sm(frame)
    theirs = smpp.parse_pdu(frame, client=_Holder(), allow_unknown_opt_params=True)
    assert ours.source_addr == theirs.source_addr.decode("latin-1")
    assert ours.destination_addr == theirs.destination_addr.decode("latin-1")
    assert ours.short_message == bytes(theirs.short_message or b"")
    assert (ours.esm_class, ours.data_coding) == (theirs.esm_class or 0, theirs.data_coding or 0)
    for name in (
        "sar_msg_ref_num",
        "sar_total_segments",
        "sar_segment_seqnum",
        "user_message_reference",
        "message_state",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.message_payload == (
        bytes(theirs.message_payload) if theirs.message_payload else None
    )
    theirs_receipt = theirs.receipted_message_id
    assert ours.receipted_message_id == (
        theirs_receipt.decode("latin-1").strip("\x00") if theirs_receipt else None
    )
    assert ours.network_error_code == (
        bytes(theirs.network_error_code) if theirs.network_error_code else None
    )
    assert ours.vendor_tlvs == tuple((t, v) for t, v in tlvs if 0x1400 <= t <= 0x3FFF)


def test_a_decoded_deliver_sm_leaves_nothing_on_the_class() -> None:
    """Optional parameters default to None on the lean class; parsing one PDU must not leak
    its values into the next."""
    with_tlv = smpp.make_pdu("deliver_sm", client=_Holder(), short_message=b"a")
    with_tlv.sequence = 1
    frame = with_tlv.generate()
    tlv = struct.pack(">HH", 0x0204, 2) + b"\x00\x07"
    frame = struct.pack(">L", len(frame) + len(tlv)) + frame[4:] + tlv
    assert decode_deliver_sm(frame).user_message_reference == 7
    plain = smpp.make_pdu("deliver_sm", client=_Holder(), short_message=b"b")
    plain.sequence = 2
    assert decode_deliver_sm(plain.generate()).user_message_reference is None
