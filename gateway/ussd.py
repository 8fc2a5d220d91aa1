"""USSD assembly for `create_app()`: the callback routes, the engine, the menus and the sessions.

USSD is always on (like the admin API). At start-up: bind the actions (`menus.bindings`), publish
the shipped default menu if there is none yet, load the current menus, listen for publications,
and hand the service to the callback handler. At shutdown: stop listening, let actions that
outlived their deadline finish, flush the analytics.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from channels.ussd.http import UssdHttp
from core.agent_transactions import DeviceGate, gate_customer_withdrawal
from gateway.agents import gate_policy
from gateway.keys import (
    AGENTS,
    CIPHER,
    ENDPOINTS,
    LOANS,
    MENU_BINDINGS,
    MENU_REGISTRY,
    METRICS,
    PG_POOL,
    REDIS,
    SETTINGS,
    USSD_HTTP,
    USSD_SERVICE,
)
from menus import bindings as core_bindings
from menus.actions import MenuBindings
from menus.analytics import StepLog
from menus.bindings import WithdrawalGate
from menus.catalogue import CATALOGUE
from menus.engine import Engine
from menus.registry import MenuRegistry
from menus.seed import DEFAULT_MENU_FILE, ensure_menu
from menus.service import UssdService
from menus.session import RedisSessionStore

GC_GEN0_THRESHOLD = 20_000  # Python's default is 700 allocations
SESSION_REDIS_CONNECT_TIMEOUT_S = 2.0


def session_redis(url: str) -> Redis:
    """The session store's connection settings: the store opens its own pipelined connection
    from them (`menus.redis_link`) and bounds each call itself."""
    return Redis.from_url(url, socket_connect_timeout=SESSION_REDIS_CONNECT_TIMEOUT_S)


async def _freeze_startup_objects(app: web.Application) -> None:
    # Everything allocated while starting (imported modules, compiled menus and their machines,
    # pools) lives as long as the process. Freezing it keeps the cyclic garbage collector from
    # rescanning it on every full collection, which cost a serving process ~20% of its CPU at
    # a few thousand USSD steps per second (bench/ussd.py); collecting the young generation
    # less often saved another ~5-10%. Only for a process that serves.
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, second, third)


def freeze_after_startup(app: web.Application) -> None:
    """For `gateway serve`: freeze the start-up heap once the app has started."""
    app.on_startup.append(_freeze_startup_objects)


def add_ussd(app: web.Application) -> None:
    """Routes and the (empty) bindings, at build time: tests may bind actions before start."""
    app[MENU_BINDINGS] = MenuBindings(CATALOGUE)
    http = UssdHttp(app[SETTINGS])
    http.add_routes(app)
    app[USSD_HTTP] = http
    app.cleanup_ctx.append(_ussd)


def _withdrawal_gate(app: web.Application) -> WithdrawalGate | None:
    """The device gate for customer-initiated withdrawals, on the agent runtime's live state
    (its latest fixes in Redis, its fence catalog); None when AGENT_WITHDRAWAL_GATE=off."""
    settings = app[SETTINGS]
    mode = settings.agent_withdrawal_gate
    if mode == "off":
        return None
    gate = DeviceGate(app[AGENTS].engine, gate_policy(settings))

    pool = app[PG_POOL]

    async def check(agent_code: str, customer: str, key: str) -> dict[str, Any]:
        return await gate_customer_withdrawal(
            gate, agent_code, time.time(), mode, db=pool, command_id=key, customer=customer
        )

    return check


async def _ussd(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    bindings = app[MENU_BINDINGS]
    core_bindings.bind(
        bindings,
        pool=app[PG_POOL],
        cipher=app[CIPHER],
        currency=settings.currency,
        country_code=settings.default_country_code,
        pin_rounds=settings.pin_bcrypt_rounds,
        loans=app[LOANS],
        withdrawal_gate=_withdrawal_gate(app),
    )
    engine = Engine(
        bindings,
        app[CIPHER],
        currency=settings.currency,
        country_code=settings.default_country_code,
    )
    registry = MenuRegistry(
        app[PG_POOL],
        app[REDIS],
        engine,
        prefix=settings.redis_prefix,
        default_service_code=settings.ussd_service_code,
    )
    await ensure_menu(app[PG_POOL], DEFAULT_MENU_FILE, bindings.specs)
    await registry.refresh()
    registry.start()
    steps = StepLog(app[PG_POOL])
    steps.start()
    sessions = session_redis(app[ENDPOINTS].redis_url)
    store = RedisSessionStore(sessions, settings.redis_prefix)
    service = UssdService(
        registry,
        engine,
        store,
        cipher=app[CIPHER],
        deadline_s=settings.ussd_deadline_s,
        steps=steps,
        observe=app[METRICS].observe_ussd,
    )
    app[MENU_REGISTRY] = registry
    app[USSD_SERVICE] = service
    app[USSD_HTTP].service = service
    try:
        yield
    finally:
        app[USSD_HTTP].service = None
        await registry.stop()
        await engine.drain()
        await steps.stop()
        await store.aclose()
        await sessions.aclose()
