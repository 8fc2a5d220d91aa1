"""`gateway ledger check` as an operator runs it: exit 0 on a sound ledger, exit 1 with a
report naming the breach when a balance no longer equals its entries."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from core.ledger import CHECKS
from gateway import db as dbmod


def _check(database_url: str, redis_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url, GATEWAY_DATA_DIR=str(data_dir)
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", "ledger", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_ledger_check_command(empty_database: str, redis_url: str, tmp_path: Path) -> None:
    url = empty_database
    await dbmod.migrate(url)
    conn = await asyncpg.connect(dbmod.asyncpg_url(url))
    try:
        await conn.execute("SELECT ledger_ensure_system_accounts('KES', 2)")
        await conn.execute(
            "INSERT INTO customers (msisdn, first_name, last_name, national_id_enc, "
            "national_id_hash, pin_hash) VALUES ('+254700111222', 'A', 'B', 'x', 'h', 'p')"
        )
        await conn.execute(
            "INSERT INTO accounts (kind, currency, customer_id) "
            "SELECT 'wallet', 'KES', id FROM customers"
        )
        await conn.fetchrow(
            "SELECT * FROM ledger_deposit('k1', 'h', '+254700111222', 500, 'KES', 'test', '', '')"
        )
        ok = await asyncio.to_thread(_check, url, redis_url, tmp_path)
        assert (ok.returncode, ok.stdout.strip()) == (0, "ledger ok"), ok.stderr
        # Progress on stderr, one line per check as it ends.
        lines = ok.stderr.strip().splitlines()
        assert len(lines) == len(CHECKS) and lines[0].startswith(f"[1/{len(CHECKS)}] ")
        assert all(line.split(": ")[1].startswith("ok (") for line in lines), lines
        await conn.execute("UPDATE accounts SET balance = balance + 1 WHERE kind = 'wallet'")
        bad = await asyncio.to_thread(_check, url, redis_url, tmp_path)
    finally:
        await conn.close()
    assert bad.returncode == 1, bad.stderr
    assert "balances_equal_entries: BREACH (" in bad.stderr
    assert "BREACH balances_equal_entries" in bad.stdout
    assert "'balance_minor': 501, 'entries_minor': 500" in bad.stdout
