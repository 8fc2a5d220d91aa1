"""`gateway agents broker-config` writes Mosquitto's files from the stored hashes."""

from __future__ import annotations

import argparse
import asyncio
import io
import secrets
import stat
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from config.settings import Settings
from core import devices
from core.errors import CoreError
from gateway import db as dbmod
from gateway.cli import build_parser
from gateway.cli_agents import cmd_broker_config


def _issue(database_url: str, code: str) -> devices.Credentials:
    async def run() -> devices.Credentials:
        conn = await asyncpg.connect(dbmod.asyncpg_url(database_url))
        try:
            return await devices.issue_credentials(conn, code)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_broker_config_writes_password_file_and_acl(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = f"AG{secrets.token_hex(4)}"
    creds = _issue(settings.database_url or "", agent)
    args = build_parser().parse_args(
        ["agents", "broker-config", "--password-file", str(tmp_path / "pw"),
         "--acl-file", str(tmp_path / "acl")]
    )  # fmt: skip
    with_user = replace(settings, mqtt_url="mqtt://gwuser:gw%20secret@127.0.0.1:1883")
    assert cmd_broker_config(args, with_user) == 0
    lines = dict(line.split(":", 1) for line in (tmp_path / "pw").read_text().splitlines())
    assert devices.mosquitto_verify("gw secret", lines["gwuser"])
    assert devices.mosquitto_verify(creds.mqtt_password, lines[agent])
    assert stat.S_IMODE((tmp_path / "pw").stat().st_mode) == 0o600
    acl = (tmp_path / "acl").read_text()
    assert "user gwuser\ntopic readwrite #" in acl
    assert f"user {agent}\ntopic write agents/{agent}/location" in acl
    assert f"topic read agents/{agent}/reply" in acl
    assert creds.mqtt_password not in acl + (tmp_path / "pw").read_text()

    # No gateway credentials anywhere: a clear refusal, nothing written.
    (tmp_path / "pw").unlink()
    with pytest.raises(CoreError, match="MQTT user is unknown"):
        cmd_broker_config(args, replace(settings, mqtt_url="mqtt://127.0.0.1:1883"))
    assert not (tmp_path / "pw").exists()

    # Or from stdin.
    stdin_args = argparse.Namespace(**{**vars(args), "gateway_password_stdin": True,
                                       "gateway_user": "gw2"})  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    assert cmd_broker_config(stdin_args, settings) == 0
    lines = dict(line.split(":", 1) for line in (tmp_path / "pw").read_text().splitlines())
    assert devices.mosquitto_verify("from-stdin", lines["gw2"])
