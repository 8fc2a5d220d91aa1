"""Test support for MQTT: a device client (paho on its own thread, like a phone app), a
Mosquitto broker run as a subprocess with a config of our own, and the gateway's agent runtime
(alone, or inside the whole app) on a broker URL."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as paho
from aiohttp import web
from aiohttp.test_utils import TestClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from redis.asyncio import Redis

from channels.agents.mqtt import BrokerAddress
from config.settings import Settings
from core.crypto import FieldCipher
from gateway.agents import AgentRuntime, build_runtime, connected, running
from gateway.app import create_app
from gateway.embedded import EmbeddedMqtt, free_port, port_open
from gateway.keys import AGENTS
from tests.conftest import running_app
from tests.helpers import eventually
from tests.integration.agent_support import prepare_core

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
WAIT_S = 10.0


class Device:
    """A device's MQTT client: connects, publishes, and collects what it receives."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
        mqtt5: bool = False,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()
        self.unclaimed: list[tuple[str, Any]] = []
        protocol = MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:10]}", protocol=protocol
        )
        self.client.reconnect_delay_set(1, 2)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.connect_results: asyncio.Queue[Any] = asyncio.Queue()
        self.sub_results: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.pub_results: dict[int, Any] = {}
        self.client.on_connect = lambda c, u, f, rc, p: self._put(self.connect_results, rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._put(self.sub_results, rcs)
        self.client.on_message = lambda c, u, m: self._put(
            self.inbox, (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.client.on_publish = lambda c, u, mid, rc, p: self.pub_results.__setitem__(mid, rc)

    def _put(self, queue: asyncio.Queue[Any], item: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(queue.put_nowait, item)

    async def connect(self) -> Any:
        """Connect (without blocking the loop: the broker may live in it); the CONNACK code."""
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        return await asyncio.wait_for(self.connect_results.get(), WAIT_S)

    async def subscribe(self, topic: str) -> list[Any]:
        self.client.subscribe(topic, qos=1)
        return await asyncio.wait_for(self.sub_results.get(), WAIT_S)

    def publish(self, topic: str, body: Any, *, retain: bool = False) -> int:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.publish(topic, payload, qos=1, retain=retain).mid

    async def expect(
        self, predicate: Callable[[str, Any], bool], timeout_s: float = WAIT_S
    ) -> tuple[str, Any]:
        """The first received message, not yet claimed by an earlier `expect`, that matches
        `predicate` (JSON decoded when it is JSON); waits for it up to the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            while not self.inbox.empty():
                topic, raw, _ = self.inbox.get_nowait()
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                self.unclaimed.append((topic, body))
            for n, (topic, body) in enumerate(self.unclaimed):
                if predicate(topic, body):
                    del self.unclaimed[n]
                    return topic, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message among {self.unclaimed!r}"[:2000])
            with contextlib.suppress(TimeoutError):
                item = await asyncio.wait_for(self.inbox.get(), remaining)
                self.inbox.put_nowait(item)

    async def drop(self) -> None:
        """Vanish without DISCONNECT (the broker then publishes the will)."""
        # Joining paho's thread off the loop: it may be waiting on a broker living in this loop.
        await asyncio.to_thread(self.client.loop_stop)
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


class MosquittoProcess:
    """`mosquitto -c <conf>` on a free loopback port, ours alone (never the shared one)."""

    def __init__(self, folder: Path, extra_conf: str = "allow_anonymous true\n") -> None:
        assert MOSQUITTO is not None
        self.folder = folder
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        # Started as root, Mosquitto would drop to the `mosquitto` user, which cannot read files
        # in pytest's private temporary folders; `user` keeps the current one.
        user = f"user {getpass.getuser()}\n"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{user}{extra_conf}")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._log = (self.folder / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 short-lived spawn
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=self._log
        )
        try:
            await eventually(lambda: port_open("127.0.0.1", self.port), timeout_s=WAIT_S)
        except AssertionError:
            raise AssertionError((self.folder / "mosquitto.log").read_text()) from None

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(1)  # SIGHUP: reread the password file and ACL

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.asynccontextmanager
async def private_broker(folder: Path) -> AsyncIterator[str]:
    """A broker of this test's own (Mosquitto when installed, else the embedded amqtt): on the
    machine's shared broker, other runs' gateways would answer this test's commands too."""
    if MOSQUITTO is not None:
        mosquitto = MosquittoProcess(folder)
        await mosquitto.start()
        try:
            yield mosquitto.url
        finally:
            await mosquitto.stop()
        return
    embedded = EmbeddedMqtt(folder, 0)
    url = await embedded.start()
    try:
        yield url
    finally:
        await embedded.stop()


@contextlib.asynccontextmanager
async def gateway(
    settings: Settings, redis: Redis, pool: asyncpg.Pool, url: str, **overrides: Any
) -> AsyncIterator[AgentRuntime]:
    """The agent runtime on `url`, with a share group of its own (parallel runs on one broker
    each get every message) and subscriptions acknowledged before it is handed out."""
    tuned = replace(settings, mqtt_share_group=f"t{uuid.uuid4().hex[:10]}", **overrides)
    assert settings.secret_key is not None
    runtime = build_runtime(tuned, redis, pool, FieldCipher(settings.secret_key))
    async with running(runtime), connected(runtime, url) as service:
        await service.wait_subscribed(WAIT_S)
        yield runtime


@contextlib.asynccontextmanager
async def gateway_app(
    settings: Settings, url: str, **overrides: Any
) -> AsyncIterator[tuple[web.Application, TestClient]]:
    """The whole app with its channels on the broker at `url` (a share group of its own), once
    the agent runtime's subscriptions are acknowledged and KES is ready in the core."""
    tuned = replace(
        settings, mqtt_url=url, mqtt_share_group=f"a{uuid.uuid4().hex[:10]}", **overrides
    )
    app = create_app(tuned, run_migrations=False, start_channels=True)
    async with running_app(app) as client:
        runtime = app[AGENTS]
        assert runtime.mqtt is not None
        await runtime.mqtt.wait_subscribed(WAIT_S)
        await prepare_core(runtime.pool)
        yield app, client
