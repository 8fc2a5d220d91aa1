"""The whole server as an operator runs it: `gateway serve` on the embedded engines, an admin
made by the CLI, a login with TOTP, a logout, and a restart that keeps the data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pyotp
import pytest

from gateway.embedded import free_port
from tests.helpers import raw_exchange

PASSWORD = "E2e-strong-passw0rd"
READY_DEADLINE_S = 90


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "MQTT_URL", "SMPP_URL"}
    }
    env.update(
        GATEWAY_DATA_DIR=str(data_dir),
        GATEWAY_PORT=str(port),
        PASSWORD_BCRYPT_ROUNDS="4",
        EMBEDDED_MQTT_PORT=str(free_port()),
    )
    return env


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.env = _env(data_dir, self.port)
        self.log = data_dir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_S
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                try:
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await _tick()
        raise AssertionError(f"not ready in {READY_DEADLINE_S}s:\n{self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM and wait; a non-zero exit prints the server's log tail to explain itself."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        if code != 0:
            print(f"server exited {code}; log tail:\n{self.log.read_text()[-4000:]}")
        return code

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.2)  # polling interval while waiting for a condition, not a sync


async def _login(http: aiohttp.ClientSession, url: str, user: str, code: str) -> dict[str, str]:
    async with http.post(
        f"{url}/api/v1/auth/login", json={"username": user, "password": PASSWORD, "otp": code}
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body  # type: ignore[no-any-return]


@pytest.mark.timeout(300)
async def test_serve_admin_login_logout_restart(serve_dir: Path) -> None:
    data_dir = serve_dir
    server = Server(data_dir)
    server.start()
    try:
        await server.wait_ready()
        # What aiohttp's parser refuses is answered by the server's own protocol, in JSON.
        refused = await raw_exchange("127.0.0.1", server.port, b"HELLO THERE\r\n\r\n")
        assert refused.status == 400 and refused.headers["connection"] == "close", refused
        assert refused.json()["error_code"] == "BAD_REQUEST", refused
        created = server.cli("admin", "create", "operator", stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr
        uri = created.stdout.strip().splitlines()[-1]
        assert uri.startswith("otpauth://totp/")
        totp = pyotp.parse_uri(uri)
        assert isinstance(totp, pyotp.TOTP) and len(totp.secret) == 32  # 160 bits

        dup = server.cli("admin", "create", "operator", stdin=PASSWORD + "\n")
        assert dup.returncode == 1 and "already exists" in dup.stderr
        weak = server.cli("admin", "create", "weakling", stdin="short\n")
        assert weak.returncode == 1 and "password" in weak.stderr.lower()

        step = int(time.time()) // 30
        async with aiohttp.ClientSession() as http:
            tokens = await _login(http, server.url, "operator", totp.generate_otp(step))
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            async with http.get(f"{server.url}/api/v1/auth/me", headers=headers) as resp:
                assert resp.status == 200
                assert (await resp.json())["username"] == "operator"
            async with http.post(f"{server.url}/api/v1/auth/logout", headers=headers) as resp:
                assert resp.status == 204
            async with http.get(f"{server.url}/api/v1/auth/me", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error_code"] == "TOKEN_REVOKED"
    finally:
        assert server.stop() == 0
    first_log = server.log.read_text()
    assert PASSWORD not in first_log
    assert '"logger": "gateway.access"' in first_log
    assert not (data_dir / "pg" / "postmaster.pid").exists(), "embedded PostgreSQL still runs"

    again = Server(data_dir)
    again.start()
    try:
        await again.wait_ready()
        async with aiohttp.ClientSession() as http:
            # The admin survived the restart (a fresh code: the old one was spent).
            await _login(http, again.url, "operator", totp.generate_otp(step + 1))
    finally:
        assert again.stop() == 0
