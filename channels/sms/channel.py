"""The SMS channel: the configured SMPP binds, the MO pipeline, receipts and the MT sender.

MO: a deliver_sm is decoded (UDH or SAR concatenation, data_coding 0/3/8), stored through the
message store (durable, de-duplicated, PINs masked; concatenated parts wait there for their
siblings) and only then acknowledged. An SMSC that gets no acknowledgement delivers again and the
store drops the copy. Stored MOs go to a bounded queue served by a few workers that call the
`MoHandler`; a worker marks each MO processed, retried later or failed. A recovery loop claims
MOs whose lease ran out (the queue was full, a retry is due, an instance died), assembles
concatenated MOs whose missing parts never came, and purges old de-duplication keys.

A deliver_sm of another message type (an SME acknowledgement, a conversation abort) is
acknowledged and ignored: nothing the customer typed.

Receipts: matched by `receipted_message_id` first and the `id:` text second (each with its own
id base), then the part's and the message's status are updated.

MT: `send_text` encodes and splits the text, picks a bound transmitter (least loaded), and
submits part by part. A throttled part waits for the slowed-down pacer and goes again; a
dropped link waits for a re-bind (bounded by `bind_wait_s`) and the remaining parts go on the
next bind; a permanent refusal fails the message with the SMSC's reason. Parts already accepted
are recorded per `ref` in the store, so a retry of the same outbox message (in this instance or
another) never sends an accepted part again. `SmppSender` is the outbox's sender for channel "sms".
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from channels.base import SENSITIVE_KINDS, OutboundLike, SendFailed
from config.settings import SmppBind
from core.pg import CONNECTION_LOST, through_outage
from core.sms_messages import (
    InboundPart,
    InboundRecord,
    MtRecord,
    SmsMessageStore,
    StoredMo,
    SubmittedPart,
)
from core.tasks import STOP_TIMEOUT_S, stop_tasks

from . import address, commands
from .encoding import (
    ESM_UDHI,
    Concat,
    MessageTooLong,
    SplitMessage,
    decode_payload,
    parse_udh,
    split_text,
    valid_concat,
)
from .handler import InboundSms, MoHandler, RetryLater
from .receipts import ESM_TYPE_MASK, is_receipt, message_key, parse_receipt
from .smpp import (
    BindState,
    BindStatus,
    CodecError,
    DeliverSm,
    LinkDown,
    SessionTuning,
    SmppFailure,
    SmppSession,
    SmscRejected,
    Throttled,
)
from .smpp.codec import ESME_ROK, TEMPORARY_STATUSES

log = logging.getLogger("channels.sms")

ESME_RX_P_APPN = 0x65  # permanent application error: the SMSC must not deliver this again
LINK_RETRY_PAUSE_S = 0.05
REDACTED = "[redacted]"
SENT_STATUSES = ("submitted", "delivered", "expired")
# What a handler may raise that says "not now": the MO is tried again after a delay.
_TRY_AGAIN: tuple[type[BaseException], ...] = (RetryLater, *CONNECTION_LOST)


@dataclass(frozen=True, slots=True)
class ChannelTuning:
    """MO workers and recovery, MT waits and retries. The store's lease (default 60 s) must be
    longer than `handler_timeout_s`, or a slow handler's MO is claimed a second time."""

    workers: int = 32
    queue_size: int = 1_000
    enqueue_wait_s: float = 5.0
    handler_timeout_s: float = 30.0
    max_attempts: int = 5
    retry_delay_s: float = 30.0
    recovery_interval_s: float = 5.0
    concat_timeout_s: float = 300.0
    bind_wait_s: float = 10.0
    send_deadline_s: float = 60.0
    max_throttle_retries: int = 20
    purge_every_rounds: int = 60

    @property
    def retry_horizon_s(self) -> float:
        """How long after its first attempt an MO may still be run again: the delays between
        its attempts and each attempt's handler timeout. State an MO's later attempts read
        (a dialog waiting for the core) must be kept at least this long."""
        delays = sum(self.retry_delay_s * n for n in range(1, self.max_attempts))
        return delays + self.handler_timeout_s * self.max_attempts


def assemble_mo(payloads: Sequence[bytes], data_coding: int) -> tuple[str, str, str]:
    """The store's Assembler: joined payloads -> (raw text, masked text, encoding). Bytes are
    joined before decoding, so an escape or surrogate pair split across parts survives."""
    text, encoding = decode_payload(b"".join(payloads), data_coding)
    return text, commands.mask_secrets(text), encoding


