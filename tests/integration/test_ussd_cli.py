"""`gateway menus validate FILE...` and `gateway simulate ussd` as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.embedded import free_port
from menus.seed import DEFAULT_MENU_FILE
from tests.ussd_support import PIN, UssdEnv, ussd

__all__ = ["ussd"]


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def simulate(msisdn: str, url: str, typed: str) -> tuple[int | None, str, str]:
    """`gateway simulate ussd` with `typed` as its input (and no USSD_* settings from this
    environment): its exit code, output and errors."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "simulate", "ussd", "--msisdn", msisdn, "--url", url),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("USSD_")},
    )
    out, err = await asyncio.wait_for(proc.communicate(typed.encode()), 60)
    return proc.returncode, out.decode(), err.decode()


def test_validate_the_shipped_menu() -> None:
    result = gateway("menus", "validate", str(DEFAULT_MENU_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"{DEFAULT_MENU_FILE}: ok\n"


def test_validate_reports_one_line_per_problem(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_MENU_FILE.read_text())
    data["screens"]["main"]["options"][0]["next"] = "nowhere"
    data["screens"]["goodbye"]["text"].pop("fr")
    data["screens"]["bal_do"]["action"] = "balance.v2"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, allow_unicode=True))
    also = tmp_path / "also.json"
    also.write_text(json.dumps({"name": "x"}))
    result = gateway("menus", "validate", str(bad), str(DEFAULT_MENU_FILE), str(also))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{bad}: screens.main.option 1: no screen 'nowhere'" in lines
    assert f"{bad}: screens.goodbye.text: missing translation for 'fr'" in lines
    assert f"{bad}: screens.bal_do.action: unknown action 'balance.v2'" in lines
    assert f"{DEFAULT_MENU_FILE}: ok" in lines
    assert any(line.startswith(f"{also}: ") and "missing" in line for line in lines)
    assert all(line.startswith((str(bad), str(DEFAULT_MENU_FILE), str(also))) for line in lines)


def test_validate_an_unreadable_file(tmp_path: Path) -> None:
    result = gateway("menus", "validate", str(tmp_path / "none.yaml"))
    assert result.returncode == 1 and "cannot read the file" in result.stdout


async def test_simulate_an_interactive_session(ussd: UssdEnv) -> None:
    msisdn = await ussd.bank.open(balance_minor=4_200)
    url = str(ussd.client.make_url("")).rstrip("/")
    code, text, err = await simulate(msisdn, url, f"2\n{PIN}\n")
    assert code == 0, err
    assert "Hello Amina" in text and "2. Balance" in text
    assert "> 2\nEnter your PIN:" in text
    assert text.rstrip().endswith("Your balance is KES 42.00.")


async def test_simulate_against_nothing() -> None:
    code, _, err = await simulate("+254700000001", f"http://127.0.0.1:{free_port()}", "")
    assert code == 1
    assert err.startswith("gateway: cannot reach")
