"""Banking core: customers, agents, accounts (sharded hot accounts), tier limits, tariffs,
transfers and entries (append-only), the notification outbox, and the PL/pgSQL money path.

The SQL lives beside this file in 0100_core_banking.sql (statements separated by a line
"-- statement"); see its header for the design.

Revision ID: 0100_core_banking
Revises: 0300_sms_messages
"""

from __future__ import annotations

import re
from pathlib import Path

from alembic import op

revision = "0100_core_banking"
down_revision = "0300_sms_messages"
branch_labels = None
depends_on = None

SQL_FILE = Path(__file__).with_suffix(".sql")
TABLES = (
    "outbox",
    "entries",
    "transfers",
    "tariffs",
    "tier_limits",
    "accounts",
    "agents",
    "customers",
)


def _statements() -> list[str]:
    text = SQL_FILE.read_text(encoding="utf-8")
    parts = re.split(r"^-- statement$", text, flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip() and not _only_comments(p)]


def _only_comments(part: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in part.splitlines())


def _functions() -> list[str]:
    return re.findall(r"CREATE FUNCTION (\w+)\(", SQL_FILE.read_text(encoding="utf-8"))


def upgrade() -> None:
    bind = op.get_bind()
    for statement in _statements():
        # The driver, not SQLAlchemy's text(): PL/pgSQL's ":=" must not look like a parameter.
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    for table in ("transfers", "entries"):
        bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
    for name in reversed(_functions()):
        bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}")
    bind.exec_driver_sql("DROP TYPE IF EXISTS ledger_outcome")
    for table in TABLES:
        bind.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
