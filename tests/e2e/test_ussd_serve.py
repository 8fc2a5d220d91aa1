"""`gateway serve` as an operator runs it answers USSD callbacks: the shipped default menu is
published on first start, and without the core binding its first screen says, cleanly, that the
service is temporarily unavailable (never an error page)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_serve import Server


@pytest.mark.timeout(300)
async def test_serve_answers_ussd(serve_dir: Path) -> None:
    server = Server(serve_dir)
    server.start()
    try:
        await server.wait_ready()
        form = {
            "sessionId": "ATUid_e2e",
            "serviceCode": "*384#",
            "phoneNumber": "+254711000123",
            "networkCode": "63902",
            "text": "",
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}/ussd/africastalking", data=form) as resp:
                assert resp.status == 200
                body = await resp.text()
            assert body == "END The service is temporarily unavailable. Please try again later."
            async with http.post(f"{server.url}/ussd/hubtel", data="{") as resp:
                assert resp.status == 400
                assert (await resp.json())["error_code"] == "BAD_REQUEST"
        checked = server.cli("menus", "validate", "config/menus/default.yaml")
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "shipped menu published" in log
    assert "Traceback" not in log
