"""Per-provider settings: who may call (source networks, a shared secret, basic auth), session
timeouts from the environment, and the answers when a caller is not allowed."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from config.settings import Settings, SettingsError, load_settings
from tests.channels.harness import FORM, HttpCase, ids, run_http
from tests.ussd_support import UssdEnv, start_env

SECRET = "s3cret-value-long-enough"
START = {
    "sessionId": "ATUid_auth",
    "serviceCode": "*384#",
    "phoneNumber": "+254711000777",
    "networkCode": "63902",
    "text": "",
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
async def guarded(settings: Settings) -> AsyncIterator[UssdEnv]:
    providers = tuple(
        replace(p, secret=SECRET, basic_auth="hubtel:pa55word")
        if p.name == "africastalking"
        else replace(p, allow_from=("10.0.0.0/8",))
        if p.name == "nalo"
        else p
        for p in settings.ussd_providers
    )
    async for env in start_env(settings, ussd_providers=providers):
        yield env


def form(session: str) -> str:
    from urllib.parse import urlencode

    return urlencode({**START, "sessionId": session})


CASES = [
    HttpCase("no secret", form("a1"), 401, error_code="UNAUTHORIZED", content_type=FORM),
    HttpCase(
        "a wrong secret",
        form("a2"),
        401,
        error_code="UNAUTHORIZED",
        content_type=FORM,
        headers={"X-Ussd-Secret": "wrong-wrong-wrong-wrong"},
    ),
    HttpCase(
        "the secret in a header",
        form("a3"),
        200,
        "CON ",
        content_type=FORM,
        headers={"X-Ussd-Secret": SECRET},
    ),
    HttpCase(
        "the secret in the query", form("a4"), 200, "CON ", content_type=FORM, path=f"?key={SECRET}"
    ),
    HttpCase(
        "basic auth",
        form("a5"),
        200,
        "CON ",
        content_type=FORM,
        headers={"Authorization": basic("hubtel", "pa55word")},
    ),
    HttpCase(
        "wrong basic auth",
        form("a6"),
        401,
        error_code="UNAUTHORIZED",
        content_type=FORM,
        headers={"Authorization": basic("hubtel", "nope")},
    ),
    HttpCase(
        "garbage basic auth",
        form("a7"),
        401,
        error_code="UNAUTHORIZED",
        content_type=FORM,
        headers={"Authorization": "Basic %%%"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
async def test_africastalking_needs_the_secret(guarded: UssdEnv, case: HttpCase) -> None:
    await run_http(guarded.client, "africastalking", case)


async def test_source_address_not_allowed(guarded: UssdEnv) -> None:
    case = HttpCase(
        "from 127.0.0.1, only 10/8 allowed",
        {
            "USERID": "u",
            "MSISDN": "233244000111",
            "USERDATA": "*384#",
            "MSGTYPE": True,
            "NETWORK": "MTN",
            "SESSIONID": "n1",
        },
        403,
        error_code="FORBIDDEN",
    )
    await run_http(guarded.client, "nalo", case)


async def test_unknown_provider_and_wrong_method(guarded: UssdEnv) -> None:
    await run_http(guarded.client, "nokia", HttpCase("unknown", {}, 404, error_code="NOT_FOUND"))
    resp = await guarded.client.get("/ussd/hubtel")
    assert resp.status == 405
    assert (await resp.json())["error_code"] == "METHOD_NOT_ALLOWED"


def test_provider_settings_from_the_environment() -> None:
    settings = load_settings(
        {
            "USSD_HUBTEL_ALLOW_FROM": "41.215.0.0/16, 197.255.1.2",
            "USSD_HUBTEL_SECRET": SECRET,
            "USSD_HUBTEL_SESSION_TTL_S": "120",
            "USSD_BEEM_BASIC_AUTH": "beem:pw",
            "USSD_DEADLINE_MS": "8000",
            "USSD_LIVENESS_TTL_MS": "4000",
            "USSD_LATE_RESULT_LIMIT_S": "300",
        }
    )
    hubtel = settings.ussd_provider("hubtel")
    assert hubtel.allow_from == ("41.215.0.0/16", "197.255.1.2")
    assert hubtel.secret == SECRET and hubtel.session_ttl_s == 120
    assert settings.ussd_provider("beem").basic_auth == "beem:pw"
    assert settings.ussd_provider("nalo").session_ttl_s == 180
    assert settings.ussd_deadline_s == 8.0
    assert settings.ussd_liveness_ttl_s == 4.0
    assert load_settings({}).ussd_liveness_ttl_s == 10.0
    assert settings.ussd_late_result_limit_s == 300.0
    assert load_settings({}).ussd_late_result_limit_s == 600.0


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"USSD_HUBTEL_ALLOW_FROM": "not-an-ip"}, "USSD_HUBTEL_ALLOW_FROM"),
        ({"USSD_NALO_SECRET": "short"}, "USSD_NALO_SECRET: must be at least 16"),
        ({"USSD_BEEM_BASIC_AUTH": "nocolon"}, "USSD_BEEM_BASIC_AUTH: expected user:password"),
        ({"USSD_ARKESEL_SESSION_TTL_S": "0"}, "USSD_ARKESEL_SESSION_TTL_S"),
        ({"USSD_DEADLINE_MS": "20000"}, "USSD_DEADLINE_MS"),
        ({"USSD_LIVENESS_TTL_MS": "500"}, "USSD_LIVENESS_TTL_MS"),  # shorter than a hiccup
        ({"USSD_LIVENESS_TTL_MS": "10s"}, "USSD_LIVENESS_TTL_MS: expected an integer"),
        # shorter than a hop's own tries, or a promise kept for hours
        ({"USSD_LATE_RESULT_LIMIT_S": "29"}, "USSD_LATE_RESULT_LIMIT_S"),
        ({"USSD_LATE_RESULT_LIMIT_S": "3601"}, "USSD_LATE_RESULT_LIMIT_S"),
        ({"USSD_LATE_RESULT_LIMIT_S": "10m"}, "USSD_LATE_RESULT_LIMIT_S: expected an integer"),
    ],
)
def test_bad_provider_settings(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert fragment in str(caught.value)
