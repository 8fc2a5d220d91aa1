"""The outbox's push channel (FCM through firebase-admin) against a local stand-in for Google
(tests/fcm_peer.py: the OAuth2 token endpoint and FCM v1 `messages:send` on 127.0.0.1): tokens,
topics and installation ids delivered with their title, body and data; each FCM error mapped
to a retry or a dead letter with FCM's reason; bad recipients and one-time codes refused with
nothing sent; and breach alerts end to end through the real Dispatcher and PostgreSQL outbox."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import firebase_admin
import pytest
from firebase_admin import messaging
from redis.asyncio import Redis

from channels.base import SendFailed
from channels.push import BODY_MAX_BYTES, BODY_MAX_CHARS, SENSITIVE_KINDS, PushSender, clip
from config.settings import Settings
from core.outbox import Dispatcher, DispatchPolicy, OutboundMessage, enqueue
from gateway.app import create_app
from gateway.embedded import free_port
from gateway.keys import SENDERS
from gateway.senders import build_senders, close_senders
from tests.conftest import running_app
from tests.fcm_peer import (  # noqa: F401 (fixtures)
    GOOGLE_TOKEN_AUDIENCE,
    PROJECT,
    FakeFcm,
    fake_fcm,
    fcm_fixture,
    new_key,
    push_settings_fixture,
)
from tests.integration.agent_support import outbox_rows, walk_out, zoned_agent

FAST = DispatchPolicy(poll_interval_s=0.01, backoff_base_s=0.0, backoff_max_s=0.0, max_attempts=3)
# The shape of a real registration token: an instance id, a colon, a long base64url tail.
TOKEN = "cXk4V2pGQkNSdW1:APA91b" + "F" * 140
OTHER_TOKEN = "dGhpcyBpcyBhbm9:APA91b" + "G" * 140


@pytest.fixture
async def sender(push_settings: Settings) -> AsyncIterator[PushSender]:
    senders = build_senders(push_settings)
    push = senders["push"]
    assert isinstance(push, PushSender)
    try:
        yield push
    finally:
        await close_senders(senders)


def message(
    recipient: str, body: str = "hello", kind: str = "test", language: str = "en", id: int = 7
) -> OutboundMessage:
    return OutboundMessage(id, "push", recipient, body, kind, 0, language)


async def test_push_sender_only_with_firebase_credentials(
    settings: Settings, push_settings: Settings
) -> None:
    assert "push" not in build_senders(replace(settings, firebase_credentials=None))
    senders = build_senders(push_settings)
    assert isinstance(senders["push"], PushSender)
    assert senders["push"].project_id == PROJECT
    await close_senders(senders)


async def test_a_token_gets_the_notification_title_body_and_data(
    sender: PushSender, fcm: FakeFcm
) -> None:
    first = await sender.send(message(TOKEN, "Agent A1 left its zone", "agent_breach", "sw", 41))
    second = await sender.send(message(OTHER_TOKEN, "second", id=42))
    assert (first, second) == (f"projects/{PROJECT}/messages/1", f"projects/{PROJECT}/messages/2")
    assert [s["message"] for s in fcm.sends] == [
        {
            "token": TOKEN,
            "notification": {"title": "Wakala nje ya eneo lake", "body": "Agent A1 left its zone"},
            "data": {"kind": "agent_breach", "outbox_id": "41"},
            # An alert wakes the phone and is dropped after an hour undelivered.
            "android": {"priority": "high", "ttl": "3600s"},
            "apns": {"headers": {"apns-priority": "10"}},
        },
        {
            "token": OTHER_TOKEN,
            "notification": {"title": "Notification", "body": "second"},
            "data": {"kind": "test", "outbox_id": "42"},
            "android": {"priority": "normal", "ttl": "86400s"},
            "apns": {"headers": {"apns-priority": "5"}},
        },
    ]
    # Real sends, never FCM's dry run; one OAuth exchange, its token reused.
    assert all("validate_only" not in s for s in fcm.sends)
    [claims] = fcm.token_requests
    assert claims["aud"] == GOOGLE_TOKEN_AUDIENCE
    assert "https://www.googleapis.com/auth/cloud-platform" in claims["scope"].split()


async def test_a_topic_and_an_installation_id(sender: PushSender, fcm: FakeFcm) -> None:
    await sender.send(message("topic:agent-alerts", "to every staff phone", "agent_breach"))
    await sender.send(message("fid:fEjqR9gk2Bq0pSvXZqH1tY", "to one installation"))
    assert [(s["message"].get("topic"), s["message"].get("fid")) for s in fcm.sends] == [
        ("agent-alerts", None),
        (None, "fEjqR9gk2Bq0pSvXZqH1tY"),
    ]
    assert fcm.sends[0]["message"]["notification"]["title"] == "Agent outside its zone"


@pytest.mark.parametrize(
    ("code", "temporary", "reason"),
    [("UNREGISTERED", False, "FCM UNREGISTERED (HTTP 404): fake UNREGISTERED for this target"),
     ("SENDER_ID_MISMATCH", False, "FCM SENDER_ID_MISMATCH (HTTP 403): fake SENDER_ID_MISMATCH"),
     ("INVALID_ARGUMENT", False, "FCM INVALID_ARGUMENT (HTTP 400): fake INVALID_ARGUMENT"),
     ("THIRD_PARTY_AUTH_ERROR", False, "FCM THIRD_PARTY_AUTH_ERROR (HTTP 401): fake"),
     ("QUOTA_EXCEEDED", True, "FCM QUOTA_EXCEEDED (HTTP 429): fake QUOTA_EXCEEDED"),
     ("UNAVAILABLE", True, "FCM UNAVAILABLE (HTTP 503): fake UNAVAILABLE for this target"),
     ("INTERNAL", True, "FCM INTERNAL (HTTP 500): fake INTERNAL for this target")],
)  # fmt: skip
async def test_fcm_errors_are_retried_or_dead_lettered(
    sender: PushSender, fcm: FakeFcm, code: str, temporary: bool, reason: str
) -> None:
    fcm.fail(TOKEN, code, code, code)
    with pytest.raises(SendFailed) as failed:
        await sender.send(message(TOKEN))
    assert (failed.value.temporary, failed.value.message[: len(reason)]) == (temporary, reason)
    # One request per attempt: firebase-admin's own retries (500/503) are off, the outbox
    # retries with its backoff instead. A 401 is the exception: google-auth takes it for an
    # expired token, signs in again and repeats the request, twice.
    assert (len(fcm.refused), fcm.sends) == (3 if code == "THIRD_PARTY_AUTH_ERROR" else 1, [])


@pytest.mark.parametrize(
    "recipient",
    ["", " ", "topic:", "topic:agent alerts", "topic:a/b", "topic:alerts\n", "topic:" + "t" * 901,
     "tok en", "tok\ten", "token\r\n", "\x00token", "tökén", "x" * 4097, "fid:", "fid:a b"],
)  # fmt: skip
async def test_bad_recipients_are_refused_before_any_request(
    sender: PushSender, fcm: FakeFcm, recipient: str
) -> None:
    with pytest.raises(SendFailed) as failed:
        await sender.send(message(recipient))
    assert failed.value.temporary is False
    assert failed.value.message.startswith("not an FCM ")
    assert (fcm.token_requests, fcm.sends, fcm.refused) == ([], [], [])


@pytest.mark.parametrize("kind", sorted(SENSITIVE_KINDS))
async def test_one_time_codes_and_pins_are_never_pushed(
    sender: PushSender, fcm: FakeFcm, kind: str
) -> None:
    with pytest.raises(SendFailed) as failed:
        await sender.send(message(TOKEN, "Your code is 493817", kind))
    assert failed.value.temporary is False
    assert failed.value.message == (
        f"push does not carry {kind} messages: a notification shows its text on a locked "
        "screen (send it by sms)"
    )
    assert "493817" not in failed.value.message
    assert (fcm.token_requests, fcm.sends) == ([], [])


async def test_a_long_body_is_cut_between_characters(sender: PushSender, fcm: FakeFcm) -> None:
    await sender.send(message(TOKEN, "a" * 4000))
    await sender.send(message(TOKEN, "ü€😀" * 1000))
    latin, wide = (s["message"]["notification"]["body"] for s in fcm.sends)
    assert len(latin) == BODY_MAX_CHARS and latin == "a" * (BODY_MAX_CHARS - 1) + "…"
    assert len(wide.encode()) <= BODY_MAX_BYTES and wide.endswith("…")
    assert ("ü€😀" * 1000).startswith(wide[:-1])
    assert clip("short") == "short"


async def refused(push: PushSender) -> SendFailed:
    """What a sender of its own answers one message it cannot send (closed afterwards)."""
    try:
        with pytest.raises(SendFailed) as failed:
            await push.send(message(TOKEN))
    finally:
        await push.aclose()
    return failed.value


async def test_refused_credentials_are_permanent(
    settings: Settings, fcm: FakeFcm, tmp_path: Path
) -> None:
    """A key Google does not know (deleted in the console): the token endpoint says
    invalid_grant, and no message goes out."""
    stranger = fcm.account(tmp_path / "old-key.json")
    fcm.key = new_key()  # the fake now checks signatures against another key
    failed = await refused(PushSender(stranger, endpoint=fcm.base_url))
    assert failed.temporary is False
    assert failed.message.startswith("OAuth token refused: ")
    assert "invalid_grant" in failed.message
    assert fcm.sends == fcm.refused == []


async def test_an_endpoint_that_is_down_is_temporary(fcm: FakeFcm, tmp_path: Path) -> None:
    account = fcm.account(tmp_path / "service-account.json")
    failed = await refused(PushSender(account, endpoint=f"http://127.0.0.1:{free_port()}"))
    assert failed.temporary is True
    assert "FCM UNAVAILABLE" in failed.message
    assert len(fcm.token_requests) == 1  # signed in, then found nothing at the endpoint


async def test_without_fcm_endpoint_messages_go_to_google(fcm: FakeFcm, tmp_path: Path) -> None:
    """Only the URL is read here (nothing is sent): the override keeps Google's own default."""
    push = PushSender(fcm.account(tmp_path / "sa.json"))
    try:
        service = messaging._get_messaging_service(push._app)
        assert service._fcm_url == (
            f"https://fcm.googleapis.com/v1/projects/{PROJECT}/messages:send"
        )
    finally:
        await push.aclose()