def smsc_key(bind: SmppBind) -> str:
    """Message ids are unique per SMSC account, not per connection: tx and rx binds share."""
    return f"{bind.system_id}@{bind.host}"


def split_mo(pdu: DeliverSm) -> tuple[bytes, Concat | None]:
    """(payload, concatenation) of an MO; raises ValueError for a malformed UDH."""
    data = pdu.short_message or pdu.message_payload or b""
    concat = None
    if pdu.esm_class & ESM_UDHI:
        data, concat = parse_udh(data)
    elif pdu.sar_total_segments and pdu.sar_segment_seqnum and pdu.sar_msg_ref_num is not None:
        concat = Concat(pdu.sar_msg_ref_num, pdu.sar_total_segments, pdu.sar_segment_seqnum, 0)
    if concat is not None and (concat.total == 1 or not valid_concat(concat)):
        concat = None
    return data, concat


@dataclass
class _Replies:
    """MT records made while a worker processes one MO. They are written with the MO's
    outcome (one statement, one commit, for "replied" and "processed"). Once the outcome is
    written the collector closes, and a send that outlives the handler records on its own."""

    records: list[MtRecord] = field(default_factory=list)
    open: bool = True


_REPLIES: contextvars.ContextVar[_Replies | None] = contextvars.ContextVar(
    "sms_replies", default=None
)


@dataclass
class _Progress:
    split: SplitMessage
    concat_ref: int
    done: dict[int, SubmittedPart] = field(default_factory=dict)


