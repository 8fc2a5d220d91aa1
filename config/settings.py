"""One frozen Settings object, built once from the environment and validated at start.

Every knob the gateway reads from the environment is parsed here and nowhere else. A bad value
raises `SettingsError` whose message is one line naming the variable and the problem; the CLI
prints that line and exits 2, so an operator sees exactly what to fix.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


_SERVICE_CODE = re.compile(r"^\*\d{1,6}(\*\d{1,6})*#$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class SmppBind:
    """One SMPP bind parsed from `SMPP_URL` (`smpp://id:pw@host:port?bind=trx&...`)."""

    system_id: str
    password: str = field(repr=False)
    host: str
    port: int
    bind: str = "trx"
    source_addr: str = ""
    tps: float = 10.0
    window: int = 10
    system_type: str = ""
    message_id_base: int = 16
    # SMS channel (issue 5): the base of the `id:` in receipt texts (some SMSCs write the hex
    # submit_sm_resp id in decimal there), keepalive and response timers, receipts wanted.
    dlr_id_base: int = 16
    enquire_link_s: float = 30.0
    response_timeout_s: float = 10.0
    registered_delivery: bool = True
    # The TLV tag (e.g. 0x1501) in which this SMSC sends its own id of an MO, if it does: MOs
    # carrying it are de-duplicated by that id for the long window (SMS_DEDUPE_WINDOW_S).
    mo_id_tlv: int | None = None


USSD_PROVIDER_NAMES = (
    "africastalking",
    "hubtel",
    "nalo",
    "arkesel",
    "beem",
    "emergent",
    "infobip",
)


@dataclass(frozen=True, slots=True)
class UssdProviderSettings:
    """Per-aggregator settings, from `USSD_<PROVIDER>_*` (e.g. `USSD_HUBTEL_SECRET`).

    `allow_from`: source networks allowed to call (empty: any). `secret`: a shared secret the
    aggregator sends as the `X-Ussd-Secret` header or the `key` query parameter. `basic_auth`:
    `user:password` the aggregator sends with HTTP basic auth. `session_ttl_s`: how long an idle
    session lives in Redis.
    """

    name: str
    allow_from: tuple[str, ...] = ()
    secret: str | None = None
    basic_auth: str | None = None
    session_ttl_s: int = 180


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the process needs to know about its environment."""

    database_url: str | None = None
    redis_url: str | None = None
    mqtt_url: str | None = None
    smpp_binds: tuple[SmppBind, ...] = ()
    smtp_url: str | None = None
    smtp_from: str = "gateway@localhost"
    # Push (FCM): the service-account JSON file (checked at start; the key itself is read by
    # the sender, never kept here), the project sent to (the file's unless overridden) and
    # the FCM API's base URL (a regional proxy, or a local fake in tests).
    firebase_credentials: Path | None = None
    firebase_project_id: str | None = None
    fcm_endpoint: str = "https://fcm.googleapis.com"
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8080
    secret_key: str | None = None
    ussd_service_code: str = "*384#"
    currency: str = "KES"
    default_country_code: str = "254"
    # The IANA time zone whose local days and months the daily and monthly debit caps count
    # (reset at local midnight). Reaches the ledger functions as the `gateway.limits_tz`
    # setting of every pool connection (gateway.db.make_pool).
    limits_timezone: str = "Africa/Nairobi"
    access_token_ttl_s: int = 60 * 60
    refresh_token_ttl_s: int = 7 * 24 * 60 * 60
    login_max_failures: int = 5
    login_lockout_s: int = 15 * 60
    login_rate_per_minute: int = 20
    # How long a credentials reset token a manager issued for another admin stays usable.
    admin_reset_ttl_s: int = 30 * 60
    pin_bcrypt_rounds: int = 10
    password_bcrypt_rounds: int = 12
    max_body_bytes: int = 1024 * 1024
    # Raising a customer's tier needs accepted KYC documents (core.kyc.TIER_REQUIREMENTS);
    # false for a deployment whose KYC happens elsewhere. A document is at most this big.
    kyc_documents_required: bool = True
    kyc_max_document_bytes: int = 5 * 1024 * 1024
    log_level: str = "INFO"
    demo_data: bool = False
    redis_prefix: str = "gw:"
    embedded_mqtt_port: int = 11883
    loan_max_applications_24h: int = 3
    loan_score_weights: str = "wallet=0.4,tenure=0.3,repayment=0.3"
    loan_score_approve_min: int = 600
    loan_score_review_min: int = 400
    loan_scorer_timeout_ms: int = 3000
    loan_reminder_days: tuple[int, ...] = (-3, 0, 1, 7)
    loan_jobs_interval_s: int = 900
    # How long `serve` and `migrate` wait at start for PostgreSQL and Redis (gateway.reach).
    startup_wait_s: int = 30
    ussd_providers: tuple[UssdProviderSettings, ...] = tuple(
        UssdProviderSettings(n) for n in USSD_PROVIDER_NAMES
    )
    ussd_deadline_s: float = 10.0
    # How long an instance's liveness key outlives its last refresh (menus.liveness): after a
    # crash, its customers' sessions are blocked ("still processing") at most about this long.
    ussd_liveness_ttl_s: float = 10.0
    # How long after "the result will come by SMS" the money may still move: the instance asks
    # again under the step's key until then, then settles or abandons it (menus.pending).
    ussd_late_result_limit_s: float = 600.0

    def ussd_provider(self, name: str) -> UssdProviderSettings:
        for provider in self.ussd_providers:
            if provider.name == name:
                return provider
        return UssdProviderSettings(name)

    # SMS channel (issue 5): an MO identical to one received within the window is an SMSC
    # redelivery. The long window holds for MOs the SMSC identified (a message reference,
    # its timestamps, a concatenation reference, its MO id TLV) and for MOs whose
    # acknowledgement may not have reached the SMSC; a plain MO is remembered for the short
    # window only, so a customer who repeats a command a minute later is answered again.
    # Parts of a concatenated MO wait `sms_concat_timeout_s` for their siblings.
    sms_dedupe_window_s: int = 600
    sms_dedupe_short_window_s: int = 45
    sms_concat_timeout_s: int = 300
    # SMS banking (issue 5): commands per number per minute (over it: one notice, then
    # silence); SEND answered with a quote and "reply YES <code>" when confirmation is on;
    # how long a pending confirmation (an SMS dialog) waits.
    sms_rate_per_minute: int = 10
    sms_send_confirm: bool = False
    sms_dialog_ttl_s: int = 300
    # Agent devices and geofences (issue 6).
    mqtt_share_group: str = "gateway"
    # This instance's own MQTT client id: set, the broker keeps its session across a crash and
    # messages are acknowledged after handling (channels/agents/mqtt.py); unset, clean sessions.
    mqtt_client_id: str | None = None
    mqtt_session_expiry_s: int = 3600
    agent_exit_confirm_fixes: int = 2
    agent_exit_confirm_s: int = 60
    agent_unknown_accuracy_m: int = 30
    agent_max_fix_age_s: int = 120
    agent_max_accuracy_m: int = 50
    agent_future_skew_s: int = 60
    agent_max_backlog_s: int = 86_400
    agent_heartbeat_timeout_s: int = 600
    # Breach alerts to admins through the core's outbox (None: off).
    agent_alert_channel: str | None = "log"
    agent_alert_recipients: tuple[str, ...] = ("admins",)
    # The language of those alerts (en, sw, fr): the recipients are addresses and numbers, not
    # admin users, so the language is the deployment's.
    agent_alert_language: str = "en"
    # Customer-initiated withdrawals (USSD) at a fenced agent pass the device gate: off, fenced
    # (only agents with fences), always (agents without fences refused too).
    agent_withdrawal_gate: str = "fenced"

    @property
    def embedded(self) -> tuple[str, ...]:
        """Which engines this process must start itself because no URL names one."""
        names = []
        if self.database_url is None:
            names.append("postgresql")
        if self.redis_url is None:
            names.append("redis")
        if self.mqtt_url is None:
            names.append("mqtt")
        return tuple(names)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}: {value} is out of range [{lo}, {hi}]")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    parts = urlsplit(raw.strip())
    if parts.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise SettingsError(f"{name}: expected a URL starting with {allowed}")
    if parts.scheme == "unix":
        if not parts.path:
            raise SettingsError(f"{name}: a unix:// URL needs the socket's path")
        return raw.strip()
    if not parts.hostname and "host=" not in parts.query:
        raise SettingsError(f"{name}: the URL names no host")
    try:
        _ = parts.port
    except ValueError:
        raise SettingsError(f"{name}: the port is not a number between 0 and 65535") from None
    return raw.strip()