async def test_closing_removes_the_firebase_app(fcm: FakeFcm, tmp_path: Path) -> None:
    push = PushSender(fcm.account(tmp_path / "sa.json"), endpoint=fcm.base_url)
    name = push._app.name
    assert firebase_admin.get_app(name) is push._app
    await push.send(message(TOKEN))
    await push.aclose()
    with pytest.raises(ValueError, match="does not exist"):
        firebase_admin.get_app(name)


async def test_the_app_registers_push_and_releases_it_on_shutdown(push_settings: Settings) -> None:
    app = create_app(push_settings, run_migrations=False, start_channels=False)
    async with running_app(app):
        push = app[SENDERS]["push"]
        assert isinstance(push, PushSender)
        name = push._app.name
        assert firebase_admin.get_app(name) is push._app
    with pytest.raises(ValueError, match="does not exist"):
        firebase_admin.get_app(name)


# --- End to end: the outbox's rows, the real dispatcher, PostgreSQL ------------------------


async def status(pool: asyncpg.Pool, message_id: int) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT status, attempts, last_error, provider_id FROM outbox WHERE id = $1", message_id
    )
    return dict(row)


async def dispatch_until(
    dispatcher: Dispatcher, pool: asyncpg.Pool, message_id: int, state: str
) -> dict[str, Any]:
    """Dispatch until the row is in `state` (other tests' push rows may be claimed too)."""
    deadline = time.monotonic() + 10
    while (row := await status(pool, message_id))["status"] != state:
        assert time.monotonic() < deadline, row
        await dispatcher.dispatch_once()
    return row


