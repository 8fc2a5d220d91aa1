"""Device identity for the embedded broker (amqtt): the same rules Mosquitto gets from
`gateway agents broker-config`, enforced by a plugin inside the broker.

Agents log in with their code and the MQTT password issued through the admin API; the plugin
checks it against the stored `$7$` hash in PostgreSQL on every CONNECT, so a rotated password
stops working at once. Topic checks use `channels.agents.topics` for publish, subscribe and
delivery alike. The gateway's own client logs in as `gateway` with a password derived from the
secret key, so every gateway process on one data folder can use the broker one of them runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from channels.agents import topics
from core import devices
from core.crypto import derive_key
from core.devices import AGENT_CODE_RE
from gateway import db as dbmod

GATEWAY_USER = "gateway"
POOL_MAX = 4
CONNECT_TIMEOUT_S = 5.0


def gateway_password(secret: str) -> str:
    return derive_key(secret, "embedded-mqtt-gateway").hex()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class AgentBrokerPlugin(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """amqtt auth + topic plugin (configured under `plugins` in the broker config)."""

    @dataclass
    class Config:
        database_url: str = ""
        gateway_username: str = GATEWAY_USER
        gateway_password_sha256: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    @property
    def _cfg(self) -> AgentBrokerPlugin.Config:
        config: AgentBrokerPlugin.Config = self.context.config
        return config

    async def _db(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await dbmod.make_pool(self._cfg.database_url, 1, POOL_MAX)
            return self._pool

    async def authenticate(self, *, session: Session) -> bool | None:
        username, password = session.username, session.password
        if not username or password is None:
            return False
        cfg = self._cfg
        if username == cfg.gateway_username:
            return hmac.compare_digest(_sha256(password), cfg.gateway_password_sha256)
        if not AGENT_CODE_RE.fullmatch(username):
            return False
        try:
            hashed = await asyncio.wait_for(
                devices.mqtt_password_hash(await self._db(), username), CONNECT_TIMEOUT_S
            )
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False  # refuse rather than let anyone in while the database is away
        return hashed is not None and devices.mosquitto_verify(password, hashed)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        username = session.username if session is not None else None
        if username is not None and username == self._cfg.gateway_username:
            return True
        if not username or not topic or not AGENT_CODE_RE.fullmatch(username):
            return False
        if action == Action.PUBLISH:
            return topics.agent_may_publish(username, topic)
        return topics.agent_may_read(username, topic)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def embedded_broker_config(secret: str, database_url: str) -> dict[str, Any]:
    """The amqtt config section that puts the plugin in charge of logins and topics."""
    plugin = f"{AgentBrokerPlugin.__module__}.{AgentBrokerPlugin.__qualname__}"
    return {
        "plugins": {
            plugin: {
                "database_url": database_url,
                "gateway_username": GATEWAY_USER,
                "gateway_password_sha256": _sha256(gateway_password(secret)),
            }
        },
    }


def with_credentials(url: str, username: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
