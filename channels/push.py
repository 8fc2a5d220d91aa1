"""Push notifications for the core outbox over Firebase Cloud Messaging (firebase-admin),
registered as the outbox's `push` channel when `FIREBASE_CREDENTIALS` is set.

A recipient is `topic:<name>` (an FCM topic, e.g. the staff app's `agent-alerts`),
`fid:<id>` (a Firebase installation id) or a bare device registration token. Each outbox row
is one FCM v1 `messages:send` call: a notification whose title follows the message kind (in
the message's language) and whose body is the message text, plus `data` with `kind` and
`outbox_id` so an app can route it, and the kind's `Delivery` for Android and APNs (a breach
alert high priority and kept an hour, anything else normal priority and kept a day). The
provider id is FCM's message name (`projects/<project>/messages/<id>`).

firebase-admin's `messaging.send` is blocking (requests; a token refresh through google-auth
too), so it runs in this sender's own small thread pool, not the event loop's default one
(PIN hashing uses that). Its async API is not used: it refreshes tokens synchronously inside
the event loop, and its service method defaults to `dry_run=True`. Every call passes
`dry_run=False` explicitly.

Failures map to `SendFailed`: an unregistered token, a sender id mismatch, an invalid
argument, refused credentials or a recipient that is not a token or topic are permanent (dead
letter, with FCM's error code and message); quota, unavailable, internal, deadline and
transport errors are temporary (retried by the outbox with backoff).

One-time codes and PINs (SENSITIVE_KINDS) are refused for good: a notification shows its text
on a locked phone's screen and passes through Google, so such a message belongs on SMS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import firebase_admin
import requests
from firebase_admin import credentials, exceptions, messaging
from google.auth import exceptions as auth_exceptions

from channels.base import SENSITIVE_KINDS, OutboundLike, SendFailed
from core import agent_messages

DEFAULT_ENDPOINT = "https://fcm.googleapis.com"
# Each HTTP call's limit (the token exchange's too). A token exchange plus a send stay within
# the dispatcher's send timeout (15 s), so a call normally ends with FCM's answer before the
# dispatcher stops waiting (a thread cannot be cancelled: one that outlives it may still send,
# and the outbox's retry sends again; delivery is at least once).
FCM_TIMEOUT_S = 7.0
SEND_THREADS = 4
MAX_TOKEN_CHARS = 4096
MAX_TOPIC_CHARS = 900
# A notification is shown, not read: a long outbox body is cut (FCM refuses payloads over
# 4096 bytes; this leaves room for the title and data).
BODY_MAX_CHARS = 1000
BODY_MAX_BYTES = 3000
ELLIPSIS = "…"
# Outbox kind -> the core.agent_messages text of its title (in the message's language).
TITLES = {
    "agent_breach": "breach_subject",
}
DEFAULT_TITLE = "Notification"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How FCM and APNs treat a message: `priority` high wakes a dozing phone at once (FCM
    asks that it be kept for what a person must see now); `ttl_s` is how long an undelivered
    one is kept before it is dropped (FCM's default is four weeks)."""

    priority: str
    ttl_s: int


# A breach alert is urgent and stale within the hour (the admin map shows where the agent is
# now); anything else can wait for the phone's next wake-up, and is moot after a day.
URGENT = Delivery("high", 3_600)
ROUTINE = Delivery("normal", 86_400)
DELIVERY = {"agent_breach": URGENT}

# FCM's own rule for a topic name (firebase-admin checks the same before sending).
_TOPIC = re.compile(r"[A-Za-z0-9\-_.~%]+")
# A token or installation id: printable ASCII without spaces (no whitespace or control chars).
_TOKEN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class Target:
    """Where one message goes: `kind` is topic, fid or token."""

    kind: str
    value: str


def parse_recipient(recipient: str) -> Target:
    """`topic:<name>`, `fid:<installation id>` or a registration token; SendFailed (permanent)
    naming the problem otherwise."""
    if recipient.startswith("topic:"):
        name = recipient.removeprefix("topic:")
        if not 1 <= len(name) <= MAX_TOPIC_CHARS or not _TOPIC.fullmatch(name):
            raise SendFailed(
                f"not an FCM topic name (letters, digits, - _ . ~ %): {recipient[:80]!r}",
                temporary=False,
            )
        return Target("topic", name)
    kind, value = "token", recipient
    if recipient.startswith("fid:"):
        kind, value = "fid", recipient.removeprefix("fid:")
    if not 1 <= len(value) <= MAX_TOKEN_CHARS or not _TOKEN.fullmatch(value):
        raise SendFailed(
            f"not an FCM {'installation id' if kind == 'fid' else 'registration token'} "
            f"(printable, no spaces, 1-{MAX_TOKEN_CHARS} characters): {recipient[:80]!r}",
            temporary=False,
        )
    return Target(kind, value)


