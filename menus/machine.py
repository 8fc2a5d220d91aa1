"""One shared `transitions` AsyncMachine per published menu version.

The machine is model-less and built once when a version is compiled; each request passes its own
small model (a `Step`, whose `state` is the session's screen) to `event.trigger(step, ...)`, so a
step costs one trigger and never a Machine (building one per request is 3-7x slower, and the
library's FAQ warns against it at scale). Sessions stay plain data in Redis.

Triggers (states are screen ids, plus `__begin__` for a session that has shown nothing yet):

    begin               __begin__ -> start
    home                any screen -> home (`00`)
    option_<i>          menu -> the target of its i-th option (document order)
    pick                menu built from a list -> its `next`
    submit              input -> next (the input already passed its validator)
    confirm / cancel    confirm -> yes / no
    more                end screen -> its `more.next` (`98` on the last page while `more.when`)
    done                action -> next (the action succeeded)
    fail_<CODE> / fail  action -> on_error[CODE] / on_error.default
    route               router -> the first route whose condition holds, else default
    back                screen -> the screen it was reached from (`0`); one transition per
                        possible predecessor, guarded by the session's history

Entering an action screen runs its action: that `on_enter` callback is the one awaited side
effect of the transition (callbacks of one transition are gathered concurrently, so there is
never more than one).

`plain_moves(machine)` reads the machine's own table for the transitions that have nothing to
run but their conditions (no callback on the transition, on leaving its source or on entering
its destination): the engine applies those with a look-up and the same conditions, in the same
order, instead of a trigger, which is all navigation (menu choices, inputs, back, home, routers).
The machine stays the one definition of the graph; a transition into an action screen (its
action is the `on_enter` callback) always goes through `trigger`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from transitions.extensions.asyncio import AsyncMachine, AsyncState

if TYPE_CHECKING:  # names that exist only in the library's type stubs
    from transitions.core import Callback
    from transitions.extensions.asyncio import AsyncCallback, AsyncCallbackFunc, AsyncEventData

from menus.compiled import CompiledMenu, Node
from menus.schema import BEGIN

OnAction = Callable[[Any], Awaitable[None]]


class LeanAsyncMachine(AsyncMachine):
    """AsyncMachine without the cost of `asyncio.gather` over empty or single callback lists:
    most transitions of a menu have no callbacks at all, and a gather per phase (eight per
    transition) was half the cost of a step."""

    async def callbacks(  # type: ignore[override]
        self, funcs: Iterable[Callback], event_data: AsyncEventData
    ) -> None:
        funcs = list(funcs)
        if not funcs:
            return
        if len(funcs) == 1:
            await self.callback(cast("AsyncCallback", funcs[0]), event_data)
            return
        await super().callbacks(funcs, event_data)

    async def process_context(self, func: Callable[[], Awaitable[None]], model: object) -> bool:
        # The base class records the running task per model so that a new transition can cancel
        # one in progress on the same model. Every step here has its own model and runs its
        # transitions one after another, so that bookkeeping (a context variable and a dict
        # entry per trigger) is pure cost.
        return bool(await self._process_async(func, model))

    @staticmethod
    async def await_all(callables: list[AsyncCallbackFunc]) -> list[bool | None]:
        if len(callables) == 1:
            return [await callables[0]()]
        return await AsyncMachine.await_all(callables)


def _route_holds(cond: Callable[[Any], bool], event: Any) -> bool:
    return cond(event.model.scope())


def _came_from(target: str, event: Any) -> bool:
    return bool(event.model.back_to == target)


def _forward(node: Node, nodes: dict[str, Node]) -> list[str]:
    return [t for _, t in node.targets() if t is not None and t in nodes]


def displayed_successors(start: str, nodes: dict[str, Node]) -> set[str]:
    """Displayed screens one user input away from displayed screen `start` (through any chain
    of action and router screens)."""
    found: set[str] = set()
    seen: set[str] = set()
    stack = list(_forward(nodes[start], nodes))
    while stack:
        sid = stack.pop()
        if sid in seen:
            continue
        seen.add(sid)
        if nodes[sid].displayed:
            found.add(sid)
        else:
            stack.extend(_forward(nodes[sid], nodes))
    return found


class _EventView:
    """What a condition reads of an event: the model (a `Step`)."""

    __slots__ = ("model",)

    def __init__(self, model: Any) -> None:
        self.model = model


Guard = tuple[Callable[[Any], Any], bool]  # a condition's function and the result it needs
PlainMoves = dict[tuple[str, str], tuple[tuple[tuple[Guard, ...], str], ...]]


def plain_moves(machine: AsyncMachine) -> PlainMoves:
    """(trigger, source) -> the machine's candidate transitions, in order, as (guards,
    destination), for every trigger whose transitions from that source have nothing to run
    but their conditions."""
    hooks = (
        machine.before_state_change,
        machine.after_state_change,
        machine.prepare_event,
        machine.finalize_event,
        machine.on_exception,
    )
    if any(hooks):
        return {}
    moves: PlainMoves = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            src = machine.states.get(source)
            candidates: list[tuple[tuple[Guard, ...], str]] = []
            for t in transitions:
                dest = machine.states.get(t.dest) if t.dest is not None else None
                if dest is None or src is None or t.prepare or t.before or t.after:
                    break
                if (
                    dest.on_enter
                    or src.on_exit
                    or any(isinstance(c.func, str) for c in t.conditions)
                ):
                    break
                guards = tuple(
                    (cast("Callable[[Any], Any]", c.func), bool(c.target)) for c in t.conditions
                )
                candidates.append((guards, str(t.dest)))
            else:
                moves[(trigger, source)] = tuple(candidates)
    return moves


def apply_plain(moves: PlainMoves, model: Any, trigger: str) -> bool | None:
    """Move `model` as the machine would for a plain trigger: True (moved), False (no
    transition's conditions held), None (not plain: fire it through the machine)."""
    candidates = moves.get((trigger, model.state))
    if candidates is None:
        return None
    view = _EventView(model)
    for guards, dest in candidates:
        if all(bool(func(view)) is target for func, target in guards):
            model.state = dest
            return True
    return False


def build_machine(menu: CompiledMenu, on_action: OnAction) -> LeanAsyncMachine:
    """The version's machine; `on_action` runs when an action screen is entered."""
    nodes = dict(menu.nodes)
    states = [AsyncState(BEGIN)]
    for sid, node in nodes.items():
        # The stubs type callbacks as sync; an AsyncMachine awaits them.
        on_enter: list[Callback] = [cast("Callback", on_action)] if node.type == "action" else []
        states.append(AsyncState(sid, on_enter=on_enter))
    machine = LeanAsyncMachine(
        model=None,
        states=states,
        initial=BEGIN,
        auto_transitions=False,
        send_event=True,
        queued=False,
        ignore_invalid_triggers=False,
        name=f"menu:{menu.name}:v{menu.version}",
    )
    machine.add_transition("begin", BEGIN, menu.doc.start)
    machine.add_transition("home", "*", menu.doc.home_screen)
    for sid, node in nodes.items():
        _add_node(machine, sid, node)
    for sid, node in nodes.items():
        if not node.displayed:
            continue
        for succ in sorted(displayed_successors(sid, nodes)):
            machine.add_transition("back", succ, sid, conditions=[partial(_came_from, sid)])
    return machine


def _link(
    machine: LeanAsyncMachine,
    trigger: str,
    source: str,
    dest: str | None,
    conditions: list[Callback] | None = None,
) -> None:
    # A missing target is a dead end the validator reports; the engine treats it as a fault.
    if dest is not None:
        machine.add_transition(trigger, source, dest, conditions=conditions)


def _add_node(machine: LeanAsyncMachine, sid: str, node: Node) -> None:
    if node.type == "menu":
        for option in node.options:
            _link(machine, f"option_{option.index}", sid, option.next)
        if node.items_source is not None:
            _link(machine, "pick", sid, node.next)
    elif node.type == "input":
        _link(machine, "submit", sid, node.next)
    elif node.type == "confirm":
        _link(machine, "confirm", sid, node.yes)
        _link(machine, "cancel", sid, node.no)
    elif node.type == "action":
        _link(machine, "done", sid, node.next)
        for code, target in node.on_error.items():
            _link(machine, "fail" if code == "default" else f"fail_{code}", sid, target)
    elif node.type == "router":
        for cond, route_target, _ in node.routes:
            _link(machine, "route", sid, route_target, [partial(_route_holds, cond)])
        _link(machine, "route", sid, node.default)
    elif node.type == "end" and node.more is not None:
        # The engine fires it only while the condition holds (it also decides the page shown).
        _link(machine, "more", sid, node.more[1])
