"""Every typed `web.AppKey` (and request key) in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from channels.sms.channel import SmppSender, SmsChannel
from channels.ussd.http import UssdHttp
from config.settings import Settings
from core.crypto import FieldCipher
from core.identity import Principal
from core.outbox import Dispatcher, Sender
from gateway.auth import TokenService
from gateway.metrics import Metrics
from gateway.services import Endpoints
from menus.actions import MenuBindings
from menus.loans.service import LoanService
from menus.pending import PendingSweeper
from menus.registry import MenuRegistry
from menus.service import UssdService

SETTINGS = web.AppKey("settings", Settings)
ENDPOINTS = web.AppKey("endpoints", Endpoints)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])
PG_POOL = web.AppKey("pg_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
CIPHER = web.AppKey("cipher", FieldCipher)
TOKENS = web.AppKey("tokens", TokenService)
METRICS = web.AppKey("metrics", Metrics)
ROUTE_SPECS = web.AppKey("route_specs", list[Any])
BACKGROUND = web.AppKey("background", dict[str, Any])
LOANS = web.AppKey("loans", LoanService)
MENU_BINDINGS = web.AppKey("menu_bindings", MenuBindings)
MENU_REGISTRY = web.AppKey("menu_registry", MenuRegistry)
USSD_SERVICE = web.AppKey("ussd_service", UssdService)
USSD_HTTP = web.AppKey("ussd_http", UssdHttp)
# Takes over promised late results whose instance is gone (menus.pending).
USSD_PENDING = web.AppKey("ussd_pending", PendingSweeper)
SMS_CHANNEL = web.AppKey("sms_channel", SmsChannel)  # only when SMPP_URL names binds
SMS_SENDER = web.AppKey("sms_sender", SmppSender)
# Outbox senders by channel ("sms", "email", "push", "log"): a channel's cleanup_ctx entry
# replaces the logging default with its real sender; the dispatcher reads this dict live.
SENDERS = web.AppKey("senders", dict[str, Sender])
DISPATCHER = web.AppKey("dispatcher", Dispatcher)

# Request-scoped values (request[...]).
PRINCIPAL_KEY = web.RequestKey("principal", Principal)
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# Set on a request aiohttp's parser refused (gateway.http_server): the kind of refusal. Such a
# request has no method or path of its own (aiohttp stands a placeholder "GET /" in for it).
PARSER_REFUSAL_KEY = web.RequestKey("parser_refusal", str)

# Agent devices (issue 6); gateway.agents imports this module, so its type is named lazily.
if TYPE_CHECKING:
    from gateway.agents import AgentRuntime
AGENTS: web.AppKey[AgentRuntime] = web.AppKey("agents")
