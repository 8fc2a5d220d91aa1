"""Secrets never reach the logs: keys and query strings are masked."""

from __future__ import annotations

import json
import logging

from gateway.logs import JsonFormatter, redact, redact_query


def test_redact_masks_secret_keys_at_any_depth() -> None:
    data = {
        "username": "amina",
        "password": "hunter22",
        "nested": [{"pin": "1234"}],
        "otp": "123456",
        "Authorization": "Bearer abc",
        "amount": 5,
    }
    out = redact(data)
    assert out["username"] == "amina" and out["amount"] == 5
    assert out["password"] == out["otp"] == out["Authorization"] == "***"
    assert out["nested"][0]["pin"] == "***"


def test_redact_query_strings() -> None:
    q = "/agents/osmand?id=AG1&lat=1.2&token=s3cr3t&pin=1234&customer_pin=9876"
    out = redact_query(q)
    assert "s3cr3t" not in out and "1234" not in out and "9876" not in out
    assert "id=AG1" in out and "lat=1.2" in out


def test_formatter_emits_one_json_object_without_secrets() -> None:
    record = logging.makeLogRecord(
        {
            "msg": "login for %s",
            "args": ("amina",),
            "levelname": "INFO",
            "name": "t",
            "password": "hunter22",
            "path": "/x?token=abc",
        }
    )
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert parsed["msg"] == "login for amina"
    assert parsed["password"] == "***"
    assert "abc" not in line and "hunter22" not in line