_SMPP_MAX_CHARS = {"system_id": 15, "password": 8, "system_type": 12, "source_addr": 20}


def parse_smpp_url(name: str, raw: str) -> SmppBind:
    """Parse one `smpp://system_id:password@host:port?bind=trx&source_addr=...&tps=...`."""
    parts = urlsplit(raw.strip())
    if parts.scheme != "smpp":
        raise SettingsError(f"{name}: expected a URL starting with smpp://")
    if not parts.hostname or not parts.username:
        raise SettingsError(f"{name}: the URL needs system_id@host")
    try:
        port = parts.port or 2775
    except ValueError:
        raise SettingsError(f"{name}: the port is not a number between 0 and 65535") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    bind = query.get("bind", "trx")
    if bind not in {"trx", "tx", "rx"}:
        raise SettingsError(f"{name}: bind= must be trx, tx or rx, got {bind!r}")
    try:
        tps = float(query.get("tps", "10"))
        window = int(query.get("window", "10"))
        base = int(query.get("message_id_base", "16"))
    except ValueError:
        raise SettingsError(f"{name}: tps, window and message_id_base must be numbers") from None
    if not 0 < tps <= 10_000 or not 1 <= window <= 1000 or base not in {10, 16}:
        raise SettingsError(f"{name}: tps in (0, 10000], window in [1, 1000], base 10 or 16")
    sms = _smpp_sms_options(name, query, base)
    strings = {
        "system_id": unquote(parts.username),
        "password": unquote(parts.password or ""),
        "system_type": query.get("system_type", ""),
        "source_addr": query.get("source_addr", ""),
    }
    for field_name, value in strings.items():
        # SMPP 3.4's C-string limits (without the NUL); smpplib would cut a longer value
        # short without a word (a 9-character password is sent as 8: "invalid password").
        if len(value.encode("latin-1", "replace")) > _SMPP_MAX_CHARS[field_name]:
            raise SettingsError(
                f"{name}: {field_name} is longer than SMPP allows "
                f"({_SMPP_MAX_CHARS[field_name]} characters)"
            )
    return SmppBind(
        system_id=strings["system_id"],
        password=strings["password"],
        host=parts.hostname,
        port=port,
        bind=bind,
        source_addr=strings["source_addr"],
        tps=tps,
        window=window,
        system_type=strings["system_type"],
        message_id_base=base,
        **sms,
    )


