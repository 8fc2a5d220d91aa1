"""The lifecycle table in its three places agrees, and every illegal transition is refused by
the shared `transitions` machine, by core's store, and by the database trigger itself."""

from __future__ import annotations

from itertools import product as pairs
from typing import Any

import asyncpg
import pytest

from core.errors import IllegalTransition
from core.loans import book, store
from core.loans.lifecycle import (
    APPLICATION_STATES,
    LOAN_STATES,
    TRANSITIONS,
    TRIGGERS,
    State,
    may_move,
)
from menus.loans.lifecycle import LIFECYCLE
from tests.integration.loans.conftest import World

LEGAL = {(t, s.value, d.value) for t, s, d in TRANSITIONS}


def test_machine_is_built_from_core_table() -> None:
    assert LIFECYCLE.edges() == LEGAL
    for trigger, source, dest in LEGAL:
        assert LIFECYCLE.next_state(source, trigger) == dest


@pytest.mark.parametrize(
    ("state", "trigger"),
    [
        (s.value, t)
        for s, t in pairs(State, TRIGGERS)
        if not any(t == lt and s.value == ls for lt, ls, _ in LEGAL)
    ],
)
def test_machine_refuses_every_illegal_transition(state: str, trigger: str) -> None:
    with pytest.raises(IllegalTransition):
        LIFECYCLE.next_state(state, trigger)


async def test_database_table_equals_core_table(world: World) -> None:
    rows = await world.pool.fetch("SELECT trigger, source, dest FROM loan_transitions")
    assert {(r["trigger"], r["source"], r["dest"]) for r in rows} == LEGAL


async def _try(world: World, table: str, row_id: int, source: str, dest: str) -> str | None:
    """Force the row to `source` past the trigger, then ask the trigger for `dest`."""
    async with world.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("ALTER TABLE " + table + " DISABLE TRIGGER USER")
            await conn.execute("UPDATE " + table + " SET status = $2 WHERE id = $1", row_id, source)
            await conn.execute("ALTER TABLE " + table + " ENABLE TRIGGER USER")
            try:
                await conn.execute(
                    "UPDATE " + table + " SET status = $2 WHERE id = $1", row_id, dest
                )
            except asyncpg.PostgresError as exc:
                return str(exc.sqlstate)
            return None
        finally:
            await tx.rollback()  # leave the row as it was


async def test_trigger_refuses_every_illegal_status_change(world: World) -> None:
    _, loan_id, app_id = await world.new_loan()
    checked = 0
    for table, row_id, states in (
        ("loan_applications", app_id, APPLICATION_STATES),
        ("loans", loan_id, LOAN_STATES),
    ):
        for source, dest in pairs(states, states):
            if source == dest:
                continue
            outcome = await _try(world, table, row_id, source.value, dest.value)
            expected = None if may_move(source, dest) else "LN001"
            assert outcome == expected, (table, source, dest)
            checked += 1
    assert checked == 4 * 3 + 6 * 5


async def test_rows_start_where_the_lifecycle_starts(world: World) -> None:
    *_, app_id = await world.new_loan()
    product_id = await world.pool.fetchval(
        "SELECT product_id FROM loan_applications WHERE id = $1", app_id
    )
    with pytest.raises(asyncpg.PostgresError) as info:
        await world.pool.execute(
            "INSERT INTO loan_applications (msisdn, product_id, principal_minor, currency,"
            " channel, idempotency_key, status, decision, decision_code, decision_message)"
            " VALUES ('+254700000009', $1, 100, 'KES', 'ussd', 'x', 'approved', 'approve',"
            " 'APPROVED', 'ok')",
            product_id,
        )
    assert info.value.sqlstate == "LN001"


async def test_store_maps_stale_and_illegal_moves_to_the_typed_error(world: World) -> None:
    _, loan_id, app_id = await world.new_loan()
    async with world.pool.acquire() as conn:
        app = await store.get_application(conn, app_id)
        with pytest.raises(IllegalTransition):
            await store.move_application(
                conn, app, trigger="approve", dest="approved", actor="t", now=world.clock.now()
            )
        loan = await book.get_loan(conn, loan_id)
        with pytest.raises(IllegalTransition):
            await book.move_loan(
                conn,
                loan,
                trigger="write_off",
                dest="written_off",
                actor="t",
                now=world.clock.now(),
            )
        # A stale read: the loan moved on after we looked at it.
        stale: Any = loan
        await book.move_loan(
            conn, loan, trigger="fall_overdue", dest="overdue", actor="t", now=world.clock.now()
        )
        with pytest.raises(IllegalTransition) as info:
            await book.move_loan(
                conn,
                stale,
                trigger="fall_overdue",
                dest="overdue",
                actor="t",
                now=world.clock.now(),
            )
        assert info.value.details["state"] == "overdue"
    with pytest.raises(IllegalTransition):
        await world.service.write_off(world.pool, loan_id, actor="t")  # overdue, not defaulted
