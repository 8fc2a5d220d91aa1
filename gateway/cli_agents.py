"""`gateway agents broker-config`: Mosquitto's password file and ACL for every agent device.
`gateway agents spool [--replay-unreadable]`: the event spool's counts, and its unreadable
entries read back (see cmd_spool).

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
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
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


def _counts_lines(counts: Any) -> list[str]:
    lines = [
        f"spool: {counts.spool} entries, {counts.pending} claimed by a writer",
        f"unreadable: {counts.unreadable} entries, {counts.readable_now} readable by this release",
    ]
    lines += [f"  {n:>5}  {problem}" for problem, n in counts.problems.items()]
    return lines


@contextlib.asynccontextmanager
async def _spool_at(redis_url: str, settings: Settings) -> AsyncIterator[Any]:
    """The event spool on the Redis at `redis_url`, once it answers a PING; DependencyDown
    (one line, exit 3) when it does not."""
    from redis.exceptions import RedisError

    from gateway.agents import spool_key
    from gateway.app import make_redis
    from gateway.event_spool import REDIS_TIMEOUT_S, EventSpool
    from gateway.reach import DependencyDown, where

    redis = make_redis(redis_url)
    try:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise DependencyDown(
                "Redis", "REDIS_URL", where(redis_url), detail or type(exc).__name__
            ) from None
        yield EventSpool(redis, spool_key(settings.redis_prefix), consumer="cli")
    finally:
        await redis.aclose()


def _progress(done: Any) -> None:
    # On stderr, so stdout stays the result a script reads.
    print(
        f"replay: {done.read}/{max(done.total, done.read)} read: {done.written} written, "
        f"{done.already} already stored, {done.kept} still unreadable",
        file=sys.stderr,
        flush=True,
    )


async def _replay(settings: Settings) -> list[str]:
    import asyncpg

    from gateway import db as dbmod
    from gateway import event_spool as es
    from gateway.agents import breach_alerts
    from gateway.cli import open_storage
    from gateway.reach import DependencyDown, where

    async with open_storage(settings) as storage:  # PostgreSQL reached and migrated first
        pool = await asyncpg.create_pool(
            dbmod.asyncpg_url(storage.database_url), min_size=1, max_size=2, timeout=10
        )
        try:
            async with _spool_at(storage.redis_url, settings) as spool:
                done = await es.replay_unreadable(spool, pool, breach_alerts(settings), _progress)
                counts = await es.counts(spool)
        except es.Away as exc:
            url = storage.redis_url if exc.service == "Redis" else storage.database_url
            variable = "REDIS_URL" if exc.service == "Redis" else "DATABASE_URL"
            raise DependencyDown(exc.service, variable, where(url), exc.detail) from None
        finally:
            await pool.close()
    lines = [
        f"replayed {done.read} unreadable entries: {done.written} written, "
        f"{done.already} already stored, {done.kept} still unreadable"
    ]
    kept = sorted(done.problems.items(), key=lambda p: (-p[1], p[0]))
    lines += [f"  {n:>5}  {problem}" for problem, n in kept]
    return lines + _counts_lines(counts)


async def _show(settings: Settings) -> list[str]:
    from gateway import event_spool as es
    from gateway.reach import DependencyDown, where
    from gateway.services import storage_endpoints

    try:
        if settings.redis_url is not None:  # Redis alone: it works while PostgreSQL is away
            async with _spool_at(settings.redis_url, settings) as spool:
                return _counts_lines(await es.counts(spool))
        async with storage_endpoints(settings) as ep, _spool_at(ep.redis_url, settings) as spool:
            return _counts_lines(await es.counts(spool))  # the embedded Redis
    except es.Away as exc:  # Redis gone between its PING and the counts
        url = settings.redis_url or "the embedded Redis"
        raise DependencyDown("Redis", "REDIS_URL", where(url), exc.detail) from None


def cmd_spool(args: argparse.Namespace, settings: Settings) -> int:
    """The agent event spool's counts: entries waiting, those a writer claimed, entries set
    aside as unreadable by the reason recorded then, and how many of those this release reads.
    Needs Redis only (it is what to look at while PostgreSQL is away).

    With --replay-unreadable, each unreadable entry is read again with this release's reader:
    the events it reads are stored once (by their UUID, as the writer stores them, a breach's
    alerts with its first store) and removed from the unreadable stream; the others stay,
    with their reason. Progress on stderr, a page at a time. PostgreSQL is reached (and
    migrated) and Redis answers before anything is read; either one away then stops it with
    one line (exit 3): what was stored stays stored, and the same command goes on from there."""
    lines = asyncio.run(_replay(settings) if args.replay_unreadable else _show(settings))
    print("\n".join(lines))
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
    spool = agents_sub.add_parser(
        "spool",
        help="the agent event spool's counts; --replay-unreadable reads set-aside entries back",
        allow_abbrev=False,  # a command that writes runs only when asked in full
    )
    spool.add_argument(
        "--replay-unreadable",
        action="store_true",
        help="store the events this release reads in the unreadable entries, once each, "
        "and remove those entries",
    )
    spool.set_defaults(func=cmd_spool)
