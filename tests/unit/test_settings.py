"""Settings: defaults, and one clear line naming the variable for every bad value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings


def test_defaults() -> None:
    s = load_settings({})
    assert s.port == 8080
    assert s.ussd_service_code == "*384#"
    assert s.currency == "KES"
    assert s.limits_timezone == "Africa/Nairobi"
    assert s.default_country_code == "254"
    assert s.access_token_ttl_s == 3600
    assert s.refresh_token_ttl_s == 7 * 86400
    assert s.embedded == ("postgresql", "redis", "mqtt")
    assert s.smpp_binds == ()


def test_unix_socket_urls() -> None:
    assert load_settings({"REDIS_URL": "unix:///tmp/r.sock"}).redis_url == "unix:///tmp/r.sock"


def test_urls_and_smpp_binds() -> None:
    s = load_settings(
        {
            "DATABASE_URL": "postgresql://u@db:5432/x",
            "REDIS_URL": "redis://r:6379/0",
            "MQTT_URL": "mqtt://a:b@m:1883",
            "SMPP_URL": "smpp://sys:pw@smsc:2775?bind=tx&source_addr=384&tps=30, "
            "smpp://two:pw@smsc2?window=5",
        }
    )
    assert s.embedded == ()
    first, second = s.smpp_binds
    assert (first.system_id, first.host, first.port, first.bind) == ("sys", "smsc", 2775, "tx")
    assert (first.source_addr, first.tps) == ("384", 30.0)
    assert (second.port, second.window, second.bind) == (2775, 5, "trx")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://h:notaport/x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://r"}, "REDIS_URL"),
        ({"REDIS_URL": "unix://"}, "REDIS_URL"),
        ({"MQTT_URL": "tcp://m:1883"}, "MQTT_URL"),
        ({"SMPP_URL": "smpp://sys@h?bind=xx"}, "SMPP_URL"),
        ({"SMPP_URL": "smpp://h:2775"}, "SMPP_URL"),
        ({"SMPP_URL": "smpp://s@h?tps=fast"}, "SMPP_URL"),
        # Longer than SMPP 3.4 allows: smpplib cut them short without a word, so a 9-character
        # password was sent as 8 and the bind was refused as a wrong password.
        ({"SMPP_URL": "smpp://s:ninechars@h"}, "SMPP_URL"),
        ({"SMPP_URL": f"smpp://{'s' * 16}:pw@h"}, "SMPP_URL"),
        ({"SMPP_URL": f"smpp://s@h?system_type={'t' * 13}"}, "SMPP_URL"),
        ({"SMPP_URL": f"smpp://s@h?source_addr={'1' * 21}"}, "SMPP_URL"),
        ({"USSD_SERVICE_CODE": "384"}, "USSD_SERVICE_CODE"),
        ({"CURRENCY": "shilling"}, "CURRENCY"),
        ({"DEFAULT_COUNTRY_CODE": "+25a"}, "DEFAULT_COUNTRY_CODE"),
        ({"LIMITS_TIMEZONE": "Africa/Nairob"}, "LIMITS_TIMEZONE"),
        ({"LIMITS_TIMEZONE": "EAT+3"}, "LIMITS_TIMEZONE"),
        ({"LIMITS_TIMEZONE": ""}, "LIMITS_TIMEZONE"),
        ({"LIMITS_TIMEZONE": "../../etc/passwd"}, "LIMITS_TIMEZONE"),
        ({"LIMITS_TIMEZONE": "x" * 200}, "LIMITS_TIMEZONE"),
        ({"GATEWAY_SECRET_KEY": "short"}, "GATEWAY_SECRET_KEY"),
        ({"GATEWAY_DEMO": "maybe"}, "GATEWAY_DEMO"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"ACCESS_TOKEN_TTL_S": "5"}, "ACCESS_TOKEN_TTL_S"),
        ({"AGENT_ALERT_CHANNEL": "pigeon"}, "AGENT_ALERT_CHANNEL"),
        ({"MQTT_CLIENT_ID": "gw 1"}, "MQTT_CLIENT_ID"),
        ({"MQTT_CLIENT_ID": "gw/#"}, "MQTT_CLIENT_ID"),
        ({"MQTT_CLIENT_ID": "g" * 65}, "MQTT_CLIENT_ID"),
        ({"MQTT_SESSION_EXPIRY_S": "10"}, "MQTT_SESSION_EXPIRY_S"),
        ({"AGENT_ALERT_RECIPIENTS": " , "}, "AGENT_ALERT_RECIPIENTS"),
        (
            {"AGENT_ALERT_RECIPIENTS": ",".join(f"a{n}" for n in range(11))},
            "AGENT_ALERT_RECIPIENTS",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message


@pytest.mark.parametrize("zone", ["UTC", "Africa/Kampala", "America/Argentina/Buenos_Aires"])
def test_limits_timezone(zone: str) -> None:
    assert load_settings({"LIMITS_TIMEZONE": f" {zone} "}).limits_timezone == zone


def test_cli_stops_with_one_line_on_a_bad_setting() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate"],
        env={"GATEWAY_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["gateway: GATEWAY_PORT: expected an integer, got 'not-a-port'"]


def test_breach_alert_settings() -> None:
    default = load_settings({})
    assert (default.agent_alert_channel, default.agent_alert_recipients) == ("log", ("admins",))
    s = load_settings(
        {"AGENT_ALERT_CHANNEL": "Email", "AGENT_ALERT_RECIPIENTS": "ops@x.co, risk@x.co,ops@x.co",
         "SMTP_URL": "smtp://mail.x.co:587"}
    )  # fmt: skip
    assert (s.agent_alert_channel, s.agent_alert_recipients) == ("email", ("ops@x.co", "risk@x.co"))
    assert load_settings({"AGENT_ALERT_CHANNEL": "off"}).agent_alert_channel is None
    assert default.agent_alert_language == "en"
    assert load_settings({"AGENT_ALERT_LANGUAGE": " SW "}).agent_alert_language == "sw"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AGENT_ALERT_CHANNEL": "email", "AGENT_ALERT_RECIPIENTS": "ops@x.co"},
         "AGENT_ALERT_CHANNEL: email needs SMTP_URL (the mail server)"),
        ({"AGENT_ALERT_CHANNEL": "email", "SMTP_URL": "smtp://m.x.co"},
         "AGENT_ALERT_RECIPIENTS: email alerts need email addresses, got 'admins'"),
        ({"SMTP_URL": "http://m.x.co"}, "SMTP_URL: expected a URL starting with smtp://, smtps://"),
        ({"SMTP_URL": "smtp://m.x.co:99999"}, "SMTP_URL: the port is not a number"),
        ({"SMTP_FROM": "not an address"}, "SMTP_FROM: expected an email address"),
        ({"AGENT_WITHDRAWAL_GATE": "maybe"}, "AGENT_WITHDRAWAL_GATE: one of off, fenced, always"),
        ({"AGENT_ALERT_LANGUAGE": "de"}, "AGENT_ALERT_LANGUAGE: one of en, sw, fr, got 'de'"),
        ({"SMTP_FROM": "a@b.co\r\nBcc: x@y.co"}, "SMTP_FROM: expected an email address"),
    ],
)  # fmt: skip
def test_email_settings_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(message)


def test_email_settings() -> None:
    s = load_settings({"SMTP_URL": "smtps://u:p@mail.x.co", "SMTP_FROM": "alerts@bank.example"})
    assert (s.smtp_url, s.smtp_from) == ("smtps://u:p@mail.x.co", "alerts@bank.example")
    assert load_settings({}).smtp_from == "gateway@localhost"
    assert load_settings({}).agent_withdrawal_gate == "fenced"
    assert load_settings({"AGENT_WITHDRAWAL_GATE": "Always"}).agent_withdrawal_gate == "always"


# --- Push (FCM) -----------------------------------------------------------------------------

PEM = "-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----\n"
ACCOUNT = {
    "type": "service_account",
    "project_id": "codeforge-prod",
    "private_key_id": "abc",
    "private_key": PEM,
    "client_email": "push@codeforge-prod.iam.gserviceaccount.com",
    "token_uri": "https://oauth2.googleapis.com/token",
}
TOKEN = "cXk4V2pGQkNSdW1:APA91b" + "F" * 140


def key_file(tmp_path: Path, content: object = ACCOUNT) -> str:
    path = tmp_path / "service-account.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_push_settings(tmp_path: Path) -> None:
    default = load_settings({})
    assert (default.firebase_credentials, default.fcm_endpoint) == (
        None,
        "https://fcm.googleapis.com",
    )
    path = key_file(tmp_path)
    s = load_settings({"FIREBASE_CREDENTIALS": path})
    assert (s.firebase_credentials, s.firebase_project_id) == (Path(path), "codeforge-prod")
    assert "MIIE" not in repr(s)  # the key stays in its file
    s = load_settings(
        {"FIREBASE_CREDENTIALS": path, "FIREBASE_PROJECT_ID": "codeforge-staging",
         "FCM_ENDPOINT": "https://fcm-proxy.bank.example/eu/", "AGENT_ALERT_CHANNEL": "push",
         "AGENT_ALERT_RECIPIENTS": f"topic:agent-alerts, {TOKEN}, fid:{TOKEN[:22]}"}
    )  # fmt: skip
    assert (s.firebase_project_id, s.fcm_endpoint) == (
        "codeforge-staging", "https://fcm-proxy.bank.example/eu",
    )  # fmt: skip
    assert s.agent_alert_channel == "push"
    assert s.agent_alert_recipients == ("topic:agent-alerts", TOKEN, f"fid:{TOKEN[:22]}")
    local = load_settings({"FCM_ENDPOINT": "http://127.0.0.1:8099"})
    assert local.fcm_endpoint == "http://127.0.0.1:8099"
    phones = load_settings(
        {"FIREBASE_CREDENTIALS": path, "AGENT_ALERT_CHANNEL": "push",
         "AGENT_ALERT_RECIPIENTS": "devices,topic:agent-alerts"}
    )  # fmt: skip
    assert phones.agent_alert_recipients == ("devices", "topic:agent-alerts")
    off = load_settings({"AGENT_ALERT_CHANNEL": "off", "AGENT_ALERT_RECIPIENTS": "devices"})
    assert off.agent_alert_channel is None


@pytest.mark.parametrize(
    ("env", "content", "message"),
    [({"AGENT_ALERT_CHANNEL": "push", "AGENT_ALERT_RECIPIENTS": "topic:agent-alerts"}, None,
      "AGENT_ALERT_CHANNEL: push needs FIREBASE_CREDENTIALS (a service-account JSON file)"),
     ({"AGENT_ALERT_CHANNEL": "push"}, ACCOUNT,
      "AGENT_ALERT_RECIPIENTS: push alerts need topic:<name>, device tokens or devices (the "
      "admins' registered phones), got 'admins'"),
     ({"AGENT_ALERT_CHANNEL": "push", "AGENT_ALERT_RECIPIENTS": "topic:agent alerts"}, ACCOUNT,
      "AGENT_ALERT_RECIPIENTS: push alerts need topic:<name>, device tokens or devices"),
     ({"AGENT_ALERT_CHANNEL": "push", "AGENT_ALERT_RECIPIENTS": "+254700000001"}, ACCOUNT,
      "AGENT_ALERT_RECIPIENTS: push alerts need topic:<name>, device tokens or devices"),
     ({"AGENT_ALERT_CHANNEL": "email", "SMTP_URL": "smtp://mail.example",
       "AGENT_ALERT_RECIPIENTS": "ops@bank.example,devices"}, None,
      "AGENT_ALERT_RECIPIENTS: devices (the admins' registered phones) needs "
      "AGENT_ALERT_CHANNEL=push"),
     ({"AGENT_ALERT_RECIPIENTS": "devices"}, None,
      "AGENT_ALERT_RECIPIENTS: devices (the admins' registered phones) needs "
      "AGENT_ALERT_CHANNEL=push"),
     ({}, "{not json", "FIREBASE_CREDENTIALS: {path} is not JSON"),
     ({}, ["service_account"], "FIREBASE_CREDENTIALS: {path} is not a service-account key"),
     ({}, ACCOUNT | {"type": "authorized_user"},
      "FIREBASE_CREDENTIALS: {path} is not a service-account key"),
     ({}, {k: v for k, v in ACCOUNT.items() if k not in {"client_email", "token_uri"}},
      "FIREBASE_CREDENTIALS: {path} has no client_email, token_uri"),
     ({}, ACCOUNT | {"private_key": ""}, "FIREBASE_CREDENTIALS: {path} has no private_key"),
     ({}, ACCOUNT | {"project_id": 7}, "FIREBASE_CREDENTIALS: {path} has no project_id"),
     ({}, ACCOUNT | {"private_key": "MIIE..."},
      "FIREBASE_CREDENTIALS: the private_key in {path} is not a PEM key"),
     ({}, ACCOUNT | {"token_uri": "http://oauth2.example/token"},
      "FIREBASE_CREDENTIALS: token_uri in {path}: expected an https:// URL"),
     ({}, ACCOUNT | {"project_id": "../../v1/x"},
      "FIREBASE_CREDENTIALS: project_id in {path} is not a project id"),
     ({"FIREBASE_PROJECT_ID": "a/b?c"}, ACCOUNT, "FIREBASE_PROJECT_ID: not a project id"),
     ({"FCM_ENDPOINT": "http://fcm.example"}, None,
      "FCM_ENDPOINT: expected an https:// URL (http:// only to localhost)"),
     ({"FCM_ENDPOINT": "https://fcm.example/?x=1"}, None, "FCM_ENDPOINT: expected a base URL"),
     ({"FCM_ENDPOINT": "https://u:p@fcm.example"}, None, "FCM_ENDPOINT: expected a base URL"),
     ({"FCM_ENDPOINT": "https://fcm.example:99999"}, None, "FCM_ENDPOINT: the port is not")],
)  # fmt: skip
def test_push_settings_refused(
    tmp_path: Path, env: dict[str, str], content: object, message: str
) -> None:
    path = key_file(tmp_path, content) if content is not None else None
    if path is not None:
        env = env | {"FIREBASE_CREDENTIALS": path}
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(message.format(path=path))
    assert "MIIE" not in str(caught.value)


def test_an_unreadable_key_file_is_named(tmp_path: Path) -> None:
    for path, reason in ((tmp_path / "missing.json", "No such file"), (tmp_path, "Is a directory")):
        with pytest.raises(SettingsError) as caught:
            load_settings({"FIREBASE_CREDENTIALS": str(path)})
        assert str(caught.value).startswith(f"FIREBASE_CREDENTIALS: cannot read {path}: {reason}")


def test_mqtt_session_settings() -> None:
    assert (load_settings({}).mqtt_client_id, load_settings({}).mqtt_session_expiry_s) == (
        None, 3600,
    )  # fmt: skip
    s = load_settings({"MQTT_CLIENT_ID": " gw-nairobi-1 ", "MQTT_SESSION_EXPIRY_S": "600"})
    assert (s.mqtt_client_id, s.mqtt_session_expiry_s) == ("gw-nairobi-1", 600)
    assert load_settings({"MQTT_CLIENT_ID": " "}).mqtt_client_id is None


def test_startup_wait() -> None:
    assert load_settings({}).startup_wait_s == 30
    assert load_settings({"GATEWAY_STARTUP_WAIT_S": "0"}).startup_wait_s == 0
    assert load_settings({"GATEWAY_STARTUP_WAIT_S": "600"}).startup_wait_s == 600
    for raw, message in (
        ("601", "GATEWAY_STARTUP_WAIT_S: 601 is out of range [0, 600]"),
        ("-1", "GATEWAY_STARTUP_WAIT_S: -1 is out of range [0, 600]"),
        ("soon", "GATEWAY_STARTUP_WAIT_S: expected an integer, got 'soon'"),
    ):
        with pytest.raises(SettingsError) as caught:
            load_settings({"GATEWAY_STARTUP_WAIT_S": raw})
        assert str(caught.value) == message


def test_admin_reset_ttl() -> None:
    assert load_settings({}).admin_reset_ttl_s == 1800
    assert load_settings({"ADMIN_RESET_TTL_S": "60"}).admin_reset_ttl_s == 60
    assert load_settings({"ADMIN_RESET_TTL_S": "604800"}).admin_reset_ttl_s == 604_800
    for raw, message in (
        ("59", "ADMIN_RESET_TTL_S: 59 is out of range [60, 604800]"),
        ("604801", "ADMIN_RESET_TTL_S: 604801 is out of range [60, 604800]"),
        ("half an hour", "ADMIN_RESET_TTL_S: expected an integer, got 'half an hour'"),
    ):
        with pytest.raises(SettingsError) as caught:
            load_settings({"ADMIN_RESET_TTL_S": raw})
        assert str(caught.value) == message
