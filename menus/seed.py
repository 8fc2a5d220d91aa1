"""Ship the default menu: on first start, publish `config/menus/default.yaml` as version 1.

Only when no menu of that name exists: afterwards the admin API owns it (an edited and published
menu is never overwritten by the file). Several instances starting together take an advisory
lock, so exactly one publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from menus import store
from menus.actions import ActionSpec
from menus.loader import load_file
from menus.validate import validate_data

log = logging.getLogger("menus.seed")

DEFAULT_MENU_FILE = Path(__file__).resolve().parent.parent / "config" / "menus" / "default.yaml"
_SEED_LOCK = 0x6D656E75  # "menu": the advisory lock key for seeding
DB_TIMEOUT_S = 10.0


async def ensure_menu(
    pool: asyncpg.Pool, path: Path, specs: Mapping[str, ActionSpec]
) -> int | None:
    """Publish the menu in `path` unless a menu of its name exists. Returns the version
    published, or None (already there, or the file is not valid: logged line by line)."""
    data, problems = load_file(path)
    if not problems:
        problems = validate_data(data, specs)
    if problems:
        for line in problems:
            log.error("shipped menu not published: %s", line, extra={"file": str(path)})
        return None
    assert isinstance(data, dict)
    document: dict[str, Any] = data
    async with pool.acquire(timeout=DB_TIMEOUT_S) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK)
        if await store.find_menu(conn, document["name"]) is not None:
            return None
        row, _ = await store.save_draft(conn, document["name"], document, "system")
        version = await store.publish(conn, row, document, "system")
    log.info("shipped menu published", extra={"menu": document["name"], "version": version})
    return version
