"""A local stand-in for Google's side of Firebase Cloud Messaging, on 127.0.0.1: the OAuth2
token endpoint a service account signs in at, and FCM's HTTP v1 `messages:send`.

`POST /token` takes Google's JWT-bearer grant (`grant_type=urn:ietf:params:oauth:grant-type:
jwt-bearer&assertion=<JWT>`), checks the assertion's RS256 signature with the public half of
the service-account key `FakeFcm.account()` writes, its issuer, audience (Google's token
endpoint), expiry and scope, and answers `{"access_token", "expires_in", "token_type"}`; a
bad grant is `400 {"error": "invalid_grant"}` as Google answers it.

`POST /v1/projects/{project}/messages:send` wants `Authorization: Bearer <a token it issued>`
and the project of the account, and answers `{"name": "projects/<p>/messages/<n>"}`, or the
error scripted for the message's target (`fake.fail(target, "UNREGISTERED", ...)`) as a Google
JSON error carrying an `FcmError` detail, with FCM's HTTP status for that code.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.settings import Settings, load_settings
from gateway.embedded import free_port

PROJECT = "codeforge-test"
CLIENT_EMAIL = f"push-sender@{PROJECT}.iam.gserviceaccount.com"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The audience Google's token endpoint wants in the assertion, whatever `token_uri` the key file
# names (google-auth writes this constant, not the token_uri, into every assertion).
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
# Either scope lets a service account send (firebase-admin asks for cloud-platform and more).
SEND_SCOPES = {
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/firebase.messaging",
}
# FCM error code -> (HTTP status, the google.rpc status FCM puts beside it).
FCM_ERRORS = {
    "UNREGISTERED": (404, "NOT_FOUND"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "INTERNAL": (500, "INTERNAL"),
}


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account(
    key: rsa.RSAPrivateKey, token_uri: str, project: str = PROJECT
) -> dict[str, str]:
    """A service-account key file's fields, as the Firebase console downloads them."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem.decode(),
        "client_email": CLIENT_EMAIL,
        "client_id": "1" * 21,
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }


def google_error(status: int, rpc_status: str, message: str, fcm_code: str | None) -> web.Response:
    details = []
    if fcm_code is not None:
        details = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}
        ]
    body = {"error": {"code": status, "message": message, "status": rpc_status, "details": details}}
    return web.json_response(body, status=status)


@dataclass
class FakeFcm:
    """The two endpoints, what reached them, and the failures scripted per target."""

    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    base_url: str = ""
    token_requests: list[dict[str, Any]] = field(default_factory=list)  # verified claims
    sends: list[dict[str, Any]] = field(default_factory=list)  # the JSON bodies accepted
    refused: list[dict[str, Any]] = field(default_factory=list)  # bodies answered with an error
    failures: dict[str, list[str]] = field(default_factory=dict)  # target -> codes, in order
    _tokens: set[str] = field(default_factory=set)
    _count: int = 0

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def account(self, path: Path, **overrides: str) -> Path:
        """Write a service-account file for this fake's key to `path`."""
        path.write_text(json.dumps(service_account(self.key, self.token_uri) | overrides))
        return path

    def fail(self, target: str, *codes: str) -> None:
        """The next sends to `target` (a token, or a topic's name) fail with `codes` in turn."""
        self.failures.setdefault(target, []).extend(codes)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(
                str(form.get("assertion", "")),
                self.key.public_key(),
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                issuer=CLIENT_EMAIL,
                options={"require": ["exp", "iat", "aud", "iss"]},
            )
        except jwt.InvalidTokenError as exc:
            return web.json_response(
                {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}, status=400
            )
        if not SEND_SCOPES & set(str(claims.get("scope", "")).split()):
            return web.json_response({"error": "invalid_scope"}, status=400)
        self.token_requests.append(claims)
        access_token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._tokens.add(access_token)
        return web.json_response(
            {"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}
        )

    async def send(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self._tokens:
            return google_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", None
            )
        if request.match_info["project"] != PROJECT:
            return google_error(403, "PERMISSION_DENIED", "Permission denied.", None)
        body = await request.json()
        message = body.get("message", {})
        target = message.get("token") or message.get("topic") or message.get("fid")
        if not isinstance(target, str) or sum(k in message for k in ("token", "topic", "fid")) != 1:
            self.refused.append(body)
            return google_error(400, "INVALID_ARGUMENT", "Invalid target.", "INVALID_ARGUMENT")
        queued = self.failures.get(target)
        if queued:
            code = queued.pop(0)
            self.refused.append(body)
            status, rpc_status = FCM_ERRORS[code]
            return google_error(status, rpc_status, f"fake {code} for this target", code)
        self.sends.append(body)
        self._count += 1
        return web.json_response({"name": f"projects/{PROJECT}/messages/{self._count}"})


@asynccontextmanager
async def fake_fcm() -> AsyncIterator[FakeFcm]:
    """A FakeFcm listening on a free loopback port for the duration."""
    fake = FakeFcm()
    app = web.Application()
    app.router.add_post("/token", fake.token)
    app.router.add_post("/v1/projects/{project}/messages:send", fake.send)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    fake.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


# Fixtures `fcm` and `push_settings` for the push tests (import them into a test module).


@pytest.fixture(name="fcm")
async def fcm_fixture() -> AsyncIterator[FakeFcm]:
    async with fake_fcm() as fake:
        yield fake


@pytest.fixture(name="push_settings")
async def push_settings_fixture(settings: Settings, fcm: FakeFcm, tmp_path: Path) -> Settings:
    """The test settings with FIREBASE_CREDENTIALS and FCM_ENDPOINT naming the fake, as
    load_settings reads them (the file is checked the way it is at start)."""
    account = fcm.account(tmp_path / "service-account.json")
    env = {"FIREBASE_CREDENTIALS": str(account), "FCM_ENDPOINT": fcm.base_url}
    loaded = load_settings(env)
    return replace(
        settings,
        firebase_credentials=loaded.firebase_credentials,
        firebase_project_id=loaded.firebase_project_id,
        fcm_endpoint=loaded.fcm_endpoint,
    )
