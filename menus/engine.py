"""The menu engine: one user input moves a session through its version's shared state machine.

`Engine.run(step)` takes a `Step` (the session plus this request), applies the input the way the
screen wants it (a menu choice, a validated input, yes / no, or the built-in `0` back, `00` home
and `98` next page), fires the machine's trigger, then follows action and router screens until a
screen the user sees. `Engine.reply(step)` renders that screen. Storage, replays and deadlines
around a step are `menus.service`'s; the engine only needs a `claim` hook that the service runs
once before the first side effect of a step.

Secret inputs (PINs, the national ID) live in plain text only inside the step that needs them;
in the session they are encrypted with the gateway key, and they never reach a log, the stored
reply or the analytics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from core.crypto import FieldCipher
from core.errors import ActionAbandoned, CoreError, MoneyAbandoned, Unavailable, Unsettled
from menus import validators
from menus.actions import ActionContext, ActionFn, ActionResult, MenuBindings
from menus.compiled import CompiledMenu, Node
from menus.machine import apply_plain, build_machine, plain_moves
from menus.pending import Pending, PendingStore
from menus.render import EMPTY_SCOPE, full_text, render, visible_options
from menus.schema import BEGIN
from menus.session import Session

log = logging.getLogger("menus.engine")

MAX_AUTO_STEPS = 16  # action and router screens followed in one step
LATE_ACTION_LIMIT_S = 120.0  # an action that outlives the USSD deadline gets this much longer
MAX_LATE_TASKS = 1000
# Pauses before asking a movement again whose outcome is unknown (`Unsettled`: each ask is
# itself core.pg.settle's ~1.5 s of tries), doubling up to the last, within the late limit.
UNSETTLED_FIRST_PAUSE_S = 0.5
UNSETTLED_MAX_PAUSE_S = 10.0
STOP_GRACE_S = 1.0  # for late actions cancelled at a stop to unwind
# Writing the pending record delays the "result by SMS" answer, already at its deadline: a
# Redis that does not answer within this leaves the promise to this process alone.
PROMISE_WRITE_TIMEOUT_S = 0.5
BACK, HOME, NEXT_PAGE = "0", "00", "98"
# A late ask refused so: another instance settled the promise first, abandoned the key and
# told the customer, in one transaction.
_ABANDONED = frozenset({MoneyAbandoned.code, ActionAbandoned.code})


# Read-only by convention, not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (4x the cost), and several of these are built on every USSD request.
@dataclass(slots=True)
class UssdRequest:
    """One callback, provider-neutral. `namespace` (the provider) only keeps session ids of
    different aggregators apart; the engine never branches on it."""

    namespace: str
    session_id: str
    msisdn: str
    service_code: str  # as dialled: "*384#" or "*384*1*2#" (a prefilled path)
    kind: str  # "start", "continue" or "end"
    input: str | None = None  # the latest input; None on start
    inputs: tuple[str, ...] | None = None  # every input so far, when the provider sends them
    hop: str | None = None  # the provider's identity of this hop, when it gives one
    language: str | None = None
    detail: str | None = None  # why a session ended (provider status), for analytics


# Read-only by convention, not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (4x the cost), and several of these are built on every USSD request.
@dataclass(slots=True)
class Reply:
    text: str
    end: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did: ok (with its result), failed (with an error code and details),
    late (still running past the deadline), or unbound (no implementation)."""

    kind: str
    result: ActionResult | None = None
    code: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


ClaimHook = Callable[[], Awaitable[None]]


async def _no_claim() -> None:
    return None


class Step:
    """The model the shared machine moves for one request: `state` is the current screen."""

    __slots__ = (
        "back_to",
        "claim",
        "deadline",
        "failure",
        "fault",
        "input_secret",
        "menu",
        "notice",
        "outcome",
        "plain",
        "session",
        "state",
        "trail",
    )

    def __init__(
        self,
        menu: CompiledMenu,
        session: Session,
        *,
        deadline: float,
        claim: ClaimHook = _no_claim,
    ) -> None:
        self.menu = menu
        self.session = session
        self.state = session.state
        self.deadline = deadline
        self.claim = claim
        self.plain: dict[str, str] = {}  # secrets typed in this step
        self.notice: str | None = None
        self.outcome: Outcome | None = None
        self.back_to: str | None = None
        self.fault: str | None = None  # "late", "unavailable" or "error": a system END
        self.failure: str | None = None  # the error code of an action that failed
        self.input_secret = False
        self.trail: list[str] = []  # screens passed, for analytics

    def scope(self) -> dict[str, Any]:
        s = self.session
        return {**s.vars, "customer": s.customer, "msisdn": s.msisdn, "language": s.language}

    def scope_for(self, node: Node) -> Mapping[str, Any]:
        """The scope a screen renders with; none for a static screen (it reads nothing)."""
        return EMPTY_SCOPE if node.id in self.menu.static else self.scope()

    @property
    def node(self) -> Node:
        return self.menu.nodes[self.state]


