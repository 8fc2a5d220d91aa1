"""`gateway agents broker-config`: Mosquitto's password file and ACL for every agent device.

    gateway agents broker-config --password-file /etc/mosquitto/gateway.passwd \\
                                 --acl-file /etc/mosquitto/gateway.acl

The gateway's own user and password come from MQTT_URL (`mqtt://user:pass@host:port`), or from
`--gateway-user` and one line on stdin with `--gateway-password-stdin`. Agents' hashes are copied
as stored (Mosquitto's `$7$` format), so no device secret exists in clear anywhere. Reload
Mosquitto afterwards (`kill -HUP`) to apply rotated credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from config.settings import Settings
from core.errors import CoreError


def _write(path: Path, text: str, mode: int) -> None:
    """Atomically: a half-written password file would lock every device out."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _gateway_identity(args: argparse.Namespace, settings: Settings) -> tuple[str, str]:
    if args.gateway_password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        return args.gateway_user or "gateway", password
    if settings.mqtt_url:
        parts = urlsplit(settings.mqtt_url)
        if parts.username and parts.password:
            return unquote(parts.username), unquote(parts.password)
    raise CoreError(
        "The gateway's MQTT user is unknown: set MQTT_URL with user:password, or use "
        "--gateway-user with --gateway-password-stdin"
    )


def cmd_broker_config(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from channels.agents.broker_files import BrokerConfigError, acl_file, password_file
    from core import devices
    from gateway import db as dbmod
    from gateway.cli import open_storage

    user, password = _gateway_identity(args, settings)
    if not password:
        raise CoreError("The gateway's MQTT password is empty")

    async def users() -> list[tuple[str, str, str]]:
        async with open_storage(settings) as storage:
            conn = await asyncpg.connect(dbmod.asyncpg_url(storage.database_url), timeout=10)
            try:
                return await devices.all_mqtt_users(conn)
            finally:
                await conn.close()

    agents = asyncio.run(users())
    try:
        passwords = password_file(
            [(user, devices.mosquitto_hash(password))] + [(u, h) for _, u, h in agents]
        )
        acl = acl_file(user, [code for code, _, _ in agents])
    except BrokerConfigError as exc:
        raise CoreError(str(exc)) from None
    _write(Path(args.password_file), passwords, 0o600)
    _write(Path(args.acl_file), acl, 0o644)
    print(f"wrote {len(agents)} agent(s) and the gateway user {user!r}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    agents = sub.add_parser("agents", help="agent devices")
    agents_sub = agents.add_subparsers(dest="agents_command", required=True)
    cfg = agents_sub.add_parser(
        "broker-config", help="write Mosquitto's password file and ACL for every device"
    )
    cfg.add_argument("--password-file", required=True)
    cfg.add_argument("--acl-file", required=True)
    cfg.add_argument("--gateway-user", default=None)
    cfg.add_argument("--gateway-password-stdin", action="store_true")
    cfg.set_defaults(func=cmd_broker_config)
