"""The menus this instance serves, kept current on every instance through Redis pub/sub.

On start the registry loads the current version of every menu from PostgreSQL and compiles it
(with its one state machine). Publishing or rolling back on any instance announces
`{"name", "version"}` on the `<prefix>menus` channel; every instance loads that version and
makes it current within a moment, no restart. Sessions keep the version they started on:
`version(name, n)` serves older versions from a bounded cache, loading them from PostgreSQL on a
miss (they are immutable, so a cached version never goes stale). If the pub/sub connection
drops, the listener reconnects with backoff and reloads everything, so a missed announcement
costs at most one reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import Unavailable
from menus import store
from menus.compiled import CompiledMenu, compile_menu
from menus.engine import Engine
from menus.schema import parse_document

log = logging.getLogger("menus.registry")

VERSION_CACHE = 64
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 10.0
LISTEN_POLL_S = 1.0
DEFAULT_MENU = "default"
DB_TIMEOUT_S = 5.0


def split_dial(dialled: str) -> list[str]:
    """`*384*1*2#` -> ["384", "1", "2"]; `384` -> ["384"]."""
    core = dialled.strip().strip("#").lstrip("*")
    return [p for p in core.split("*") if p]


class MenuSet:
    """Compiled menus by name (the current version of each) and older versions by number, in
    memory: what a step needs. `MenuRegistry` fills it from PostgreSQL and keeps it current;
    dry-run simulation and engine tests fill it directly."""

    def __init__(self, default_service_code: str) -> None:
        self.default_code = default_service_code
        self.current: dict[str, CompiledMenu] = {}
        self._versions: OrderedDict[tuple[str, int], CompiledMenu] = OrderedDict()
        self.reloaded = asyncio.Event()  # set after every (re)load; tests wait on it

    def add(self, menu: CompiledMenu, *, current: bool = True) -> CompiledMenu:
        self._remember(menu)
        if current:
            self.current[menu.name] = menu
        return menu

    def _remember(self, menu: CompiledMenu) -> CompiledMenu:
        key = (menu.name, menu.version)
        self._versions[key] = menu
        self._versions.move_to_end(key)
        while len(self._versions) > VERSION_CACHE:
            self._versions.popitem(last=False)
        return menu

    async def version(self, name: str, version: int) -> CompiledMenu:
        menu = self._versions.get((name, version))
        if menu is None:
            raise Unavailable(f"Menu {name!r} version {version} is not loaded")
        return menu

    def resolve(self, dialled: str) -> tuple[CompiledMenu | None, tuple[str, ...]]:
        """The menu a dialled string reaches and the path prefilled after its service code:
        the longest service code that prefixes the dial wins; otherwise the default menu."""
        parts = split_dial(dialled)
        best: tuple[int, CompiledMenu | None] = (0, None)
        for menu in self.current.values():
            code = menu.doc.service_code or (
                self.default_code if menu.name == DEFAULT_MENU else None
            )
            if code is None:
                continue
            wanted = split_dial(code)
            if parts[: len(wanted)] == wanted and len(wanted) > best[0]:
                best = (len(wanted), menu)
        if best[1] is not None:
            return best[1], tuple(parts[best[0] :])
        fallback = self.current.get(DEFAULT_MENU)
        default_len = len(split_dial(self.default_code))
        return fallback, tuple(parts[default_len:]) if fallback else ()


class MenuRegistry(MenuSet):
    """The published menus, loaded from PostgreSQL and kept current through pub/sub."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        engine: Engine,
        *,
        prefix: str,
        default_service_code: str,
    ) -> None:
        super().__init__(default_service_code)
        self.pool = pool
        self.redis = redis
        self.engine = engine
        self.channel = f"{prefix}menus"
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- loading --------------------------------------------------------------------------------

    def _compile(self, name: str, version: int, document: Mapping[str, Any]) -> CompiledMenu:
        doc, problems = parse_document(document)
        menu = None
        if doc is not None:
            menu, problems = compile_menu(doc, version)
        if menu is None:
            raise ValueError(f"stored menu {name} v{version} does not compile: {problems[:3]}")
        return self.engine.attach(menu)

    async def refresh(self) -> None:
        """Load the current version of every menu."""
        async with self.pool.acquire(timeout=DB_TIMEOUT_S) as conn:
            rows = await store.current_documents(conn)
        current = {}
        for name, version, document in rows:
            menu = self._versions.get((name, version))
            if menu is None:
                try:
                    menu = self._remember(self._compile(name, version, document))
                except ValueError:
                    log.exception("menu not loaded", extra={"menu": name, "version": version})
                    continue
            current[name] = menu
        self.current = current
        self.reloaded.set()

    async def load(self, name: str, version: int) -> CompiledMenu:
        """Make `name` version `version` current here (an announcement arrived)."""
        menu = await self.version(name, version)
        self.current[name] = menu
        self.reloaded.set()
        log.info("menu reloaded", extra={"menu": name, "version": version})
        return menu

    async def version(self, name: str, version: int) -> CompiledMenu:
        menu = self._versions.get((name, version))
        if menu is not None:
            return menu
        async with self._lock:
            menu = self._versions.get((name, version))
            if menu is not None:
                return menu
            try:
                async with self.pool.acquire(timeout=DB_TIMEOUT_S) as conn:
                    document = await store.version_document(conn, name, version)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                raise Unavailable("Menus cannot be loaded right now") from exc
            return self._remember(self._compile(name, version, document))

    # --- hot reload -------------------------------------------------------------------------------

    async def announce(self, name: str, version: int) -> None:
        """Tell every instance (this one included) that `name` is now at `version`."""
        await self.load(name, version)
        try:
            await self.redis.publish(self.channel, json.dumps({"name": name, "version": version}))
        except (RedisError, OSError):
            # The others catch up when their listener reconnects and reloads.
            log.exception("menu announcement failed", extra={"menu": name})

    def start(self) -> None:
        self._task = asyncio.create_task(self.listen(), name="menu-listener")

    async def stop(self) -> None:
        """Stop listening. The flag, not only the cancellation, ends the loop: redis-py's
        pub/sub read may swallow a cancellation."""
        self._stopping.set()
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=LISTEN_POLL_S * 3)

    async def listen(self) -> None:
        """Apply announcements until stopped; reconnect (with backoff) and reload on failure."""
        delay = RECONNECT_MIN_S
        while not self._stopping.is_set():
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("menu listener lost its connection; reconnecting", exc_info=True)
            with contextlib.suppress(TimeoutError):
                # Backoff between reconnects, cut short by stop().
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _listen_once(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            # Anything published while we were not listening: reload from the database.
            await self.refresh()
            while not self._stopping.is_set():
                message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                if message is None:
                    continue
                await self._apply(message.get("data"))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _apply(self, data: Any) -> None:
        try:
            notice = json.loads(data)
            name, version = str(notice["name"]), int(notice["version"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed menu announcement")
            return
        current = self.current.get(name)
        if current is not None and current.version == version:
            return
        await self.load(name, version)
