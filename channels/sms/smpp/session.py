"""One SMPP bind, owned by asyncio: connect, bind, keep alive, submit, receive, reconnect.

The bind is a small state machine whose state the admin API shows:

    idle -> connecting -> bound -> unbinding -> stopped
                ^   |        |         |
                |   v        v         v
                backing_off <----------+      (link lost, bind refused, the SMSC unbound us)

While bound, one reader task owns the socket's read side and dispatches every PDU: responses
resolve the future registered under their sequence number; `enquire_link` and `unbind` from the
SMSC are answered at once (after the SMSC's unbind nothing new is sent, but the answers to the
requests in flight are still read, for up to `unbind_timeout_s`); a `deliver_sm` is handed to
the channel's callback (bounded concurrency, so a slow store pushes back on the SMSC through
TCP) and answered with the status the callback returns; anything unknown or malformed gets
`generic_nack`. Requests wait for a window slot (at most `window` outstanding), submits then
for the pacer (the operator's TPS). Every request has a response timeout; a run of timeouts,
a silent link or a failed enquire_link drops the connection. When the link drops, every
in-flight request fails at once with `LinkDown` and the bind reconnects with exponential
backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from config.settings import SmppBind
from core.tasks import stop_tasks

from . import codec
from .codec import (
    ALERT_NOTIFICATION,
    DELIVER_SM,
    ENQUIRE_LINK,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_RINVCMDLEN,
    ESME_ROK,
    ESME_RX_T_APPN,
    GENERIC_NACK,
    HEADER,
    HEADER_BYTES,
    MAX_PDU_BYTES,
    RESP_BIT,
    SLOW_DOWN_STATUSES,
    SUBMIT_SM,
    UNBIND,
    CodecError,
    DeliverSm,
    Response,
    header_only,
)
from .pacer import Pacer

log = logging.getLogger("channels.sms.smpp")

INTERFACE_VERSION = 0x34
_MAX_BACKOFF_DOUBLINGS = 32  # far past any reconnect_max_s / reconnect_min_s ratio


class BindState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    BOUND = "bound"
    UNBINDING = "unbinding"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


_ALLOWED: dict[BindState, frozenset[BindState]] = {
    BindState.IDLE: frozenset({BindState.CONNECTING, BindState.STOPPED}),
    BindState.CONNECTING: frozenset({BindState.BOUND, BindState.BACKING_OFF, BindState.STOPPED}),
    BindState.BOUND: frozenset({BindState.UNBINDING, BindState.BACKING_OFF, BindState.STOPPED}),
    BindState.UNBINDING: frozenset({BindState.BACKING_OFF, BindState.STOPPED}),
    BindState.BACKING_OFF: frozenset({BindState.CONNECTING, BindState.STOPPED}),
    BindState.STOPPED: frozenset(),
}


class SmppFailure(Exception):
    """A request did not get an accepting response."""


class LinkDown(SmppFailure):
    """Not bound, or the link dropped before the response came: the request may be retried."""


class ResponseTimeout(LinkDown):
    """No response in time. The SMSC may still have acted on the request."""


class SmscRejected(SmppFailure):
    """The SMSC answered with an error status."""

    def __init__(self, status: int, what: str = "request") -> None:
        super().__init__(f"{what} refused: {codec.status_text(status)}")
        self.status = status


class Throttled(SmscRejected):
    """ESME_RTHROTTLED or ESME_RMSGQFUL: the bind slowed down; try again later."""


class _PeerUnbound(Exception):
    pass


class _FramingError(Exception):
    pass


# ResponseTimeout: the keepalive's enquire_link went unanswered, a link end like the others.
LINK_ENDS = (
    _PeerUnbound,
    _FramingError,
    asyncio.IncompleteReadError,
    OSError,
    TimeoutError,
    ResponseTimeout,
)


def _link_ended(task: asyncio.Task[Any]) -> bool:
    """The task finished because the link ended (not because of a fault in our code)."""
    return task.done() and not task.cancelled() and isinstance(task.exception(), LINK_ENDS)


@dataclass(frozen=True, slots=True)
class SessionTuning:
    """Process-wide timers; the per-bind ones (window, TPS, enquire_link, response timeout)
    come from `SmppBind`."""

    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    # A bind that stayed up this long resets the reconnect backoff when it ends.
    stable_bind_s: float = 30.0
    throttle_pause_s: float = 1.0
    unbind_timeout_s: float = 3.0
    window_wait_s: float = 30.0
    max_timeouts_in_row: int = 3
    inbound_concurrency: int = 32
    deliver_timeout_s: float = 20.0
    # A deliver_sm_resp written less than this long before the link dropped may never have
    # reached the SMSC: the channel is told (`on_unsure_ack`), as for one answered late.
    ack_grace_s: float = 5.0


@dataclass(frozen=True, slots=True)
class BindStatus:
    name: str
    system_id: str
    host: str
    port: int
    bind_type: str
    state: str
    since: float
    window_size: int
    window_in_use: int
    tps_configured: float
    tps_current: float
    tps_achieved: float
    last_error: str | None
    last_error_at: float | None
    retry_at: float | None
    connects: int
    submitted: int
    throttled: int
    rejected: int
    timeouts: int
    received: int
    nacks_sent: int


DeliverHandler = Callable[["SmppSession", DeliverSm], Awaitable[int]]
StateListener = Callable[["SmppSession", "BindState"], None]
# deliver_sms whose acknowledgement the SMSC may not have got (not written, an error status,
# answered later than ack_grace_s, or written just before the link dropped): it may deliver
# them again, later than usual.
UnsureAckListener = Callable[["SmppSession", Sequence[DeliverSm]], None]


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SmppSession:
    def __init__(
        self,
        bind: SmppBind,
        *,
        name: str,
        on_deliver: DeliverHandler | None = None,
        on_state: StateListener | None = None,
        on_unsure_ack: UnsureAckListener | None = None,
        tuning: SessionTuning | None = None,
    ) -> None:
        self.bind = bind
        self.name = name
        self.on_deliver = on_deliver
        self.on_state = on_state
        self.on_unsure_ack = on_unsure_ack
        self._acks: deque[tuple[float, DeliverSm]] = deque()  # recent, for a link drop
        self.tuning = tuning or SessionTuning()
        self.pacer = Pacer(bind.tps)
        self._state = BindState.IDLE
        self._since = time.time()
        self._pending: dict[int, tuple[int, asyncio.Future[Response]]] = {}
        self._window = asyncio.Semaphore(bind.window)
        self._inbound = asyncio.Semaphore(self.tuning.inbound_concurrency)
        self._inbound_tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._writer: asyncio.StreamWriter | None = None
        # PDUs written in one turn of the event loop leave in one send (fewer syscalls, and
        # fewer wake-ups of the SMSC), flushed at the end of the turn.
        self._out: list[bytes] = []
        self._out_writer: asyncio.StreamWriter | None = None
        self._last_read = 0.0
        self._bound = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timeouts_in_row = 0
        self._abort_reason: str | None = None
        self._peer_unbound_at: float | None = None  # the SMSC's unbind, answers still due
        self._retry_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.counters = dict.fromkeys(
            ("connects", "submitted", "throttled", "rejected", "timeouts", "received", "nacks"), 0
        )
        # deliver_sm read -> deliver_sm_resp written (the MO stored meanwhile): the time the
        # SMSC's window waits on us, summed over the acknowledgements sent (for /metrics).
        self.ack_seconds = 0.0
        self.acks = 0

    # --- public ---------------------------------------------------------------------------

    @property
    def state(self) -> BindState:
        return self._state

    @property
    def can_transmit(self) -> bool:
        return self.bind.bind in ("trx", "tx")

    @property
    def can_receive(self) -> bool:
        return self.bind.bind in ("trx", "rx")

    @property
    def is_up(self) -> bool:
        """Bound and the link is alive: requests may go."""
        return self._bound.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"smpp:{self.name}")

    async def stop(self) -> None:
        """Unbind politely when bound, then stop reconnecting."""
        self._stop.set()
        task = self._task
        if task is None:
            self._set_state(BindState.STOPPED)
            return
        if self._state is not BindState.BOUND:
            task.cancel()  # connecting or backing off: nothing to say to the SMSC
        try:
            async with asyncio.timeout(self.tuning.unbind_timeout_s + 2.0):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._drain_inbound()

    async def wait_bound(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._bound.wait()
        except TimeoutError:
            return False
        return True

    async def submit(self, **fields: Any) -> str:
        """Send one submit_sm; return the SMSC's message id. Raises Throttled (slowed down),
        SmscRejected, LinkDown / ResponseTimeout, or CodecError for fields that cannot be
        encoded."""
        frame = codec.encode("submit_sm", 0, **fields)
        async with self._window_slot():
            # The pacer's slot is taken with the window's, right before the submit goes: one
            # taken while waiting for the window would let every submit queued behind a full
            # window go at once when it opens.
            epoch = await self.pacer.wait()
            try:
                resp = await self._exchange(SUBMIT_SM, frame, self.bind.response_timeout_s)
                status, message_id = resp.status, resp.message_id
            except SmscRejected as exc:  # a generic_nack; throttling there means the same
                if exc.status not in SLOW_DOWN_STATUSES:
                    raise
                status, message_id = exc.status, ""
        if status == ESME_ROK:
            self.pacer.accepted()
            self.counters["submitted"] += 1
            return message_id
        if status in SLOW_DOWN_STATUSES:
            self.pacer.slow_down(self.tuning.throttle_pause_s, epoch)
            self.counters["throttled"] += 1
            raise Throttled(status, "submit_sm")
        self.counters["rejected"] += 1
        if status == ESME_RINVBNDSTS:
            # The SMSC no longer counts this session as bound (it restarted or failed over
            # behind a link that stayed up): every submit would be refused until a re-bind.
            # It did not take this one, so LinkDown: sent again on the next bind.
            reason = f"submit_sm refused: {codec.status_text(status)}"
            self._drop_link(reason)
            raise LinkDown(reason)
        raise SmscRejected(status, "submit_sm")

    def status(self) -> BindStatus:
        return BindStatus(
            name=self.name,
            system_id=self.bind.system_id,
            host=self.bind.host,
            port=self.bind.port,
            bind_type=self.bind.bind,
            state=self._state.value,
            since=self._since,
            window_size=self.bind.window,
            window_in_use=len(self._pending),
            tps_configured=self.pacer.configured,
            tps_current=round(self.pacer.rate, 2),
            tps_achieved=self.pacer.achieved(),
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            retry_at=self._retry_at if self._state is BindState.BACKING_OFF else None,
            connects=self.counters["connects"],
            submitted=self.counters["submitted"],
            throttled=self.counters["throttled"],
            rejected=self.counters["rejected"],
            timeouts=self.counters["timeouts"],
            received=self.counters["received"],
            nacks_sent=self.counters["nacks"],
        )

    # --- the state machine ------------------------------------------------------------------

    def _set_state(self, new: BindState) -> None:
        if new is self._state:
            return
        assert new in _ALLOWED[self._state], f"{self._state} -> {new}"
        log.info("smpp bind %s: %s -> %s", self.name, self._state.value, new.value)
        self._state = new
        self._since = time.time()
        if self.on_state is not None:
            self.on_state(self, new)

    def _note_error(self, text: str) -> None:
        self.last_error = text
        self.last_error_at = time.time()
        log.warning("smpp bind %s: %s", self.name, text)

    async def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                self._set_state(BindState.CONNECTING)
                try:
                    reader, writer = await self._connect_and_bind()
                except (
                    OSError,
                    TimeoutError,
                    EOFError,
                    _FramingError,
                    SmppFailure,
                    CodecError,
                ) as exc:
                    self._note_error(f"bind failed: {describe(exc)}")
                    failures += 1
                    await self._back_off(failures)
                    continue
                started = time.monotonic()
                await self._serve(reader, writer)
                # Only a bind that lived resets the backoff: one the SMSC accepts and drops at
                # once, again and again, is a failure like a refused bind, not a reason to
                # re-bind at the shortest delay for ever.
                if time.monotonic() - started >= self.tuning.stable_bind_s:
                    failures = 0
                failures += 1
                await self._back_off(failures)
        finally:
            self._bound.clear()
            self._fail_pending("the bind stopped")
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._set_state(BindState.STOPPED)

    async def _back_off(self, failures: int) -> None:
        if self._stop.is_set():
            return
        # The exponent is capped: 2 ** 1024 does not convert to a float, and the OverflowError
        # once ended the bind for good after 1,024 failed attempts in a row (a long outage).
        ceiling = min(
            self.tuning.reconnect_max_s,
            self.tuning.reconnect_min_s * 2.0 ** min(failures - 1, _MAX_BACKOFF_DOUBLINGS),
        )
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret
        self._retry_at = time.time() + delay
        self._set_state(BindState.BACKING_OFF)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    async def _connect_and_bind(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        bind = self.bind
        async with asyncio.timeout(self.tuning.connect_timeout_s):
            reader, writer = await asyncio.open_connection(bind.host, bind.port)
        try:
            command_id, command = codec.BIND_COMMANDS[bind.bind]
            seq = self._next_seq()
            writer.write(
                codec.encode(
                    command,
                    seq,
                    system_id=bind.system_id,
                    password=bind.password,
                    system_type=bind.system_type,
                    interface_version=INTERFACE_VERSION,
                )
            )
            async with asyncio.timeout(bind.response_timeout_s):
                await writer.drain()
                await self._await_bind_resp(reader, writer, command_id, seq)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _await_bind_resp(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        command_id: int,
        seq: int,
    ) -> None:
        while True:
            frame = await self._read_frame(reader)
            _, cid, status, fseq = HEADER.unpack_from(frame)
            if fseq == seq and cid == GENERIC_NACK:
                # Never a bind, whatever its status says (some SMSCs leave it 0).
                raise SmscRejected(status or codec.ESME_RSYSERR, "bind (generic_nack)")
            if fseq == seq and cid == command_id | RESP_BIT:
                if status != ESME_ROK:
                    raise SmscRejected(status, "bind")
                return
            if cid == ENQUIRE_LINK:
                writer.write(header_only(ENQUIRE_LINK | RESP_BIT, fseq))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._timeouts_in_row = 0
        self._abort_reason = None
        self._peer_unbound_at = None
        self.counters["connects"] += 1
        self._set_state(BindState.BOUND)
        self._bound.set()
        self._last_read = asyncio.get_running_loop().time()
        tasks = {
            asyncio.create_task(self._read_loop(reader)),
            asyncio.create_task(self._watchdog()),
            asyncio.create_task(self._keepalive()),
            asyncio.create_task(self._stop.wait()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finished = done.pop()
            exc = None if finished.cancelled() else finished.exception()
            if isinstance(exc, _PeerUnbound):
                self._set_state(BindState.UNBINDING)
                self._note_error("the SMSC unbound")
            elif self._abort_reason is not None:
                self._note_error(f"link dropped: {self._abort_reason}")
            elif exc is not None:
                self._note_error(f"link lost: {describe(exc)}")
            elif self._stop.is_set():
                await self._unbind()
        finally:
            self._bound.clear()
            # A link that ended (EOF after our unbind, a reset, the SMSC's unbind, a silent
            # link) is recorded above as the bind's last error; only other errors are faults.
            await stop_tasks(
                [t for t in tasks if not _link_ended(t)], f"smpp link tasks of {self.name}"
            )
            self._fail_pending("the link dropped")
            self._flush_out()  # an unbind_resp or a last ack still goes
            self._acks_unsure()
            self._writer = None
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _unbind(self) -> None:
        self._set_state(BindState.UNBINDING)
        self._bound.clear()  # no new requests; the ones in flight may still be answered
        with contextlib.suppress(SmppFailure, OSError):
            await self._exchange(
                UNBIND, header_only(UNBIND, 0), self.tuning.unbind_timeout_s, closing=True
            )

    # --- reading ----------------------------------------------------------------------------

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        header = await reader.readexactly(HEADER_BYTES)
        length, _, _, seq = HEADER.unpack(header)
        if not HEADER_BYTES <= length <= MAX_PDU_BYTES:
            # The stream cannot be resynchronised after a bad length: nack and drop the link.
            if self._writer is not None:
                self._writer.write(header_only(GENERIC_NACK, seq, ESME_RINVCMDLEN))
                self.counters["nacks"] += 1
            raise _FramingError(f"command_length {length} out of range")
        if length == HEADER_BYTES:
            return header
        return header + await reader.readexactly(length - HEADER_BYTES)

    async def _watchdog(self) -> None:
        # Nothing at all for this long means the SMSC is gone: we send enquire_link every
        # enquire_link_s and it must answer within response_timeout_s. (One timer for the
        # link, not one per frame read.)
        idle_s = self.bind.enquire_link_s * 2 + self.bind.response_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            remaining = self._last_read + idle_s - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"nothing read for {idle_s:g}s")
            await asyncio.sleep(remaining)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._peer_unbound_at is None:
                    frame = await self._read_frame(reader)
                else:
                    frame = await self._read_after_peer_unbind(reader)
                self._last_read = loop.time()
                self._dispatch(frame)
                if HEADER.unpack_from(frame)[1] == DELIVER_SM:
                    await self._on_deliver_frame(frame)
        finally:
            # Nothing more will answer what is in flight: fail it now, not at its timeout.
            self._bound.clear()
            self._fail_pending("the link dropped")

    async def _read_after_peer_unbind(self, reader: asyncio.StreamReader) -> bytes:
        """The next frame while the SMSC's unbind waits for our requests in flight; the link
        ends (`_PeerUnbound`) once none is left, at the SMSC's close, or at the deadline."""
        assert self._peer_unbound_at is not None
        if not self._pending:
            raise _PeerUnbound
        loop = asyncio.get_running_loop()
        remaining = self._peer_unbound_at + self.tuning.unbind_timeout_s - loop.time()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return await self._read_frame(reader)
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            raise _PeerUnbound from None

    def _dispatch(self, frame: bytes) -> None:
        _, cid, status, seq = HEADER.unpack_from(frame)
        if cid & RESP_BIT:
            self._on_response(cid, status, seq, frame)
        elif cid == ENQUIRE_LINK:
            self._write(header_only(ENQUIRE_LINK | RESP_BIT, seq))
        elif cid == UNBIND:
            self._write(header_only(UNBIND | RESP_BIT, seq))
            self._bound.clear()  # no new requests
            if not self._pending:
                raise _PeerUnbound
            # The SMSC has what is in flight and may still answer it (failing a request it
            # answers later sends that message twice): read on until every request is
            # answered or timed out, the SMSC closes, or unbind_timeout_s has passed.
            self._set_state(BindState.UNBINDING)
            self._peer_unbound_at = asyncio.get_running_loop().time()
        elif cid not in (DELIVER_SM, ALERT_NOTIFICATION):  # alert_notification has no response
            self._write(header_only(GENERIC_NACK, seq, ESME_RINVCMDID))
            self.counters["nacks"] += 1

    def _on_response(self, cid: int, status: int, seq: int, frame: bytes) -> None:
        entry = self._pending.pop(seq, None)
        if entry is None:
            log.debug("smpp bind %s: response 0x%08X for unknown sequence %d", self.name, cid, seq)
            return
        self._timeouts_in_row = 0
        expected, fut = entry
        if fut.done():
            return
        if cid == GENERIC_NACK:
            fut.set_exception(SmscRejected(status or codec.ESME_RSYSERR, "generic_nack"))
        elif cid != expected | RESP_BIT:
            fut.set_exception(SmppFailure(f"response 0x{cid:08X} to request 0x{expected:08X}"))
        else:
            try:
                fut.set_result(codec.decode_response(frame))
            except CodecError as exc:
                fut.set_exception(exc)

    async def _on_deliver_frame(self, frame: bytes) -> None:
        seq = HEADER.unpack_from(frame)[3]
        try:
            pdu = codec.decode_deliver_sm(frame)
        except CodecError as exc:
            log.warning("smpp bind %s: malformed deliver_sm: %s", self.name, exc)
            self._write(header_only(GENERIC_NACK, seq, ESME_RINVCMDLEN))
            self.counters["nacks"] += 1
            return
        self.counters["received"] += 1
        await self._inbound.acquire()  # a slow store pushes back on the SMSC
        task = asyncio.create_task(self._answer_deliver(pdu, self._writer, self._last_read))
        self._inbound_tasks.add(task)
        task.add_done_callback(self._inbound_tasks.discard)

    async def _answer_deliver(
        self, pdu: DeliverSm, writer: asyncio.StreamWriter | None, received_at: float
    ) -> None:
        status = ESME_RX_T_APPN
        try:
            if self.on_deliver is not None:
                async with asyncio.timeout(self.tuning.deliver_timeout_s):
                    status = await self.on_deliver(self, pdu)
        except Exception:
            log.exception("smpp bind %s: deliver_sm handler failed", self.name)
        finally:
            self._inbound.release()
        now = asyncio.get_running_loop().time()
        if writer is not None and writer is self._writer and not writer.is_closing():
            self._cork(writer, codec.deliver_sm_resp(pdu.sequence, status))
            self.ack_seconds += now - received_at
            self.acks += 1
            if status == ESME_ROK and now - received_at < self.tuning.ack_grace_s:
                acks = self._acks
                acks.append((now, pdu))
                while acks[0][0] < now - self.tuning.ack_grace_s:
                    acks.popleft()
                return
        if self.on_unsure_ack is not None:
            self.on_unsure_ack(self, [pdu])

    def _acks_unsure(self) -> None:
        """The link dropped: acknowledgements written within the grace may be lost."""
        acks, self._acks = self._acks, deque()
        since = asyncio.get_running_loop().time() - self.tuning.ack_grace_s
        recent = [pdu for at, pdu in acks if at >= since]
        if recent and self.on_unsure_ack is not None:
            self.on_unsure_ack(self, recent)

    async def _drain_inbound(self) -> None:
        if self._inbound_tasks:
            await asyncio.gather(*self._inbound_tasks, return_exceptions=True)

    # --- writing and requests ----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise LinkDown("not connected")
        self._cork(writer, data)

    def _cork(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if self._out and self._out_writer is not writer:
            self._flush_out()
        if not self._out:
            self._out_writer = writer
            asyncio.get_running_loop().call_soon(self._flush_out)
        self._out.append(data)

    def _flush_out(self) -> None:
        out, writer = self._out, self._out_writer
        self._out, self._out_writer = [], None
        if out and writer is not None and not writer.is_closing():
            writer.write(out[0] if len(out) == 1 else b"".join(out))

    def _next_seq(self) -> int:
        self._seq = self._seq % codec.MAX_SEQUENCE + 1
        return self._seq

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.bind.enquire_link_s)
            if not self._bound.is_set():
                continue  # the SMSC unbound: the link ends once its last answers are in
            with contextlib.suppress(SmscRejected):  # a nack still proves the link is alive
                await self._request(ENQUIRE_LINK, header_only(ENQUIRE_LINK, 0), windowed=False)

    async def _request(
        self,
        command_id: int,
        frame: bytes,
        *,
        windowed: bool = True,
        timeout_s: float | None = None,
    ) -> Response:
        """Send `frame` (its sequence number is filled in here) and await the response."""
        timeout_s = timeout_s or self.bind.response_timeout_s
        if not windowed:
            return await self._exchange(command_id, frame, timeout_s)
        async with self._window_slot():
            return await self._exchange(command_id, frame, timeout_s)

    @contextlib.asynccontextmanager
    async def _window_slot(self) -> AsyncIterator[None]:
        """One of the window's slots (at most `window` requests outstanding)."""
        if self._writer is None:
            raise LinkDown("not bound")
        if self._window.locked():
            try:
                async with asyncio.timeout(self.tuning.window_wait_s):
                    await self._window.acquire()
            except TimeoutError:
                raise LinkDown("the window stayed full") from None
        else:
            await self._window.acquire()  # a free slot: no timer needed
        try:
            yield
        finally:
            self._window.release()

    async def _exchange(
        self, command_id: int, frame: bytes, timeout_s: float, *, closing: bool = False
    ) -> Response:
        writer = self._writer
        if writer is None or writer.is_closing() or not (closing or self._bound.is_set()):
            raise LinkDown("not bound")
        seq = self._next_seq()
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[seq] = (command_id, fut)
        try:
            self._cork(writer, frame[:12] + seq.to_bytes(4, "big") + frame[HEADER_BYTES:])
            async with asyncio.timeout(timeout_s):
                await writer.drain()
                return await fut
        except TimeoutError:
            self.counters["timeouts"] += 1
            self._timeouts_in_row += 1
            if self._timeouts_in_row >= self.tuning.max_timeouts_in_row:
                self._drop_link(f"{self._timeouts_in_row} responses in a row timed out", writer)
            raise ResponseTimeout(f"no response in {timeout_s}s") from None
        except (ConnectionError, RuntimeError) as exc:
            raise LinkDown(describe(exc)) from exc
        finally:
            self._pending.pop(seq, None)

    def _drop_link(self, reason: str, writer: asyncio.StreamWriter | None = None) -> None:
        """Close the link (`writer`'s, by default the current one): the reader sees EOF and
        the bind reconnects."""
        writer = writer or self._writer
        if writer is None or writer is not self._writer:
            return  # that link is gone already
        self._abort_reason = reason
        self._bound.clear()
        writer.close()

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for _, fut in pending.values():
            if not fut.done():
                fut.set_exception(LinkDown(reason))
