"""The smpplib codec wrapper: what we pack by hand is what smpplib would decode, and bodies
smpplib would misparse are refused."""

from __future__ import annotations

import pytest
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


def test_unterminated_response_is_refused() -> None:
    frame = encode("submit_sm_resp", 3, message_id="X")[:-1]
    frame = (len(frame)).to_bytes(4, "big") + frame[4:]
    with pytest.raises(CodecError):
        decode_response(frame)


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


def test_encoding_garbage_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        encode("submit_sm", 1, source_addr=object())