async def test_breach_alerts_delivered_by_push(
    push_settings: Settings,
    sender: PushSender,
    redis: Redis,
    pg_pool: asyncpg.Pool,
    fcm: FakeFcm,
) -> None:
    runtime, agent, _ = await zoned_agent(
        push_settings,
        redis,
        pg_pool,
        agent_alert_channel="push",
        agent_alert_recipients=("topic:agent-alerts", TOKEN),
    )
    assert [e.kind for e in await walk_out(runtime, agent)][-1] == "breach"
    alerts = await outbox_rows(pg_pool, agent)
    assert [(a["channel"], a["recipient"]) for a in alerts] == [
        ("push", "topic:agent-alerts"),
        ("push", TOKEN),
    ]
    dispatcher = Dispatcher(pg_pool, {"push": sender}, FAST)
    rows = [await dispatch_until(dispatcher, pg_pool, a["id"], "sent") for a in alerts]
    mine = {s["message"]["data"]["outbox_id"]: s["message"] for s in fcm.sends}
    for alert, row in zip(alerts, rows, strict=True):
        sent = mine[str(alert["id"])]
        assert row["provider_id"].startswith(f"projects/{PROJECT}/messages/")
        assert sent["notification"] == {"title": "Agent outside its zone", "body": alert["body"]}
        assert sent["data"] == {"kind": "agent_breach", "outbox_id": str(alert["id"])}
    assert mine[str(alerts[0]["id"])]["topic"] == "agent-alerts"
    assert mine[str(alerts[1]["id"])]["token"] == TOKEN


async def test_an_unregistered_token_is_dead_lettered_and_a_503_retried(
    sender: PushSender, pg_pool: asyncpg.Pool, fcm: FakeFcm
) -> None:
    fcm.fail(TOKEN, "UNREGISTERED")
    fcm.fail(OTHER_TOKEN, "UNAVAILABLE")
    gone = await enqueue(pg_pool, channel="push", recipient=TOKEN, body="gone", kind="test")
    busy = await enqueue(pg_pool, channel="push", recipient=OTHER_TOKEN, body="busy", kind="test")
    bad = await enqueue(pg_pool, channel="push", recipient="admins group", body="x", kind="test")
    dispatcher = Dispatcher(pg_pool, {"push": sender}, FAST)

    dead = await dispatch_until(dispatcher, pg_pool, gone, "dead")
    assert (dead["attempts"], dead["provider_id"]) == (1, None)
    assert dead["last_error"].startswith("FCM UNREGISTERED (HTTP 404): ")
    sent = await dispatch_until(dispatcher, pg_pool, busy, "sent")
    assert sent["attempts"] == 2  # the 503, then the send
    assert sent["provider_id"].startswith(f"projects/{PROJECT}/messages/")
    refused = await dispatch_until(dispatcher, pg_pool, bad, "dead")
    assert refused["last_error"].startswith("not an FCM registration token")
    assert [s["message"]["data"]["outbox_id"] for s in fcm.sends].count(str(busy)) == 1
    assert str(gone) not in [s["message"]["data"]["outbox_id"] for s in fcm.sends]
