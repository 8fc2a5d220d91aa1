"""The loan lifecycle as one shared `transitions` machine, built once from core's table.

Core keeps the table as data (`core.loans.lifecycle.TRANSITIONS`) because it may not import
`transitions`; this module turns that same table into a model-less Machine, the shared
definition the service layer asks "where does this trigger take a loan in this state?". No
machine or model is created per request (STYLE rule 6): a loan's state is a database column,
and the machine is a query over the definition. An edge the machine does not have raises the
same typed `IllegalTransition` core raises.
"""

from __future__ import annotations

from transitions import Machine

from core.errors import IllegalTransition
from core.loans.lifecycle import TRANSITIONS, State


def build_machine() -> Machine:
    return Machine(
        model=None,
        states=[s.value for s in State],
        transitions=[
            {"trigger": trigger, "source": source.value, "dest": dest.value}
            for trigger, source, dest in TRANSITIONS
        ],
        initial=None,
        auto_transitions=False,
        ignore_invalid_triggers=False,
    )


class LoanLifecycle:
    """The shared machine and the one question the service asks it."""

    def __init__(self) -> None:
        self.machine = build_machine()

    def next_state(self, state: str, trigger: str) -> State:
        if trigger not in self.machine.events or state not in self.machine.states:
            raise IllegalTransition(
                f"A loan that is {state} cannot be {trigger!r}-ed", state=state, trigger=trigger
            )
        found = self.machine.get_transitions(trigger=trigger, source=state)
        if not found:
            raise IllegalTransition(
                f"A loan that is {state} cannot be {trigger!r}-ed", state=state, trigger=trigger
            )
        return State(str(found[0].dest))

    def triggers(self, state: str) -> list[str]:
        """What can happen next to a loan in `state` (for screens and the admin API)."""
        return sorted(self.machine.get_triggers(state))

    def edges(self) -> set[tuple[str, str, str]]:
        return {
            (name, t.source, str(t.dest))
            for name, event in self.machine.events.items()
            for ts in event.transitions.values()
            for t in ts
        }


LIFECYCLE = LoanLifecycle()  # immutable shared definition, built at import (no I/O)
