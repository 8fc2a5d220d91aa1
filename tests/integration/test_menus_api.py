"""The menus admin API: drafts, validation, publish, rollback, simulation; hot reload on every
instance through Redis pub/sub; sessions keep the version they started on."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from config.settings import Settings
from gateway.keys import MENU_REGISTRY
from tests.helpers import assert_error, auth, new_msisdn, token_for
from tests.ussd_support import UssdEnv, start_env, ussd

__all__ = ["ussd"]

RELOAD_DEADLINE_S = 1.0


def small_menu(name: str, code: str, greeting: str = "Hi there") -> dict[str, Any]:
    return {
        "name": name,
        "service_code": code,
        "languages": ["en", "sw"],
        "start": "home",
        "screens": {
            "home": {
                "type": "menu",
                "text": {"en": greeting, "sw": "Habari"},
                "options": [
                    {"label": {"en": "Ask name", "sw": "Jina"}, "next": "ask"},
                    {"label": {"en": "Bye", "sw": "Kwaheri"}, "next": "bye"},
                ],
            },
            "ask": {
                "type": "input",
                "text": {"en": "Your name?", "sw": "Jina lako?"},
                "validate": {"kind": "length", "min_length": 2, "max_length": 20},
                "save": "name",
                "next": "hello",
            },
            "hello": {"type": "end", "text": {"en": "Hello {name}!", "sw": "Habari {name}!"}},
            "bye": {"type": "end", "text": {"en": "Bye.", "sw": "Kwaheri."}},
        },
    }


def unique_code() -> str:
    return f"*{secrets.randbelow(900) + 100}*{secrets.randbelow(9000) + 1000}#"


@pytest.fixture(scope="module")
async def token(ussd: UssdEnv) -> str:
    return await token_for(ussd.client)


async def _draft(env: UssdEnv, token: str, document: dict[str, Any]) -> dict[str, Any]:
    resp = await env.client.post("/api/v1/menus", json={"document": document}, headers=auth(token))
    body = await resp.json()
    assert resp.status in (200, 201), body
    return body  # type: ignore[no-any-return]


async def _publish(env: UssdEnv, token: str, menu_id: int) -> int:
    resp = await env.client.post(f"/api/v1/menus/{menu_id}/publish", headers=auth(token))
    body = await resp.json()
    assert resp.status == 201, body
    return int(body["version"])


async def test_draft_validate_publish_list_rollback(ussd: UssdEnv, token: str) -> None:
    name = f"t{secrets.token_hex(4)}"
    code = unique_code()
    document = small_menu(name, code)
    broken = copy.deepcopy(document)
    broken["screens"]["home"]["options"][0]["next"] = "nowhere"
    del broken["screens"]["bye"]["text"]["sw"]
    created = await _draft(ussd, token, broken)
    assert created["name"] == name and created["current_version"] is None
    assert "screens.home.option 1: no screen 'nowhere'" in created["problems"]
    menu_id = created["id"]

    resp = await ussd.client.post(f"/api/v1/menus/{menu_id}/validate", headers=auth(token))
    report = await resp.json()
    assert resp.status == 200 and report["ok"] is False
    assert "screens.bye.text: missing translation for 'sw'" in report["problems"]
    assert "screens.ask: unreachable from start" in report["problems"]

    resp = await ussd.client.post(f"/api/v1/menus/{menu_id}/publish", headers=auth(token))
    body = await assert_error(resp, 422, "MENU_INVALID")
    assert "screens.bye.text: missing translation for 'sw'" in body["details"]["problems"]

    updated = await _draft(ussd, token, document)
    assert updated["id"] == menu_id and updated["problems"] == []
    assert await _publish(ussd, token, menu_id) == 1
    resp = await ussd.client.post(f"/api/v1/menus/{menu_id}/publish", headers=auth(token))
    await assert_error(resp, 409, "UNCHANGED")

    await _draft(ussd, token, small_menu(name, code, greeting="Welcome back"))
    assert await _publish(ussd, token, menu_id) == 2

    resp = await ussd.client.get("/api/v1/menus", headers=auth(token))
    listed = {m["name"]: m for m in (await resp.json())["menus"]}
    assert listed[name]["current_version"] == 2
    assert [v["version"] for v in listed[name]["versions"]] == [1, 2]
    assert listed["default"]["current_version"] >= 1

    resp = await ussd.client.get(f"/api/v1/menus/{menu_id}/versions/1", headers=auth(token))
    v1 = await resp.json()
    assert v1["document"]["screens"]["home"]["text"]["en"] == "Hi there" and not v1["current"]

    resp = await ussd.client.post(f"/api/v1/menus/{menu_id}/rollback", json={}, headers=auth(token))
    assert (await resp.json())["current_version"] == 1
    s = ussd.session(new_msisdn(), code=code)
    assert (await s.dial()).startswith("CON Hi there")
    resp = await ussd.client.post(
        f"/api/v1/menus/{menu_id}/rollback", json={"version": 9}, headers=auth(token)
    )
    await assert_error(resp, 404, "VERSION_NOT_FOUND")
    resp = await ussd.client.post(
        f"/api/v1/menus/{menu_id}/rollback", json={"version": 1}, headers=auth(token)
    )
    await assert_error(resp, 409, "ALREADY_CURRENT")


async def test_menus_api_refuses_bad_requests(ussd: UssdEnv, token: str) -> None:
    client = ussd.client
    resp = await client.post(
        "/api/v1/menus", json={"document": {"screens": {}}}, headers=auth(token)
    )
    await assert_error(resp, 422, "VALIDATION_ERROR")
    resp = await client.post("/api/v1/menus", data="not json", headers=auth(token))
    await assert_error(resp, 400)
    resp = await client.post(
        "/api/v1/menus", json={"document": {}, "extra": 1}, headers=auth(token)
    )
    await assert_error(resp, 422, "VALIDATION_ERROR")
    resp = await client.post(
        "/api/v1/menus", json={"document": {"name": "Bad Name!"}}, headers=auth(token)
    )
    await assert_error(resp, 422, "MENU_INVALID")
    resp = await client.get("/api/v1/menus/999999", headers=auth(token))
    await assert_error(resp, 404, "MENU_NOT_FOUND")
    resp = await client.get("/api/v1/menus/abc", headers=auth(token))
    await assert_error(resp, 404)
    resp = await client.get("/api/v1/menus")
    await assert_error(resp, 401)
    viewer = await token_for(client, role="viewer")
    resp = await client.get("/api/v1/menus", headers=auth(viewer))
    assert resp.status == 200
    resp = await client.post("/api/v1/menus", json={"document": {}}, headers=auth(viewer))
    await assert_error(resp, 403, "FORBIDDEN")


async def test_service_code_clash_is_refused(ussd: UssdEnv, token: str) -> None:
    code = unique_code()
    first = await _draft(ussd, token, small_menu(f"a{secrets.token_hex(4)}", code))
    await _publish(ussd, token, first["id"])
    second = await _draft(ussd, token, small_menu(f"b{secrets.token_hex(4)}", code))
    resp = await ussd.client.post(f"/api/v1/menus/{second['id']}/publish", headers=auth(token))
    await assert_error(resp, 409, "SERVICE_CODE_TAKEN")


async def test_simulate_walks_the_draft_without_moving_money(ussd: UssdEnv, token: str) -> None:
    resp = await ussd.client.get("/api/v1/menus", headers=auth(token))
    default = next(m for m in (await resp.json())["menus"] if m["name"] == "default")
    path = f"/api/v1/menus/{default['id']}/simulate"
    calls = sum(ussd.calls.values())
    resp = await ussd.client.post(
        path, json={"inputs": ["1", "+254711000222", "500", "1", "1234"]}, headers=auth(token)
    )
    body = await resp.json()
    assert resp.status == 200, body
    screens = body["screens"]
    assert [s["screen"] for s in screens] == [
        "main",
        "send_phone",
        "send_amount",
        "send_confirm",
        "send_pin",
        "send_done",
    ]
    assert screens[-1]["end"] is True and screens[-1]["text"].startswith("KES 1,000,000.00 sent to")
    assert screens[0]["input"] is None and screens[-1]["input"] == "1234"
    assert sum(ussd.calls.values()) == calls  # the real actions never ran

    resp = await ussd.client.post(
        path,
        json={
            "inputs": ["1", "0711000222", "5", "1", "1234"],
            "outcomes": {"send_money": "INSUFFICIENT_FUNDS"},
            "language": "sw",
        },
        headers=auth(token),
    )
    screens = (await resp.json())["screens"]
    assert screens[-1]["screen"] == "insufficient" and "halitoshi" in screens[-1]["text"]

    resp = await ussd.client.post(
        path, json={"inputs": [], "customer": {"registered": False}}, headers=auth(token)
    )
    assert "1. Register" in (await resp.json())["screens"][0]["text"]
    resp = await ussd.client.post(path, json={"inputs": ["x" * 500]}, headers=auth(token))
    await assert_error(resp, 422)


async def test_menu_published_mid_session_keeps_the_running_session(
    ussd: UssdEnv, token: str
) -> None:
    name, code = f"m{secrets.token_hex(4)}", unique_code()
    created = await _draft(ussd, token, small_menu(name, code, greeting="Version one"))
    await _publish(ussd, token, created["id"])
    running = ussd.session(new_msisdn(), code=code)
    assert (await running.dial()).startswith("CON Version one")

    changed = small_menu(name, code, greeting="Version two")
    changed["screens"]["ask"]["text"]["en"] = "What do people call you?"
    await _draft(ussd, token, changed)
    await _publish(ussd, token, created["id"])

    assert await running.send("1") == "CON Your name?"  # still version one
    assert await running.send("Zawadi") == "END Hello Zawadi!"
    fresh = ussd.session(new_msisdn(), code=code)
    assert (await fresh.dial()).startswith("CON Version two")
    assert await fresh.send("1") == "CON What do people call you?"


@pytest.fixture(scope="module")
async def other_instance(settings: Settings) -> AsyncIterator[UssdEnv]:
    """A second gateway on the same PostgreSQL and Redis."""
    async for env in start_env(settings):
        yield env


async def test_publish_reaches_every_instance_within_a_second(
    ussd: UssdEnv, other_instance: UssdEnv, token: str, pg_pool: asyncpg.Pool
) -> None:
    name, code = f"h{secrets.token_hex(4)}", unique_code()
    created = await _draft(ussd, token, small_menu(name, code, greeting="Hot one"))
    await _publish(ussd, token, created["id"])
    registry = other_instance.app[MENU_REGISTRY]

    async def served(greeting: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < RELOAD_DEADLINE_S:
            menu = registry.current.get(name)
            if menu is not None and menu.doc.screens["home"].text["en"] == greeting:
                return time.monotonic() - started
            registry.reloaded.clear()
            # Wake on the next reload, or re-check shortly (polling with a deadline).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(registry.reloaded.wait(), 0.05)
        raise AssertionError(f"{greeting!r} not served within {RELOAD_DEADLINE_S}s")

    await served("Hot one")
    await _draft(ussd, token, small_menu(name, code, greeting="Hot two"))
    published_at = time.monotonic()
    await _publish(ussd, token, created["id"])
    await served("Hot two")
    assert time.monotonic() - published_at < RELOAD_DEADLINE_S
    s = other_instance.session(new_msisdn(), code=code)
    assert (await s.dial()).startswith("CON Hot two")
    assert (
        await pg_pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'menu.publish' AND target = $1", name
        )
        == 2
    )
