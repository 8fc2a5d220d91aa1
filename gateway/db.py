"""Database URLs, the SQLAlchemy engine for the admin side, the asyncpg pool for the money path,
and Alembic migrations run programmatically."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from config.settings import SettingsError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
POOL_MIN = 2
POOL_MAX = 20
STATEMENT_TIMEOUT_MS = 10_000
COMMAND_TIMEOUT_S = 15.0
# The custom setting the ledger functions read (ledger_local): the time zone whose days and
# months the daily and monthly debit caps count. Unset or empty there means UTC.
LIMITS_TZ_SETTING = "gateway.limits_tz"


def _server_settings(limits_tz: str | None, generic_plans: bool = False) -> dict[str, str]:
    settings = {"statement_timeout": str(STATEMENT_TIMEOUT_MS)}
    if limits_tz is not None:
        settings[LIMITS_TZ_SETTING] = limits_tz
    if generic_plans:
        settings["plan_cache_mode"] = "force_generic_plan"
    return settings


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` as SQLAlchemy's asyncpg dialect wants it."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def asyncpg_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
    return urlunsplit((scheme, *parts[1:]))


def with_database(url: str, database: str) -> str:
    """The same server, another database (tests give each run its own)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def make_engine(url: str, *, limits_tz: str | None = None) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
        connect_args={
            "timeout": 10,
            "command_timeout": COMMAND_TIMEOUT_S,
            "server_settings": _server_settings(limits_tz),
        },
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pool `reset` that skips asyncpg's default reset query (`RESET ALL; UNLISTEN *; ...`),
    which otherwise costs a second round trip on every release. Only for pools whose users
    leave no session state behind (asyncpg still rolls back an open transaction)."""


async def make_pool(
    url: str,
    min_size: int = POOL_MIN,
    max_size: int = POOL_MAX,
    *,
    reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    limits_tz: str | None = None,
    generic_plans: bool = False,
) -> asyncpg.Pool:
    """The money path's pool. `limits_tz` (Settings.limits_timezone) is sent once per connection,
    at connect, as `gateway.limits_tz`: the ledger functions count the debit caps' days and months
    in it without a look-up per transfer (without it: UTC). asyncpg's reset (RESET ALL) returns
    to the connect-time value. A zone PostgreSQL does not know fails here, naming the setting.
    `generic_plans`: every prepared statement runs on its generic plan, never planned again
    (`plan_cache_mode`), for a pool whose statements are few, hot and take arrays, where
    PostgreSQL would otherwise plan each execution anew (see gateway/sms.py)."""
    pool = await asyncpg.create_pool(
        asyncpg_url(url),
        min_size=min_size,
        max_size=max_size,
        timeout=10,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings=_server_settings(limits_tz, generic_plans),
        reset=reset,
    )
    assert pool is not None
    if limits_tz is not None:
        await check_limits_tz(pool, limits_tz)
    return pool


async def check_limits_tz(pool: asyncpg.Pool, limits_tz: str) -> None:
    """PostgreSQL has its own zone database: a name Python knows may still be missing there,
    and then every capped transfer would fail. Stop at start instead."""
    try:
        await pool.fetchval("SELECT now() AT TIME ZONE $1", limits_tz)
    except asyncpg.InvalidParameterValueError:
        await pool.close()
        raise SettingsError(
            f"LIMITS_TIMEZONE: PostgreSQL does not know the time zone {limits_tz!r}"
        ) from None


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation treats % specially; escape it in passwords.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


async def migrate(url: str, revision: str = "head") -> None:
    """Upgrade to `revision`. Alembic's async env runs its own loop, so it gets a thread."""
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


async def downgrade(url: str, revision: str = "base") -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)
