"""`gateway serve` as an operator runs it (embedded engines, demo data) answers USSD callbacks
with the real banking core: the shipped default menu is published on first start, a new number
registers, a demo customer sends it money, it sees the balance, and the ledger check passes."""

from __future__ import annotations

import secrets
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_serve import Server

DEMO_SENDER, DEMO_PIN = "+254700000001", "2580"  # README: demo data


class AtDialog:
    """One Africa's Talking session over a real socket."""

    def __init__(self, http: aiohttp.ClientSession, url: str, msisdn: str) -> None:
        self.http, self.url, self.msisdn = http, url, msisdn
        self.session_id = f"ATUid_{secrets.token_hex(6)}"
        self.inputs: list[str] = []

    async def send(self, text: str | None = None) -> str:
        if text is not None:
            self.inputs.append(text)
        form = {
            "sessionId": self.session_id,
            "serviceCode": "*384#",
            "phoneNumber": self.msisdn,
            "networkCode": "63902",
            "text": "*".join(self.inputs),
        }
        async with self.http.post(f"{self.url}/ussd/africastalking", data=form) as resp:
            assert resp.status == 200
            return await resp.text()

    async def walk(self, *texts: str) -> str:
        body = await self.send()
        for text in texts:
            body = await self.send(text)
        return body


@pytest.mark.timeout(300)
async def test_serve_answers_ussd(serve_dir: Path) -> None:
    server = Server(serve_dir)
    server.env["GATEWAY_DEMO"] = "1"
    server.start()
    newcomer = "+2547" + str(secrets.randbelow(10**8)).zfill(8)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession() as http:
            first = AtDialog(http, server.url, newcomer)
            assert "1. Register" in await first.send()
            body = await first.walk("1", "Zawadi", "Mwende", "ZM123456", "3817", "3817")
            assert body.startswith("END ") and "registered" in body
            body = await AtDialog(http, server.url, DEMO_SENDER).walk(
                "1", "0" + newcomer[4:], "250", "1", DEMO_PIN
            )
            assert body.startswith("END KES 250.00 sent to Zawadi Mwende. Fee KES 7.00. Ref ")
            body = await AtDialog(http, server.url, newcomer).walk("2", "3817")
            assert body == "END Your balance is KES 250.00."
            async with http.post(f"{server.url}/ussd/hubtel", data="{") as resp:
                assert resp.status == 400
                assert (await resp.json())["error_code"] == "BAD_REQUEST"
        checked = server.cli("menus", "validate", "config/menus/default.yaml")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        ledger = server.cli("ledger", "check")
        assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "shipped menu published" in log
    assert "Traceback" not in log
    for pin in ("3817", DEMO_PIN):  # as it would appear in a form, a JSON value or a path
        for shape in (f"*{pin}", f'"{pin}"', f"={pin}", f" {pin} "):
            assert shape not in log, shape
