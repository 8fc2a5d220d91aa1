"""`create_app()`: the only composition root.

Every shared resource is built here, each in its own `cleanup_ctx` entry so it is torn down in
reverse order: engines (embedded when no URL names one) -> database (migrated) -> Redis ->
keys and tokens -> MQTT broker and channels. Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from config.settings import Settings, load_settings
from core.clock import SystemClock
from core.crypto import FieldCipher
from core.demo import seed_demo
from core.ledger import ensure_system_accounts
from core.loans.demo import seed_demo_loans
from core.loans.jobs import JobScheduler
from core.outbox import Dispatcher
from core.tasks import finish_task, stop_tasks
from gateway import db as dbmod
from gateway.admin import ROUTE_GROUPS
from gateway.admin.system import add_system_routes
from gateway.agents import add_agent_routes, agents_ctx, agents_mqtt_ctx
from gateway.api import add_routes
from gateway.auth import TokenService
from gateway.broker_auth import (
    GATEWAY_USER,
    embedded_broker_config,
    gateway_password,
    with_credentials,
)
from gateway.keys import (
    BACKGROUND,
    CIPHER,
    DISPATCHER,
    ENDPOINTS,
    ENGINE,
    LOANS,
    METRICS,
    PG_POOL,
    REDIS,
    ROUTE_SPECS,
    SENDERS,
    SESSIONMAKER,
    SETTINGS,
    TOKENS,
)
from gateway.metrics import Metrics
from gateway.middlewares import MIDDLEWARES
from gateway.secrets import resolve_secret
from gateway.senders import build_senders, close_senders
from gateway.services import mqtt_endpoint, storage_endpoints
from gateway.sms import sms_channel
from gateway.ussd import add_ussd
from menus.loans.jobs import loan_jobs
from menus.loans.service import LoanService
from menus.loans.setup import build_loan_service

log = logging.getLogger("gateway.app")

REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_MAX_CONNECTIONS = 256
# How often every instance looks for approvals whose disbursement never committed.
RESUME_EVERY_S = 30.0


def make_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        max_connections=REDIS_MAX_CONNECTIONS,
        health_check_interval=30,
    )


async def _engines(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with storage_endpoints(
        settings, wait_s=settings.startup_wait_s, say=log.warning
    ) as endpoints:
        app[ENDPOINTS] = endpoints
        yield


def _database(run_migrations: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        url = app[ENDPOINTS].database_url
        if run_migrations:
            await dbmod.migrate(url)
        limits_tz = app[SETTINGS].limits_timezone
        engine = dbmod.make_engine(url, limits_tz=limits_tz)
        pool = await dbmod.make_pool(url, limits_tz=limits_tz)
        app[ENGINE] = engine
        app[SESSIONMAKER] = dbmod.make_sessionmaker(engine)
        app[PG_POOL] = pool
        try:
            yield
        finally:
            await pool.close()
            await engine.dispose()

    return ctx


async def _redis(app: web.Application) -> AsyncIterator[None]:
    client = make_redis(app[ENDPOINTS].redis_url)
    app[REDIS] = client
    try:
        yield
    finally:
        await client.aclose()


async def _security(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    secret = resolve_secret(settings)
    app[CIPHER] = FieldCipher(secret)
    app[TOKENS] = TokenService(
        secret,
        app[REDIS],
        prefix=settings.redis_prefix,
        access_ttl_s=settings.access_token_ttl_s,
        refresh_ttl_s=settings.refresh_token_ttl_s,
    )
    yield


async def _loans(app: web.Application) -> AsyncIterator[None]:
    """The loan service on the banking core: money through its ledger functions, customers
    from its table, notices through its outbox. With demo data, a demo product and a funded
    loan fund (after _core has seeded the demo customers)."""
    settings = app[SETTINGS]
    app[LOANS] = build_loan_service(settings, SystemClock())
    if settings.demo_data:
        await seed_demo_loans(app[PG_POOL], currency=settings.currency)
    yield


async def _loan_jobs(app: web.Application) -> AsyncIterator[None]:
    """The daily loan jobs on every instance (each loan acted on once per day overall)."""
    settings = app[SETTINGS]
    if settings.loan_jobs_interval_s == 0:
        yield
        return
    service = app[LOANS]
    scheduler = JobScheduler(
        app[PG_POOL],
        loan_jobs(service, settings.loan_reminder_days),
        service.clock,
        interval_s=settings.loan_jobs_interval_s,
    )
    task = asyncio.create_task(scheduler.run_forever(), name="loan-jobs")
    app[BACKGROUND]["loan_jobs"] = task
    resume = asyncio.create_task(
        _resume_disbursements(service, app[PG_POOL]), name="loan-disbursement-resume"
    )
    app[BACKGROUND]["loan_disbursement_resume"] = resume
    try:
        yield
    finally:
        await stop_tasks([task, resume], "loan jobs")


async def _resume_disbursements(service: LoanService, pool: asyncpg.Pool) -> None:
    """Approvals whose disbursement never committed get their loan within about a minute,
    whether or not the customer asks again (LoanService.resume_disbursements)."""
    while True:
        try:
            await service.resume_disbursements(pool)
        except Exception:
            log.exception("resuming loan disbursements failed")
        await asyncio.sleep(RESUME_EVERY_S)


DISPATCHER_STOP_TIMEOUT_S = 10.0


async def _core(app: web.Application) -> AsyncIterator[None]:
    """The banking core: system accounts for the currency, demo data when asked, and the
    outbox dispatcher (safe with several instances: rows are claimed with SKIP LOCKED)."""
    settings = app[SETTINGS]
    pool = app[PG_POOL]
    await ensure_system_accounts(pool, settings.currency)
    if settings.demo_data:
        await seed_demo(
            pool, app[CIPHER], currency=settings.currency, pin_rounds=settings.pin_bcrypt_rounds
        )
    senders = build_senders(settings, pool)
    app[SENDERS] = senders
    app[DISPATCHER] = Dispatcher(pool, senders)
    stop = asyncio.Event()
    task = asyncio.create_task(app[DISPATCHER].run(stop), name="outbox-dispatcher")
    try:
        yield
    finally:
        stop.set()
        # Not wait_for: on its timeout it awaits the cancelled task without a deadline.
        await finish_task(task, "outbox dispatcher", DISPATCHER_STOP_TIMEOUT_S)
        await close_senders(senders)


async def _mqtt(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # The embedded broker checks device logins and topics (issue 6); the gateway logs in to it.
    secret = resolve_secret(settings)
    auth = embedded_broker_config(secret, app[ENDPOINTS].database_url)
    async with mqtt_endpoint(settings, auth) as url:
        embedded = settings.mqtt_url is None
        password = gateway_password(secret)
        app[ENDPOINTS].mqtt_url = with_credentials(url, GATEWAY_USER, password) if embedded else url
        yield


def create_app(
    settings: Settings | None = None,
    *,
    run_migrations: bool = True,
    start_channels: bool = True,
) -> web.Application:
    """Build the application. `start_channels=False` leaves out the MQTT broker and channel
    workers (tests of the admin API alone)."""
    settings = settings or load_settings()
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[BACKGROUND] = {}
    app.cleanup_ctx.extend([_engines, _database(run_migrations), _redis, _security])
    app.cleanup_ctx.append(_core)
    app.cleanup_ctx.append(_loans)
    app.cleanup_ctx.append(agents_ctx)
    add_ussd(app)  # USSD is always on, like the admin API
    if start_channels:
        app.cleanup_ctx.append(_mqtt)
        app.cleanup_ctx.append(agents_mqtt_ctx)
        app.cleanup_ctx.append(_loan_jobs)
    if start_channels and settings.smpp_binds:
        app.cleanup_ctx.append(sms_channel)
    add_system_routes(app)
    add_agent_routes(app)
    app[ROUTE_SPECS] = add_routes(app, ROUTE_GROUPS)
    return app