def _smpp_sms_options(name: str, query: dict[str, str], base: int) -> dict[str, Any]:
    """The SMS channel's per-bind options: dlr_id_base, enquire_link_s, response_timeout_s, dlr."""
    try:
        dlr_base = int(query.get("dlr_id_base", str(base)))
        enquire = float(query.get("enquire_link_s", "30"))
        timeout = float(query.get("response_timeout_s", "10"))
    except ValueError:
        raise SettingsError(
            f"{name}: dlr_id_base, enquire_link_s and response_timeout_s must be numbers"
        ) from None
    if dlr_base not in {10, 16} or not 1 <= enquire <= 3600 or not 0.1 <= timeout <= 300:
        raise SettingsError(
            f"{name}: dlr_id_base 10 or 16, enquire_link_s in [1, 3600], "
            "response_timeout_s in [0.1, 300]"
        )
    dlr = query.get("dlr", "1").lower()
    if dlr not in {"0", "1", "true", "false", "yes", "no"}:
        raise SettingsError(f"{name}: dlr= must be 1 or 0, got {dlr!r}")
    mo_id_tlv = None
    if query.get("mo_id_tlv"):
        try:
            mo_id_tlv = int(query["mo_id_tlv"], 0)
        except ValueError:
            mo_id_tlv = -1
        if not 0x1400 <= mo_id_tlv <= 0x3FFF:
            raise SettingsError(
                f"{name}: mo_id_tlv= must be a vendor TLV tag 0x1400-0x3FFF, "
                f"got {query['mo_id_tlv']!r}"
            )
    return {
        "mo_id_tlv": mo_id_tlv,
        "dlr_id_base": dlr_base,
        "enquire_link_s": enquire,
        "response_timeout_s": timeout,
        "registered_delivery": dlr in {"1", "true", "yes"},
    }