def _title(kind: str, language: str = "en") -> str:
    name = TITLES.get(kind)
    return DEFAULT_TITLE if name is None else agent_messages.render(name, language)


def clip(text: str, max_chars: int = BODY_MAX_CHARS, max_bytes: int = BODY_MAX_BYTES) -> str:
    """`text`, or its start plus an ellipsis within both limits (cut between characters, so
    never inside a UTF-8 sequence)."""
    if len(text) <= max_chars and len(text.encode()) <= max_bytes:
        return text
    room = max_bytes - len(ELLIPSIS.encode())
    # Bytes cut inside a character's UTF-8 sequence are dropped by the decode.
    cut = text[: max_chars - 1].encode()[:room].decode("utf-8", "ignore")
    return cut.rstrip() + ELLIPSIS


def _use_endpoint(app: firebase_admin.App, endpoint: str) -> None:
    """Make `app` send to `endpoint` (FCM_ENDPOINT), and leave retries to the outbox.

    firebase-admin has no option for either. `_MessagingService` (checked against 7.7) formats
    its class constant FCM_URL (https://fcm.googleapis.com/v1/projects/{0}/messages:send)
    into the instance attribute `_fcm_url` when an app's messaging service is first built, and
    its requests session retries inside one call (4 times on 500/503 with backoff and
    Retry-After, once on a read error: a POST sent twice, and a worker thread held past the
    dispatcher's timeout). This builds the service now, before any send, and changes only this
    app's instance: its `_fcm_url`, and a non-retrying adapter mounted for the endpoint (the
    longest prefix wins in requests). Other apps in the process keep theirs. If a release
    renames either, this fails at start with a clear error instead of silently sending to
    Google or retrying. The OAuth token exchange needs nothing here: google-auth posts to the
    service account's `token_uri`, which the JSON file names.
    """
    service: Any = messaging._get_messaging_service(app)
    expected = messaging._MessagingService.FCM_URL.format(app.project_id)
    client = getattr(service, "_client", None)
    session = getattr(client, "session", None)
    if getattr(service, "_fcm_url", None) != expected or not isinstance(session, requests.Session):
        raise RuntimeError(
            f"firebase-admin {firebase_admin.__version__} no longer keeps the FCM URL in "
            "_MessagingService._fcm_url and its session in _client.session: "
            "channels.push._use_endpoint needs updating"
        )
    service._fcm_url = f"{endpoint}/v1/projects/{app.project_id}/messages:send"
    session.mount(endpoint, requests.adapters.HTTPAdapter(max_retries=0))


_FCM_CODES: dict[type[Exception], str] = {
    messaging.UnregisteredError: "UNREGISTERED",
    messaging.SenderIdMismatchError: "SENDER_ID_MISMATCH",
    messaging.QuotaExceededError: "QUOTA_EXCEEDED",
    messaging.ThirdPartyAuthError: "THIRD_PARTY_AUTH_ERROR",
}
# A retry cannot help: the token is gone, belongs to another sender, the message or recipient
# is malformed, or the credentials are refused (replay the dead letters once they are fixed).
# The token itself is dead for this sender: nothing sent to it again can arrive.
_TOKEN_GONE: tuple[type[Exception], ...] = (
    messaging.UnregisteredError,
    messaging.SenderIdMismatchError,
)
_PERMANENT: tuple[type[Exception], ...] = (
    messaging.UnregisteredError,
    messaging.SenderIdMismatchError,
    messaging.ThirdPartyAuthError,
    exceptions.InvalidArgumentError,
    exceptions.NotFoundError,
    exceptions.PermissionDeniedError,
    exceptions.UnauthenticatedError,
    exceptions.FailedPreconditionError,
    exceptions.OutOfRangeError,
)


def _failure(exc: exceptions.FirebaseError) -> SendFailed:
    """FCM's answer as a SendFailed. Quota, unavailable, internal, deadline, transport and
    anything unknown are temporary: the outbox's attempt limit bounds them."""
    code = next((c for t, c in _FCM_CODES.items() if isinstance(exc, t)), str(exc.code))
    response = exc.http_response
    status = f" (HTTP {response.status_code})" if response is not None else ""
    return SendFailed(f"FCM {code}{status}: {exc}", temporary=not isinstance(exc, _PERMANENT))


