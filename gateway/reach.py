"""Reaching PostgreSQL at start: wait a while for a server that is still coming up, give up at
once on one that refuses us for good, and say which in one line. (Redis is not waited for: the
gateway starts without it and `/readyz` reports it down until it answers.)

At a deployment's start the gateway often comes up before its database (a compose file without
health checks, a pod scheduled before the database's): `serve` and `migrate` wait up to
GATEWAY_STARTUP_WAIT_S for a server that refuses connections, is starting or is full, with a
progress line on stderr per attempt. A wrong password, an unknown database or host, or a
malformed address will not mend by waiting: that fails at once. Either way the command ends
with `DependencyDown`, one line naming the service, where it was looked for (host and port,
never the credentials) and the variable that says so; the CLI prints it and exits 3.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import asyncpg

from gateway import db as dbmod

CONNECT_TIMEOUT_S = 5.0
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 4.0

# Worth waiting for: nobody listening yet, the server starting or shutting down, full. Anything
# else (a wrong password, an unknown database or host) will not mend by waiting.
_PG_TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionRefusedError,
    ConnectionResetError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)
# What a connection attempt can raise; anything else is a bug and propagates.
_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class DependencyDown(Exception):
    """A service the command needs is out of reach; the message is the CLI's whole answer."""

    def __init__(self, service: str, variable: str, where: str, detail: str) -> None:
        super().__init__(f"cannot reach {service} at {where} ({variable}): {detail}")
        self.service = service


def where(url: str) -> str:
    """host:port of `url`, without user or password (or the socket directory in `?host=`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "a malformed address"
    if parts.hostname:
        return f"{parts.hostname}:{port}" if port else parts.hostname
    socket_dir = parse_qs(parts.query).get("host")
    return socket_dir[0] if socket_dir else "the default socket"


def _detail(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def to_stderr(line: str) -> None:
    """A progress line on stderr (the CLI's; `serve` logs them instead)."""
    print(line, file=sys.stderr, flush=True)


async def postgres(
    url: str, *, wait_s: float = 0.0, say: Callable[[str], None] = to_stderr
) -> None:
    """Until PostgreSQL at `url` takes a connection: DependencyDown at once for what will not
    mend, or once `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    pause = FIRST_PAUSE_S
    waited = False
    while True:
        try:
            conn = await asyncpg.connect(dbmod.asyncpg_url(url), timeout=CONNECT_TIMEOUT_S)
        except _PG_ERRORS as exc:
            detail = _detail(exc)
            if not isinstance(exc, _PG_TRANSIENT):
                raise DependencyDown("PostgreSQL", "DATABASE_URL", where(url), detail) from exc
        else:
            await conn.close()
            if waited:
                say(f"PostgreSQL at {where(url)} answers")
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise DependencyDown("PostgreSQL", "DATABASE_URL", where(url), detail)
        say(f"waiting for PostgreSQL at {where(url)} ({detail}): {left:.1f} s left")
        waited = True
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, MAX_PAUSE_S)