class SmsChannel:
    def __init__(
        self,
        binds: Sequence[SmppBind],
        store: SmsMessageStore,
        *,
        dedupe_secret: bytes,
        country_code: str = "254",
        handler: MoHandler | None = None,
        session_tuning: SessionTuning | None = None,
        tuning: ChannelTuning | None = None,
    ) -> None:
        self.store = store
        self.handler = handler
        self.tuning = tuning or ChannelTuning()
        self._secret = dedupe_secret
        self._country = country_code
        self.sessions = [
            SmppSession(
                bind,
                name=f"{i}:{bind.system_id}@{bind.host}:{bind.port}/{bind.bind}",
                on_deliver=self._on_deliver,
                on_state=self._on_state,
                on_unsure_ack=self._on_unsure_ack,
                tuning=session_tuning,
            )
            for i, bind in enumerate(binds, start=1)
        ]
        self._queue: asyncio.Queue[StoredMo] = asyncio.Queue(self.tuning.queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._extending: set[asyncio.Task[None]] = set()
        self._bind_up = asyncio.Event()
        self._concat_ref = random.randrange(256)  # noqa: S311 - a message reference, not a secret
        self.counters = dict.fromkeys(
            ("mo", "mo_duplicates", "mo_parts", "receipts", "receipts_unmatched", "mt"), 0
        )

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        for session in self.sessions:
            session.start()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"sms-worker-{i}")
            for i in range(self.tuning.workers)
        ]
        self._tasks.append(asyncio.create_task(self._recovery(), name="sms-recovery"))

    async def stop(self) -> None:
        """Unbind every session; MOs still queued keep their lease and are picked up again."""
        await asyncio.gather(*(s.stop() for s in self.sessions))
        # The last acknowledgements' fate is unknown: their keys must outlive the short window.
        if self._extending:
            await asyncio.wait(set(self._extending), timeout=STOP_TIMEOUT_S)
        await stop_tasks(self._tasks, "sms workers")
        self._tasks = []
        # Outcome writes a stopped worker left in the store's batch (replies on record, MOs
        # marked processed) go out before the pool can close; a database that does not answer
        # does not hold the stop (those MOs are processed again after their lease).
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self.store.drain()
        except TimeoutError:
            log.warning("sms: the store's last writes did not finish within the stop")

    def bind_statuses(self) -> list[BindStatus]:
        return [s.status() for s in self.sessions]

    def _on_state(self, session: SmppSession, state: BindState) -> None:
        if state is BindState.BOUND and session.can_transmit:
            self._bind_up.set()

    # --- MO and receipts ---------------------------------------------------------------------

    async def _on_deliver(self, session: SmppSession, pdu: DeliverSm) -> int:
        if is_receipt(pdu.esm_class):
            await self._on_receipt(session, pdu)
            return ESME_ROK
        if pdu.esm_class & ESM_TYPE_MASK:
            # An SME delivery or manual/user acknowledgement, a conversation abort or a
            # reserved type: nothing the customer typed, so no command. Acknowledged, so the
            # SMSC does not deliver it again.
            log.info(
                "sms: ignored a deliver_sm of message type 0x%02X from %s",
                pdu.esm_class & ESM_TYPE_MASK,
                session.name,
            )
            return ESME_ROK
        return await self._on_mo(session, pdu)

    async def _on_receipt(self, session: SmppSession, pdu: DeliverSm) -> None:
        self.counters["receipts"] += 1
        receipt = parse_receipt(
            pdu.short_message, pdu.receipted_message_id, pdu.message_state, pdu.network_error_code
        )
        if receipt is None:
            self.counters["receipts_unmatched"] += 1
            log.warning("sms: a receipt without a message id from %s", session.name)
            return
        bind = session.bind
        base = bind.message_id_base if receipt.id_source == "tlv" else bind.dlr_id_base
        matched = await self.store.apply_receipt(
            smsc_key(bind),
            message_key(receipt.message_id, base),
            receipt.message_id,
            receipt.status,
            receipt.error,
        )
        if not matched:
            self.counters["receipts_unmatched"] += 1

    def _dedupe_key(
        self, bind: SmppBind, pdu: DeliverSm, *, concatenated: bool = False
    ) -> tuple[str, bool]:
        """(keyed hash, identified) of an MO. A redelivery is the same deliver_sm again: same
        source, destination, content and concatenation (UDH inside short_message, or SAR),
        and the same identifying fields where the SMSC sends them: the handset's message
        reference (user_message_reference), the SMSC's timestamps in schedule_delivery_time
        / validity_period, an id in receipted_message_id, or its MO id TLV (`mo_id_tlv`). An
        MO with any of those (or a concatenation reference) is `identified`: a customer's
        new message would differ in them, so its key can be kept for the long window. A
        plain MO has no identity beyond its text, so its key is kept for the short window."""
        mo_id = b""
        if bind.mo_id_tlv is not None:
            mo_id = next((v for tag, v in pdu.vendor_tlvs if tag == bind.mo_id_tlv), b"")
        fields = (
            pdu.sar_msg_ref_num,
            pdu.sar_total_segments,
            pdu.sar_segment_seqnum,
            pdu.user_message_reference,
            pdu.schedule_delivery_time,
            pdu.validity_period,
            pdu.receipted_message_id,
        )
        material = b"\x1f".join(
            [
                smsc_key(bind).encode(),
                pdu.source_addr.encode(),
                pdu.destination_addr.encode(),
                bytes([pdu.esm_class, pdu.data_coding]),
                pdu.short_message,
                pdu.message_payload or b"",
                repr(fields).encode(),
                mo_id,
            ]
        )
        identified = bool(
            mo_id
            or pdu.user_message_reference is not None
            or pdu.schedule_delivery_time
            or pdu.validity_period
            or pdu.receipted_message_id
            or concatenated
        )
        return hmac.new(self._secret, material, hashlib.sha256).hexdigest(), identified

    def _on_unsure_ack(self, session: SmppSession, pdus: Sequence[DeliverSm]) -> None:
        keys = [self._dedupe_key(session.bind, p)[0] for p in pdus if not is_receipt(p.esm_class)]
        if keys:
            task = asyncio.create_task(self._extend(keys))
            self._extending.add(task)
            task.add_done_callback(self._extending.discard)

    async def _extend(self, keys: list[str]) -> None:
        # Through a short outage: lost, these MOs keep the short window only, and one the
        # SMSC delivers again after it is processed twice.
        try:
            await through_outage(
                lambda: self.store.extend_dedupe(keys), what=f"the dedupe of {len(keys)} MOs"
            )
        except Exception:
            log.exception("sms: could not extend the de-duplication of %d MOs", len(keys))

    async def _on_mo(self, session: SmppSession, pdu: DeliverSm) -> int:
        try:
            data, concat = split_mo(pdu)
        except ValueError as exc:
            log.warning("sms: unreadable MO from %s: %s", session.name, exc)
            return ESME_RX_P_APPN
        received = time.monotonic()
        smsc = smsc_key(session.bind)
        msisdn = address.to_e164(pdu.source_addr, pdu.source_addr_ton, self._country)
        key, identified = self._dedupe_key(session.bind, pdu, concatenated=concat is not None)
        stored: StoredMo | None
        if concat is None:
            text, encoding = decode_payload(data, pdu.data_coding)
            record = InboundRecord(
                smsc,
                msisdn,
                pdu.destination_addr,
                text,
                commands.mask_secrets(text),
                encoding,
                key,
                identified,
                received,
            )
            stored = await self.store.record_mo(record)
            duplicate = stored is None
        else:
            self.counters["mo_parts"] += 1
            ref = f"{concat.ref_bits}:{concat.ref}"
            group = f"{smsc}|{msisdn}|{pdu.destination_addr}|{ref}|{concat.total}"
            part = InboundPart(
                smsc,
                msisdn,
                pdu.destination_addr,
                group,
                concat.seq,
                concat.total,
                pdu.data_coding,
                data,
                key,
            )
            result = await self.store.record_mo_part(part)
            duplicate = result is False
            stored = result if isinstance(result, StoredMo) else None
        if duplicate:
            self.counters["mo_duplicates"] += 1
        if stored is not None:
            self.counters["mo"] += 1
            # A full queue holds the deliver_sm_resp back a little: the SMSC's window then
            # slows the MOs down, instead of parking them until their lease runs out.
            if self._queue.full():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tuning.enqueue_wait_s):
                        await self._queue.put(stored)
            else:
                self._queue.put_nowait(stored)
        return ESME_ROK

    @property
    def waiting(self) -> int:
        """MOs stored and queued for a worker."""
        return self._queue.qsize()

    def _enqueue(self, mo: StoredMo) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # the recovery loop claims it after its lease
            self._queue.put_nowait(mo)

    async def _worker(self) -> None:
        while True:
            mo = await self._queue.get()
            try:
                await self._process(mo)
            except Exception:
                log.exception("sms: could not record the outcome of MO %d", mo.id)

    async def _process(self, mo: StoredMo) -> None:
        handler = self.handler
        if handler is None:
            await self.store.mo_retry(
                mo.id, "no MO handler is configured", self.tuning.retry_delay_s
            )
            return
        sms = InboundSms(
            id=mo.id,
            msisdn=mo.msisdn,
            short_code=mo.short_code,
            text=mo.text,
            smsc=mo.smsc,
            received_at=mo.created_at,
            parts=mo.parts,
            complete=mo.complete,
            attempt=mo.attempts,
        )
        replies = _Replies()
        token = _REPLIES.set(replies)
        try:
            async with asyncio.timeout(self.tuning.handler_timeout_s):
                await handler.handle(sms)
        except _TRY_AGAIN as exc:
            # A handler that lost its database connection (or timed out) did nothing or all
            # of what it did under its idempotency key: the MO is tried again, not failed.
            await self._flush_replies(replies)
            await self._retry_or_fail(mo, f"temporary: {type(exc).__name__}: {exc}")
        except SendFailed as exc:
            await self._flush_replies(replies)
            if exc.temporary:
                await self._retry_or_fail(mo, f"reply not sent: {exc.reason}")
            else:
                await self.store.mo_failed(mo.id, f"reply refused: {exc.reason}")
        except Exception as exc:
            await self._flush_replies(replies)
            log.exception("sms: MO %d handler failed", mo.id)
            await self.store.mo_failed(mo.id, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            # Stopping: what was sent must be on record, or a later attempt sends it again.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flush_replies(replies))
            raise
        else:
            await self._processed(mo, replies)
        finally:
            _REPLIES.reset(token)
            replies.open = False

    async def _processed(self, mo: StoredMo, replies: _Replies) -> None:
        records, replies.open = replies.records, False
        try:
            await self.store.mo_processed(mo.id, records)
        except Exception:
            if not records:
                raise
            # Keep the replies on record whatever the combined write tripped on: without them
            # a retry of this MO would send them again.
            log.exception("sms: could not record MO %d with its replies; one by one", mo.id)
            for record in records:
                await self._record(record)
            await self.store.mo_processed(mo.id)

    async def _flush_replies(self, replies: _Replies) -> None:
        records, replies.open = replies.records, False
        for record in records:
            await self._record(record)

    async def _retry_or_fail(self, mo: StoredMo, reason: str) -> None:
        if mo.attempts >= self.tuning.max_attempts:
            await self.store.mo_failed(mo.id, f"{reason} (after {mo.attempts} attempts)")
        else:
            await self.store.mo_retry(mo.id, reason, self.tuning.retry_delay_s * mo.attempts)

    async def _recovery(self) -> None:
        rounds = 0
        while True:
            try:
                await self.recover_once(purge=rounds % self.tuning.purge_every_rounds == 0)
            except Exception:
                log.exception("sms: recovery round failed")
            rounds += 1
            await asyncio.sleep(self.tuning.recovery_interval_s)

    async def recover_once(self, *, purge: bool = False) -> int:
        """One recovery round; returns how many MOs it queued."""
        queued = 0
        free = self._queue.maxsize - self._queue.qsize()
        if free > 0:
            for mo in await self.store.claim_mo(min(free, 100), self.tuning.max_attempts):
                self._enqueue(mo)
                queued += 1
        for mo in await self.store.expire_part_groups(self.tuning.concat_timeout_s):
            self._enqueue(mo)
            queued += 1
        await self.store.give_up_mo(self.tuning.max_attempts)
        if purge:
            await self.store.purge()
        return queued

    # --- MT ----------------------------------------------------------------------------------

    def _next_concat_ref(self) -> int:
        self._concat_ref = (self._concat_ref + 1) % 256
        return self._concat_ref

    async def _progress_for(
        self, ref: str | None, text: str, first_attempt: bool
    ) -> _Progress | str:
        """Where sending `ref` stands: a progress record (resuming a message a temporary failure
        interrupted, here or in another instance), or the first part's message id when it was
        sent completely before."""
        sent = None
        if ref is not None and not first_attempt:
            try:
                sent = await self.store.find_mt(ref)
            except CONNECTION_LOST as exc:
                # Without the record, sending could send twice: not now.
                raise SendFailed(
                    f"the message store is unreachable ({type(exc).__name__})", temporary=True
                ) from None
        if sent is not None and sent.status in SENT_STATUSES and sent.parts:
            return sent.parts[0].message_id
        resume = sent is not None and sent.status == "queued"
        concat_ref = sent.concat_ref if resume and sent and sent.concat_ref is not None else None
        if concat_ref is None:
            concat_ref = self._next_concat_ref()
        try:
            progress = _Progress(split_text(text, concat_ref), concat_ref)
        except MessageTooLong as exc:
            raise SendFailed(str(exc), temporary=False) from None
        if resume and sent is not None:
            progress.done = {p.part_no: p for p in sent.parts}
        return progress

    async def send_text(
        self,
        recipient: str,
        text: str,
        *,
        ref: str | None = None,
        sensitive: bool = False,
        first_attempt: bool = False,
        stored_as: str | None = None,
    ) -> str:
        """Send `text` (split when long) and return the SMSC's message id of its first part.
        `ref` makes the send idempotent: a reference already sent is not sent again (one store
        look-up, skipped when the caller knows this is the first attempt for `ref`).
        `sensitive` stores the body as "[redacted]", `stored_as` as that text (a secret in it
        masked). Raises SendFailed."""
        try:
            dest, _, _ = address.destination(recipient, self._country)
        except ValueError as exc:
            raise SendFailed(str(exc), temporary=False) from None
        progress = await self._progress_for(ref, text, first_attempt)
        if isinstance(progress, str):
            return progress
        body = REDACTED if sensitive else (text if stored_as is None else stored_as)
        try:
            await self._send_parts(progress, dest)
        except SendFailed as exc:
            # "queued" keeps the accepted parts on record, so a retry sends only the rest.
            status = "queued" if exc.temporary else "failed"
            record = self._mt_record(
                ref, dest=dest, body=body, progress=progress, status=status, error=exc.reason
            )
            await self._record(record)
            raise
        self.counters["mt"] += 1
        await self._record(
            self._mt_record(
                ref, dest=dest, body=body, progress=progress, status="submitted", error=None
            )
        )
        return progress.done[1].message_id

    def _mt_record(
        self,
        ref: str | None,
        *,
        dest: str,
        body: str,
        progress: _Progress,
        status: str,
        error: str | None,
    ) -> MtRecord:
        parts = sorted(progress.done.values(), key=lambda p: p.part_no)
        split = progress.split
        return MtRecord(
            ref=ref,
            smsc=parts[0].smsc if parts else "",
            msisdn="+" + dest,
            short_code=self.sessions[0].bind.source_addr if self.sessions else "",
            body=body,
            encoding=split.encoding,
            parts=len(split.parts),
            concat_ref=progress.concat_ref if len(split.parts) > 1 else None,
            status=status,
            error=error,
            submitted=parts,
        )

    async def _record(self, record: MtRecord) -> None:
        replies = _REPLIES.get()
        if replies is not None and replies.open:
            replies.records.append(record)  # written with the MO's outcome
            return
        try:
            await self.store.record_mt(record)
        except Exception:
            # The message is out (or refused) whatever the store says; losing the record only
            # costs the receipt match. Never fail the send because of it.
            log.exception("sms: could not record MT %s", record.ref)

    async def _send_parts(self, progress: _Progress, dest: str) -> None:
        deadline = time.monotonic() + self.tuning.send_deadline_s
        for part_no, payload in enumerate(progress.split.parts, start=1):
            if part_no not in progress.done:
                progress.done[part_no] = await self._submit_part(
                    progress.split, part_no, payload, dest, deadline
                )

    async def _submit_part(
        self, split: SplitMessage, part_no: int, payload: bytes, dest: str, deadline: float
    ) -> SubmittedPart:
        throttled = 0
        while True:
            session = await self._pick_session(deadline)
            bind = session.bind
            src, src_ton, src_npi = address.source(bind.source_addr)
            try:
                async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                    message_id = await session.submit(
                        source_addr=src,
                        source_addr_ton=src_ton,
                        source_addr_npi=src_npi,
                        destination_addr=dest,
                        dest_addr_ton=address.TON_INTERNATIONAL,
                        dest_addr_npi=address.NPI_ISDN,
                        esm_class=split.esm_class,
                        data_coding=split.data_coding,
                        short_message=payload,
                        registered_delivery=1 if bind.registered_delivery else 0,
                    )
            except Throttled:
                throttled += 1
                if throttled > self.tuning.max_throttle_retries:
                    raise SendFailed("the SMSC keeps throttling", temporary=True) from None
                continue  # the pacer has slowed down and holds the next submit back
            except SmscRejected as exc:
                raise SendFailed(str(exc), temporary=exc.status in TEMPORARY_STATUSES) from None
            except LinkDown:
                # The link dropped under this part: wait for a bind (ours or another) and send
                # it again. After a response timeout the SMSC may have taken it: at least once.
                await asyncio.sleep(LINK_RETRY_PAUSE_S)
                continue
            except CodecError as exc:
                raise SendFailed(str(exc), temporary=False) from None
            except TimeoutError:
                raise SendFailed("the send deadline passed", temporary=True) from None
            except SmppFailure as exc:
                # Any other answer that is not an acceptance (the wrong response to the
                # submit): the SMSC may still act on it, so temporary, and through SendFailed
                # so the parts already accepted are recorded and not sent again.
                raise SendFailed(str(exc), temporary=True) from None
            return SubmittedPart(
                part_no, message_id, message_key(message_id, bind.message_id_base), smsc_key(bind)
            )

    async def _pick_session(self, deadline: float) -> SmppSession:
        """The least loaded bound transmitter, waiting up to bind_wait_s for one."""
        until = min(deadline, time.monotonic() + self.tuning.bind_wait_s)
        while True:
            bound = [s for s in self.sessions if s.can_transmit and s.state is BindState.BOUND]
            if bound:
                return min(bound, key=lambda s: (s.pacer.delay(), s.in_flight))
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise SendFailed("no SMPP bind is up", temporary=True)
            self._bind_up.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._bind_up.wait()


class SmppSender:
    """The core outbox's sender for channel "sms": `await send(message)` returns the SMSC's
    message id or raises SendFailed (temporary -> retried, permanent -> dead letter)."""

    channel = "sms"

    def __init__(self, channel: SmsChannel) -> None:
        self._channel = channel

    async def send(self, message: OutboundLike) -> str | None:
        kind = str(getattr(message, "kind", ""))
        return await self._channel.send_text(
            message.recipient,
            message.body,
            ref=f"outbox:{message.id}",
            sensitive=kind in SENSITIVE_KINDS,
        )
