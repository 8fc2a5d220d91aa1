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

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from config.settings import Settings, SettingsError, load_settings
from core.errors import CoreError
from gateway.reach import DependencyDown

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="CodeForge channel gateway")
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
