"""One frozen Settings object, built once from the environment and validated at start.

Every knob the gateway reads from the environment is parsed here and nowhere else. A bad value
raises `SettingsError` whose message is one line naming the variable and the problem; the CLI
prints that line and exits 2, so an operator sees exactly what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


_SERVICE_CODE = re.compile(r"^\*\d{1,6}(\*\d{1,6})*#$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class SmppBind:
    """One SMPP bind parsed from `SMPP_URL` (`smpp://id:pw@host:port?bind=trx&...`)."""

    system_id: str
    password: str
    host: str
    port: int
    bind: str = "trx"
    source_addr: str = ""
    tps: float = 10.0
    window: int = 10
    system_type: str = ""
    message_id_base: int = 16


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the process needs to know about its environment."""

    database_url: str | None = None
    redis_url: str | None = None
    mqtt_url: str | None = None
    smpp_binds: tuple[SmppBind, ...] = ()
    smtp_url: str | None = None
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8080
    secret_key: str | None = None
    ussd_service_code: str = "*384#"
    currency: str = "KES"
    default_country_code: str = "254"
    access_token_ttl_s: int = 60 * 60
    refresh_token_ttl_s: int = 7 * 24 * 60 * 60
    login_max_failures: int = 5
    login_lockout_s: int = 15 * 60
    login_rate_per_minute: int = 20
    pin_bcrypt_rounds: int = 10
    password_bcrypt_rounds: int = 12
    max_body_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    demo_data: bool = False
    redis_prefix: str = "gw:"
    embedded_mqtt_port: int = 11883
    # Agent devices and geofences (issue 6).
    mqtt_share_group: str = "gateway"
    agent_exit_confirm_fixes: int = 2
    agent_exit_confirm_s: int = 60
    agent_unknown_accuracy_m: int = 30
    agent_max_fix_age_s: int = 120
    agent_max_accuracy_m: int = 50
    agent_future_skew_s: int = 60
    agent_max_backlog_s: int = 86_400
    agent_heartbeat_timeout_s: int = 600

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
    if not parts.hostname and "host=" not in parts.query:
        raise SettingsError(f"{name}: the URL names no host")
    try:
        _ = parts.port
    except ValueError:
        raise SettingsError(f"{name}: the port is not a number between 0 and 65535") from None
    return raw.strip()


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
    return SmppBind(
        system_id=unquote(parts.username),
        password=unquote(parts.password or ""),
        host=parts.hostname,
        port=port,
        bind=bind,
        source_addr=query.get("source_addr", ""),
        tps=tps,
        window=window,
        system_type=query.get("system_type", ""),
        message_id_base=base,
    )


def _smpp(env: Mapping[str, str]) -> tuple[SmppBind, ...]:
    raw = env.get("SMPP_URL", "").strip()
    if not raw:
        return ()
    # Several binds are separated by whitespace or commas: one URL per bind.
    urls = [u for u in re.split(r"[\s,]+", raw) if u]
    return tuple(parse_smpp_url("SMPP_URL", u) for u in urls)


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
    secret = env.get("GATEWAY_SECRET_KEY") or None
    if secret is not None and len(secret) < 32:
        raise SettingsError("GATEWAY_SECRET_KEY: must be at least 32 characters")
    level = env.get("LOG_LEVEL", "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    prefix = env.get("REDIS_PREFIX", "gw:")
    if not re.fullmatch(r"[A-Za-z0-9_:.-]{1,40}", prefix):
        raise SettingsError("REDIS_PREFIX: 1-40 characters of letters, digits, _ : . -")
    return Settings(
        database_url=_url(env, "DATABASE_URL", ("postgresql", "postgres")),
        redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix")),
        mqtt_url=_url(env, "MQTT_URL", ("mqtt", "mqtts")),
        smpp_binds=_smpp(env),
        smtp_url=_url(env, "SMTP_URL", ("smtp", "smtps")),
        data_dir=Path(env.get("GATEWAY_DATA_DIR") or "var"),
        host=env.get("GATEWAY_HOST") or "127.0.0.1",
        port=_int(env, "GATEWAY_PORT", 8080, 0, 65535),
        secret_key=secret,
        ussd_service_code=code,
        currency=currency,
        default_country_code=country,
        access_token_ttl_s=_int(env, "ACCESS_TOKEN_TTL_S", 3600, 60, 86_400),
        refresh_token_ttl_s=_int(env, "REFRESH_TOKEN_TTL_S", 604_800, 300, 90 * 86_400),
        login_max_failures=_int(env, "LOGIN_MAX_FAILURES", 5, 1, 100),
        login_lockout_s=_int(env, "LOGIN_LOCKOUT_S", 900, 1, 86_400),
        login_rate_per_minute=_int(env, "LOGIN_RATE_PER_MINUTE", 20, 1, 10_000),
        pin_bcrypt_rounds=_int(env, "PIN_BCRYPT_ROUNDS", 10, 4, 16),
        password_bcrypt_rounds=_int(env, "PASSWORD_BCRYPT_ROUNDS", 12, 4, 16),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 1024 * 1024, 1024, 64 * 1024 * 1024),
        log_level=level,
        demo_data=_bool(env, "GATEWAY_DEMO", False),
        redis_prefix=prefix,
        embedded_mqtt_port=_int(env, "EMBEDDED_MQTT_PORT", 11883, 1, 65535),
        mqtt_share_group=_share_group(env),
        agent_exit_confirm_fixes=_int(env, "AGENT_EXIT_CONFIRM_FIXES", 2, 1, 100),
        agent_exit_confirm_s=_int(env, "AGENT_EXIT_CONFIRM_S", 60, 0, 86_400),
        agent_unknown_accuracy_m=_int(env, "AGENT_UNKNOWN_ACCURACY_M", 30, 1, 10_000),
        agent_max_fix_age_s=_int(env, "AGENT_MAX_FIX_AGE_S", 120, 1, 86_400),
        agent_max_accuracy_m=_int(env, "AGENT_MAX_ACCURACY_M", 50, 1, 10_000),
        agent_future_skew_s=_int(env, "AGENT_FUTURE_SKEW_S", 60, 0, 3600),
        agent_max_backlog_s=_int(env, "AGENT_MAX_BACKLOG_S", 86_400, 60, 30 * 86_400),
        agent_heartbeat_timeout_s=_int(env, "AGENT_HEARTBEAT_TIMEOUT_S", 600, 10, 86_400),
    )


def _share_group(env: Mapping[str, str]) -> str:
    group = env.get("MQTT_SHARE_GROUP", "gateway").strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", group):
        raise SettingsError("MQTT_SHARE_GROUP: 1-32 letters, digits, _ or -")
    return group