def _smpp(env: Mapping[str, str]) -> tuple[SmppBind, ...]:
    raw = env.get("SMPP_URL", "").strip()
    if not raw:
        return ()
    # Several binds are separated by whitespace or commas: one URL per bind.
    urls = [u for u in re.split(r"[\s,]+", raw) if u]
    return tuple(parse_smpp_url("SMPP_URL", u) for u in urls)


_WEIGHT_RE = re.compile(r"^(wallet|tenure|repayment)=(\d{1,3}(\.\d{1,4})?)$")


def _weights(env: Mapping[str, str]) -> str:
    raw = env.get("LOAN_SCORE_WEIGHTS", "").replace(" ", "")
    if not raw:
        return "wallet=0.4,tenure=0.3,repayment=0.3"
    parts = raw.split(",")
    matches = [_WEIGHT_RE.match(p) for p in parts]
    names = [m.group(1) for m in matches if m]
    if None in matches or len(set(names)) != len(names):
        raise SettingsError(
            "LOAN_SCORE_WEIGHTS: expected name=weight pairs for wallet, tenure, repayment"
        )
    if not any(float(m.group(2)) > 0 for m in matches if m):
        raise SettingsError("LOAN_SCORE_WEIGHTS: at least one weight must be above 0")
    return raw


def _days(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = env.get(name, "").replace(" ", "")
    if not raw:
        return default
    try:
        days = tuple(sorted({int(p) for p in raw.split(",")}))
    except ValueError:
        raise SettingsError(f"{name}: expected comma-separated whole days like -3,0,7") from None
    if not all(-60 <= d <= 365 for d in days) or len(days) > 10:
        raise SettingsError(f"{name}: at most 10 days, each between -60 and 365")
    return days


def _score_bands(env: Mapping[str, str]) -> tuple[int, int]:
    approve = _int(env, "LOAN_SCORE_APPROVE_MIN", 600, 0, 1000)
    review = _int(env, "LOAN_SCORE_REVIEW_MIN", 400, 0, 1000)
    if review > approve:
        raise SettingsError("LOAN_SCORE_REVIEW_MIN: must not exceed LOAN_SCORE_APPROVE_MIN")
    return approve, review


def _ussd_provider(env: Mapping[str, str], name: str) -> UssdProviderSettings:
    prefix = f"USSD_{name.upper()}_"
    allow = tuple(a for a in re.split(r"[\s,]+", env.get(prefix + "ALLOW_FROM", "")) if a)
    for network in allow:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise SettingsError(
                f"{prefix}ALLOW_FROM: {network!r} is not an address or network"
            ) from None
    secret = env.get(prefix + "SECRET") or None
    if secret is not None and len(secret) < 16:
        raise SettingsError(f"{prefix}SECRET: must be at least 16 characters")
    basic = env.get(prefix + "BASIC_AUTH") or None
    if basic is not None and (":" not in basic or basic.startswith(":")):
        raise SettingsError(f"{prefix}BASIC_AUTH: expected user:password")
    return UssdProviderSettings(
        name=name,
        allow_from=allow,
        secret=secret,
        basic_auth=basic,
        session_ttl_s=_int(env, prefix + "SESSION_TTL_S", 180, 1, 3600),
    )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: os.environ). Raises SettingsError on a bad value."""
    env = os.environ if env is None else env
    code = env.get("USSD_SERVICE_CODE", "*384#").strip()
    if not _SERVICE_CODE.match(code):
        raise SettingsError(f"USSD_SERVICE_CODE: expected a code like *384#, got {code!r}")
    currency = env.get("CURRENCY", "KES").strip()
    if not _CURRENCY.match(currency):
        raise SettingsError(
            f"CURRENCY: expected a three-letter ISO code like KES, got {currency!r}"
        )
    country = env.get("DEFAULT_COUNTRY_CODE", "254").strip().lstrip("+")
    if not country.isdigit() or not 1 <= len(country) <= 3:
        raise SettingsError(f"DEFAULT_COUNTRY_CODE: expected 1-3 digits, got {country!r}")
    limits_timezone = _timezone(env, "LIMITS_TIMEZONE", "Africa/Nairobi")
    secret = env.get("GATEWAY_SECRET_KEY") or None
    if secret is not None and len(secret) < 32:
        raise SettingsError("GATEWAY_SECRET_KEY: must be at least 32 characters")
    level = env.get("LOG_LEVEL", "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    prefix = env.get("REDIS_PREFIX", "gw:")
    if not re.fullmatch(r"[A-Za-z0-9_:.-]{1,40}", prefix):
        raise SettingsError("REDIS_PREFIX: 1-40 characters of letters, digits, _ : . -")
    approve_min, review_min = _score_bands(env)
    smtp_url = _url(env, "SMTP_URL", ("smtp", "smtps"))
    alert_channel = _alert_channel(env)
    alert_recipients = _alert_recipients(env)
    firebase_credentials, firebase_project_id = _firebase(env)
    _check_alerts(alert_channel, alert_recipients, smtp_url, firebase_credentials)
    return Settings(
        database_url=_url(env, "DATABASE_URL", ("postgresql", "postgres")),
        redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix")),
        mqtt_url=_url(env, "MQTT_URL", ("mqtt", "mqtts")),
        smpp_binds=_smpp(env),
        smtp_url=smtp_url,
        smtp_from=_smtp_from(env),
        firebase_credentials=firebase_credentials,
        firebase_project_id=firebase_project_id,
        fcm_endpoint=_https_base_url(env, "FCM_ENDPOINT", "https://fcm.googleapis.com"),
        data_dir=Path(env.get("GATEWAY_DATA_DIR") or "var"),
        host=env.get("GATEWAY_HOST") or "127.0.0.1",
        port=_int(env, "GATEWAY_PORT", 8080, 0, 65535),
        secret_key=secret,
        ussd_service_code=code,
        currency=currency,
        default_country_code=country,
        limits_timezone=limits_timezone,
        access_token_ttl_s=_int(env, "ACCESS_TOKEN_TTL_S", 3600, 60, 86_400),
        refresh_token_ttl_s=_int(env, "REFRESH_TOKEN_TTL_S", 604_800, 300, 90 * 86_400),
        login_max_failures=_int(env, "LOGIN_MAX_FAILURES", 5, 1, 100),
        login_lockout_s=_int(env, "LOGIN_LOCKOUT_S", 900, 1, 86_400),
        login_rate_per_minute=_int(env, "LOGIN_RATE_PER_MINUTE", 20, 1, 10_000),
        admin_reset_ttl_s=_int(env, "ADMIN_RESET_TTL_S", 1800, 60, 7 * 86_400),
        pin_bcrypt_rounds=_int(env, "PIN_BCRYPT_ROUNDS", 10, 4, 16),
        password_bcrypt_rounds=_int(env, "PASSWORD_BCRYPT_ROUNDS", 12, 4, 16),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 1024 * 1024, 1024, 64 * 1024 * 1024),
        kyc_documents_required=_bool(env, "KYC_DOCUMENTS_REQUIRED", True),
        kyc_max_document_bytes=_int(
            env, "KYC_MAX_DOCUMENT_BYTES", 5 * 1024 * 1024, 1024, 32 * 1024 * 1024
        ),
        log_level=level,
        demo_data=_bool(env, "GATEWAY_DEMO", False),
        redis_prefix=prefix,
        embedded_mqtt_port=_int(env, "EMBEDDED_MQTT_PORT", 11883, 1, 65535),
        loan_max_applications_24h=_int(env, "LOAN_MAX_APPLICATIONS_24H", 3, 1, 1000),
        loan_score_weights=_weights(env),
        loan_score_approve_min=approve_min,
        loan_score_review_min=review_min,
        loan_scorer_timeout_ms=_int(env, "LOAN_SCORER_TIMEOUT_MS", 3000, 50, 60_000),
        loan_reminder_days=_days(env, "LOAN_REMINDER_DAYS", (-3, 0, 1, 7)),
        loan_jobs_interval_s=_int(env, "LOAN_JOBS_INTERVAL_S", 900, 0, 86_400),
        startup_wait_s=_int(env, "GATEWAY_STARTUP_WAIT_S", 30, 0, 600),
        ussd_providers=tuple(_ussd_provider(env, n) for n in USSD_PROVIDER_NAMES),
        ussd_deadline_s=float(_int(env, "USSD_DEADLINE_MS", 10_000, 500, 14_000)) / 1000,
        ussd_liveness_ttl_s=float(_int(env, "USSD_LIVENESS_TTL_MS", 10_000, 1_000, 60_000)) / 1000,
        ussd_late_result_limit_s=float(_int(env, "USSD_LATE_RESULT_LIMIT_S", 600, 30, 3600)),
        sms_dedupe_window_s=_int(env, "SMS_DEDUPE_WINDOW_S", 600, 0, 86_400),
        sms_dedupe_short_window_s=_int(env, "SMS_DEDUPE_SHORT_WINDOW_S", 45, 0, 3_600),
        sms_concat_timeout_s=_int(env, "SMS_CONCAT_TIMEOUT_S", 300, 5, 86_400),
        sms_rate_per_minute=_int(env, "SMS_RATE_PER_MINUTE", 10, 1, 10_000),
        sms_send_confirm=_bool(env, "SMS_SEND_CONFIRM", False),
        sms_dialog_ttl_s=_int(env, "SMS_DIALOG_TTL_S", 300, 30, 3600),
        mqtt_share_group=_share_group(env),
        mqtt_client_id=_client_id(env),
        mqtt_session_expiry_s=_int(env, "MQTT_SESSION_EXPIRY_S", 3600, 60, 7 * 86_400),
        agent_exit_confirm_fixes=_int(env, "AGENT_EXIT_CONFIRM_FIXES", 2, 1, 100),
        agent_exit_confirm_s=_int(env, "AGENT_EXIT_CONFIRM_S", 60, 0, 86_400),
        agent_unknown_accuracy_m=_int(env, "AGENT_UNKNOWN_ACCURACY_M", 30, 1, 10_000),
        agent_max_fix_age_s=_int(env, "AGENT_MAX_FIX_AGE_S", 120, 1, 86_400),
        agent_max_accuracy_m=_int(env, "AGENT_MAX_ACCURACY_M", 50, 1, 10_000),
        agent_future_skew_s=_int(env, "AGENT_FUTURE_SKEW_S", 60, 0, 3600),
        agent_max_backlog_s=_int(env, "AGENT_MAX_BACKLOG_S", 86_400, 60, 30 * 86_400),
        agent_heartbeat_timeout_s=_int(env, "AGENT_HEARTBEAT_TIMEOUT_S", 600, 10, 86_400),
        agent_alert_channel=alert_channel,
        agent_alert_recipients=alert_recipients,
        agent_alert_language=_choice(env, "AGENT_ALERT_LANGUAGE", "en", ALERT_LANGUAGES),
        agent_withdrawal_gate=_choice(
            env, "AGENT_WITHDRAWAL_GATE", "fenced", ("off", "fenced", "always")
        ),
    )


_TIMEZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")


def _timezone(env: Mapping[str, str], name: str, default: str) -> str:
    """An IANA zone name (`Africa/Nairobi`, `UTC`) known to this machine's zone database.
    PostgreSQL's own database is asked when the pools connect (gateway.db.make_pool)."""
    raw = env.get(name, default).strip()
    if not _TIMEZONE.match(raw) or len(raw) > 64:
        raise SettingsError(f"{name}: expected an IANA time zone like Africa/Nairobi, got {raw!r}")
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"{name}: unknown time zone {raw!r} (an IANA name like Africa/Nairobi or UTC)"
        ) from None
    return raw


