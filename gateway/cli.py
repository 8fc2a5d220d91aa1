"""The `gateway` command line: serve, migrate, admin, and the per-area commands.

Every command reads the same Settings. A bad setting prints one line naming the variable and
exits 2; a command's own failure prints one line per problem and exits 1; PostgreSQL out of
reach prints one line saying where it was looked for and why, and exits 3
(`serve` and `migrate` first wait GATEWAY_STARTUP_WAIT_S for it: gateway.reach).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from config.settings import Settings, SettingsError, load_settings
from core.errors import CoreError
from gateway.reach import DependencyDown

if TYPE_CHECKING:  # imported where used: `gateway --help` stays light
    from gateway.auth import TokenService

Command = Callable[[argparse.Namespace, Settings], int]
# How long `serve` lets requests in flight finish after SIGTERM.
SHUTDOWN_TIMEOUT_S = 10.0


@dataclass
class Storage:
    database_url: str
    redis_url: str
    sessionmaker: async_sessionmaker[AsyncSession]


@asynccontextmanager
async def open_storage(
    settings: Settings, migrate: bool = True, wait_s: float = 0.0
) -> AsyncIterator[Storage]:
    """For one-shot commands: the engines (embedded if needed), migrated, with a sessionmaker.
    A command an operator runs by hand gives up at once on a server out of reach (`wait_s`
    0): waiting would only hide a wrong address."""
    from gateway import db as dbmod
    from gateway.services import storage_endpoints

    async with storage_endpoints(settings, wait_s) as ep:
        if migrate:
            await dbmod.migrate(ep.database_url)
        engine = dbmod.make_engine(ep.database_url, limits_tz=settings.limits_timezone)
        try:
            yield Storage(ep.database_url, ep.redis_url, dbmod.make_sessionmaker(engine))
        finally:
            await engine.dispose()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.app import create_app
    from gateway.http_server import serve
    from gateway.logs import configure_logging
    from gateway.ussd import freeze_after_startup

    configure_logging(settings.log_level)
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    app = create_app(settings)
    freeze_after_startup(app)
    asyncio.run(
        serve(
            app,
            host,
            port,
            shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
            ready=lambda: print(f"gateway listening on http://{host}:{port}", flush=True),
        )
    )
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    async def run() -> None:
        # Often the first step of a deployment, started beside the database: it waits.
        async with open_storage(settings, migrate=True, wait_s=settings.startup_wait_s):
            pass

    asyncio.run(run())
    print("migrations applied")
    return 0


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password again: "):
            raise CoreError("The two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_admin_create(args: argparse.Namespace, settings: Settings) -> int:
    from core.crypto import FieldCipher
    from core.identity import create_admin
    from gateway.secrets import resolve_secret

    password = _read_password()
    cipher = FieldCipher(resolve_secret(settings))

    async def run() -> str:
        async with open_storage(settings) as storage, storage.sessionmaker.begin() as db:
            created = await create_admin(
                db,
                cipher,
                username=args.username,
                password=password,
                role=args.role,
                password_rounds=settings.password_bcrypt_rounds,
            )
            return created.provisioning_uri

    print(asyncio.run(run()))
    return 0


# The audit names the CLI as the actor of what it changes (as `admin create` does): whoever runs
# it holds the database's credentials, not an admin's.
CLI_ACTOR = ("system", "cli")


@asynccontextmanager
async def admin_tools(settings: Settings) -> AsyncIterator[tuple[Storage, Any, TokenService]]:
    """For the admin commands that change a live admin: storage, one asyncpg connection, and the
    token service that ends an admin's sessions (the same Redis keys as the server's)."""
    import asyncpg

    from gateway import db as dbmod
    from gateway.app import make_redis
    from gateway.auth import TokenService
    from gateway.secrets import resolve_secret

    async with open_storage(settings) as storage:
        conn = await asyncpg.connect(dbmod.asyncpg_url(storage.database_url), timeout=10)
        redis = make_redis(storage.redis_url)
        tokens = TokenService(
            resolve_secret(settings),
            redis,
            prefix=settings.redis_prefix,
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
        )
        try:
            yield storage, conn, tokens
        finally:
            await redis.aclose()
            await conn.close()


def cmd_admin_reset(args: argparse.Namespace, settings: Settings) -> int:
    """A single-use credentials reset token for the admin (printed with its expiry): the admin
    sets a new password and gets a new TOTP secret with it at POST /api/v1/auth/reset."""
    from core.admins import admin_id_named
    from core.credentials import issue_reset

    async def run() -> tuple[str, str]:
        async with admin_tools(settings) as (storage, conn, tokens):
            admin_id = await admin_id_named(conn, args.username)
            async with storage.sessionmaker.begin() as db:
                issued = await issue_reset(
                    db,
                    actor_id=None,
                    actor_type=CLI_ACTOR[0],
                    actor=CLI_ACTOR[1],
                    admin_id=admin_id,
                    ttl_s=settings.admin_reset_ttl_s,
                )
                # Inside the transaction: Redis down saves nothing (exit 1, try again).
                await tokens.cut_sessions(admin_id)
            await tokens.cut_sessions(admin_id)  # and after: see gateway.admin.admins
            return issued.token, issued.expires_at.isoformat(timespec="seconds")

    token, expires_at = asyncio.run(run())
    print(token)
    print(f"expires {expires_at}")
    return 0


def cmd_admin_deactivate(args: argparse.Namespace, settings: Settings) -> int:
    """No more logins for the admin, and every session of theirs ends at once; the last
    active admin who may manage admins cannot be deactivated."""
    from core import admins

    async def run() -> bool:
        async with admin_tools(settings) as (_, conn, tokens):
            admin_id = await admins.admin_id_named(conn, args.username)
            async with conn.transaction():
                before = await admins.get_admin(conn, admin_id)
                await admins.deactivate(
                    conn,
                    actor_id=None,
                    actor_type=CLI_ACTOR[0],
                    actor=CLI_ACTOR[1],
                    admin_id=admin_id,
                )
                await tokens.cut_sessions(admin_id)
            await tokens.cut_sessions(admin_id)
            return before.active

    was_active = asyncio.run(run())
    name = args.username.strip().lower()
    print(f"{name} deactivated" if was_active else f"{name} was already deactivated")
    return 0


def cmd_admin_reactivate(args: argparse.Namespace, settings: Settings) -> int:
    """The admin may log in again with the credentials they had (a reset token voided by the
    deactivation stays void: issue a new one if they need it)."""
    from core import admins

    async def run() -> bool:
        async with admin_tools(settings) as (_, conn, _tokens):
            admin_id = await admins.admin_id_named(conn, args.username)
            before = await admins.get_admin(conn, admin_id)
            await admins.reactivate(
                conn, actor_type=CLI_ACTOR[0], actor=CLI_ACTOR[1], admin_id=admin_id
            )
            return not before.active

    changed = asyncio.run(run())
    name = args.username.strip().lower()
    print(f"{name} reactivated" if changed else f"{name} was already active")
    return 0


def cmd_admin_unlock(args: argparse.Namespace, settings: Settings) -> int:
    """Clear the admin's login lockout and failure count."""
    from core import admins

    async def run() -> bool:
        async with admin_tools(settings) as (_, conn, _tokens):
            admin_id = await admins.admin_id_named(conn, args.username)
            before = await admins.get_admin(conn, admin_id)
            await admins.unlock(
                conn, actor_type=CLI_ACTOR[0], actor=CLI_ACTOR[1], admin_id=admin_id
            )
            return before.locked_until is not None or before.failed_logins > 0

    cleared = asyncio.run(run())
    name = args.username.strip().lower()
    print(f"{name} unlocked" if cleared else f"{name} was not locked")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """A usage error (an unknown flag, a missing argument) as one line naming the command and
    where to read its usage, exit 2, like every other refusal of the CLI; argparse's own
    error prints the whole usage first. Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gateway", description="CodeForge channel gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server and every configured channel")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)

    admin = sub.add_parser("admin", help="manage admin users")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_sub.add_parser("create", help="create an admin; password from stdin")
    create.add_argument("username")
    create.add_argument("--role", default="admin")
    create.set_defaults(func=cmd_admin_create)
    for name, func, text in (
        ("reset", cmd_admin_reset, "print a single-use credentials reset token for an admin"),
        ("deactivate", cmd_admin_deactivate, "deactivate an admin and end their sessions"),
        ("reactivate", cmd_admin_reactivate, "let a deactivated admin log in again"),
        ("unlock", cmd_admin_unlock, "clear an admin's login lockout"),
    ):
        command = admin_sub.add_parser(name, help=text)
        command.add_argument("username")
        command.set_defaults(func=func)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


def cmd_ledger_check(args: argparse.Namespace, settings: Settings) -> int:
    """Verify the ledger invariants on the live database; exit 1 with a report on a breach."""
    import asyncpg

    from core.ledger import Check, check_ledger
    from gateway import db as dbmod

    def progress(done: int, total: int, check: Check, seconds: float) -> None:
        # On stderr, so stdout stays the verdict (and the report) a script reads.
        verdict = "ok" if check.ok else "BREACH"
        print(f"[{done}/{total}] {check.name}: {verdict} ({seconds:.1f} s)", file=sys.stderr)

    async def run() -> list[str] | None:
        async with open_storage(settings) as storage:
            conn = await asyncpg.connect(dbmod.asyncpg_url(storage.database_url), timeout=10)
            try:
                report = await check_ledger(conn, progress=progress)
            finally:
                await conn.close()
        return None if report.ok else report.lines()

    breaches = asyncio.run(run())
    if breaches is None:
        print("ledger ok")
        return 0
    print("\n".join(breaches))
    return 1


def _ledger_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ledger = sub.add_parser("ledger", help="the double-entry ledger")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    check = ledger_sub.add_parser("check", help="verify the ledger invariants; exit 1 on breach")
    check.set_defaults(func=cmd_ledger_check)


# Areas add their commands here (menus validate, ledger check, simulate ussd ...).
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []  # type: ignore[type-arg]
EXTRA_COMMANDS.append(_ledger_commands)


def _ussd_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from gateway.cli_ussd import register

    register(sub)


EXTRA_COMMANDS.append(_ussd_commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    try:
        result: int = args.func(args, settings)
    except SettingsError as exc:  # found only when connecting (LIMITS_TIMEZONE unknown to PG)
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except CoreError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    except DependencyDown as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    return result


def _register_area_commands() -> None:
    from gateway import cli_agents

    EXTRA_COMMANDS.append(cli_agents.register)


_register_area_commands()
