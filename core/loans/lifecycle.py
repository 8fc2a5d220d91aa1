"""The loan lifecycle as data: every allowed transition, one row each.

    applied --approve--> approved --disburse--> disbursed --activate--> active
       |                    |                                          |   ^
       +--reject--> rejected <--reject-- (the fund could not disburse)  |   | cure
                                                                       v   |
                          repaid <--repay-- active / overdue / defaulted   overdue
                                                                    |
                                       overdue --default--> defaulted --write_off--> written_off

This table is the single source of truth. `next_state` enforces it in core; the migration
copies it into the `loan_transitions` table, where a trigger refuses any other status change
(a test keeps the two equal); `menus.loans.lifecycle` builds the shared `transitions` machine
from it for the service layer (core may not import `transitions`).

An application row carries applied / approved / rejected / disbursed; at disbursement the loan
row starts at `disbursed` and carries the rest. The lifecycle state of the pair is the loan's
status once a loan exists, else the application's.
"""

from __future__ import annotations

from enum import StrEnum

from core.errors import IllegalTransition


class State(StrEnum):
    APPLIED = "applied"
    APPROVED = "approved"
    REJECTED = "rejected"
    DISBURSED = "disbursed"
    ACTIVE = "active"
    OVERDUE = "overdue"
    REPAID = "repaid"
    DEFAULTED = "defaulted"
    WRITTEN_OFF = "written_off"


S = State
# (trigger, source, dest)
TRANSITIONS: tuple[tuple[str, State, State], ...] = (
    ("approve", S.APPLIED, S.APPROVED),
    ("reject", S.APPLIED, S.REJECTED),
    ("reject", S.APPROVED, S.REJECTED),  # approved, but the loan fund could not disburse
    ("disburse", S.APPROVED, S.DISBURSED),
    ("activate", S.DISBURSED, S.ACTIVE),
    ("fall_overdue", S.ACTIVE, S.OVERDUE),
    ("cure", S.OVERDUE, S.ACTIVE),
    ("repay", S.ACTIVE, S.REPAID),
    ("repay", S.OVERDUE, S.REPAID),
    ("repay", S.DEFAULTED, S.REPAID),  # collections can still recover a defaulted loan
    ("default", S.OVERDUE, S.DEFAULTED),
    ("write_off", S.DEFAULTED, S.WRITTEN_OFF),
)
TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(t for t, _, _ in TRANSITIONS))
APPLICATION_STATES = (S.APPLIED, S.APPROVED, S.REJECTED, S.DISBURSED)
LOAN_STATES = (S.DISBURSED, S.ACTIVE, S.OVERDUE, S.REPAID, S.DEFAULTED, S.WRITTEN_OFF)
OPEN_LOAN_STATES = (S.DISBURSED, S.ACTIVE, S.OVERDUE, S.DEFAULTED)  # money still owed
IN_FLIGHT_APPLICATION_STATES = (S.APPLIED, S.APPROVED)  # decided or not, no loan yet
FINAL_STATES = (S.REJECTED, S.REPAID, S.WRITTEN_OFF)

_EDGES = {(trigger, source): dest for trigger, source, dest in TRANSITIONS}
_PAIRS = {(source, dest) for _, source, dest in TRANSITIONS}


def next_state(state: str, trigger: str) -> State:
    """Where `trigger` takes a loan in `state`; IllegalTransition if nowhere."""
    try:
        dest = _EDGES.get((trigger, State(state)))
    except ValueError:
        dest = None
    if dest is None:
        raise IllegalTransition(
            f"A loan that is {state} cannot be {trigger!r}-ed",
            state=state,
            trigger=trigger,
        )
    return dest


def may_move(source: str, dest: str) -> bool:
    return (source, dest) in _PAIRS
