"""USSD assembly for `create_app()`: the callback routes, the engine, the menus and the sessions.

USSD is always on (like the admin API). At start-up: bind the actions (`menus.bindings`), publish
the shipped default menu if there is none yet, load the current menus, listen for publications,
keep this instance's liveness key fresh (`menus.liveness`: other instances take the claims of
a crashed one for dead once its key expires), sweep promised late results whose instance is
gone (`menus.pending`), and hand the service to the callback handler. At
shutdown: stop listening and sweeping, let claimed steps and actions that outlived their
deadline finish (a late action still unsettled leaves its pending record), try once more the
last session writes of steps that Redis did not take (`menus.final_writes`), delete the
liveness key, flush the analytics.
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
    USSD_PENDING,
    USSD_SERVICE,
)
from menus import bindings as core_bindings
from menus.actions import MenuBindings
from menus.analytics import StepLog
from menus.bindings import WithdrawalGate
from menus.catalogue import CATALOGUE
from menus.engine import Engine
from menus.liveness import Liveness
from menus.pending import PendingStore, PendingSweeper
from menus.registry import MenuRegistry
from menus.seed import DEFAULT_MENU_FILE, ensure_menu
from menus.service import UssdService
from menus.session import RedisSessionStore

GC_GEN0_THRESHOLD = 20_000  # Python's default is 700 allocations
SESSION_REDIS_CONNECT_TIMEOUT_S = 2.0
STEP_DRAIN_MARGIN_S = 3.0  # on top of the deadline: a claimed step's final write at a stop


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
        late_limit_s=settings.ussd_late_result_limit_s,
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
    liveness = Liveness(store.link, settings.redis_prefix, ttl_s=settings.ussd_liveness_ttl_s)
    await liveness.start()
    engine.pending = PendingStore(store.link, settings.redis_prefix, liveness.instance)
    assert bindings.settler is not None  # core_bindings.bind sets one
    sweeper = PendingSweeper(engine.pending, liveness, bindings.settler)
    sweeper.start()
    service = UssdService(
        registry,
        engine,
        store,
        cipher=app[CIPHER],
        deadline_s=settings.ussd_deadline_s,
        steps=steps,
        observe=app[METRICS].observe_ussd,
        liveness=liveness,
        on_takeover=app[METRICS].observe_takeover,
        on_final_write=app[METRICS].observe_final_write,
    )
    app[MENU_REGISTRY] = registry
    app[USSD_SERVICE] = service
    app[USSD_PENDING] = sweeper
    app[USSD_HTTP].service = service
    try:
        yield
    finally:
        app[USSD_HTTP].service = None
        await registry.stop()
        await sweeper.stop()
        # The key goes only once no claimed step (nor late action) runs here: deleted under a
        # running step, it would let another instance run that step again. Otherwise it
        # expires by its TTL.
        idle = await service.drain(settings.ussd_deadline_s + STEP_DRAIN_MARGIN_S)
        # Steps whose last write Redis did not take: once more now (their claims are left
        # otherwise, dead for other instances as soon as the liveness key goes).
        await service.close()
        await engine.drain()
        await liveness.stop(delete=idle)
        await steps.stop()
        await store.aclose()
        await sessions.aclose()
