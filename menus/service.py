"""One USSD step around the engine: sessions, repeats, one writer, deadlines, failures.

    handle(request) -> Reply
      a claimed step of this session ended here with its last write unstored: one more try
          of that write first (`menus.final_writes`, which also retries it in the background)
      load the session (local cache of own writes, else one GET)
      a repeat of the last hop (same hop, same input), a stale hop, or a closed session
          -> the stored reply; nothing runs again
      a hop while another with side effects is in flight
          -> the same hop and input: wait for it and answer its reply; else "still processing"
          unless that claim is dead: its step ended here without clearing it, its instance's
          liveness key is gone (`menus.liveness`: one EXISTS, only on this path), or it is
          older than the deadline plus a grace period; then the hop takes the session over
          through the same compare-and-set as any step (one taker wins)
      otherwise run the engine; before its first side effect the step claims the session
          (a CAS that records the hop in flight), and it ends with one CAS of the new record;
          if that CAS fails, a claimed step's write is held and sent again until it lands
      Redis or PostgreSQL down -> "temporarily unavailable" (an END screen, never an error page)

A navigation step therefore costs one Redis round trip (the final CAS) when the session is in the
local cache, two otherwise; a step with an action adds the claim. Every step is recorded for
analytics (screen, latency, outcome; secret inputs masked).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from core.crypto import FieldCipher
from core.errors import Unavailable
from menus import messages
from menus.analytics import StepLog, StepRecord, masked, now
from menus.engine import Engine, Reply, Step, UssdRequest
from menus.final_writes import FinalWrite, FinalWrites
from menus.liveness import Liveness
from menus.registry import MenuSet
from menus.session import Session, SessionStore, Versioned

log = logging.getLogger("menus.service")

MAX_ATTEMPTS = 3  # a conflicting write is retried this often before "still processing"
BUSY_POLL_S = 0.1  # how often a duplicate hop checks whether the first one finished
RENDER_MARGIN_S = 0.3  # kept back from the deadline to store and answer
# A claim older than the deadline plus this died with its process: the rule for a claim whose
# instance cannot be asked (no liveness, Redis not answering, a record without "by").
STALE_CLAIM_GRACE_S = 30.0
FAILURES = (
    RedisError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection killed between two protocol steps
    TimeoutError,
)

Observer = Callable[[str, str, float], None]
TakeoverObserver = Callable[[str], None]  # why the claim taken over was dead: `_dead`'s reason
FinalWriteObserver = Callable[[str], None]  # what became of a held final write


@dataclass
class Trace:
    """What analytics learns about a step."""

    outcome: str = "ok"
    screen: str = ""
    menu: str = ""
    version: int = 0
    step: int = 0
    language: str = ""
    input: str | None = None

    def session(self, s: Session) -> None:
        self.menu, self.version, self.step, self.language = s.menu, s.version, s.seq, s.language
        self.screen = s.state


class _Lost(Exception):
    """Another writer got the session first; `current` is what it stored."""

    def __init__(self, current: Versioned | None) -> None:
        super().__init__("session changed under us")
        self.current = current


# Read-only by convention, not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (4x the cost), and several of these are built on every USSD request.
@dataclass(slots=True)
class _Hop:
    """One request being answered: where its session lives and what identifies it."""

    key: str
    req: UssdRequest
    fp: str  # keyed hash of the input (never the input: it may be a PIN)
    ttl_s: int
    started: float
    trace: Trace
    dead: object = None  # the `by` of a claim found dead on this hop (asked once per hop)
    takeover: str | None = None  # why that claim was dead, until this hop's write replaces it


class _LiveClaims:
    """The claims whose steps are running in this process; `idle` is set while there are none
    (a clean stop waits for it before deleting the instance's liveness key)."""

    __slots__ = ("idle", "tokens")

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def add(self, token: str) -> None:
        self.tokens.add(token)
        self.idle.clear()

    def discard(self, token: str) -> None:
        self.tokens.discard(token)
        if not self.tokens:
            self.idle.set()

    def __contains__(self, token: object) -> bool:
        return token in self.tokens


class _Claim:
    """The step's claim hook: once, before the first side effect, mark the hop in flight.
    `token` names the claim; it is in `live` while its step runs in this process. With
    `liveness`, the instance's key is first made to outlive the step (`Liveness.cover`), sent
    in the same round trip as the claim: another instance may take a claim for dead only once
    the key is gone, so the key must not go while this step may still run its action."""

    def __init__(
        self,
        store: SessionStore,
        hop: _Hop,
        *,
        expected: int | None,
        before: str,
        token: str,
        live: _LiveClaims,
        liveness: Liveness | None,
        until: float,
    ) -> None:
        self.store, self.hop, self.expected, self.before = store, hop, expected, before
        self.token, self.live = token, live
        self.liveness, self.until = liveness, until
        self.claimed = False

    async def __call__(self) -> None:
        if self.claimed:
            return
        record = Session.from_json(self.before)
        record.inflight = {
            "hop": self.hop.req.hop,
            "fp": self.hop.fp,
            "at": time.time(),
            "by": self.token,
        }
        self.live.add(self.token)
        save = self.store.save(self.hop.key, self.expected, record.to_json(), self.hop.ttl_s)
        if self.liveness is None or self.liveness.covers(self.until):
            ok, current = await save
        else:
            # The cover goes first on the pipelined link (Redis runs it before the claim); if
            # it fails, the step stops here (a claim it made is dead: its token leaves `live`).
            _, (ok, current) = await asyncio.gather(self.liveness.cover(self.until), save)
        if not ok:
            raise _Lost(current)
        self.expected = (self.expected or 0) + 1
        self.claimed = True


def _numeric(hop: str) -> bool:
    return hop.isascii() and hop.isdigit()


class UssdService:
    def __init__(
        self,
        registry: MenuSet,
        engine: Engine,
        store: SessionStore,
        *,
        cipher: FieldCipher,
        deadline_s: float,
        steps: StepLog | None = None,
        observe: Observer | None = None,
        liveness: Liveness | None = None,
        on_takeover: TakeoverObserver | None = None,
        on_final_write: FinalWriteObserver | None = None,
    ) -> None:
        self.registry = registry
        self.engine = engine
        self.store = store
        self.cipher = cipher
        # A keyed BLAKE2b (key derived from the gateway key) is a fraction of an HMAC's cost.
        self._fp_key = bytes.fromhex(cipher.lookup_hash("ussd:input-fingerprint"))
        self.deadline_s = deadline_s
        self.steps = steps
        self.observe = observe
        # Claims are named "<instance>:<n>"; `_live` holds those whose steps are running here.
        # The instance is the one whose liveness key other instances ask about.
        self.liveness = liveness
        self.on_takeover = on_takeover
        self._instance = liveness.instance if liveness is not None else secrets.token_hex(6)
        self._claim_numbers = itertools.count()
        self._live = _LiveClaims()
        # A claimed step's last write that Redis did not take, sent again until it lands.
        self.final_writes = FinalWrites(store, observe=on_final_write)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no step with a claim runs here (a clean stop); False if some still do."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._live.idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> int:
        """A stop, once no claimed step runs: held final writes are tried once more. Returns
        how many claims are left in Redis (dead at once when the liveness key goes)."""
        return await self.final_writes.close()

    async def _dead(self, hop: _Hop, inflight: dict[str, Any]) -> bool:
        """Whether a claim found on the session is dead, so that this hop may take the session
        over (through the compare-and-set: if two hops try, one wins). Dead: a claim this
        process made whose step has ended without clearing it (its last write failed, and is
        not held in `final_writes`: a held one is on its way, and `_handle` sends it first); a
        claim of an instance whose liveness key is gone (the process died); a claim older than
        the deadline plus STALE_CLAIM_GRACE_S. When the other instance cannot be asked (no
        liveness, Redis not answering, an older record without "by"), only age decides: a
        step must not run twice on a guess. The reason ("own", "instance", "stale") is kept
        on the hop for `_took_over`."""
        by = inflight.get("by")
        if by is not None and by == hop.dead:
            return True  # already found dead on this hop (a poll, then the step's attempt)
        reason = self._death(by, float(inflight.get("at", 0)))
        if reason is None and isinstance(by, str) and self.liveness is not None:
            instance = by.partition(":")[0]
            if instance != self._instance and not await self._alive(hop, instance):
                reason = "instance"
        if reason is None:
            return False
        hop.dead, hop.takeover = by, reason
        return True

    def _death(self, by: object, at: float) -> str | None:
        """Why a claim is dead without asking Redis: made here and over, or too old."""
        if (
            isinstance(by, str)
            and by.startswith(self._instance + ":")
            and by not in self._live
            and not self.final_writes.holds(by)
        ):
            return "own"
        if time.time() - at >= self.deadline_s + STALE_CLAIM_GRACE_S:
            return "stale"
        return None

    async def _alive(self, hop: _Hop, instance: str) -> bool:
        assert self.liveness is not None
        try:
            return await self.liveness.alive(instance)
        except FAILURES:
            log.warning(
                "ussd: the claim's instance could not be asked; the grace rule applies",
                extra={"key": hop.key},
            )
            return True

    def _took_over(self, hop: _Hop) -> None:
        """This hop's write replaced a dead claim: count it, say so (the key, never inputs)."""
        reason, hop.takeover = hop.takeover, None
        if reason is None:
            return
        log.warning(
            "ussd: a dead claim was taken over",
            extra={"key": hop.key, "reason": reason, "claim": hop.dead},
        )
        if self.on_takeover is not None:
            self.on_takeover(reason)

    async def handle(self, req: UssdRequest, ttl_s: int) -> Reply:
        started = time.monotonic()
        trace = Trace()
        try:
            reply = await self._handle(req, ttl_s, started, trace)
        except (*FAILURES, Unavailable):
            log.warning("ussd step: a dependency is unavailable", exc_info=True)
            trace.outcome = "unavailable"
            reply = self._system("unavailable", trace.language or req.language)
        except Exception:
            log.exception("ussd step failed", extra={"provider": req.namespace})
            trace.outcome = "error"
            reply = self._system("unavailable", trace.language or req.language)
        self._record(req, trace, time.monotonic() - started)
        return reply

    async def active(self, namespace: str, session_id: str) -> bool:
        """Whether a session is open (Infobip's status call)."""
        key = self.store.key(namespace, session_id)
        try:
            current = await self.store.load(key)
        except FAILURES:
            return False
        return current is not None and not current.session().ended

    def _system(self, key: str, language: str | None) -> Reply:
        menu = self.registry.current.get("default") or next(
            iter(self.registry.current.values()), None
        )
        if menu is None:
            return Reply(messages.default_text(key, language or "en"), True)
        return Reply(menu.message(key, menu.language(language)), True)

    def fingerprint(self, text: str | None) -> str:
        """A keyed hash of an input (never the input: it may be a PIN)."""
        return hashlib.blake2b((text or "").encode(), key=self._fp_key, digest_size=8).hexdigest()

    async def _handle(self, req: UssdRequest, ttl_s: int, started: float, trace: Trace) -> Reply:
        key = self.store.key(req.namespace, req.session_id)
        if self.final_writes.held(key) is not None:
            # This session's last step ended here with its write unstored: store it first, so
            # this hop (most likely the provider's retry) gets that step's reply.
            await self.final_writes.flush(key)
        if req.kind == "end":
            await self._abort(key, req, ttl_s, trace)
            return Reply("", True)
        current = self.store.cached(key)
        if current is None and req.kind != "start":
            current = await self.store.load(key)
        hop = _Hop(key, req, self.fingerprint(req.input), ttl_s, started, trace)
        for _ in range(MAX_ATTEMPTS):
            if current is None and req.kind != "start" and req.inputs is None:
                trace.outcome = "expired"
                return self._system("expired", req.language)
            session = None
            try:
                if current is not None:
                    session = current.session()
                    trace.session(session)
                    early = await self._early(hop, session)
                    if early is not None:
                        return early
                return await self._step(hop, current, session)
            except _Lost as lost:  # another writer, or a claim waited on that died
                current = lost.current
        trace.outcome = "busy"
        return self._system("busy", trace.language or req.language)

    async def _early(self, hop: _Hop, s: Session) -> Reply | None:
        """The answer when this request must not run a step: a repeat, a stale or duplicate
        hop, a closed session."""
        req, trace = hop.req, hop.trace
        if s.inflight and not await self._dead(hop, s.inflight):
            return await self._busy(hop, s.inflight)
        last = s.last
        if s.ended:
            if last is not None and last.get("end"):
                # Our own END screen, asked for again (a provider retry): the same answer.
                trace.outcome = "replay"
                return Reply(str(last["text"]), True)
            # Closed by the provider's end notice while a menu was showing: that menu can no
            # longer be answered, so say the session is over rather than show it again.
            trace.outcome = "expired"
            return self._system("expired", s.language)
        if last is not None and (req.kind == "start" or self._repeat(last, req)):
            trace.outcome = "replay"
            return Reply(str(last["text"]), bool(last["end"]))
        return None

    @staticmethod
    def _repeat(last: dict[str, object], req: UssdRequest) -> bool:
        """A repeat of the last hop, or an older hop (the provider retried late)."""
        hop, last_hop = req.hop, last.get("hop")
        if hop is None or not isinstance(last_hop, str):
            return False
        if hop == last_hop:
            return True  # same hop: the same input replays; another input cannot be applied
        # Only ASCII digits compare as numbers: str.isdigit() also says yes to "²" (int() then
        # raised inside the step: "temporarily unavailable") and to "٣" (read as 3).
        return _numeric(hop) and _numeric(last_hop) and int(hop) < int(last_hop)

    async def _busy(self, hop: _Hop, inflight: dict[str, object]) -> Reply:
        """A live claim blocks this hop. The same hop sent again waits (bounded) for the first
        copy's answer; if the first copy's claim dies meanwhile, this copy runs the step
        itself: `_Lost` hands the record just read back to `_handle`, which takes it over."""
        req, fp, trace = hop.req, hop.fp, hop.trace
        if inflight.get("hop") == req.hop and inflight.get("fp") == fp:
            # The provider sent this hop again while we work on it: answer what it gets.
            deadline = hop.started + self.deadline_s - RENDER_MARGIN_S
            while time.monotonic() + BUSY_POLL_S < deadline:
                await asyncio.sleep(BUSY_POLL_S)  # bounded polling for the first copy
                current = await self.store.load(hop.key)
                if current is None:
                    break
                s = current.session()
                if not s.inflight:
                    if s.last and s.last.get("hop") == req.hop and s.last.get("fp") == fp:
                        trace.outcome = "replay"
                        return Reply(str(s.last["text"]), bool(s.last["end"]))
                    break
                if await self._dead(hop, s.inflight):
                    raise _Lost(current)
        trace.outcome = "busy"
        return self._system("busy", trace.language or req.language)

    async def _step(self, hop: _Hop, current: Versioned | None, parsed: Session | None) -> Reply:
        req = hop.req
        prefill: tuple[str, ...] = ()
        if current is None or parsed is None:
            menu, prefill = self.registry.resolve(req.service_code)
            if menu is None:
                raise Unavailable("No menu is published")
            session = Session(
                key=f"{req.namespace}:{req.session_id}",
                msisdn=req.msisdn,
                menu=menu.name,
                version=menu.version,
                language=menu.language(req.language),
            )
            prefill += req.inputs or ()
            before, expected, text = session.to_json(), None, None
        else:
            session = parsed
            menu = await self.registry.version(session.menu, session.version)
            before, expected, text = current.raw, current.version, req.input
        token = f"{self._instance}:{next(self._claim_numbers)}"
        claim = _Claim(
            self.store,
            hop,
            expected=expected,
            before=before,
            token=token,
            live=self._live,
            liveness=self.liveness,
            until=hop.started + self.deadline_s,
        )
        try:
            deadline = hop.started + self.deadline_s - RENDER_MARGIN_S
            step = Step(menu, session, deadline=deadline, claim=claim)
            await self.engine.run(step, text, prefill)
            reply = self.engine.reply(step)
            self._trace(hop.trace, step, reply, req.input)
            session.last = {"hop": req.hop, "fp": hop.fp, "text": reply.text, "end": reply.end}
            session.seq += 1
            session.inflight = None
            if reply.end:
                session.close()
            raw = session.to_json()
            try:
                ok, now_stored = await self.store.save(
                    hop.key, claim.expected, raw, hop.ttl_s, session
                )
            except (RedisError, OSError, TimeoutError):
                if claim.claimed:
                    self._hold(hop, claim, raw, token)
                if not reply.end:
                    raise  # a menu not on record would take the next input for the old screen
                # The session ends with this screen and what the step did is done (an END after
                # money moved is its receipt): told "temporarily unavailable" instead, the
                # customer would send the money again from a new session.
                log.warning("ussd: the last screen was not stored", extra={"key": hop.key})
                return reply
        finally:
            # The step is over. A claim it could not clear (Redis out of reach) is released by
            # its held write as soon as Redis answers, and the hop sent again gets this step's
            # reply (`_hold`). A claim whose write is not held (dropped, given up) is dead from
            # now on: the hop sent here again runs again (its action's idempotency key is the
            # same: nothing moves twice) rather than wait out STALE_CLAIM_GRACE_S.
            self._live.discard(token)
            if claim.claimed:
                self._took_over(hop)  # the claim replaced a dead one (if this hop found one)
        if not ok:
            if claim.claimed:
                # Our claim was overtaken (taken for dead): the action ran, answer it.
                log.warning("session overwritten during an action", extra={"key": hop.key})
                return reply
            raise _Lost(now_stored)
        self._took_over(hop)
        return reply

    def _hold(self, hop: _Hop, claim: _Claim, raw: str, token: str) -> None:
        """Keep a claimed step's last write to send again (`menus.final_writes`) until the
        claim would be stale anyway or the session would have expired."""
        assert claim.expected is not None  # a claim wrote a version
        # Past the grace other instances take the claim for stale; past the TTL (set by the
        # claim's write) the record is gone.
        until = hop.started + min(self.deadline_s + STALE_CLAIM_GRACE_S, hop.ttl_s)
        self.final_writes.hold(FinalWrite(hop.key, claim.expected, raw, hop.ttl_s, token, until))

    def _trace(self, trace: Trace, step: Step, reply: Reply, text: str | None) -> None:
        trace.session(step.session)
        trace.step = step.session.seq + 1
        # Only a step that ran knows whether its screen was secret; anything else keeps no input.
        trace.input = masked(text, step.input_secret)
        if step.fault is not None:
            trace.outcome = step.fault
        elif step.failure is not None:
            trace.outcome = f"error:{step.failure}"
        elif step.notice is not None:
            trace.outcome = "invalid"
        elif reply.end:
            trace.outcome = "end"

    async def _abort(self, key: str, req: UssdRequest, ttl_s: int, trace: Trace) -> None:
        """The provider says the session is over (user cancelled, network timeout)."""
        trace.outcome = f"aborted:{req.detail}" if req.detail else "aborted"
        current = await self.store.load(key)
        if current is None:
            return
        session = current.session()
        trace.session(session)
        if session.ended:
            return
        session.close()
        # Best effort: a step in flight will answer (and store) its own reply.
        await self.store.save(key, current.version, session.to_json(), ttl_s)

    def _record(self, req: UssdRequest, trace: Trace, elapsed_s: float) -> None:
        if self.observe is not None:
            self.observe(req.namespace, trace.outcome.split(":")[0], elapsed_s)
        if self.steps is None:
            return
        self.steps.record(
            StepRecord(
                provider=req.namespace,
                session_id=req.session_id,
                msisdn=req.msisdn,
                menu=trace.menu,
                menu_version=trace.version,
                step=trace.step,
                screen=trace.screen,
                outcome=trace.outcome,
                latency_ms=round(elapsed_s * 1000, 3),
                input=trace.input,
                language=trace.language,
                at=now(),
            )
        )
