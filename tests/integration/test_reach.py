"""PostgreSQL out of reach at start (gateway.reach), against the real server and a relay in front
of it that refuses connections (tests/tcp_proxy.py): a server still coming up is waited for with
a progress line per attempt, one that refuses us for good (no such database, no such host) fails
at once, and every command says so in one line and exits 3, never a traceback, never the
password. Redis is not waited for (test_http: /readyz reports it down)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway import reach
from gateway.embedded import free_port
from tests.tcp_proxy import postgres_proxy

SECRET = "s3cret-pw-4821"


def closed_url(scheme: str, path: str = "/test") -> str:
    """A URL naming a loopback port nobody listens on, with a password in it."""
    return f"{scheme}://gw:{SECRET}@127.0.0.1:{free_port()}{path}"


def with_host(url: str, netloc: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc))


async def test_a_refused_postgres_fails_at_once_without_a_wait() -> None:
    url = closed_url("postgresql")
    heard: list[str] = []
    with pytest.raises(reach.DependencyDown) as down:
        await reach.postgres(url, say=heard.append)
    port = urlsplit(url).port
    assert str(down.value) == (
        f"cannot reach PostgreSQL at 127.0.0.1:{port} (DATABASE_URL): connection refused"
    )
    assert heard == []


async def test_postgres_coming_up_is_waited_for(database_url: str) -> None:
    proxy, through = postgres_proxy(database_url)
    port = await proxy.start()
    try:
        proxy.cut(refuse=2)  # the server "starts" after the second try
        heard: list[str] = []
        await reach.postgres(through(port), wait_s=30, say=heard.append)
    finally:
        await proxy.close()
    assert proxy.refused == 2
    assert len(heard) == 3, heard
    assert all(
        line.startswith(f"waiting for PostgreSQL at 127.0.0.1:{port} (") for line in heard[:2]
    )
    assert heard[2] == f"PostgreSQL at 127.0.0.1:{port} answers"


async def test_postgres_that_never_comes_gives_up_after_the_wait() -> None:
    url = closed_url("postgresql")
    heard: list[str] = []
    started = time.monotonic()
    with pytest.raises(reach.DependencyDown, match="connection refused"):
        await reach.postgres(url, wait_s=1.2, say=heard.append)
    assert 1.2 <= time.monotonic() - started < 10
    assert heard and all("connection refused" in line and "s left" in line for line in heard)
    assert not any(SECRET in line for line in heard)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda url: with_host(url, "postgres@nohost.invalid:5432"), "unknown host"),
        (lambda url: urlunsplit(urlsplit(url)._replace(path="/no_such_db_4821")), "does not exist"),
    ],
)
async def test_postgres_that_refuses_us_for_good_fails_at_once(
    database_url: str, change: object, detail: str
) -> None:
    assert callable(change)
    heard: list[str] = []
    started = time.monotonic()
    with pytest.raises(reach.DependencyDown) as down:
        await reach.postgres(change(database_url), wait_s=30, say=heard.append)
    assert detail in str(down.value)
    assert heard == [] and time.monotonic() - started < 10  # no waiting for what will not mend


@pytest.mark.parametrize(
    ("url", "where"),
    [
        (f"postgresql://gw:{SECRET}@db.bank.example:6543/core", "db.bank.example:6543"),
        ("postgresql://db.bank.example/core", "db.bank.example"),
        ("postgresql:///core?host=/var/run/postgresql", "/var/run/postgresql"),
        ("postgresql:///core", "the default socket"),
        ("postgresql://127.0.0.1:99999/core", "a malformed address"),
    ],
)
def test_where_names_host_and_port_never_the_password(url: str, where: str) -> None:
    assert reach.where(url) == where


# --- the commands, as an operator runs them ----------------------------------------------------


def gateway(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_commands_say_what_is_out_of_reach_in_one_line(
    redis_url: str, tmp_path: Path
) -> None:
    pg = closed_url("postgresql")
    port = urlsplit(pg).port
    common = {"GATEWAY_DATA_DIR": str(tmp_path), "REDIS_URL": redis_url}
    check = await asyncio.to_thread(gateway, "ledger", "check", DATABASE_URL=pg, **common)
    assert check.returncode == 3, check.stderr
    assert check.stdout == ""
    assert check.stderr == (
        f"gateway: cannot reach PostgreSQL at 127.0.0.1:{port} (DATABASE_URL): connection refused\n"
    )
    # migrate waits (a deployment's first step), showing it; serve too, in its JSON log.
    migrate = await asyncio.to_thread(
        gateway, "migrate", DATABASE_URL=pg, GATEWAY_STARTUP_WAIT_S="1", **common
    )
    assert migrate.returncode == 3, migrate.stderr
    lines = migrate.stderr.strip().splitlines()
    assert lines[0].startswith(f"waiting for PostgreSQL at 127.0.0.1:{port} (connection refused)")
    assert lines[-1].startswith("gateway: cannot reach PostgreSQL")
    serve = await asyncio.to_thread(
        gateway,
        "serve",
        "--port",
        str(free_port()),
        DATABASE_URL=pg,
        GATEWAY_STARTUP_WAIT_S="0",
        **common,
    )
    assert serve.returncode == 3, serve.stderr
    assert serve.stderr.strip().splitlines()[-1].startswith("gateway: cannot reach PostgreSQL at ")
    for run in (check, migrate, serve):
        assert "Traceback" not in run.stderr + run.stdout
        assert SECRET not in run.stderr + run.stdout


def _stop_while_waiting(log: Path, **env: str) -> tuple[int, str]:
    """`gateway serve` started against a PostgreSQL that refuses, SIGTERM once it says it is
    waiting: (exit code, its output)."""
    with log.open("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
            env=dict(os.environ, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while "waiting for PostgreSQL" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)  # polling interval while waiting for a condition
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, log.read_text()


async def test_serve_stops_on_sigterm_while_it_waits_for_postgres(
    redis_url: str, tmp_path: Path
) -> None:
    """A deployment that gives up on a start (SIGTERM during the wait for PostgreSQL) gets a
    prompt, clean exit: what had started stops, no traceback."""
    code, output = await asyncio.to_thread(
        _stop_while_waiting,
        tmp_path / "serve.log",
        DATABASE_URL=closed_url("postgresql"),
        REDIS_URL=redis_url,
        GATEWAY_DATA_DIR=str(tmp_path),
        GATEWAY_STARTUP_WAIT_S="120",
    )
    assert code == 0, output
    assert "Traceback" not in output and SECRET not in output