ALERT_CHANNELS = ("log", "email", "sms", "push")  # the outbox's channels
MAX_ALERT_RECIPIENTS = 10
ALERT_LANGUAGES = ("en", "sw", "fr")  # those of core.agent_messages


def _check_alerts(
    alert_channel: str | None,
    alert_recipients: tuple[str, ...],
    smtp_url: str | None,
    firebase_credentials: Path | None,
) -> None:
    """The alert channel's needs, and recipients it can address."""
    if alert_channel == "push":
        if firebase_credentials is None:
            raise SettingsError(
                "AGENT_ALERT_CHANNEL: push needs FIREBASE_CREDENTIALS (a service-account JSON file)"
            )
        bad = [r for r in alert_recipients if not _is_push_recipient(r)]
        if bad:
            raise SettingsError(
                "AGENT_ALERT_RECIPIENTS: push alerts need topic:<name>, device tokens or "
                f"{DEVICES_RECIPIENT} (the admins' registered phones), got {bad[0]!r}"
            )
    if DEVICES_RECIPIENT in alert_recipients and alert_channel not in ("push", None):
        raise SettingsError(
            f"AGENT_ALERT_RECIPIENTS: {DEVICES_RECIPIENT} (the admins' registered phones) "
            "needs AGENT_ALERT_CHANNEL=push"
        )
    if alert_channel == "email":
        if smtp_url is None:
            raise SettingsError("AGENT_ALERT_CHANNEL: email needs SMTP_URL (the mail server)")
        bad = [r for r in alert_recipients if not _is_email(r)]
        if bad:
            raise SettingsError(
                f"AGENT_ALERT_RECIPIENTS: email alerts need email addresses, got {bad[0]!r}"
            )


