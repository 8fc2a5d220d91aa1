"""Liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.api import ApiRoutes, json_response, openapi_document
from gateway.keys import AGENTS, METRICS, PG_POOL, REDIS, ROUTE_SPECS
from gateway.metrics import CONTENT_TYPE_LATEST

routes = ApiRoutes(tag="system")
READY_TIMEOUT_S = 2.0
VERSION = "0.1.0"


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, READY_TIMEOUT_S)
    except Exception as exc:
        return name, f"down: {type(exc).__name__}"
    return name, "ok"


def _mqtt_check(app: web.Application) -> str | None:
    """The agents' MQTT channel, when this process runs it: connected and subscribed."""
    runtime = app.get(AGENTS)
    service = None if runtime is None else runtime.mqtt
    if service is None:
        return None
    if not service.connected:
        return "down: not connected"
    return "ok" if service.subscribed else "down: not subscribed"


async def readyz(request: web.Request) -> web.StreamResponse:
    results = await asyncio.gather(
        _check("postgresql", request.app[PG_POOL].fetchval("SELECT 1")),
        _check("redis", request.app[REDIS].ping()),
    )
    checks = dict(results)
    mqtt = _mqtt_check(request.app)
    if mqtt is not None:
        checks["mqtt"] = mqtt
    ok = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    await request.app[METRICS].refresh()
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/api/v1/openapi.json", public=True, summary="This document")
async def openapi(request: web.Request) -> web.StreamResponse:
    return json_response(openapi_document(request.app[ROUTE_SPECS], VERSION))


def add_system_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