def _unsettled(task: asyncio.Future[ActionResult]) -> bool:
    """A done action that ended with its money's outcome unknown (core.pg.settle gave up)."""
    return not task.cancelled() and isinstance(task.exception(), Unsettled)


def _unavailable(task: asyncio.Future[ActionResult]) -> bool:
    return not task.cancelled() and isinstance(task.exception(), Unavailable)


def _k(ctx: ActionContext) -> dict[str, str]:
    """What a log line about an action may name: the action and its key, never an input."""
    return {"action": ctx.action, "key": ctx.idempotency_key}


def idempotency_key(session_key: str, seq: int, screen: str) -> str:
    """Stable for one session and step: a retried step moves money at most once."""
    digest = hashlib.sha256(session_key.encode()).hexdigest()[:32]
    return f"ussd:{digest}:{seq}:{screen}"


class Engine:
    def __init__(
        self,
        bindings: MenuBindings,
        cipher: FieldCipher,
        *,
        currency: str,
        country_code: str,
        late_limit_s: float = LATE_ACTION_LIMIT_S,
    ) -> None:
        self.bindings = bindings
        self.cipher = cipher
        self.currency = currency
        self.country_code = country_code
        self.late_limit_s = late_limit_s
        # Where promised late results are recorded (menus.pending), so that another instance
        # keeps the promise when this one is gone; None: only in this process.
        self.pending: PendingStore | None = None
        self._late: set[asyncio.Task[None]] = set()

    def attach(self, menu: CompiledMenu) -> CompiledMenu:
        """Build the version's one machine (once, when the version is loaded)."""
        menu.machine = build_machine(menu, self._on_action)
        menu.plain = plain_moves(menu.machine)
        return menu

    # --- a step -------------------------------------------------------------------------------

    async def run(self, step: Step, text: str | None, prefill: tuple[str, ...] = ()) -> None:
        """Apply `text` (None: the session starts) and settle on a displayed screen."""
        if step.state == BEGIN:
            await self._fire(step, "begin")
            await self._settle(step)
            for value in prefill:
                if step.fault or step.node.type != "menu":
                    break
                await self._input(step, value)
                if step.notice:
                    step.notice = None  # a bad prefilled choice: show the screen plainly
                    break
            return
        if text is not None:
            await self._input(step, text)

    async def _input(self, step: Step, text: str) -> None:
        node = step.node
        session = step.session
        step.input_secret = step.input_secret or (node.type == "input" and node.secret)
        value = text.strip()
        if value == HOME:
            session.history.clear()
            session.page = 0
            await self._fire(step, "home")
            await self._settle(step)
            return
        if value == BACK:
            await self._back(step)
            return
        if value == NEXT_PAGE:
            shown = render(self._menu(step), node, session.language, step.scope_for(node))
            if session.page < shown.pages - 1:
                session.page += 1
                return
            if shown.more:  # the last page of an end screen that goes on (older lines)
                session.page = 0
                await self._fire(step, "more")
                await self._settle(step)
                return
        handler = {
            "menu": self._choose,
            "input": self._enter,
            "confirm": self._confirm,
        }.get(node.type)
        if handler is None:  # an end screen with more pages: anything else shows it again
            return
        await handler(step, value)

    async def _back(self, step: Step) -> None:
        session = step.session
        if session.page > 0:
            session.page -= 1
            return
        if not session.history:
            return
        step.back_to = session.history.pop()
        session.page = 0
        if not await self._fire(step, "back", required=False):
            session.history.clear()  # the history no longer fits the graph: start over
            await self._fire(step, "home")
        await self._settle(step)

    async def _forward(self, step: Step, trigger: str) -> None:
        step.session.push_history(step.state)
        step.session.page = 0
        await self._fire(step, trigger)
        await self._settle(step)

    async def _choose(self, step: Step, value: str) -> None:
        node = step.node
        choices = visible_options(node, step.scope_for(node))
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= len(choices):
            step.notice = self._message(step, "invalid_choice")
            return
        kind, choice = choices[int(value) - 1]
        if kind == "option":
            await self._forward(step, f"option_{choice.index}")
            return
        assert node.save is not None and node.item_value is not None and node.item_label
        step.session.vars[node.save] = choice.get(node.item_value)
        step.session.vars[f"{node.save}_label"] = node.item_label.render(choice)
        await self._forward(step, "pick")

    async def _enter(self, step: Step, value: str) -> None:
        node = step.node
        assert node.rule is not None and node.save is not None
        try:
            saved = validators.check(
                node.rule, value, country_code=self.country_code, currency=self.currency
            )
        except validators.Refused as refused:
            own = node.error.get(step.session.language) if node.error else None
            step.notice = own.render({}) if own else self._message(step, refused.key)
            return
        if node.rule.match and self.secret(step, node.rule.match) != saved:
            step.notice = self._message(step, "mismatch")
            return
        if node.secret:
            step.plain[node.save] = str(saved)
            step.session.secrets[node.save] = self.cipher.encrypt(str(saved))
        else:
            step.session.vars[node.save] = saved
        await self._forward(step, "submit")

    async def _confirm(self, step: Step, value: str) -> None:
        if value == "1":
            await self._forward(step, "confirm")
        elif value == "2":
            await self._forward(step, "cancel")
        else:
            step.notice = self._message(step, "invalid_choice")

    def secret(self, step: Step, name: str) -> str | None:
        if name in step.plain:
            return step.plain[name]
        token = step.session.secrets.get(name)
        if token is None:
            return None
        try:
            step.plain[name] = self.cipher.decrypt(token)
        except ValueError:
            return None
        return step.plain[name]

    # --- the machine ----------------------------------------------------------------------------

    async def _fire(self, step: Step, trigger: str, *, required: bool = True) -> bool:
        menu = self._menu(step)
        plain = apply_plain(menu.plain, step, trigger)  # nothing to run: the table, applied
        if plain is None:
            event = menu.machine.events.get(trigger)
            moved = bool(event is not None and await event.trigger(step))
        else:
            moved = plain
        if not moved and required:
            # The validator guarantees every trigger the engine fires exists: a bug.
            log.error("menu transition missing", extra={"trigger": trigger, "screen": step.state})
            step.fault = "error"
        step.trail.append(step.state)
        return moved

    async def _settle(self, step: Step) -> None:
        """Follow action and router screens until a displayed one (or a fault)."""
        for _ in range(MAX_AUTO_STEPS):
            if step.fault:
                return
            node = step.node
            if node.displayed:
                return
            if node.type == "router":
                await self._fire(step, "route")
                continue
            outcome, step.outcome = step.outcome, None
            if outcome is None or outcome.kind in {"late", "unbound"}:
                step.fault = "late" if outcome and outcome.kind == "late" else "unavailable"
                return
            if outcome.kind == "ok":
                await self._fire(step, "done")
                continue
            step.session.vars.update(outcome.details)
            step.session.vars["error_code"] = outcome.code
            step.failure = outcome.code
            if outcome.code == Unavailable.code and outcome.code not in node.on_error:
                step.fault = "unavailable"  # a dependency is down: the system's own answer
                return
            if outcome.code in node.on_error:
                await self._fire(step, f"fail_{outcome.code}")
            elif "default" in node.on_error:
                await self._fire(step, "fail")
            else:
                step.fault = "error"
        step.fault = step.fault or "error"

    async def _on_action(self, event: Any) -> None:
        """on_enter of every action screen: the transition's one side effect."""
        step: Step = event.model
        step.outcome = await self._call(step, step.node)

    def _context(self, step: Step, node: Node) -> ActionContext:
        assert node.action is not None
        spec = self.bindings.specs.get(node.action)
        names = spec.secrets if spec is not None else tuple(step.session.secrets)
        secrets = {n: v for n in names if (v := self.secret(step, n)) is not None}
        s = step.session
        return ActionContext(
            action=node.action,
            msisdn=s.msisdn,
            language=s.language,
            vars=MappingProxyType(dict(s.vars)),
            secrets=MappingProxyType(secrets),
            customer=MappingProxyType(dict(s.customer)),
            params=node.params,
            idempotency_key=idempotency_key(s.key, s.seq, node.id),
            channel="ussd",
            session_id=s.key,
            currency=self.currency,
        )

    async def _call(self, step: Step, node: Node) -> Outcome:
        assert node.action is not None
        fn = self.bindings.function(node.action)
        if fn is None:
            log.warning("action not bound", extra={"action": node.action})
            return Outcome("unbound")
        await step.claim()
        ctx = self._context(step, node)
        task = asyncio.ensure_future(fn(ctx))
        remaining = step.deadline - time.monotonic()
        done, _ = await asyncio.wait({task}, timeout=max(remaining, 0.0))
        if not done or _unsettled(task):
            # Past the deadline, or money whose outcome is unknown: "try again later" would
            # have the customer move it again from a new session, under a new key.
            promised = await self._promise(step, ctx)
            self._finish_later(step, node, ctx, task, fn, promised=promised)
            return Outcome("late")
        outcome = self._outcome(node, task)
        if outcome.kind == "ok":
            self._apply(step, outcome)
        return outcome

    def _outcome(self, node: Node, task: asyncio.Future[ActionResult]) -> Outcome:
        exc = task.exception()
        if exc is None:
            return Outcome("ok", result=task.result())
        if isinstance(exc, CoreError):
            details = {k: v for k, v in exc.details.items() if isinstance(v, str | int | float)}
            return Outcome("failed", code=exc.error_code, details=details)
        log.error(
            "action failed unexpectedly",
            extra={"action": node.action, "error": type(exc).__name__},
            exc_info=exc,
        )
        return Outcome("failed", code="ERROR")

    def _apply(self, step: Step, outcome: Outcome) -> None:
        result = outcome.result
        assert result is not None
        s = step.session
        s.vars.update(result.vars)
        if result.customer is not None:
            s.customer = dict(result.customer)
            language = s.customer.get("language")
            if isinstance(language, str) and language in self._menu(step).languages:
                s.language = language
        if result.language and result.language in self._menu(step).languages:
            s.language = result.language

    # --- actions that outlive the deadline -----------------------------------------------------

    async def _promise(self, step: Step, ctx: ActionContext) -> Pending | None:
        """Record the promise of a result by SMS (menus.pending) before it is made, for an
        action whose promise the bindings' settler keeps (a movement, a registration or a PIN
        change settled or abandoned under its key; a read told "could not be completed");
        None for any other action.
        A record Redis did not take is logged: the promise then rests on this process (its
        limit is still kept: `_give_up` needs no record)."""
        settler = self.bindings.settler
        if self.pending is None or settler is None or not settler.settles(ctx.action):
            return None
        now = time.time()
        s = step.session
        record = Pending(
            key=ctx.idempotency_key,
            action=ctx.action,
            msisdn=ctx.msisdn,
            language=ctx.language,
            menu=s.menu,
            version=s.version,
            screen=step.state,
            promised_at=now,
            until=now + self.late_limit_s,
        )
        try:
            await asyncio.wait_for(self.pending.put(record), PROMISE_WRITE_TIMEOUT_S)
        except Exception:
            log.error(
                "the late result was not recorded; kept in this process only",
                extra=_k(ctx),
                exc_info=True,
            )
        return record

    def _finish_later(
        self,
        step: Step,
        node: Node,
        ctx: ActionContext,
        task: asyncio.Future[ActionResult],
        fn: ActionFn,
        *,
        promised: Pending | None = None,
    ) -> None:
        """The user already got "the result will come by SMS"; when the action completes, render
        where it leads and queue that SMS. A movement whose outcome is unknown is asked again
        under its key (`_settled`). A success needs no SMS of its own when the core queued the
        customer's receipt with the movement (`ActionResult.receipted`); a refusal, or an
        action with no receipt, is told by SMS. A promise on record (`promised`) is dropped
        once its result is queued; an outcome still unknown at the late limit is settled or
        abandoned under its key (`_give_up`); a stop leaves the record to another instance."""
        snapshot = Session.from_json(step.session.to_json())
        menu = self._menu(step)

        settler = self.bindings.settler
        movement = settler is not None and settler.changes(ctx.action)

        async def finish() -> None:
            until = time.monotonic() + self.late_limit_s
            done = await self._settled(
                ctx, task, fn, until, promised=promised is not None, movement=movement
            )
            if done is None:
                if promised is not None:
                    await self._give_up(promised)
                return
            late = Step(menu, snapshot, deadline=time.monotonic())
            late.state = node.id
            late.outcome = self._outcome(node, done)
            if late.outcome.kind == "ok":
                result = late.outcome.result
                if result is not None and result.receipted:
                    # The core queued the customer's receipt with the movement: that SMS is the
                    # result promised (a second one with the same facts would only confuse).
                    log.info("late movement done; its receipt is the result", extra=_k(ctx))
                    await self._kept(promised)
                    return
                self._apply(late, late.outcome)
            elif late.outcome.code in _ABANDONED:
                # Another instance settled the record first: it abandoned the key and told the
                # customer, in one transaction.
                log.info("late ask refused: the key was abandoned and told", extra=_k(ctx))
                await self._kept(promised)
                return
            await self._settle_late(late)
            if await self._notify(late, ctx):
                await self._kept(promised)

        if len(self._late) >= MAX_LATE_TASKS:
            log.error("too many late actions; result SMS dropped", extra={"action": node.action})
            if promised is not None:
                job = asyncio.ensure_future(self._release(promised))
            else:
                return
        else:
            job = asyncio.ensure_future(finish())
        self._late.add(job)
        job.add_done_callback(self._late.discard)

    async def _kept(self, promised: Pending | None) -> None:
        """The promise is kept (its result queued): its record goes."""
        if promised is None or self.pending is None:
            return
        try:
            await self.pending.done(self.pending.record_key(promised.key))
        except Exception:
            # A sweeper finds the movement, or the result SMS queued, under the key again.
            log.warning("a kept late result's record stays", exc_info=True)

    async def _release(self, promised: Pending) -> None:
        """Hand the record to whichever instance sweeps next."""
        assert self.pending is not None
        try:
            await self.pending.release(self.pending.record_key(promised.key))
        except Exception:
            # Past its limit (and a grace) a sweeper takes it from this live instance anyway.
            log.warning("a late result's record was not released", exc_info=True)

    async def _give_up(self, promised: Pending) -> None:
        """The late limit passed with the outcome unknown: no more asks. Settle or abandon now
        (nothing moves or changes after the limit; a read is told "could not be completed");
        failing that, a sweeper does it later. Done here whoever holds the record: settling
        twice is harmless (the ledger answers the same, the result SMS's dedupe key queues
        one)."""
        settler = self.bindings.settler
        assert settler is not None
        extra = {"action": promised.action, "key": promised.key}
        try:
            moved = await settler.settle_or_abandon(promised)
        except Exception:
            log.warning(
                "late limit: not settled now; left to its pending record",
                extra=extra,
                exc_info=True,
            )
            await self._release(promised)
            return
        if moved:
            log.info("late limit: done under its key", extra=extra)
        else:
            log.warning("late limit: abandoned; the customer is told nothing was done", extra=extra)
        await self._kept(promised)

    async def _settled(
        self,
        ctx: ActionContext,
        task: asyncio.Future[ActionResult],
        fn: ActionFn,
        until: float,
        *,
        promised: bool = False,
        movement: bool = False,
    ) -> asyncio.Future[ActionResult] | None:
        """`task` done, or, while it ends `Unsettled`, the action asked again (`ctx.again`:
        under the same key, the PIN not asked again of money already moved) after pauses that
        double, until one answers other than Unavailable. None past `until`, or cancelled by a
        stop: the action is cancelled, and an outcome still unknown is logged at error (a
        movement that committed has its receipt queued in its transaction: the ledger tells
        the customer). For a `movement` (an action the bindings' settler says changes
        something under its key: money, a registration, a PIN change) a late Unavailable is
        unknown too: past the deadline, it is mostly the client's timeout, and a statement
        timed out by the client may still commit; told "unavailable", the customer would send
        again under a new key."""
        pause = UNSETTLED_FIRST_PAUSE_S
        again = dataclasses.replace(ctx, again=True)
        asked = False  # whether the outcome was ever unknown
        try:
            while True:
                await asyncio.wait({task}, timeout=max(until - time.monotonic(), 0.0))
                if not task.done():
                    break
                # Once unknown, a re-ask that meets the outage (its PIN check or its look-up
                # for the movement, as Unavailable) leaves it unknown: ask again.
                if not (_unsettled(task) or ((asked or movement) and _unavailable(task))):
                    return task
                asked = True
                if time.monotonic() + pause >= until:
                    break
                log.warning("outcome unknown; asking again in %.1f s", pause, extra=_k(ctx))
                await asyncio.sleep(pause)  # the backoff between asks, not a synchronisation
                pause = min(pause * 2, UNSETTLED_MAX_PAUSE_S)
                task = asyncio.ensure_future(fn(again))
        except asyncio.CancelledError:
            task.cancel()
            if promised:
                log.warning(
                    "stopped before a late action finished; left to its pending record",
                    extra=_k(ctx),
                )
            elif asked:
                log.error("stopped with a money outcome unknown; left to the ledger", extra=_k(ctx))
            else:
                log.warning("stopped before a late action finished; no result SMS", extra=_k(ctx))
            raise
        task.cancel()
        if promised:
            log.warning(
                "late limit with the outcome unknown; settling under its key", extra=_k(ctx)
            )
        elif asked:
            log.error("money outcome unknown at the late limit; left to the ledger", extra=_k(ctx))
        return None

    async def _settle_late(self, step: Step) -> None:
        outcome = step.outcome
        if outcome is None:
            return
        node = step.node
        if outcome.kind == "ok":
            await self._fire(step, "done")
        else:
            step.session.vars.update(outcome.details)
            trigger = f"fail_{outcome.code}" if outcome.code in node.on_error else "fail"
            if trigger == "fail" and "default" not in node.on_error:
                step.fault = "error"
                return
            await self._fire(step, trigger)
        for _ in range(MAX_AUTO_STEPS):  # routers only: no second action after the deadline
            if step.fault or step.node.displayed or step.node.type != "router":
                break
            await self._fire(step, "route")

    async def _notify(self, step: Step, ctx: ActionContext) -> bool:
        """Queue the late result; whether it was."""
        notifier = self.bindings.notifier
        if step.fault or not step.node.displayed:
            text = self._message(step, "error")
        else:
            text = full_text(self._menu(step), step.node, step.session.language, step.scope())
        if notifier is None:
            log.error("no notifier bound; late result not sent", extra={"action": ctx.action})
            return False
        try:
            await notifier.notify(
                msisdn=ctx.msisdn,
                text=text,
                kind="ussd.late_result",
                idempotency_key=ctx.idempotency_key + ":sms",
            )
        except Exception:
            log.exception("queueing the late result failed", extra={"action": ctx.action})
            return False
        return True

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Let late actions finish (shutdown); those still running after `timeout_s` are
        cancelled. One with a pending record leaves it (owned by this instance, whose liveness
        key goes at the stop) for another instance to settle or abandon; one without, whose
        money outcome is still unknown, is logged at error (left to the ledger's receipt). A
        later retry of the hop gets the stored END: nothing runs again."""
        if not self._late:
            return
        _, running = await asyncio.wait(set(self._late), timeout=timeout_s)
        for job in running:
            job.cancel()
        if running:
            await asyncio.wait(running, timeout=STOP_GRACE_S)

    # --- the reply ----------------------------------------------------------------------------

    def reply(self, step: Step) -> Reply:
        """Render where the step landed; the session now rests on that screen."""
        session = step.session
        session.state = step.state
        menu = self._menu(step)
        if step.fault is not None:
            key = {"late": "pending", "unavailable": "unavailable"}.get(step.fault, "error")
            return Reply(menu.message(key, session.language), True)
        node = step.node
        page = render(
            menu,
            node,
            session.language,
            step.scope_for(node),
            page=session.page,
            notice=step.notice,
        )
        session.page = page.page
        return Reply(page.text, node.type == "end" and page.last and not page.more)

    def _menu(self, step: Step) -> CompiledMenu:
        return step.menu

    def _message(self, step: Step, key: str) -> str:
        return step.menu.message(key, step.session.language)
