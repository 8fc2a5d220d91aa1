"""The daily and monthly debit caps count local days and months (LIMITS_TIMEZONE), not UTC ones.

`ledger_local(ts)` is `ts` on the wall clock of the zone in the connection's custom setting
`gateway.limits_tz` (set once per connection by gateway.db.make_pool from LIMITS_TIMEZONE;
unset or empty: UTC, as before). `ledger_day(ts)` and `ledger_month(ts)` are the local date and
the first day of the local month: the one expression for the caps' `day` and `month` keys.
No table is read, so the money path keeps its single round trip.

The three functions that count the caps (`ledger_apply`, `ledger_post_checked`, `ledger_p2p`)
had `(now() AT TIME ZONE 'UTC')::date` and its month twin in their DECLARE; each is rebuilt from
its current text (0100_core_banking's, and 0720's `ledger_p2p`) with those two lines replaced,
checked to occur exactly once. Same signatures: CREATE OR REPLACE. Downgrade restores them.

Counters written before the upgrade keep their UTC date: the first transfer after it in a local
day that is already later than that UTC date starts the day afresh, at most once.

Revision ID: 0730_limits_timezone
Revises: 0721_pin_change_key
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0730_limits_timezone"
down_revision = "0721_pin_change_key"
branch_labels = None
depends_on = None

HERE = Path(__file__).parent
CORE_SQL = HERE / "0100_core_banking.sql"

OLD_DAY = "v_today date := (now() AT TIME ZONE 'UTC')::date;"
NEW_DAY = "v_today date := ledger_day(now());"
OLD_MONTH = "v_month date := date_trunc('month', (now() AT TIME ZONE 'UTC'))::date;"
NEW_MONTH = "v_month date := ledger_month(now());"

HELPERS = [
    """CREATE FUNCTION ledger_local(p_at timestamptz) RETURNS timestamp
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT p_at AT TIME ZONE coalesce(nullif(current_setting('gateway.limits_tz', true), ''),
                                      'UTC')
$$""",
    """CREATE FUNCTION ledger_day(p_at timestamptz) RETURNS date
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ledger_local(p_at)::date
$$""",
    """CREATE FUNCTION ledger_month(p_at timestamptz) RETURNS date
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT date_trunc('month', ledger_local(p_at))::date
$$""",
]
HELPER_NAMES = ("ledger_month", "ledger_day", "ledger_local")


def _core_function(name: str) -> str:
    """0100_core_banking's `CREATE FUNCTION <name>(...` statement."""
    parts = re.split(r"^-- statement$", CORE_SQL.read_text(encoding="utf-8"), flags=re.MULTILINE)
    found = [p.strip() for p in parts if f"CREATE FUNCTION {name}(" in p]
    assert len(found) == 1, f"0100_core_banking.sql has one {name}"
    return found[0]


def _module_0720() -> ModuleType:
    path = HERE / "0720_p2p_sender_receipt.py"
    spec = importlib.util.spec_from_file_location("_migration_0720", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def current_functions() -> dict[str, str]:
    """The counting functions as they stand at 0721, each a `CREATE FUNCTION` statement."""
    return {
        "ledger_apply": _core_function("ledger_apply"),
        "ledger_post_checked": _core_function("ledger_post_checked"),
        "ledger_p2p": _module_0720().new_p2p(),
    }


def _replace_once(name: str, text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected once in {name}: {old!r}"
    return text.replace(old, new)


def _or_replace(name: str, text: str) -> str:
    return _replace_once(
        name, text, f"CREATE FUNCTION {name}(", f"CREATE OR REPLACE FUNCTION {name}("
    )


def new_functions() -> dict[str, str]:
    out = {}
    for name, text in current_functions().items():
        body = _replace_once(name, text, OLD_DAY, NEW_DAY)
        body = _replace_once(name, body, OLD_MONTH, NEW_MONTH)
        assert "AT TIME ZONE 'UTC'" not in body, name
        out[name] = _or_replace(name, body)
    return out


def _run(sql: str) -> None:
    # The driver, not SQLAlchemy's text(): PL/pgSQL's ":=" must not look like a parameter.
    op.get_bind().exec_driver_sql(sql)


def upgrade() -> None:
    for helper in HELPERS:
        _run(helper)
    for text in new_functions().values():
        _run(text)


def downgrade() -> None:
    for name, text in current_functions().items():
        _run(_or_replace(name, text))
    for name in HELPER_NAMES:
        _run(f"DROP FUNCTION {name}(timestamptz)")