log = logging.getLogger(__name__)

# Told (token, reason) when FCM says a registration token is gone (core.push_devices disables
# the admin's phone that had it).
TokenGone = Callable[[str, str], Awaitable[object]]


class PushSender:
    """Sends one outbox message as one FCM notification; returns FCM's message name.
    `on_token_gone`, when set, hears of every token FCM reports unregistered or bound to
    another sender (the message is dead-lettered all the same)."""

    on_token_gone: TokenGone | None = None

    def __init__(
        self,
        credentials_file: Path | str,
        *,
        project_id: str | None = None,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout_s: float = FCM_TIMEOUT_S,
    ) -> None:
        options: dict[str, Any] = {"httpTimeout": timeout_s}
        if project_id:
            options["projectId"] = project_id
        # An App of its own (firebase-admin keeps apps in a process-wide registry by name):
        # nothing else in the process shares or replaces its credentials or endpoint.
        self._app = firebase_admin.initialize_app(
            credentials.Certificate(str(credentials_file)),
            options,
            name=f"codeforge-push-{uuid.uuid4().hex}",
        )
        _use_endpoint(self._app, endpoint.rstrip("/"))
        self.project_id: str = self._app.project_id
        self._threads = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="fcm-send")

    def build(self, message: OutboundLike) -> messaging.Message:
        """The FCM message for an outbox message; SendFailed (permanent) for a recipient that
        is no token or topic, or a kind push must not carry."""
        kind = str(getattr(message, "kind", ""))
        if kind in SENSITIVE_KINDS:
            raise SendFailed(
                f"push does not carry {kind} messages: a notification shows its text on a "
                "locked screen (send it by sms)",
                temporary=False,
            )
        target = parse_recipient(message.recipient)
        notification = messaging.Notification(
            title=_title(kind, getattr(message, "language", "en")), body=clip(message.body)
        )
        data = {"kind": kind, "outbox_id": str(message.id)}
        delivery = DELIVERY.get(kind, ROUTINE)
        common: dict[str, Any] = {
            "notification": notification,
            "data": data,
            "android": messaging.AndroidConfig(priority=delivery.priority, ttl=delivery.ttl_s),
            "apns": messaging.APNSConfig(
                headers={"apns-priority": "10" if delivery.priority == "high" else "5"}
            ),
        }
        if target.kind == "topic":
            return messaging.Message(**common, topic=target.value)
        if target.kind == "fid":
            return messaging.Message(**common, fid=target.value)
        # firebase-admin 7.5+ deprecates `token` in favour of `fid`, but the staff apps of
        # today hold registration tokens (FirebaseMessaging.getToken()), which FCM v1 still
        # sends to. No await in this block: no other coroutine runs under the filter.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "Message.token is deprecated", category=DeprecationWarning
            )
            return messaging.Message(**common, token=target.value)

    async def send(self, message: OutboundLike) -> str:
        fcm_message = self.build(message)
        send = functools.partial(messaging.send, fcm_message, dry_run=False, app=self._app)
        try:
            name = await asyncio.get_running_loop().run_in_executor(self._threads, send)
        except exceptions.FirebaseError as exc:
            failure = _failure(exc)
            if isinstance(exc, _TOKEN_GONE):
                await self._token_gone(message.recipient, failure.reason)
            raise failure from None
        except auth_exceptions.RefreshError as exc:
            # The token endpoint refused the service account (invalid_grant: a deleted key, a
            # disabled account) or failed in a way google-auth calls retryable.
            raise SendFailed(f"OAuth token refused: {exc}", temporary=exc.retryable) from None
        except (auth_exceptions.TransportError, requests.RequestException, OSError) as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}", temporary=True) from None
        except ValueError as exc:  # firebase-admin's own checks of the message
            raise SendFailed(f"FCM message refused: {exc}", temporary=False) from None
        return str(name)

    async def _token_gone(self, recipient: str, reason: str) -> None:
        target = parse_recipient(recipient)
        if target.kind != "token" or self.on_token_gone is None:
            return
        try:
            await self.on_token_gone(target.value, reason)
        except Exception:
            # The message is dead-lettered either way; the phone is disabled at the next one.
            log.exception("push: could not disable a token FCM reported gone")

    async def aclose(self) -> None:
        """Remove this sender's App (closing its HTTP clients) and stop its threads. In a
        thread: firebase-admin's cleanup runs an event loop of its own (asyncio.run)."""
        await asyncio.get_running_loop().run_in_executor(
            self._threads, firebase_admin.delete_app, self._app
        )
        self._threads.shutdown(wait=False)
