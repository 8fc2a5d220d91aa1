"""A bare SMSC over asyncio sockets with hand-packed headers, for what no real SMSC library will
send: unknown command ids, malformed bodies, impossible lengths, an unbind out of the blue, a
peer that stops answering. It records every PDU the ESME sends."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass, field

HEADER = struct.Struct(">LLLL")


def pdu(command_id: int, seq: int, body: bytes = b"", status: int = 0) -> bytes:
    return HEADER.pack(16 + len(body), command_id, status, seq) + body


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def deliver_sm_body(
    source: str,
    dest: str,
    short_message: bytes,
    *,
    esm_class: int = 0,
    data_coding: int = 0,
    tlvs: bytes = b"",
) -> bytes:
    """A deliver_sm body packed by hand (SMPP 3.4 4.6.1), TLVs appended as given."""
    return (
        b"\x00"  # service_type
        + b"\x01\x01" + source.encode() + b"\x00"
        + b"\x00\x00" + dest.encode() + b"\x00"
        + bytes([esm_class, 0, 0])  # esm_class, protocol_id, priority_flag
        + b"\x00\x00"  # schedule_delivery_time, validity_period
        + bytes([0, 0, data_coding, 0, len(short_message)])
        + short_message
        + tlvs
    )  # fmt: skip


@dataclass
class Frame:
    command_id: int
    status: int
    seq: int
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it was read


@dataclass
class RawSmsc:
    answer_enquire_link: bool = True
    answer_submit: bool = True
    bind_status: int = 0
    submit_id: bytes = b"RAW1"  # the message_id every submit_sm_resp carries
    unbind_after_bind: bool = False  # accept every bind, then unbind at once
    bind_nack: bool = False  # answer binds with a generic_nack (status bind_status)
    frames: list[Frame] = field(default_factory=list)
    binds: int = 0
    writer: asyncio.StreamWriter | None = None
    server: asyncio.Server | None = None
    port: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while True:
                header = await reader.readexactly(16)
                length, cid, status, seq = HEADER.unpack(header)
                body = await reader.readexactly(length - 16)
                self.frames.append(Frame(cid, status, seq, body))
                self._changed.set()
                if cid in (1, 2, 9):
                    self.binds += 1
                    if self.bind_nack:
                        writer.write(pdu(0x80000000, seq, status=self.bind_status))
                        continue
                    writer.write(pdu(cid | 0x80000000, seq, b"raw\x00", self.bind_status))
                    if self.unbind_after_bind:
                        writer.write(pdu(0x00000006, 1))
                elif cid == 0x15 and self.answer_enquire_link:
                    writer.write(pdu(0x80000015, seq))
                elif cid == 6:
                    writer.write(pdu(0x80000006, seq))
                elif cid == 4 and self.answer_submit:
                    writer.write(pdu(0x80000004, seq, self.submit_id + b"\x00"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def wait_for(
        self, command_id: int, seq: int | None = None, timeout_s: float = 5
    ) -> Frame:
        """The first frame with this command id (and sequence) the ESME sent."""
        async with asyncio.timeout(timeout_s):
            while True:
                for frame in self.frames:
                    if frame.command_id == command_id and (seq is None or frame.seq == seq):
                        return frame
                self._changed.clear()
                await self._changed.wait()

    def count(self, command_id: int) -> int:
        return sum(1 for f in self.frames if f.command_id == command_id)


@contextlib.asynccontextmanager
async def raw_smsc(**options: object):  # type: ignore[no-untyped-def]
    smsc = RawSmsc(**options)  # type: ignore[arg-type]
    await smsc.start()
    try:
        yield smsc
    finally:
        await smsc.close()