def _alert_channel(env: Mapping[str, str]) -> str | None:
    raw = env.get("AGENT_ALERT_CHANNEL", "log").strip().lower() or "log"
    if raw == "off":
        return None
    if raw not in ALERT_CHANNELS:
        raise SettingsError(f"AGENT_ALERT_CHANNEL: one of {', '.join(ALERT_CHANNELS)} or off")
    return raw


def _alert_recipients(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("AGENT_ALERT_RECIPIENTS", "admins")
    names = tuple(dict.fromkeys(r.strip() for r in raw.split(",") if r.strip()))
    if not 1 <= len(names) <= MAX_ALERT_RECIPIENTS or any(len(n) > 256 for n in names):
        raise SettingsError(
            f"AGENT_ALERT_RECIPIENTS: 1 to {MAX_ALERT_RECIPIENTS} comma-separated recipients"
        )
    return names


def _choice(env: Mapping[str, str], name: str, default: str, options: tuple[str, ...]) -> str:
    raw = env.get(name, default).strip().lower() or default
    if raw not in options:
        raise SettingsError(f"{name}: one of {', '.join(options)}, got {raw!r}")
    return raw


_EMAIL = re.compile(r"[^@\s<>,;\"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _is_email(raw: str) -> bool:
    return _EMAIL.fullmatch(raw) is not None


def _smtp_from(env: Mapping[str, str]) -> str:
    sender = env.get("SMTP_FROM", "gateway@localhost").strip() or "gateway@localhost"
    if not _is_email(sender):
        raise SettingsError(f"SMTP_FROM: expected an email address, got {sender!r}")
    return sender


def _share_group(env: Mapping[str, str]) -> str:
    group = env.get("MQTT_SHARE_GROUP", "gateway").strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", group):
        raise SettingsError("MQTT_SHARE_GROUP: 1-32 letters, digits, _ or -")
    return group


def _client_id(env: Mapping[str, str]) -> str | None:
    value = env.get("MQTT_CLIENT_ID", "").strip()
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise SettingsError("MQTT_CLIENT_ID: 1-64 letters, digits, '.', _ or -")
    return value


_PROJECT_ID = re.compile(r"[a-z][a-z0-9.:-]{2,99}")
# FCM's topic name rule, and a registration token's alphabet (base64url and `:`), of which
# real tokens have well over 100 characters: `admins` and other non-tokens are refused here
# rather than dead-lettered at every alert. channels.push checks recipients again at send.
# The phones admins registered (core.push_devices), expanded when an alert is queued.
DEVICES_RECIPIENT = "devices"
_PUSH_TOPIC = re.compile(r"topic:[A-Za-z0-9\-_.~%]{1,200}")
_PUSH_TOKEN = re.compile(r"(fid:)?[A-Za-z0-9_:.\-]{20,256}")
_SERVICE_ACCOUNT_FIELDS = ("project_id", "client_email", "private_key", "token_uri")


def _is_push_recipient(raw: str) -> bool:
    return (
        raw == DEVICES_RECIPIENT
        or _PUSH_TOPIC.fullmatch(raw) is not None
        or _PUSH_TOKEN.fullmatch(raw) is not None
    )


def _https_base_url(env: Mapping[str, str], name: str, default: str) -> str:
    """An https:// base URL without query or credentials (http:// only to this machine: a
    local proxy or fake), without its trailing slash."""
    raw = (env.get(name) or default).strip().rstrip("/")
    parts = urlsplit(raw)
    local = parts.hostname in {"localhost", "127.0.0.1", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise SettingsError(f"{name}: expected an https:// URL (http:// only to localhost)")
    if not parts.hostname or parts.query or parts.fragment or parts.username:
        raise SettingsError(f"{name}: expected a base URL like https://fcm.googleapis.com")
    try:
        _ = parts.port
    except ValueError:
        raise SettingsError(f"{name}: the port is not a number between 0 and 65535") from None
    return raw


def _firebase(env: Mapping[str, str]) -> tuple[Path | None, str | None]:
    """FIREBASE_CREDENTIALS (a service-account JSON file, checked here so a bad one stops the
    start, not the first alert) and the project: FIREBASE_PROJECT_ID, else the file's."""
    override = (env.get("FIREBASE_PROJECT_ID") or "").strip() or None
    if override is not None and not _PROJECT_ID.fullmatch(override):
        raise SettingsError(f"FIREBASE_PROJECT_ID: not a project id: {override[:40]!r}")
    raw = (env.get("FIREBASE_CREDENTIALS") or "").strip()
    if not raw:
        return None, override
    name = "FIREBASE_CREDENTIALS"
    path = Path(raw)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
        raise SettingsError(f"{name}: cannot read {raw}: {reason}") from None
    try:
        account = json.loads(text)
    except ValueError:
        raise SettingsError(f"{name}: {raw} is not JSON") from None
    if not isinstance(account, dict) or account.get("type") != "service_account":
        raise SettingsError(
            f'{name}: {raw} is not a service-account key ("type" is not service_account)'
        )
    missing = [
        f for f in _SERVICE_ACCOUNT_FIELDS if not isinstance(account.get(f), str) or not account[f]
    ]
    if missing:
        raise SettingsError(f"{name}: {raw} has no {', '.join(missing)}")
    if not account["private_key"].lstrip().startswith("-----BEGIN"):
        raise SettingsError(f"{name}: the private_key in {raw} is not a PEM key")
    try:
        _https_base_url({"token_uri": account["token_uri"]}, "token_uri", "")
    except SettingsError as exc:
        problem = str(exc).removeprefix("token_uri: ")
        raise SettingsError(f"{name}: token_uri in {raw}: {problem}") from None
    project = override or account["project_id"]
    if not _PROJECT_ID.fullmatch(project):
        raise SettingsError(f"{name}: project_id in {raw} is not a project id: {project[:40]!r}")
    return path, project
